import math

import pytest

from zsampling import ZigzagConfig


def test_defaults_are_the_papers_full_window():
    config = ZigzagConfig()
    assert config.num_inference_steps == 50 and config.guidance_scale == 5.5
    assert config.inversion_guidance_scale == 0.0 and config.rounds == 1 and config.zag == "official"
    assert config.window == frozenset(range(49))
    assert config.reflections == 49


def test_window_int_and_explicit_indices():
    assert ZigzagConfig(num_inference_steps=10, zigzag_steps=4).window == frozenset(range(4))
    assert ZigzagConfig(num_inference_steps=10, zigzag_steps=0).is_standard
    explicit = ZigzagConfig(num_inference_steps=10, zigzag_steps=[7, 2, 2], rounds=2)
    assert explicit.window == frozenset({2, 7}) and explicit.zigzag_steps == (2, 7)
    assert explicit.reflections == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"num_inference_steps": 10, "zigzag_steps": 10}, r"zigzag_steps \(lambda\) must be in 0..9"),
        ({"num_inference_steps": 10, "zigzag_steps": -1}, r"must be in 0..9"),
        ({"num_inference_steps": 10, "zigzag_steps": [0, 9]}, r"indices must be integers in 0..8"),
        ({"zigzag_steps": "12"}, "zigzag_steps must be an int or a set"),
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number"),
        ({"inversion_guidance_scale": -math.inf}, "inversion_guidance_scale must be a finite number"),
        ({"zag": "fixed-point"}, r"zag must be one of \('official', 'ddim', 'euler'\)"),
        ({"zag_eval_timestep": "t_i"}, r"zag_eval_timestep must be one of \('next', 'current'\)"),
    ],
)
def test_bad_settings_name_the_setting_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZigzagConfig(**kwargs)
