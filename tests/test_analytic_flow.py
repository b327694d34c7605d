"""The analytic Gaussian mixture under the rectified-flow interpolant (exact velocities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from scipy.stats import multivariate_normal

from zsampling.denoisers.analytic import FlowGaussianMixtureModel, GaussianMixtureModel
from zsampling.denoisers.base import BOTH, Branches

SIGMAS = [0.0, 0.05, 0.3, 0.7, 0.95, 1.0]


def _random_mixture(seed: int, k: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, k)
    means = rng.normal(0.0, 1.5, (k, d))
    a = rng.normal(0.0, 1.0, (k, d, d))
    covs = a @ a.transpose(0, 2, 1) / d + 0.2 * np.eye(d)
    return weights / weights.sum(), means, covs


def _reference_velocity(
    x: np.ndarray, sigma: float, weights: np.ndarray, means: np.ndarray, covs: np.ndarray
) -> np.ndarray:
    """E[n - x0 | x] by linear-Gaussian conditioning per component, scipy responsibilities (numpy only)."""
    d = x.shape[1]
    c = 1.0 - sigma
    log_r, v_k = [], []
    for w, mu, cov in zip(weights, means, covs, strict=True):
        s_k = c * c * cov + sigma * sigma * np.eye(d)  # Cov(x | k)
        cross = sigma * np.eye(d) - c * cov  # Cov(n - x0, x | k)
        log_r.append(np.log(w) + multivariate_normal(mean=c * mu, cov=s_k).logpdf(x))
        v_k.append(-mu + np.linalg.solve(s_k, (x - c * mu).T).T @ cross.T)
    log_r = np.stack(log_r, axis=1).reshape(x.shape[0], -1)
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return np.einsum("bk,kbd->bd", r, np.stack(v_k))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_single_gaussian_velocity_matches_linear_gaussian_conditioning(sigma: float) -> None:
    weights, means, covs = _random_mixture(0, 1, 3)
    model = FlowGaussianMixtureModel(weights, means, covs, dtype=torch.float64)
    x = np.random.default_rng(1).normal(0.0, 2.0, (16, 3))
    ref = _reference_velocity(x, sigma, weights, means, covs)
    got = model.velocity(torch.from_numpy(x), sigma=sigma).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)
    # The denoiser (timestep t = 1000 sigma, a float) gives the same velocity in both branches.
    target = model.prepare_zsampling(["0"] * 16, None, None, None)
    pair = target.denoiser(torch.from_numpy(x), 1000.0 * sigma, BOTH)
    np.testing.assert_allclose(pair.cond.numpy(), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(pair.uncond.numpy(), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("prompt", ["", "0", "0,2"])
def test_mixture_velocity_matches_independent_reference(sigma: float, prompt: str) -> None:
    weights, means, covs = _random_mixture(3, 3, 2)
    model = FlowGaussianMixtureModel(weights, means, covs, dtype=torch.float64)
    chosen = [0, 1, 2] if prompt == "" else [int(c) for c in prompt.split(",")]
    w = weights[chosen] / weights[chosen].sum()
    x = np.random.default_rng(4).normal(0.0, 2.0, (32, 2))
    ref = _reference_velocity(x, sigma, w, means[chosen], covs[chosen])
    got = model.velocity(torch.from_numpy(x), sigma=sigma, components=prompt).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)
    if sigma == 1.0:  # pure noise: E[x0 | x] is the prior mean, E[n | x] = x
        np.testing.assert_allclose(got, x - w @ means[chosen], rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 0.9])
def test_velocity_is_tweedie_of_autograd_score(sigma: float) -> None:
    """v = -(x + sigma grad log p) / (1 - sigma), with grad log p by autograd of log_prob."""
    weights, means, covs = _random_mixture(5, 4, 3)
    model = FlowGaussianMixtureModel(weights, means, covs, dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_prob(x, sigma=sigma).sum(), x)
    expected = -(x.detach() + sigma * grad) / (1.0 - sigma)
    torch.testing.assert_close(model.velocity(x.detach(), sigma=sigma), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.eps(x.detach(), sigma=sigma), -sigma * grad, rtol=0, atol=1e-12)


def test_euler_loop_turns_noise_into_the_data_distribution() -> None:
    """A plain Euler loop over the scheduler's sigmas reproduces a Gaussian's mean and covariance."""
    mean = np.array([1.0, -0.5])
    cov = np.array([[0.5, 0.2], [0.2, 1.5]])
    model = FlowGaussianMixtureModel([1.0], mean[None], cov[None], dtype=torch.float64)
    target = model.prepare_zsampling([""] * 20000, None, None, None)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(target.scheduler.config)
    scheduler.set_timesteps(200)
    sigmas = scheduler.sigmas.double().tolist()
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 201
    x = torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps.tolist()):
        v = target.denoiser(x, float(t), Branches(uncond=False, cond=True)).cond
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    assert target.denoiser.network_rows == 200 * 20000
    out = x.numpy()
    # Monte-Carlo standard errors are about 0.005 (mean) and 0.01 (covariance).
    np.testing.assert_allclose(out.mean(axis=0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(out, rowvar=False), cov, atol=0.05)
    # The same loop from the model's own moments: the endpoint is the data, the start is N(0, I).
    m1, c1 = model.moments(sigma=1.0)
    torch.testing.assert_close(m1, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(c1, torch.eye(2, dtype=torch.float64))


def test_denoiser_follows_the_scheduler_timestep_convention() -> None:
    model = FlowGaussianMixtureModel.default(dtype=torch.float64, scheduler={"shift": 3.0})
    assert model.scheduler.config.shift == 3.0
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(7)
    target = model.prepare_zsampling(["0", "1"], ["2", ""], None, None)
    x = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t, s in zip(scheduler.timesteps.tolist(), scheduler.sigmas.tolist(), strict=False):
        pair = target.denoiser(x, float(t), BOTH)
        # timesteps and sigmas are float32 in diffusers: t / 1000 and sigma agree to float32 precision.
        torch.testing.assert_close(pair.cond[0], model.velocity(x[:1], sigma=s, components="0")[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(pair.uncond[0], model.velocity(x[:1], sigma=s, components="2")[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(pair.uncond[1], model.velocity(x[1:], sigma=s)[0], rtol=0, atol=1e-5)


def test_only_requested_branches_and_rows_counted() -> None:
    model = FlowGaussianMixtureModel.default()
    target = model.prepare_zsampling(["0", "1", "2"], None, None, None)
    x = torch.randn(3, 2)
    only_cond = target.denoiser(x, 500.0, Branches(uncond=False, cond=True))
    assert only_cond.uncond is None and only_cond.cond.dtype == torch.float32 and only_cond.cond.shape == (3, 2)
    assert target.denoiser.network_rows == 3
    target.denoiser(x, 500.0, BOTH)
    assert target.denoiser.network_rows == 9
    assert isinstance(target.scheduler, FlowMatchEulerDiscreteScheduler)
    assert target.latent_shape == (2,) and target.batch_size == 3
    # Same prompts as the DDIM mixture: a velocity, not an eps, for the same selection.
    ddim = GaussianMixtureModel.default()
    assert model.components("components 0+2") == ddim.components("components 0+2") == (0, 2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="use_dynamic_shifting=False"):
        FlowGaussianMixtureModel.default(scheduler={"use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="stochastic_sampling=False"):
        FlowGaussianMixtureModel.default(scheduler={"stochastic_sampling": True})
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        FlowGaussianMixtureModel.default(scheduler=DDIMScheduler())
    model = FlowGaussianMixtureModel.default()
    target = model.prepare_zsampling(["0"], None, None, None)
    with pytest.raises(ValueError, match=r"t must be a timestep in \[0, 1000\]"):
        target.denoiser(torch.zeros(1, 2), 1000.5, BOTH)
    with pytest.raises(ValueError, match=r"sigma must be in \[0, 1\]"):
        model.velocity(torch.zeros(1, 2), sigma=1.5)
    with pytest.raises(ValueError, match="no alpha_bar"):
        model.alpha_bar(10)
    with pytest.raises(ValueError, match="valid prompts"):
        model.prepare_zsampling(["7"], None, None, None)
