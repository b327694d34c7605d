import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from gaussian_toy import GaussianDenoiser, sd_like_scheduler

from zsampling import DDIMSchedule, ZigzagConfig
from zsampling.schedule import ddim, reflection_coefficient, to_epsilon


def test_ddim_matches_hand_computed_numbers():
    # a_from = 0.25, a_to = 0.64, x = 1, e = 0.5:
    # x0 = (1 - sqrt(0.75) * 0.5) / 0.5 = 2 - sqrt(0.75); out = 0.8 * x0 + 0.6 * 0.5
    out = ddim(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 0.25, 0.64)
    assert out.item() == pytest.approx(0.8 * (2 - math.sqrt(0.75)) + 0.3, abs=1e-12)
    assert out.item() == pytest.approx(1.2071796769724491, abs=1e-12)


def test_reflection_coefficient_hand_computed():
    # c = sqrt(0.25 / 0.64) * sqrt(0.36) - sqrt(0.75) = 0.625 * 0.6 - 0.8660254...
    assert reflection_coefficient(0.25, 0.64) == pytest.approx(0.375 - math.sqrt(0.75), abs=1e-12)
    assert reflection_coefficient(0.25, 0.64) < 0


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_come_from_the_scheduler(spacing):
    scheduler = sd_like_scheduler(timestep_spacing=spacing)
    schedule = DDIMSchedule.from_scheduler(scheduler, 10)
    reference = sd_like_scheduler(timestep_spacing=spacing)
    reference.set_timesteps(10)
    assert schedule.timesteps == tuple(int(t) for t in reference.timesteps)
    assert scheduler.num_inference_steps is None  # the user's scheduler is not touched


def test_leading_schedule_of_sd():
    schedule = DDIMSchedule.from_scheduler(sd_like_scheduler(), 10)
    assert schedule.timesteps == (901, 801, 701, 601, 501, 401, 301, 201, 101, 1)
    assert schedule.stride == 100
    alphas = sd_like_scheduler().alphas_cumprod.double()
    assert schedule.final_alpha_cumprod == pytest.approx(float(alphas[0]))  # set_alpha_to_one=False
    assert schedule.alpha_after(9) == schedule.final_alpha_cumprod


def test_zig_equals_diffusers_ddim_step_with_leading_spacing():
    scheduler = sd_like_scheduler()
    schedule = DDIMSchedule.from_scheduler(scheduler, 10)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    for i, t in enumerate(scheduler.timesteps):
        x = torch.randn(2, 4, 8, 8, generator=generator)
        eps = torch.randn(2, 4, 8, 8, generator=generator)
        expected = scheduler.step(eps, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(schedule.zig(i).apply(x, eps), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_official_zag_equals_ddim_inverse_scheduler_step_at_next_timestep(set_alpha_to_one):
    scheduler = sd_like_scheduler(set_alpha_to_one=set_alpha_to_one)
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(10)
    schedule = DDIMSchedule.from_scheduler(scheduler, 10)
    config = ZigzagConfig(num_inference_steps=10)
    generator = torch.Generator().manual_seed(1)
    for i in range(9):  # includes i = 8, where t_{i+1} - k < 0 uses the initial alpha
        t_next = schedule.timesteps[i + 1]
        y = torch.randn(2, 4, 8, 8, generator=generator)
        eps = torch.randn(2, 4, 8, 8, generator=generator)
        expected = inverse.step(eps, t_next, y).prev_sample
        move = schedule.zag(i, config)
        assert move.t_eval == schedule.timesteps[i]  # evaluated at the higher timestep t_i
        torch.testing.assert_close(move.apply(y, eps), expected, rtol=0, atol=1e-5)


def test_ddim_zag_is_the_exact_inverse_move():
    schedule = DDIMSchedule.from_scheduler(sd_like_scheduler(), 10)
    for eval_at, expected_t in (("next", 801), ("current", 901)):
        move = schedule.zag(0, ZigzagConfig(num_inference_steps=10, zag="ddim", zag_eval_timestep=eval_at))
        assert move.t_eval == expected_t
        assert (move.a_from, move.a_to) == (schedule.alpha(801), schedule.alpha(901))
    x = torch.randn(3, 5, dtype=torch.float64)
    eps = torch.randn(3, 5, dtype=torch.float64)
    zag = schedule.zag(0, ZigzagConfig(num_inference_steps=10, zag="ddim"))
    torch.testing.assert_close(zag.apply(schedule.zig(0).apply(x, eps), eps), x, rtol=0, atol=1e-12)


def test_zig_then_ddim_zag_is_x_plus_c_times_eps_difference():
    schedule = DDIMSchedule.from_scheduler(sd_like_scheduler(), 10)
    x, e1, e2 = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
    zag = schedule.zag(3, ZigzagConfig(num_inference_steps=10, zag="ddim"))
    out = zag.apply(schedule.zig(3).apply(x, e1), e2)
    torch.testing.assert_close(out, x + schedule.reflection_coefficient(3) * (e1 - e2), rtol=0, atol=1e-12)


def _round_trip_error(steps: int, level: int = 500) -> float:
    """|zig then ddim zag - x| with g1 = g2 = 1 on the exact Gaussian model, at the step nearest `level`."""
    scheduler = sd_like_scheduler()
    schedule = DDIMSchedule.from_scheduler(scheduler, steps)
    denoiser = GaussianDenoiser(scheduler.alphas_cumprod)
    i = min(range(steps - 1), key=lambda k: abs(schedule.timesteps[k] - level))
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    zig = schedule.zig(i)
    y = zig.apply(x, denoiser.eps(x, zig.t_eval, 1.0))
    zag = schedule.zag(i, ZigzagConfig(num_inference_steps=steps, zag="ddim"))
    back = zag.apply(y, denoiser.eps(y, zag.t_eval, 1.0))
    return float((back - x).norm() / x.norm())


def test_round_trip_error_is_first_order_per_unit_time():
    # One reflection's error is c_i * (eps(x, t_i) - eps(y, t_{i+1})) = O(h) * O(h): halving the
    # step h divides the single-step error by about 4 (first order error per unit time).
    errors = [_round_trip_error(steps) for steps in (10, 20, 40, 80)]
    ratios = [errors[k] / errors[k + 1] for k in range(3)]
    assert all(3.0 < ratio < 5.0 for ratio in ratios), (errors, ratios)
    assert errors[-1] < 1e-3


def test_prediction_type_conversion_round_trips():
    x0, noise = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a = 0.3
    x = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    v = math.sqrt(a) * noise - math.sqrt(1 - a) * x0
    torch.testing.assert_close(to_epsilon(v, x, a, "v_prediction"), noise)
    torch.testing.assert_close(to_epsilon(x0, x, a, "sample"), noise)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        to_epsilon(v, x, a, "flow")


@pytest.mark.parametrize("scheduler_cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_non_ddim_schedulers_are_refused_naming_ddim(scheduler_cls):
    with pytest.raises(ValueError, match="needs a DDIMScheduler.*DDIMScheduler.from_config"):
        DDIMSchedule.from_scheduler(scheduler_cls.from_config(sd_like_scheduler().config), 10)


def test_clipped_schedulers_are_refused():
    with pytest.raises(ValueError, match="clip_sample"):
        DDIMSchedule.from_scheduler(sd_like_scheduler(clip_sample=True), 10)


def test_zag_needs_a_next_timestep():
    schedule = DDIMSchedule.from_scheduler(sd_like_scheduler(), 10)
    with pytest.raises(ValueError, match="step must be in 0..8"):
        schedule.zag(9, ZigzagConfig(num_inference_steps=10))


# ----------------------------------------------------------------------------------- custom timestep lists
AYS_SD15 = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]  # Align-Your-Steps, SD 1.5, 10 steps


def test_custom_timesteps_with_the_ddim_zag_equal_a_literal_loop():
    """A non-uniform list (Align-Your-Steps): the loop follows it exactly, the last step goes to the final alpha."""
    import math

    import zsampling
    from zsampling.denoisers.analytic import GaussianMixtureModel

    model = GaussianMixtureModel.default(d=3, num_components=2)
    prompts = ["0", "1"]
    latents = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    g1, g2, window = 3.0, 0.5, 7
    out = zsampling.sample(model, prompts, timesteps=AYS_SD15, guidance_scale=g1, inversion_guidance_scale=g2,
                           zigzag_steps=window, zag="ddim", latents=latents, output_type="pt", progress=False)
    assert out.config.num_inference_steps == 10 and out.config.timesteps == tuple(AYS_SD15)
    target = zsampling.prepare(model, prompts)
    ab = target.scheduler.alphas_cumprod.double()
    final = float(target.scheduler.final_alpha_cumprod)

    def eps(x, t, g):
        pair = target.denoiser(x, t, zsampling.Branches(True, True))
        return pair.uncond + g * (pair.cond - pair.uncond)

    def move(x, e, a, b):  # DDIM by hand
        return math.sqrt(b) * (x - math.sqrt(1 - a) * e) / math.sqrt(a) + math.sqrt(1 - b) * e

    x = latents.clone()
    for i, t in enumerate(AYS_SD15):
        a_i = ab[t].item()
        a_next = ab[AYS_SD15[i + 1]].item() if i + 1 < len(AYS_SD15) else final
        if i < window:
            y = move(x, eps(x, t, g1), a_i, a_next)
            x = move(y, eps(y, AYS_SD15[i + 1], g2), a_next, a_i)
        x = move(x, eps(x, t, g1), a_i, a_next)
    torch.testing.assert_close(out.latents, x, rtol=0, atol=1e-5)
    # and the list mattered: the scheduler's own 10-step spacing gives another result
    spaced = zsampling.sample(model, prompts, num_inference_steps=10, guidance_scale=g1, inversion_guidance_scale=g2,
                              zigzag_steps=window, zag="ddim", latents=latents, output_type="pt", progress=False)
    assert (spaced.latents - out.latents).abs().max().item() > 1e-3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timesteps": AYS_SD15, "zag": "official"}, 'use zag="ddim"'),
    ({"timesteps": [10, 20]}, "strictly decreasing"),
    ({"timesteps": [1000, 10]}, "timesteps must be < num_train_timesteps=1000"),
    ({"timesteps": AYS_SD15, "num_inference_steps": 12}, "must equal the number of custom timesteps"),
])
def test_bad_custom_timesteps_are_refused_before_any_network_call(kwargs, message):
    import zsampling
    from zsampling.denoisers.analytic import GaussianMixtureModel

    with pytest.raises(ValueError, match=message):
        zsampling.sample(GaussianMixtureModel.default(d=3, num_components=2), ["0"], zag=kwargs.pop("zag", "ddim"),
                         output_type="pt", progress=False, **kwargs)


def test_custom_timesteps_are_refused_on_flow_matching():
    import zsampling
    from zsampling.tiny_pipelines import tiny_sd3_pipeline

    with pytest.raises(ValueError, match="DDIM family only"):
        zsampling.sample(tiny_sd3_pipeline(), "a cat", timesteps=[900, 500, 100], progress=False)
