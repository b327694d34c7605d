"""The analytic Gaussian-mixture model: exact eps, and the theory it checks.

1. eps is exact (autograd of the noised mixture's log density; the
   single-Gaussian closed form).
2. Standard DDIM with many steps reproduces the (conditional) mixture's
   moments.
3. With the "ddim" zag, the inversion residual of a reflection shrinks in
   proportion to the step size (log-log slope about 1).
4. Z-Sampling raises the posterior of the prompted component over standard
   sampling from the same latents, more with a larger window and a larger
   gap; the "ddim" gain converges to the pure gap-term injection.
5. Network rows match docs/design.md's cost formulas.
6. Bad prompts, sizes and output types give clear errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import pairwise

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

import zsampling
from zsampling.denoisers.analytic import GaussianMixtureModel
from zsampling.denoisers.base import BOTH, Branches, Denoiser, SamplingTarget
from zsampling.sampler import Event
from zsampling.schedule import DDIMSchedule

D = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny; on a busy 2-core machine torch's thread pool
    makes each call ~30x slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> GaussianMixtureModel:
    return GaussianMixtureModel.default(d=D, dtype=torch.float64)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)

    def first(self, op: str) -> Event:
        return next(e for e in self.events if e.op == op)


def _random_mixture(seed: int, k: int, kind: str, d: int = D) -> GaussianMixtureModel:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    means = 1.5 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    if kind == "isotropic":
        cov: torch.Tensor = 0.2 + torch.rand(k, generator=gen, dtype=torch.float64)
    elif kind == "diagonal":
        cov = 0.1 + torch.rand(k, d, generator=gen, dtype=torch.float64)
    else:
        a = torch.randn(k, d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(d, dtype=torch.float64)
    return GaussianMixtureModel(weights, means, cov)


def _autograd_eps(model: GaussianMixtureModel, x: torch.Tensor, t: int, components: list[int]) -> torch.Tensor:
    """-sqrt(1-a) grad log p_t by autograd on a direct logsumexp of Gaussian log-pdfs."""
    a = float(model.scheduler.alphas_cumprod.double()[t])
    x = x.detach().clone().requires_grad_(True)
    w = model.weights[components] / model.weights[components].sum()
    eye = torch.eye(model.dim, dtype=torch.float64)
    log_terms = []
    for j, k in enumerate(components):
        dist = torch.distributions.MultivariateNormal(
            math.sqrt(a) * model.means[k], covariance_matrix=a * model.covariances[k] + (1 - a) * eye
        )
        log_terms.append(torch.log(w[j]) + dist.log_prob(x))
    log_p = torch.logsumexp(torch.stack(log_terms, dim=1), dim=1)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    return -math.sqrt(1 - a) * grad


# ---------------------------------------------------------------------------------------------- 1. exact eps


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 4),
    kind=st.sampled_from(["isotropic", "diagonal", "full"]),
    t=st.integers(0, 999),
)
def test_eps_matches_autograd_of_noised_mixture(seed: int, k: int, kind: str, t: int) -> None:
    model = _random_mixture(seed, k, kind)
    gen = torch.Generator().manual_seed(seed + 1)
    x = 2.0 * torch.randn(8, D, generator=gen, dtype=torch.float64)
    every = list(range(k))
    torch.testing.assert_close(model.eps(x, t), _autograd_eps(model, x, t, every), rtol=1e-9, atol=1e-11)

    subset = every[::2]  # a proper subset when k > 2
    prompt = ",".join(str(i) for i in subset)
    target = model.prepare_zsampling([prompt] * 8, None, None, None)
    pair = target.denoiser(x, t, BOTH)
    torch.testing.assert_close(pair.cond, _autograd_eps(model, x, t, subset), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(pair.uncond, _autograd_eps(model, x, t, every), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(model.log_prob(x, t), model.log_prob(x, alpha_bar=model.alpha_bar(t)))


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "full"])
def test_eps_single_gaussian_closed_form(kind: str) -> None:
    model = _random_mixture(7, 3, kind)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0, 1, 250, 501, 999):
        a = model.alpha_bar(t)
        for k in range(3):
            s = a * model.covariances[k] + (1 - a) * torch.eye(D, dtype=torch.float64)
            expected = math.sqrt(1 - a) * torch.linalg.solve(s, (x - math.sqrt(a) * model.means[k]).T).T
            torch.testing.assert_close(model.eps(x, t, k), expected, rtol=1e-9, atol=1e-12)
            target = model.prepare_zsampling([f"component {k}"] * 32, None, None, None)
            torch.testing.assert_close(target.denoiser(x, t, Branches(False, True)).cond, expected,
                                       rtol=1e-9, atol=1e-12)


def test_eps_dtype_and_far_points_are_stable(model: GaussianMixtureModel) -> None:
    x32 = torch.randn(4, D, dtype=torch.float32)
    assert model.eps(x32, 500).dtype == torch.float32
    target = GaussianMixtureModel.default(d=D).prepare_zsampling(["0"] * 4, None, None, None)
    pair = target.denoiser(x32, 500, BOTH)
    assert pair.cond.dtype == pair.uncond.dtype == torch.float32
    far = torch.full((2, D), 1e4, dtype=torch.float64)  # every component's pdf underflows: logsumexp keeps it finite
    assert torch.isfinite(model.eps(far, 1, "0")).all()
    assert torch.isfinite(model.posterior(far, 0)).all()


def test_posterior_and_data(model: GaussianMixtureModel) -> None:
    gen = torch.Generator().manual_seed(0)
    x = model.sample_data(4000, None, gen)
    assert x.shape == (4000, D) and x.dtype == torch.float64
    per = torch.stack([model.posterior(x, k) for k in range(3)], dim=1)
    torch.testing.assert_close(per.sum(1), torch.ones(4000, dtype=torch.float64))
    torch.testing.assert_close(model.posterior(x, "0+1"), per[:, 0] + per[:, 1])
    mean, cov = model.moments()
    assert (x.mean(0) - mean).abs().max() < 0.1 and (torch.cov(x.T) - cov).abs().max() < 0.1
    one = model.sample_data(2000, "component 1", gen)
    assert model.posterior(one, 1).mean() > 0.7 > model.posterior(one, 0).mean()
    again = model.sample_data(5, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, model.sample_data(5, 1, torch.Generator().manual_seed(3)))


# ---------------------------------------------------------------------------------------------- 2. moments


@pytest.mark.parametrize(
    ("prompt", "negative", "guidance", "expected"),
    [
        ("0", None, 1.0, "0"),  # conditional only
        ("0+2", None, 1.0, "0,2"),  # a subset: restricted, renormalised mixture
        ("1", None, 0.0, None),  # unconditional: the whole mixture
        ("1", "component 2", 0.0, "2"),  # eps_u follows the negative prompt
    ],
)
def test_standard_ddim_reproduces_moments(prompt: str, negative: str | None, guidance: float,
                                          expected: str | None) -> None:
    model = GaussianMixtureModel.default(d=D)  # float32, as a pipeline would run
    n, steps = 3000, 200
    out = zsampling.sample(model, [prompt] * n, negative_prompt=negative, generator=torch.Generator().manual_seed(5),
                           num_inference_steps=steps, guidance_scale=guidance, zigzag_steps=0, output_type="pt",
                           progress=False)
    x = out.images.double()
    # The last DDIM step lands at the final alpha (ab[0] here), not at clean data.
    mean, cov = model.moments(expected, alpha_bar=float(model.scheduler.final_alpha_cumprod))
    var = torch.diagonal(cov)
    z_mean = (x.mean(0) - mean) / torch.sqrt(var / n)
    z_cov = (torch.cov(x.T) - cov) / torch.sqrt((torch.outer(var, var) + cov**2) / n)
    assert z_mean.abs().max() < 4.5, f"mean off by {z_mean.abs().max():.2f} standard errors"
    assert z_cov.abs().max() < 4.5, f"covariance off by {z_cov.abs().max():.2f} standard errors"


# ---------------------------------------------------------------------------------------------- 3. residual order


def _reflection(model: GaussianMixtureModel, steps: int, g1: float, g2: float, zag: str, eval_timestep: str,
                near_t: int = 500, n: int = 256) -> tuple[int, Event, Event, float, DDIMSchedule]:
    """One reflection at the step whose t_i is closest to ``near_t``; returns its zig and zag events."""
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    step = int(np.argmin([abs(t - near_t) for t in schedule.timesteps[:-1]]))
    recorder = Recorder()
    zsampling.sample(model, ["0"] * n, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                     guidance_scale=g1, inversion_guidance_scale=g2, zigzag_steps=[step], zag=zag,
                     zag_eval_timestep=eval_timestep, output_type="pt", recorder=recorder, branches="both",
                     progress=False)
    return step, recorder.first("zig"), recorder.first("zag"), schedule.reflection_coefficient(step), schedule


@pytest.mark.parametrize(("eval_timestep", "g2"), [("next", 0.0), ("current", 0.0), ("next", 1.0)])
def test_ddim_residual_shrinks_with_step_size(model: GaussianMixtureModel, eval_timestep: str, g2: float,
                                              record_property: pytest.FixtureRequest) -> None:
    g1 = 3.0
    strides, ratios = [], []
    for steps in (10, 20, 40, 80):
        step, zig, zag, c, schedule = _reflection(model, steps, g1, g2, "ddim", eval_timestep)
        delta = zag.x_out - zig.x_in
        gap = c * (g1 - g2) * (zig.eps.cond - zig.eps.uncond)
        residual = delta - gap
        # docs/design.md's exact split: residual = c_i (eps_g2(x_i, t_i) - eps_g2(y, s)), no extra call
        torch.testing.assert_close(residual, c * (zig.eps.guided(g2) - zag.eps.guided(g2)), rtol=1e-8, atol=1e-12)
        assert abs(schedule.timesteps[step] - 500) <= 6
        strides.append(schedule.timesteps[step] - schedule.timesteps[step + 1])
        ratios.append(float(residual.norm() / gap.norm()))
    slope = float(np.polyfit(np.log(strides), np.log(ratios), 1)[0])
    record_property("residual_order_slope", slope)
    assert all(a > b for a, b in pairwise(ratios)), ratios
    assert 0.85 < slope < 1.25, f"log-log slope {slope:.3f} of residual/gap vs step size, ratios {ratios}"


# ---------------------------------------------------------------------------------------------- 4. posterior gains


def _posterior(model: GaussianMixtureModel, latents: torch.Tensor, **settings_: object) -> float:
    n = latents.shape[0]
    out = zsampling.sample(model, ["0"] * n, latents=latents, output_type="pt", progress=False, **settings_)
    return float(model.posterior(out.images, 0).mean())


@pytest.mark.parametrize("zag", ["ddim", "official"])
def test_zsampling_raises_posterior_with_window_and_gap(model: GaussianMixtureModel, zag: str,
                                                        record_property: pytest.FixtureRequest) -> None:
    # g1 = 1 (the conditional alone, no CFG push) leaves the posterior far from 1, so gains do not saturate
    steps, g1, n = 20, 1.0, 1000
    latents = torch.randn(n, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    common = {"num_inference_steps": steps, "guidance_scale": g1, "zag": zag}
    standard = _posterior(model, latents, zigzag_steps=0, **common)
    by_window = {lam: _posterior(model, latents, zigzag_steps=lam, **common) - standard for lam in (5, 10, 15, 19)}
    by_gap = {g2: _posterior(model, latents, zigzag_steps=19, inversion_guidance_scale=g2, **common) - standard
              for g2 in (0.0, g1 / 2, g1)}
    record_property("standard_posterior", standard)
    record_property("gain_by_window", by_window)
    record_property("gain_by_gap", by_gap)
    assert 0.7 < standard < 0.85  # weak guidance: room to improve
    gains = [0.0, *by_window.values()]
    assert all(b - a > 0.005 for a, b in pairwise(gains)), by_window
    assert by_gap[0.0] - by_gap[g1 / 2] > 0.02 and by_gap[g1 / 2] - by_gap[g1] > 0.02, by_gap
    assert by_gap[g1] < 0.5 * by_gap[0.0]  # no gap: only the O(step) residual is left


def test_zero_gap_reflection_is_standard_to_first_order(model: GaussianMixtureModel) -> None:
    """With g2 = g1 every reflection is residual only (O(k^2) each), so the end
    point moves O(k) away from standard sampling: halving the step halves it."""
    n, g = 300, 1.5
    latents = torch.randn(n, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for zag in ("ddim", "official"):
        distances = []
        for steps in (20, 40, 80):  # the official operator reaches the asymptotic rate from T ~ 20
            kw = {"latents": latents, "num_inference_steps": steps, "guidance_scale": g, "output_type": "pt",
                  "progress": False}
            standard = zsampling.sample(model, ["0"] * n, zigzag_steps=0, **kw).images
            zero_gap = zsampling.sample(model, ["0"] * n, zigzag_steps=steps - 1, inversion_guidance_scale=g, zag=zag,
                                        **kw).images
            distances.append(float((zero_gap - standard).norm(dim=1).mean()))
        assert all(1.5 < a / b < 2.5 for a, b in pairwise(distances)), (zag, distances)


def _gap_only(model: GaussianMixtureModel, latents: torch.Tensor, steps: int, g1: float, g2: float) -> torch.Tensor:
    """Reflections replaced by their guidance-gap term: x_i += c_i (g1 - g2)(eps_c - eps_u)(x_i, t_i)."""
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    denoiser = model.prepare_zsampling(["0"] * latents.shape[0], None, None, None).denoiser
    x = latents
    for i in range(steps):
        if i < steps - 1:
            eps = denoiser(x, schedule.timesteps[i], BOTH)
            x = x + schedule.reflection_coefficient(i) * (g1 - g2) * (eps.cond - eps.uncond)
        x = schedule.zig(i).apply(x, denoiser(x, schedule.timesteps[i], BOTH).guided(g1))
    return x


def test_ddim_gain_converges_to_gap_term(model: GaussianMixtureModel, record_property: pytest.FixtureRequest) -> None:
    n, g1, g2 = 500, 1.5, 0.0
    latents = torch.randn(n, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    distances, gains = [], []
    for steps in (10, 20, 40):
        kw = {"latents": latents, "num_inference_steps": steps, "guidance_scale": g1, "output_type": "pt",
              "progress": False}
        standard = zsampling.sample(model, ["0"] * n, zigzag_steps=0, **kw).images
        zigzag = zsampling.sample(model, ["0"] * n, zigzag_steps=steps - 1, inversion_guidance_scale=g2, zag="ddim",
                                  **kw).images
        gap_only = _gap_only(model, latents, steps, g1, g2)
        distances.append(float((zigzag - gap_only).norm(dim=1).mean() / (gap_only - standard).norm(dim=1).mean()))
        p = [float(model.posterior(x, 0).mean()) for x in (standard, zigzag, gap_only)]
        gains.append((p[1] - p[0], p[2] - p[0]))
    record_property("endpoint_distance_ratio", distances)
    record_property("gain_zigzag_vs_gap_only", gains)
    assert all(1.6 < a / b < 2.5 for a, b in pairwise(distances)), distances
    zz, gap = gains[-1]
    assert gap > 0.05 and abs(zz - gap) < 0.05 * gap, gains


# ---------------------------------------------------------------------------------------------- 5. NFE


@pytest.mark.parametrize(
    ("g1", "g2", "window", "branches", "expected"),
    [
        (1.5, 0.0, 0, "needed", "2T"),
        (1.0, 0.0, 0, "needed", "T"),
        (0.0, 0.0, 0, "needed", "T"),
        (1.5, 0.0, 3, "needed", "2T+3"),
        (1.5, 1.0, 3, "needed", "2T+3"),
        (1.5, 0.5, 3, "needed", "2T+4"),
        (1.5, 0.0, 3, "both", "2T+4"),
    ],
)
def test_network_rows(g1: float, g2: float, window: int, branches: str, expected: str) -> None:
    model = GaussianMixtureModel.default(d=D)
    steps, rounds, batch = 6, 2, 3
    out = zsampling.sample(model, ["0"] * batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                           guidance_scale=g1, inversion_guidance_scale=g2, zigzag_steps=window, rounds=rounds,
                           branches=branches, output_type="pt", progress=False)
    per_step = 1 if expected == "T" else 2
    per_reflection = {"2T+3": 3, "2T+4": 4}.get(expected, 0)
    assert out.nfe == per_step * steps + per_reflection * window * rounds
    assert out.network_rows == out.nfe * batch


def test_denoiser_computes_only_requested_branches(model: GaussianMixtureModel) -> None:
    target = model.prepare_zsampling(["0", "1", "0,1"], ["", "2", ""], None, None)
    assert isinstance(target, SamplingTarget) and isinstance(target.denoiser, Denoiser)
    x = torch.randn(3, D, dtype=torch.float64)
    only_u = target.denoiser(x, 400, Branches(True, False))
    assert only_u.cond is None and target.denoiser.network_rows == 3
    only_c = target.denoiser(x, 400, Branches(False, True))
    assert only_c.uncond is None and target.denoiser.network_rows == 6
    both = target.denoiser(x, 400, BOTH)
    assert target.denoiser.network_rows == 12
    torch.testing.assert_close(both.uncond, only_u.uncond)
    torch.testing.assert_close(both.cond, only_c.cond)
    torch.testing.assert_close(both.uncond[1], model.eps(x[1:2], 400, 2)[0])  # per-sample negative prompt
    with pytest.raises(ValueError, match="at least one branch"):
        target.denoiser(x, 400, Branches(False, False))


# ---------------------------------------------------------------------------------------------- 6. errors


def test_prompt_forms(model: GaussianMixtureModel) -> None:
    assert model.components("0") == model.components("component 0") == model.components(0) == (0,)
    assert model.components("0,2") == model.components("2 + 0") == model.components("Components 0, 2") == (0, 2)
    assert model.components("") == model.components(None) == (0, 1, 2)
    named = GaussianMixtureModel([0.5, 0.5], [[0.0, 1.0], [0.0, -1.0]], 1.0, component_names=["up", "down"])
    assert named.components("Down") == (1,) and named.components("up+1") == (0, 1)


@pytest.mark.parametrize("prompt", ["3", "a cat", "0,5", "component x", "0,", "-1"])
def test_unknown_prompt_lists_valid_ones(model: GaussianMixtureModel, prompt: str) -> None:
    with pytest.raises(ValueError, match=r"valid prompts: .*component 0"):
        zsampling.sample(model, prompt, num_inference_steps=2, output_type="pt", progress=False)
    with pytest.raises(ValueError, match="valid prompts"):
        zsampling.sample(model, "0", negative_prompt=prompt, num_inference_steps=2, output_type="pt", progress=False)


def test_size_and_output_type_errors(model: GaussianMixtureModel) -> None:
    with pytest.raises(ValueError, match="height and width must be None"):
        zsampling.sample(model, "0", height=64, num_inference_steps=2, output_type="pt", progress=False)
    with pytest.raises(ValueError, match="height and width must be None"):
        model.prepare_zsampling(["0"], None, None, 32)
    with pytest.raises(ValueError, match=r"output_type must be one of \('pt', 'np', 'latent'\)"):
        zsampling.sample(model, "0", num_inference_steps=2, output_type="pil", progress=False)
    out = zsampling.sample(GaussianMixtureModel.default(), ["0", "1"], num_inference_steps=3, output_type="np",
                           generator=torch.Generator().manual_seed(0), progress=False)
    assert isinstance(out.images, np.ndarray) and out.images.shape == (2, 2) and out.images.dtype == np.float32
    target = model.prepare_zsampling(["0"], None, None, None)
    x = torch.zeros(1, D)
    assert target.decode(x, "pt") is x and target.decode(x, "latent") is x


def test_constructor_errors() -> None:
    means = [[0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureModel([1.0, -1.0], means, 1.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixtureModel([1.0], means, 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixtureModel([1.0, 1.0], means, [1.0, 0.0])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureModel([1.0, 1.0], means, [[[1.0, 0.5], [0.0, 1.0]]] * 2)
    with pytest.raises(ValueError, match="covariances must be"):
        GaussianMixtureModel([1.0, 1.0], means, torch.ones(3))
    with pytest.raises(ValueError, match="clip_sample"):
        GaussianMixtureModel([1.0, 1.0], means, 1.0, scheduler={"clip_sample": True})
    with pytest.raises(ValueError, match="epsilon"):
        GaussianMixtureModel([1.0, 1.0], means, 1.0, scheduler={"prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="DDIMScheduler"):
        GaussianMixtureModel([1.0, 1.0], means, 1.0, scheduler=DPMSolverMultistepScheduler())
    custom = GaussianMixtureModel([1.0, 1.0], means, 1.0, scheduler=DDIMScheduler(clip_sample=False))
    assert custom.scheduler.config.beta_schedule == "linear"
