"""Tests for the tiny offline pipelines in ``zsampling.tiny_pipelines``.

Every test runs with socket connections forbidden, so any attempt to reach the
Hugging Face hub (or anything else) fails loudly instead of silently using the
network. Run with ``HF_HUB_OFFLINE=1`` as well to keep huggingface_hub from
even trying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    PixArtAlphaPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from zsampling.tiny_pipelines import tiny_pixart_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPT = "a photo of a cat"

# name -> (builder, expected class, extra __call__ kwargs, latent shape, image shape)
CASES: dict[str, tuple[Callable[..., DiffusionPipeline], type, dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "sd": (tiny_sd_pipeline, StableDiffusionPipeline, {}, (1, 4, 32, 32), (1, 64, 64, 3)),
    "sdxl": (tiny_sdxl_pipeline, StableDiffusionXLPipeline, {}, (1, 4, 32, 32), (1, 64, 64, 3)),
    "pixart": (
        tiny_pixart_pipeline,
        PixArtAlphaPipeline,
        {"use_resolution_binning": False, "clean_caption": False},
        (1, 4, 32, 32),
        (1, 64, 64, 3),
    ),
}
NAMES = list(CASES)
pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every socket connection raises


@pytest.fixture(scope="module")
def pipes() -> dict[str, DiffusionPipeline]:
    """One seed-0 pipeline per kind, shared by the read-only tests."""
    return {name: CASES[name][0](0) for name in NAMES}


def _networks(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def _run(pipe: DiffusionPipeline, name: str, output_type: str) -> Any:
    return pipe(
        PROMPT,
        num_inference_steps=3,
        guidance_scale=3.0,
        output_type=output_type,
        generator=torch.Generator().manual_seed(0),
        **CASES[name][2],
    ).images


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_other_seed_differs(name: str) -> None:
    build = CASES[name][0]
    a, b, c = build(0), build(0), build(1)
    nets_a, nets_b, nets_c = _networks(a), _networks(b), _networks(c)
    assert nets_a.keys() == nets_b.keys() == nets_c.keys()
    for key in nets_a:
        sd_a, sd_b, sd_c = nets_a[key].state_dict(), nets_b[key].state_dict(), nets_c[key].state_dict()
        assert sd_a.keys() == sd_b.keys()
        for param in sd_a:
            assert torch.equal(sd_a[param], sd_b[param]), f"{key}.{param} differs for the same seed"
        assert any(not torch.equal(sd_a[p], sd_c[p]) for p in sd_a if sd_a[p].is_floating_point()), (
            f"{key} identical for seeds 0 and 1"
        )


@pytest.mark.parametrize("name", NAMES)
def test_build_leaves_global_rng_alone(name: str) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    CASES[name][0](3)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_setup(name: str, pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes[name]
    assert isinstance(pipe, CASES[name][1])
    assert pipe._progress_bar_config.get("disable") is True
    for key, net in _networks(pipe).items():
        assert not net.training, f"{key} is in training mode"
        assert all(p.dtype == torch.float32 for p in net.parameters()), f"{key} is not float32"

    sched = pipe.scheduler
    assert isinstance(sched, DDIMScheduler)
    expected = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": "epsilon",
    }
    assert {k: sched.config[k] for k in expected} == expected

    if name == "sd":
        assert pipe.safety_checker is None and pipe.feature_extractor is None
    if name == "sdxl":
        assert pipe.feature_extractor is None and pipe.image_encoder is None
        assert pipe.watermark is None


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_ids_fit_text_encoders(name: str, pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes[name]
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if name == "sdxl":
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    text = "A Photo, of a CAT! 123 -- naïve café ☃ " * 3
    for tokenizer, encoder in pairs:
        ids = tokenizer(text, padding="max_length", max_length=120, truncation=True).input_ids
        assert max(ids) < encoder.config.vocab_size
        assert len(tokenizer) <= encoder.config.vocab_size
        assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
        assert ids[-1] in (tokenizer.pad_token_id, tokenizer.eos_token_id)
        # distinct prompts must give distinct ids
        assert tokenizer("a cat").input_ids != tokenizer("a dog").input_ids


@pytest.mark.parametrize("name", NAMES)
def test_latent_call_shape_finite_and_reproducible(name: str, pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes[name]
    first = _run(pipe, name, "latent")
    second = _run(pipe, name, "latent")
    assert isinstance(first, torch.Tensor)
    assert tuple(first.shape) == CASES[name][3]
    assert first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_np_call(name: str, pipes: dict[str, DiffusionPipeline]) -> None:
    image = _run(pipes[name], name, "np")
    assert isinstance(image, np.ndarray)
    assert image.shape == CASES[name][4]
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_sd_encode_prompt(pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes["sd"]
    cond, empty = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
    _, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, "blurry, low quality")
    other, _ = pipe.encode_prompt("a photo of a dog", "cpu", 1, True, "")
    assert cond.shape == empty.shape == neg.shape == (1, 77, 32)
    assert all(torch.isfinite(t).all() for t in (cond, empty, neg))
    assert not torch.allclose(empty, neg)
    assert not torch.allclose(cond, other)


def test_sdxl_encode_prompt(pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes["sdxl"]
    cond, empty, pooled, empty_pooled = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=""
    )
    _, neg, _, neg_pooled = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry, low quality"
    )
    assert cond.shape == empty.shape == neg.shape == (1, 77, 64)
    assert pooled.shape == empty_pooled.shape == neg_pooled.shape == (1, 32)
    assert all(torch.isfinite(t).all() for t in (cond, empty, neg, pooled, empty_pooled, neg_pooled))
    # an explicit "" is encoded (only a missing negative prompt is zeroed)
    assert empty.abs().sum() > 0
    assert not torch.allclose(empty, neg)
    assert not torch.allclose(empty_pooled, neg_pooled)


def test_pixart_encode_prompt(pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes["pixart"]
    cond, mask, empty, empty_mask = pipe.encode_prompt(
        PROMPT, do_classifier_free_guidance=True, negative_prompt="", device="cpu", clean_caption=False
    )
    _, _, neg, neg_mask = pipe.encode_prompt(
        PROMPT, do_classifier_free_guidance=True, negative_prompt="blurry", device="cpu", clean_caption=False
    )
    assert cond.shape == empty.shape == neg.shape == (1, 120, 32)
    assert mask.shape == empty_mask.shape == (1, 120)
    assert all(torch.isfinite(t).all() for t in (cond, empty, neg))
    assert empty_mask.sum() == 1  # just the end-of-sequence token
    assert neg_mask.sum() > 1 and mask.sum() > neg_mask.sum()
    assert not torch.allclose(empty, neg)
