"""The denoiser protocol: the only thing the sampler knows about a model.

A denoiser maps a latent batch ``x`` at a training timestep ``t`` to the noise
predictions ``eps_u(x, t)`` (unconditional / negative prompt) and
``eps_c(x, t)`` (the prompt). It computes only the branches it is asked for,
in one batched network call, and counts the network rows it spent: a row is
one sample through the network, so classifier-free guidance on a batch of B
costs 2B rows and a branch-aware zag with g2 = 0 costs B.

Every adapter (diffusers pipelines, the analytic Gaussian mixture, the demo
model) returns epsilon-parameterised outputs; adapters of v- or
x0-predicting models convert before returning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from zsampling.legs import Condition


@dataclass(frozen=True)
class Branches:
    """Which classifier-free-guidance branches an operation needs."""

    uncond: bool
    cond: bool

    @staticmethod
    def for_guidance(scale: float) -> Branches:
        """Branches needed for ``eps_u + g (eps_c - eps_u)``: g = 0 needs only
        eps_u, g = 1 only eps_c, any other g both."""
        return Branches(uncond=scale != 1.0, cond=scale != 0.0)

    @property
    def count(self) -> int:
        return int(self.uncond) + int(self.cond)


BOTH = Branches(uncond=True, cond=True)
COND = Branches(uncond=False, cond=True)


@dataclass(frozen=True)
class EpsPair:
    """Network outputs of one evaluation per CFG branch; a branch not asked for is None.

    The outputs are in the model family's parameterisation: eps for DDIM
    models (v- and x0-predictions converted by the adapters), the velocity v
    for flow-matching models. The name stays from the DDIM-only days.
    """

    uncond: torch.Tensor | None
    cond: torch.Tensor | None

    def guided(self, scale: float) -> torch.Tensor:
        """Classifier-free guidance ``eps_u + g (eps_c - eps_u)`` for any g."""
        if scale == 0.0:
            return _required(self.uncond, "uncond", scale)
        if scale == 1.0:
            return _required(self.cond, "cond", scale)
        uncond = _required(self.uncond, "uncond", scale)
        cond = _required(self.cond, "cond", scale)
        return uncond + scale * (cond - uncond)


def _required(eps: torch.Tensor | None, branch: str, scale: float) -> torch.Tensor:
    if eps is None:
        raise ValueError(f"guidance scale {scale} needs the {branch} branch, which was not computed")
    return eps


@runtime_checkable
class Denoiser(Protocol):
    """Returns eps_u and/or eps_c for a latent batch, counting network rows.

    Optional attributes the loop reads (with these defaults):
    ``guidance_mode = "cfg"`` ("embedded": one branch with a guidance
    embedding, passed in the condition; "none": one unguided branch),
    ``has_guidance_embeds = False`` and ``supports_mix = False`` (the
    prompt-embedding mix of :mod:`zsampling.legs`). A denoiser that supports
    neither is called with three arguments only, so the minimal protocol is
    ``__call__(x, t, branches)``.
    """

    network_rows: int

    def __call__(self, x: torch.Tensor, t: float, branches: Branches, condition: Condition = ...) -> EpsPair:
        """Evaluate the network on ``x`` (B, ...) at timestep ``t`` (the
        scheduler's convention) under ``condition`` (a leg's conditioning;
        omitted for the prompt as encoded)."""
        ...


@runtime_checkable
class SamplingTarget(Protocol):
    """A model with its prompts encoded: everything ``zsampling.sample`` needs.

    ``scheduler`` is a diffusers ``DDIMScheduler`` (alphas_cumprod, timestep
    spacing, final alpha) or ``FlowMatchEulerDiscreteScheduler`` (sigmas,
    shift) whose config defines the discrete schedule; a target may add
    ``set_timesteps_kwargs(T) -> dict`` (the pipeline's own ``set_timesteps``
    arguments, e.g. Flux's ``sigmas`` and ``mu``), ``draw_latents(generator)``
    (initial latents drawn as the pipeline does, e.g. Flux's packing) and
    ``default_guidance`` (the pipeline's default guidance scale);
    ``latent_shape`` is the shape of one sample's latent, ``batch_size`` the
    number of samples the prompts encode, ``output_types`` what ``decode``
    can produce (checked before sampling starts).
    """

    denoiser: Denoiser
    scheduler: object
    batch_size: int
    output_types: tuple[str, ...]
    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def decode(self, latents: torch.Tensor, output_type: str) -> object:
        """Turn final latents into ``output_type`` ("pil", "np", "pt" or "latent")."""
        ...
