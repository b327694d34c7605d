"""A closed-form Gaussian world for core tests, independent of the package's models.

Clean data x0 ~ N(mu, s^2 I) with mu = 0 unconditionally and mu = ``shift``
for the prompt. Under x_t = sqrt(a) x0 + sqrt(1-a) n the exact noise
prediction is eps(x, t) = sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from zsampling.denoisers.base import Branches, EpsPair


def sd_like_scheduler(**overrides: object) -> DDIMScheduler:
    config = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    config.update(overrides)
    return DDIMScheduler(**config)


class GaussianDenoiser:
    def __init__(self, alphas_cumprod: torch.Tensor, shift: float = 1.0, scale: float = 0.5,
                 poison_at: int | None = None) -> None:
        self.alphas = alphas_cumprod.to(torch.float64)
        self.shift = shift
        self.scale = scale
        self.poison_at = poison_at
        self.network_rows = 0
        self.calls: list[tuple[int, Branches]] = []

    def eps(self, x: torch.Tensor, t: int, mean: float) -> torch.Tensor:
        a = float(self.alphas[t])
        out = (1 - a) ** 0.5 * (x - a**0.5 * mean) / (a * self.scale**2 + 1 - a)
        if self.poison_at is not None and len(self.calls) >= self.poison_at:
            out = out * float("inf")
        return out

    def __call__(self, x: torch.Tensor, t: int, branches: Branches) -> EpsPair:
        self.calls.append((t, branches))
        self.network_rows += x.shape[0] * branches.count
        return EpsPair(
            uncond=self.eps(x, t, 0.0) if branches.uncond else None,
            cond=self.eps(x, t, self.shift) if branches.cond else None,
        )


@dataclass
class GaussianTarget:
    denoiser: GaussianDenoiser
    scheduler: DDIMScheduler
    batch_size: int
    latent_shape: tuple[int, ...] = (4, 3, 3)
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    output_types: tuple[str, ...] = ("pt", "latent")

    def decode(self, latents: torch.Tensor, output_type: str) -> torch.Tensor:
        return latents


class GaussianPipeline:
    """Pipeline-like object: ``zsampling.sample`` accepts it through prepare_zsampling."""

    def __init__(self, **denoiser_kwargs: object) -> None:
        self.scheduler = sd_like_scheduler()
        self.denoiser = GaussianDenoiser(self.scheduler.alphas_cumprod, **denoiser_kwargs)

    def prepare_zsampling(self, prompts, negative_prompts, height, width) -> GaussianTarget:
        return GaussianTarget(self.denoiser, self.scheduler, len(prompts))
