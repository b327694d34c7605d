"""A Gaussian-mixture "model" with exact scores, for theory checks.

Why: every claim the toolkit makes about Z-Sampling (the semantic gain of a
reflection splits into the guidance-gap term plus an inversion residual that
vanishes with the step size; a larger window lambda or gap g1 - g2 injects more
prompt information) can be checked exactly on a model whose noise prediction
is known in closed form, with no training error in the way.

What: data x0 in R^d follow a mixture ``sum_k pi_k N(mu_k, Sigma_k)``. Under
the discrete variance-preserving schedule of a diffusers ``DDIMScheduler``
(``x_t = sqrt(ab[t]) x0 + sqrt(1 - ab[t]) n``, ``n ~ N(0, I)``) the noised
marginal is again a mixture,

    p_t(x) = sum_k pi_k N(x; sqrt(a) mu_k, a Sigma_k + (1 - a) I),  a = ab[t],

so the ideal noise prediction ``eps(x, t) = E[n | x_t = x]`` is exact:

    eps(x, t) = -sqrt(1 - a) grad_x log p_t(x)
              = sqrt(1 - a) sum_k r_k(x) S_k^{-1} (x - sqrt(a) mu_k),

with ``S_k = a Sigma_k + (1 - a) I`` and responsibilities ``r_k`` (a softmax
of ``log pi_k + log N_k``, i.e. a logsumexp, in float64).

Prompts: a prompt names a component ("0", "component 0", or a name given at
construction) or a set of them ("0,2", "0+2", "components 0, 2"); the
conditional eps_c is the eps of the mixture restricted to those components
with renormalised weights. The empty prompt "" (and a missing negative
prompt) is the whole mixture, so eps_u is the unconditional model; a negative
prompt naming components makes eps_u the restricted mixture of those. CFG on
this model is the paper's ``eps_u + g (eps_c - eps_u)`` (diffusers' g; the
paper's w = g - 1), exactly.

:class:`GaussianMixtureModel` is pipeline-like: ``zsampling.sample(model,
"0", output_type="pt", ...)`` works unchanged. Its samples are points, so
decode to "pt", "np" or "latent" ("pil" is refused).

Flow matching: :class:`FlowGaussianMixtureModel` is the same mixture under the
rectified-flow interpolant of SD3 / Flux (``x_sigma = (1 - sigma) x0 + sigma
n``, sigma in [0, 1]), whose marginal is

    p_sigma(x) = sum_k pi_k N(x; (1 - sigma) mu_k, S_k),
    S_k = (1 - sigma)^2 Sigma_k + sigma^2 I.

Its denoiser returns the exact velocity ``v(x, sigma) = E[n - x0 | x_sigma =
x]`` (the flow model's native output). By linear-Gaussian conditioning inside
component k (``Cov(n - x0, x | k) = sigma I - (1 - sigma) Sigma_k``),

    v(x, sigma) = sum_k r_k(x) [(sigma I - (1 - sigma) Sigma_k) S_k^{-1}
                                (x - (1 - sigma) mu_k) - mu_k],

which equals ``-(x + sigma grad log p_sigma(x)) / (1 - sigma)`` for sigma < 1
(Tweedie: ``E[n | x] = -sigma grad log p``, ``E[x0 | x] = (x + sigma^2 grad
log p) / (1 - sigma)``) and stays finite at sigma = 1, where S_k = I, r_k =
pi_k and ``v = x - sum_k pi_k mu_k``. The denoiser takes the scheduler's
timestep ``t = 1000 sigma`` (a float, SD3's convention); the scheduler is a
``FlowMatchEulerDiscreteScheduler`` (shift 1.0 by default).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from zsampling.denoisers.base import Branches, EpsPair
from zsampling.schedule import DDIMSchedule

Components = int | str | Sequence[int] | None
"""A component selection: an index, a prompt string ("0,2"), a sequence of
indices, or None / "" for the whole mixture."""

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any] | float

DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
"""The schedule of SD 1.x-style DDPM training (1000 steps, linear betas
1e-4..0.02) with diffusers' SD DDIM settings ("leading" spacing, offset 1,
final alpha ab[0]) and clipping off, as Z-Sampling's inversion needs."""

DEFAULT_FLOW_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "stochastic_sampling": False,
}
"""The flow model's default ``FlowMatchEulerDiscreteScheduler``: uniform sigmas
(shift 1.0; pass e.g. ``{"shift": 3.0}`` for SD3's), no dynamic shifting, and
deterministic Euler steps."""

_LOG_2PI = math.log(2.0 * math.pi)
_CACHE_SIZE = 4096
_PREFIX = re.compile(r"^components?\s+", re.IGNORECASE)
_SEPARATOR = re.compile(r"\s*[,+]\s*")


@dataclass(frozen=True)
class _Noised:
    """The mixture's components at one noise level of ``x = c x0 + s n``:
    means c mu_k, S_k = c^2 Sigma_k + s^2 I (DDIM: c^2 = a, s^2 = 1 - a)."""

    alpha_bar: float  # c^2 (DDIM's a; (1 - sigma)^2 for flow matching)
    means: torch.Tensor  # (K, d): c mu_k
    precisions: torch.Tensor  # (K, d, d): S_k^{-1}
    log_norm: torch.Tensor  # (K,): -0.5 (log det S_k + d log 2 pi)


class GaussianMixtureModel:
    """A Gaussian mixture in R^d with exact eps under a DDIM schedule.

    Args:
        weights: pi_k, shape (K,); positive, normalised here.
        means: mu_k, shape (K, d).
        covariances: Sigma_k as a scalar (one isotropic variance for all
            components), shape (K,) (isotropic per component), (K, d)
            (diagonal) or (K, d, d) (full, symmetric positive definite).
        scheduler: a ``DDIMScheduler`` (clip_sample=False, epsilon
            prediction), or a mapping of config overrides applied to
            :data:`DEFAULT_SCHEDULER_CONFIG`, or None for that default.
        component_names: optional names usable in prompts besides indices
            (e.g. ``("left", "right")``); names may not be integers.
        dtype: dtype of latents and decoded points (computation is float64).
        device: device of latents and of the model's tensors.

    Attributes:
        scheduler, latent_shape = (d,), dim = d, num_components = K, and the
        float64 parameters ``weights``, ``means``, ``covariances`` (K, d, d).
    """

    def __init__(
        self,
        weights: ArrayLike,
        means: ArrayLike,
        covariances: ArrayLike,
        *,
        scheduler: DDIMScheduler | Mapping[str, Any] | None = None,
        component_names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.dtype = dtype
        f64 = {"dtype": torch.float64, "device": self.device}
        means_t = torch.as_tensor(means, **f64)
        if means_t.ndim != 2 or means_t.shape[0] < 1 or means_t.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means_t.shape)}")
        k, d = means_t.shape
        weights_t = torch.as_tensor(weights, **f64)
        if weights_t.shape != (k,):
            raise ValueError(f"weights must have shape (K,) = ({k},) to match means, got {tuple(weights_t.shape)}")
        if not bool(torch.isfinite(weights_t).all()) or not bool((weights_t > 0).all()):
            raise ValueError(f"weights must be finite and > 0, got {weights_t.tolist()}")
        if not bool(torch.isfinite(means_t).all()):
            raise ValueError("means must be finite")
        self.weights = weights_t / weights_t.sum()
        self.means = means_t
        self.covariances = _full_covariances(torch.as_tensor(covariances, **f64), k, d)
        self._chol = torch.linalg.cholesky(self.covariances)
        self.dim = int(d)
        self.num_components = int(k)
        self.latent_shape: tuple[int, ...] = (int(d),)
        self.component_names = _check_names(component_names, k)
        self.scheduler = _make_scheduler(scheduler)
        self._alphas = self.scheduler.alphas_cumprod.to(torch.float64)
        self._cache: dict[float | tuple[str, float], _Noised] = {}
        self._selections: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def default(
        cls,
        d: int = 2,
        num_components: int = 3,
        *,
        radius: float = 1.2,
        std: float = 0.8,
        weights: ArrayLike | None = None,
        scheduler: DDIMScheduler | Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> GaussianMixtureModel:
        """Equal-weight isotropic components with means on a circle.

        The means form a regular polygon of ``radius`` in the first two
        coordinates (on a line in [-radius, radius] when d = 1), every other
        coordinate 0, each component ``N(mu_k, std^2 I)``. The defaults
        (radius / std = 1.5, K = 3: neighbouring means 2.6 std apart) make the
        components distinct but overlapping: a draw from component 0 has mean
        clean posterior P(0 | x0) of about 0.77 (any d), so guidance and
        Z-Sampling's reflections visibly move it, while the data stay at
        roughly unit scale like the latents the schedule was designed for.
        """
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"num_components must be an integer >= 1, got {num_components!r}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std must be a finite number > 0, got {std!r}")
        means = torch.zeros(num_components, d, dtype=torch.float64)
        if d == 1:
            means[:, 0] = torch.linspace(-radius, radius, num_components, dtype=torch.float64)
            if num_components == 1:
                means.zero_()
        else:
            angles = 2.0 * math.pi * torch.arange(num_components, dtype=torch.float64) / num_components
            means[:, 0] = radius * torch.cos(angles)
            means[:, 1] = radius * torch.sin(angles)
        if weights is None:
            weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
        variances = torch.full((num_components,), float(std) ** 2, dtype=torch.float64)
        return cls(weights, means, variances, scheduler=scheduler, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"GaussianMixtureModel(d={self.dim}, K={self.num_components}, dtype={self.dtype})"

    # ------------------------------------------------------------------ prompts

    def components(self, selection: Components) -> tuple[int, ...]:
        """Resolve a component selection to sorted indices.

        ``None`` and ``""`` mean the whole mixture; an int is one index; a
        string is a prompt ("0", "component 0", "0,2", "0+2", names); a
        sequence lists indices.

        Raises:
            ValueError: naming the valid prompts, for anything else.
        """
        if selection is None:
            return tuple(range(self.num_components))
        if isinstance(selection, str):
            if selection not in self._selections:
                self._selections[selection] = self._parse(selection)
            return self._selections[selection]
        if isinstance(selection, (bool, np.bool_)):
            raise ValueError(f"component selection must be an index, a prompt or indices, got {selection!r}")
        if isinstance(selection, (int, np.integer)):
            return (self._index(int(selection), selection),)
        try:
            items = list(selection)
        except TypeError:
            raise ValueError(
                f"component selection must be an index, a prompt or indices, got {selection!r}"
            ) from None
        if not items:
            raise ValueError("component selection must not be an empty sequence (use None for the whole mixture)")
        indices = set()
        for item in items:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
                raise ValueError(f"component indices must be integers, got {item!r} in {selection!r}")
            indices.add(self._index(int(item), selection))
        return tuple(sorted(indices))

    def valid_prompts(self) -> str:
        """A human-readable description of the prompts this model accepts."""
        last = self.num_components - 1
        text = (
            f"'' (the whole mixture), a component index 0..{last} ('0' or 'component 0'), or a set of "
            f"indices joined by ',' or '+' ('0,{min(2, last)}', 'components 0+{min(2, last)}')"
        )
        if self.component_names:
            text += f"; component names: {', '.join(repr(n) for n in self.component_names)}"
        return text

    def _parse(self, prompt: str) -> tuple[int, ...]:
        body = prompt.strip()
        if not body:
            return tuple(range(self.num_components))
        named = self._by_name(body)
        if named is not None:
            return (named,)
        body = _PREFIX.sub("", body)
        indices = set()
        for token in _SEPARATOR.split(body):
            named = self._by_name(token)
            if named is not None:
                indices.add(named)
                continue
            if not re.fullmatch(r"\d+", token) or int(token) >= self.num_components:
                raise ValueError(f"unknown prompt {prompt!r} for a {self.num_components}-component "
                                 f"GaussianMixtureModel; valid prompts: {self.valid_prompts()}")
            indices.add(int(token))
        return tuple(sorted(indices))

    def _by_name(self, token: str) -> int | None:
        token = token.strip().lower()
        for index, name in enumerate(self.component_names):
            if name.lower() == token:
                return index
        return None

    def _index(self, index: int, selection: object) -> int:
        if not 0 <= index < self.num_components:
            raise ValueError(
                f"component index must be in 0..{self.num_components - 1}, got {index} in {selection!r}"
            )
        return index

    def _log_weights(self, selection: Components) -> torch.Tensor:
        """log pi_k renormalised over the selection; -inf outside it. (K,)"""
        chosen = list(self.components(selection))
        log_w = torch.full((self.num_components,), -math.inf, dtype=torch.float64, device=self.device)
        log_w[chosen] = torch.log(self.weights[chosen] / self.weights[chosen].sum())
        return log_w

    # ------------------------------------------------------------------ exact quantities

    def alpha_bar(self, t: int | None = None, *, alpha_bar: float | None = None) -> float:
        """a = ab[t] for a training timestep t; ``alpha_bar`` directly; 1.0 (clean data) when both are None."""
        if t is not None and alpha_bar is not None:
            raise ValueError("give the noise level as t or as alpha_bar, not both")
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < len(self._alphas):
                raise ValueError(f"t must be an integer timestep in 0..{len(self._alphas) - 1}, got {t!r}")
            return float(self._alphas[int(t)])
        if alpha_bar is None:
            return 1.0
        if isinstance(alpha_bar, bool) or not isinstance(alpha_bar, numbers.Real) or not 0.0 < alpha_bar <= 1.0:
            raise ValueError(f"alpha_bar must be in (0, 1], got {alpha_bar!r}")
        return float(alpha_bar)

    def log_prob(self, x: torch.Tensor, t: int | None = None, components: Components = None, *,
                 alpha_bar: float | None = None) -> torch.Tensor:
        """log p_t(x) of the (restricted) noised mixture, float64, shape (B,). t = None: the clean data."""
        return self._log_prob_at(x, self._noised(self.alpha_bar(t, alpha_bar=alpha_bar)), components)

    def score(self, x: torch.Tensor, t: int | None = None, components: Components = None, *,
              alpha_bar: float | None = None) -> torch.Tensor:
        """grad_x log p_t(x) in closed form, float64, shape (B, d)."""
        return self._score_at(x, self._noised(self.alpha_bar(t, alpha_bar=alpha_bar)), components)

    def eps(self, x: torch.Tensor, t: int, components: Components = None) -> torch.Tensor:
        """The exact noise prediction ``-sqrt(1 - ab[t]) grad log p_t(x)`` in x's dtype, shape (B, d)."""
        a = self.alpha_bar(t)
        return (-math.sqrt(1.0 - a) * self.score(x, alpha_bar=a, components=components)).to(x.dtype)

    def posterior(self, x0_points: torch.Tensor, components: Components) -> torch.Tensor:
        """P(component in ``components`` | x0) under the clean mixture (a = 1).

        The alignment metric of theory checks: the probability that a point
        came from the prompted component(s), with the full mixture's weights
        as prior. Float64, shape (N,).
        """
        noised = self._noised(1.0)
        log_n, _ = self._component_terms(self._as_points(x0_points), noised)
        joint = log_n + torch.log(self.weights)
        chosen = list(self.components(components))
        return torch.exp(torch.logsumexp(joint[:, chosen], dim=1) - torch.logsumexp(joint, dim=1))

    def moments(self, components: Components = None, t: int | None = None, *,
                alpha_bar: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (d,) and covariance (d, d) of the (restricted) mixture at noise level t, float64.

        ``mean = sqrt(a) sum_k w_k mu_k``, ``cov = sum_k w_k (S_k + m_k m_k^T) - mean mean^T``
        with ``m_k = sqrt(a) mu_k``, ``S_k = a Sigma_k + (1 - a) I``.
        """
        a = self.alpha_bar(t, alpha_bar=alpha_bar)
        return self._moments_at(components, math.sqrt(a), a, 1.0 - a)

    def sample_data(self, n: int, component: Components = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n clean points x0 from the mixture (restricted to ``component``), shape (n, d), model dtype.

        Draws on the CPU in float64 (so a CPU ``generator`` works whatever
        the model's device), then moves to the model's device and dtype.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        w = torch.exp(self._log_weights(component)).cpu()
        labels = torch.multinomial(w, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=int)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        chol, means = self._chol.cpu(), self.means.cpu()
        x = means[labels] + torch.einsum("nij,nj->ni", chol[labels], z)
        return x.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ pipeline protocol

    def prepare_zsampling(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        height: int | None,
        width: int | None,
    ) -> GaussianMixtureTarget:
        """Encode prompts (component selections) into a :class:`GaussianMixtureTarget`.

        Raises:
            ValueError: if height or width is given (points have no size), or
                a prompt names no valid component set.
        """
        if height is not None or width is not None:
            raise ValueError(
                f"height and width must be None for a GaussianMixtureModel (its samples are points in "
                f"R^{self.dim}, latent_shape={self.latent_shape}), got height={height!r}, width={width!r}"
            )
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        if negative_prompts is None:
            negative_prompts = [""] * len(prompts)
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"negative_prompts must have {len(prompts)} entries, got {len(negative_prompts)}")
        cond = self._stack_log_weights(prompts)
        uncond = self._stack_log_weights(["" if p is None else p for p in negative_prompts])
        return GaussianMixtureTarget(
            model=self,
            denoiser=self._make_denoiser(uncond, cond),
            scheduler=self.scheduler,
            batch_size=len(prompts),
            latent_shape=self.latent_shape,
            dtype=self.dtype,
            device=self.device,
        )

    def _make_denoiser(self, uncond: torch.Tensor, cond: torch.Tensor) -> GaussianMixtureDenoiser:
        """The exact-eps denoiser for encoded (log-weight) prompt rows."""
        return GaussianMixtureDenoiser(self, uncond, cond)

    def _stack_log_weights(self, prompts: Sequence[str]) -> torch.Tensor:
        rows: dict[str, torch.Tensor] = {}
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise ValueError(f"prompts must be strings, got {prompt!r}")
            if prompt not in rows:
                rows[prompt] = self._log_weights(prompt)
        return torch.stack([rows[p] for p in prompts])

    # ------------------------------------------------------------------ internals

    def _as_points(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"points must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=torch.float64)

    def _noised(self, a: float) -> _Noised:
        """DDIM noise level a = ab[t]: means sqrt(a) mu_k, S_k = a Sigma_k + (1 - a) I."""
        return self._level(a, math.sqrt(a), a, 1.0 - a)

    def _level(self, key: float | tuple[str, float], data_scale: float, data_var: float,
               noise_var: float) -> _Noised:
        """Cached components of ``x = c x0 + s n``: means c mu_k, S_k = c^2 Sigma_k + s^2 I
        (``data_scale`` = c, ``data_var`` = c^2, ``noise_var`` = s^2, passed separately so
        that each family's expressions are exact)."""
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:  # only arbitrary noise-level queries can grow it this far
                self._cache.clear()
            eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
            s = data_var * self.covariances + noise_var * eye
            chol = torch.linalg.cholesky(s)
            precisions = torch.cholesky_inverse(chol)
            log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            self._cache[key] = _Noised(
                alpha_bar=data_var,
                means=data_scale * self.means,
                precisions=0.5 * (precisions + precisions.transpose(-1, -2)),
                log_norm=-0.5 * (log_det + self.dim * _LOG_2PI),
            )
        return self._cache[key]

    def _log_prob_at(self, x: torch.Tensor, noised: _Noised, components: Components) -> torch.Tensor:
        """log p(x) of the (restricted) mixture at a resolved noise level (B,): the one
        computation behind both families' ``log_prob``, which differ only in how they
        name the level (DDIM's t / alpha_bar, flow matching's t / sigma)."""
        log_n, _ = self._component_terms(self._as_points(x), noised)
        return torch.logsumexp(log_n + self._log_weights(components), dim=1)

    def _score_at(self, x: torch.Tensor, noised: _Noised, components: Components) -> torch.Tensor:
        """grad_x log p(x) of the (restricted) mixture at a resolved noise level (B, d),
        shared by both families' ``score``."""
        log_n, whitened = self._component_terms(self._as_points(x), noised)
        return -_mix(log_n, whitened, self._log_weights(components)[None])

    def _moments_at(self, components: Components, data_scale: float, data_var: float,
                    noise_var: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the (restricted) mixture of ``x = c x0 + s n``, shared by both
        families' ``moments``: ``mean = sum_k w_k m_k``, ``cov = sum_k w_k (S_k + m_k m_k^T) -
        mean mean^T`` with ``m_k = c mu_k``, ``S_k = c^2 Sigma_k + s^2 I`` (arguments as for
        :meth:`_level`)."""
        w = torch.exp(self._log_weights(components))
        m = data_scale * self.means
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        cov = data_var * self.covariances + noise_var * eye
        mean = w @ m
        second = torch.einsum("k,kij->ij", w, cov + m[:, :, None] * m[:, None, :])
        return mean, second - torch.outer(mean, mean)

    @staticmethod
    def _component_terms(x: torch.Tensor, noised: _Noised) -> tuple[torch.Tensor, torch.Tensor]:
        """log N_k(x) (B, K) and S_k^{-1}(x - m_k) (B, K, d), shared by every branch."""
        diff = x[None] - noised.means[:, None]  # (K, B, d)
        whitened = torch.bmm(diff, noised.precisions)  # S_k^{-1} is symmetric: row form of S_k^{-1} diff
        log_n = noised.log_norm[:, None] - 0.5 * (diff * whitened).sum(-1)
        return log_n.T, whitened.transpose(0, 1)


class _MixtureDenoiser:
    """The :class:`~zsampling.denoisers.base.Denoiser` plumbing both exact mixture denoisers share.

    Holds the encoded (log-weight) prompt rows, checks each call against the
    encoded batch, computes only the requested branches and counts
    ``network_rows`` as a network would (batch x branches per call), so NFE
    accounting on these models matches a real pipeline's. The families differ
    only in what a branch is (eps or velocity): :meth:`_predictor`.
    """

    model: GaussianMixtureModel

    def __init__(self, model: GaussianMixtureModel, uncond_log_weights: torch.Tensor,
                 cond_log_weights: torch.Tensor) -> None:
        self.model = model
        self._log_weights = {"uncond": uncond_log_weights, "cond": cond_log_weights}
        self.network_rows = 0

    def __call__(self, x: torch.Tensor, t: float, branches: Branches) -> EpsPair:
        batch = _check_call(x, branches, self._log_weights["cond"].shape[0], self.model.dim)
        predict = self._predictor(x, t)

        def branch(name: str) -> torch.Tensor:
            return predict(self._log_weights[name]).to(device=x.device, dtype=x.dtype)

        self.network_rows += batch * branches.count
        return EpsPair(
            uncond=branch("uncond") if branches.uncond else None,
            cond=branch("cond") if branches.cond else None,
        )

    def _predictor(self, x: torch.Tensor, t: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """The float64 prediction at (x, t) as a function of one branch's log-weight rows (B, K)."""
        raise NotImplementedError


class GaussianMixtureDenoiser(_MixtureDenoiser):
    """The exact eps_u / eps_c of a :class:`GaussianMixtureModel` for encoded prompts.

    Implements the :class:`~zsampling.denoisers.base.Denoiser` protocol: ``t``
    is an integer training timestep; only the requested branches are computed
    and ``network_rows`` counts batch x branches per call.
    """

    def _predictor(self, x: torch.Tensor, t: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """eps = sqrt(1 - a) sum_k r_k S_k^{-1}(x - m_k) at a = ab[t]."""
        a = self.model.alpha_bar(int(t))
        log_n, whitened = self.model._component_terms(self.model._as_points(x), self.model._noised(a))
        scale = math.sqrt(1.0 - a)
        return lambda log_weights: scale * _mix(log_n, whitened, log_weights)


@dataclass
class GaussianMixtureTarget:
    """A :class:`GaussianMixtureModel` with its prompts encoded (a ``SamplingTarget``)."""

    model: GaussianMixtureModel
    denoiser: GaussianMixtureDenoiser | FlowGaussianMixtureDenoiser
    scheduler: DDIMScheduler | FlowMatchEulerDiscreteScheduler
    batch_size: int
    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    output_types: tuple[str, ...] = ("pt", "np", "latent")  # points, not images: no "pil"

    def decode(self, latents: torch.Tensor, output_type: str) -> torch.Tensor | np.ndarray:
        """The sampled points: the tensor for "pt"/"latent", a numpy array for "np".

        The points are the final latents: for DDIM at the scheduler's final
        alpha (ab[0] = 0.9999 with the default set_alpha_to_one=False), as
        diffusers pipelines decode them; for flow matching at sigma = 0; no
        rescaling.
        """
        if output_type not in self.output_types:
            raise ValueError(f"output_type must be one of {self.output_types} for points, got {output_type!r}")
        return latents.detach().cpu().numpy() if output_type == "np" else latents


def _check_call(x: torch.Tensor, branches: Branches, batch: int, dim: int) -> int:
    """Refuse a call with no branch or points that are not the encoded batch; returns the batch size."""
    if branches.count == 0:
        raise ValueError("a denoiser call needs at least one branch")
    if x.ndim != 2 or x.shape[0] != batch:
        raise ValueError(f"x must have shape ({batch}, {dim}) (the encoded batch), got {tuple(x.shape)}")
    return batch


def _mix(log_n: torch.Tensor, whitened: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """sum_k r_k S_k^{-1}(x - m_k) with r = softmax(log w + log N) (logsumexp-stable)."""
    resp = torch.softmax(log_n + log_weights, dim=1)
    return (resp[:, :, None] * whitened).sum(1)


def _full_covariances(cov: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """Expand scalar / (K,) / (K, d) / (K, d, d) covariances to (K, d, d) and check them."""
    eye = torch.eye(d, dtype=torch.float64, device=cov.device)
    if cov.ndim == 0:
        full = cov * eye.expand(k, d, d)
    elif cov.shape == (k,):
        full = cov[:, None, None] * eye
    elif cov.shape == (k, d):
        full = torch.diag_embed(cov)
    elif cov.shape == (k, d, d):
        full = cov
        if not torch.allclose(full, full.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise ValueError("full covariances (K, d, d) must be symmetric")
    else:
        raise ValueError(
            f"covariances must be a scalar, shape (K,)=({k},), (K, d)=({k}, {d}) or (K, d, d)=({k}, {d}, {d}), "
            f"got {tuple(cov.shape)}"
        )
    if not bool(torch.isfinite(full).all()):
        raise ValueError("covariances must be finite")
    full = full.clone()
    if torch.linalg.cholesky_ex(full).info.any():
        raise ValueError("covariances must be positive definite (variances > 0)")
    return full


def _check_names(names: Sequence[str] | None, k: int) -> tuple[str, ...]:
    if names is None:
        return ()
    names = tuple(names)
    if len(names) != k:
        raise ValueError(f"component_names must have {k} entries (one per component), got {len(names)}")
    lowered = set()
    for name in names:
        if not isinstance(name, str) or not name.strip() or re.fullmatch(r"\s*\d+\s*", name) \
                or _SEPARATOR.search(name):
            raise ValueError(f"component names must be non-empty, non-numeric strings without ',' or '+', "
                             f"got {name!r}")
        if name.strip().lower() in lowered:
            raise ValueError(f"component names must be distinct (case-insensitive), got {names!r}")
        lowered.add(name.strip().lower())
    return tuple(n.strip() for n in names)


def _make_scheduler(scheduler: DDIMScheduler | Mapping[str, Any] | None) -> DDIMScheduler:
    if scheduler is None or isinstance(scheduler, Mapping):
        config = {**DEFAULT_SCHEDULER_CONFIG, **(scheduler or {})}
        scheduler = DDIMScheduler(**config)
    DDIMSchedule.from_scheduler(scheduler, 1)  # DDIM, no clipping: the same checks sample() runs
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(
            "GaussianMixtureModel returns eps, so its scheduler must have prediction_type='epsilon', "
            f"got {scheduler.config.prediction_type!r}"
        )
    return scheduler


class FlowGaussianMixtureModel(GaussianMixtureModel):
    """The Gaussian mixture under the rectified-flow interpolant, with exact velocities.

    ``x_sigma = (1 - sigma) x0 + sigma n`` (SD3 / Flux, diffusers'
    ``FlowMatchEulerDiscreteScheduler``); see the module docstring for the
    marginal and the closed-form velocity. Prompts, negative prompts, data
    sampling, ``posterior`` and decoding are those of
    :class:`GaussianMixtureModel`; the noise level is sigma in [0, 1] (given as
    ``sigma=`` or as the timestep ``t = num_train_timesteps * sigma``) instead
    of DDIM's alpha_bar. ``zsampling.sample`` drives it through the
    ``SamplingTarget`` of :meth:`prepare_zsampling`, whose denoiser returns
    velocities and whose initial latents are plain N(0, I).

    Args:
        weights, means, covariances, component_names, dtype, device: as for
            :class:`GaussianMixtureModel`.
        scheduler: a ``FlowMatchEulerDiscreteScheduler`` without dynamic
            shifting or stochastic sampling, or a mapping of config overrides
            applied to :data:`DEFAULT_FLOW_SCHEDULER_CONFIG` (e.g.
            ``{"shift": 3.0}``), or None for that default (shift 1.0).
    """

    def __init__(
        self,
        weights: ArrayLike,
        means: ArrayLike,
        covariances: ArrayLike,
        *,
        scheduler: FlowMatchEulerDiscreteScheduler | Mapping[str, Any] | None = None,
        component_names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        flow_scheduler = _make_flow_scheduler(scheduler)
        super().__init__(
            weights, means, covariances, scheduler=None, component_names=component_names, dtype=dtype, device=device
        )
        self.scheduler = flow_scheduler
        self._alphas = torch.empty(0, dtype=torch.float64)  # no alpha_bar table: noise levels are sigmas
        self.num_train_timesteps = int(flow_scheduler.config.num_train_timesteps)

    @classmethod
    def default(  # type: ignore[override]
        cls,
        d: int = 2,
        num_components: int = 3,
        *,
        radius: float = 1.2,
        std: float = 0.8,
        weights: ArrayLike | None = None,
        scheduler: FlowMatchEulerDiscreteScheduler | Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> FlowGaussianMixtureModel:
        """The mixture of :meth:`GaussianMixtureModel.default` under the flow interpolant (this override
        only narrows the scheduler and return types; the parent builds ``cls``)."""
        return super().default(d, num_components, radius=radius, std=std, weights=weights,  # type: ignore[return-value]
                               scheduler=scheduler, dtype=dtype, device=device)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"FlowGaussianMixtureModel(d={self.dim}, K={self.num_components}, dtype={self.dtype})"

    # ------------------------------------------------------------------ noise levels

    def alpha_bar(self, t: int | None = None, *, alpha_bar: float | None = None) -> float:
        """Refused: a flow model's noise level is sigma (see :meth:`sigma`)."""
        raise ValueError("FlowGaussianMixtureModel has no alpha_bar; give the noise level as sigma= or t = 1000 sigma")

    def sigma(self, t: float | None = None, *, sigma: float | None = None) -> float:
        """sigma = t / num_train_timesteps for a timestep t in [0, num_train_timesteps]; ``sigma``
        directly (in [0, 1]); 0.0 (clean data) when both are None."""
        if t is not None and sigma is not None:
            raise ValueError("give the noise level as t or as sigma, not both")
        if t is not None:
            top = self.num_train_timesteps
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= float(t) <= top:
                raise ValueError(f"t must be a timestep in [0, {self.num_train_timesteps}] (1000 sigma), got {t!r}")
            return float(t) / self.num_train_timesteps
        if sigma is None:
            return 0.0
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0.0 <= float(sigma) <= 1.0:
            raise ValueError(f"sigma must be in [0, 1], got {sigma!r}")
        return float(sigma)

    def _flow_noised(self, sigma: float) -> _Noised:
        """Components at sigma: means (1 - sigma) mu_k, S_k = (1 - sigma)^2 Sigma_k + sigma^2 I."""
        c = 1.0 - sigma
        return self._level(("flow", sigma), c, c * c, sigma * sigma)

    # ------------------------------------------------------------------ exact quantities

    def log_prob(self, x: torch.Tensor, t: float | None = None, components: Components = None, *,
                 sigma: float | None = None) -> torch.Tensor:
        """log p_sigma(x) of the (restricted) noised mixture, float64, shape (B,). No level: the clean data."""
        return self._log_prob_at(x, self._flow_noised(self.sigma(t, sigma=sigma)), components)

    def score(self, x: torch.Tensor, t: float | None = None, components: Components = None, *,
              sigma: float | None = None) -> torch.Tensor:
        """grad_x log p_sigma(x) in closed form, float64, shape (B, d)."""
        return self._score_at(x, self._flow_noised(self.sigma(t, sigma=sigma)), components)

    def eps(self, x: torch.Tensor, t: float | None = None, components: Components = None, *,
            sigma: float | None = None) -> torch.Tensor:
        """E[n | x_sigma = x] = -sigma grad log p_sigma(x), in x's dtype, shape (B, d)."""
        s = self.sigma(t, sigma=sigma)
        return (-s * self.score(x, sigma=s, components=components)).to(x.dtype)

    def velocity(self, x: torch.Tensor, t: float | None = None, components: Components = None, *,
                 sigma: float | None = None) -> torch.Tensor:
        """The exact velocity E[n - x0 | x_sigma = x] (finite at sigma = 1), in x's dtype, shape (B, d)."""
        s = self.sigma(t, sigma=sigma)
        points = self._as_points(x)
        log_n, whitened = self._component_terms(points, self._flow_noised(s))
        v = _mix(log_n, self._velocity_terms(whitened, s), self._log_weights(components)[None])
        return v.to(x.dtype)

    def _velocity_terms(self, whitened: torch.Tensor, sigma: float) -> torch.Tensor:
        """Per-component velocities (B, K, d): (sigma I - (1 - sigma) Sigma_k) S_k^{-1} d_k - mu_k."""
        cov_w = torch.einsum("kij,bkj->bki", self.covariances, whitened)
        return sigma * whitened - (1.0 - sigma) * cov_w - self.means[None]

    def moments(self, components: Components = None, t: float | None = None, *,  # type: ignore[override]
                sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (d,) and covariance (d, d) of the (restricted) mixture at sigma (clean data by default), float64."""
        s = self.sigma(t, sigma=sigma)
        return self._moments_at(components, 1.0 - s, (1.0 - s) ** 2, s * s)

    def _make_denoiser(self, uncond: torch.Tensor, cond: torch.Tensor) -> FlowGaussianMixtureDenoiser:
        """The exact-velocity denoiser for encoded (log-weight) prompt rows."""
        return FlowGaussianMixtureDenoiser(self, uncond, cond)


class FlowGaussianMixtureDenoiser(_MixtureDenoiser):
    """The exact velocities v_u / v_c of a :class:`FlowGaussianMixtureModel` for encoded prompts.

    The :class:`~zsampling.denoisers.base.Denoiser` protocol with the flow
    convention: ``t`` is the scheduler's timestep ``num_train_timesteps * sigma``
    (a float) and the ``EpsPair`` slots hold velocities ``v = E[n - x0 | x]``.
    Only the requested branches are computed; ``network_rows`` counts batch x
    branches per call.
    """

    model: FlowGaussianMixtureModel

    def _predictor(self, x: torch.Tensor, t: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """v = sum_k r_k v_k (:meth:`FlowGaussianMixtureModel._velocity_terms`) at sigma = t / T."""
        sigma = self.model.sigma(float(t))
        log_n, whitened = self.model._component_terms(self.model._as_points(x), self.model._flow_noised(sigma))
        terms = self.model._velocity_terms(whitened, sigma)
        return lambda log_weights: _mix(log_n, terms, log_weights)


def _make_flow_scheduler(
    scheduler: FlowMatchEulerDiscreteScheduler | Mapping[str, Any] | None,
) -> FlowMatchEulerDiscreteScheduler:
    if scheduler is None or isinstance(scheduler, Mapping):
        scheduler = FlowMatchEulerDiscreteScheduler(**{**DEFAULT_FLOW_SCHEDULER_CONFIG, **(scheduler or {})})
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(
            f"FlowGaussianMixtureModel needs a FlowMatchEulerDiscreteScheduler (or a config mapping), "
            f"got {type(scheduler).__name__}"
        )
    if scheduler.config.use_dynamic_shifting:
        raise ValueError("FlowGaussianMixtureModel's scheduler must have use_dynamic_shifting=False (points have no "
                         "image sequence length to compute mu from); set a fixed 'shift' instead")
    if scheduler.config.stochastic_sampling:
        raise ValueError("FlowGaussianMixtureModel's scheduler must have stochastic_sampling=False (deterministic "
                         "Euler moves)")
    return scheduler
