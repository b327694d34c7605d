"""The closed-form Gaussian world of the core tests, independent of the package's models.

Clean data x0 ~ N(mu, s^2 I) with mu = 0 unconditionally and mu = ``shift``
for the prompt (a number, or one mean latent per sample). Under
x_t = sqrt(a) x0 + sqrt(1-a) n the exact noise prediction is

    eps(x, t) = sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a),

so every identity of docs/design.md can be checked against values
recomputed in a test, with code independent of the sampler and recorder.
:class:`GaussianPipeline` is a pipeline-like object ``zsampling.sample``
accepts; with ``prompt_means=True`` each prompt gets its own mean latent
(a fixed random latent seeded by the prompt's CRC32).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from zsampling.denoisers.base import Branches, EpsPair


def sd_like_scheduler(**overrides: object) -> DDIMScheduler:
    config = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    config.update(overrides)
    return DDIMScheduler(**config)


class GaussianDenoiser:
    """eps_u / eps_c in closed form; counts rows and calls like a network.

    Args:
        alphas_cumprod: the scheduler's alphas.
        shift: the conditional mean mu_c: a number, or a tensor (B, ...) of
            one mean per sample.
        scale: s, the data's standard deviation around its mean.
        poison_at: from this many calls on, return inf (tests of the
            non-finite guard).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, shift: float | torch.Tensor = 1.0, scale: float = 0.5,
                 poison_at: int | None = None) -> None:
        self.alphas = alphas_cumprod.to(torch.float64)
        self.shift = shift
        self.scale = scale
        self.poison_at = poison_at
        self.network_rows = 0
        self.calls: list[tuple[int, Branches]] = []

    def eps(self, x: torch.Tensor, t: int, mean: float | torch.Tensor) -> torch.Tensor:
        """The exact eps at timestep t for data of mean ``mean`` (0.0: unconditional)."""
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

    def guided(self, x: torch.Tensor, t: int, scale: float) -> torch.Tensor:
        """eps_g(x, t) = eps_u + g (eps_c - eps_u), computed without counting rows (test-side checks)."""
        uncond = self.eps(x, t, 0.0)
        return uncond + scale * (self.eps(x, t, self.shift) - uncond)


@dataclass
class GaussianTarget:
    """The sampling target ``prepare_zsampling`` returns; decodes to sigmoid images of the first 3 channels."""

    denoiser: GaussianDenoiser
    scheduler: DDIMScheduler
    batch_size: int
    latent_shape: tuple[int, ...] = (4, 3, 3)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    output_types: tuple[str, ...] = ("pt", "latent")
    decode_rows: int = 0

    def decode(self, latents: torch.Tensor, output_type: str) -> object:
        if output_type == "latent":
            return latents
        self.decode_rows += latents.shape[0]
        images = torch.sigmoid(latents[:, :3].float())
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


class GaussianPipeline:
    """Pipeline-like object: ``zsampling.sample`` accepts it through ``prepare_zsampling``.

    Args:
        latent_shape, dtype: of the latents.
        scheduler: default :func:`sd_like_scheduler`.
        prompt_means: each prompt's mean is its own random latent
            (:meth:`mean`); otherwise every prompt has mean ``shift``.
        output_types: what ``decode`` offers.
        **denoiser_kwargs: ``shift``, ``scale``, ``poison_at`` of :class:`GaussianDenoiser`.

    ``denoiser`` and ``target`` are the last call's (with fixed means the
    denoiser is shared by every call, so its counters add up).
    """

    def __init__(self, *, latent_shape: tuple[int, ...] = (4, 3, 3), dtype: torch.dtype = torch.float32,
                 scheduler: DDIMScheduler | None = None, prompt_means: bool = False,
                 output_types: tuple[str, ...] = ("pt", "latent"), **denoiser_kwargs: object) -> None:
        self.latent_shape, self.dtype, self.prompt_means, self.output_types = (
            latent_shape, dtype, prompt_means, output_types)
        self.scheduler = scheduler or sd_like_scheduler()
        self.denoiser_kwargs = denoiser_kwargs
        self.denoiser = GaussianDenoiser(self.scheduler.alphas_cumprod, **denoiser_kwargs)  # type: ignore[arg-type]
        self.target: GaussianTarget | None = None

    def mean(self, prompt: str) -> torch.Tensor:
        """A prompt's own mean latent (``prompt_means=True``)."""
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(self.latent_shape, generator=generator, dtype=torch.float64).to(self.dtype)

    def prepare_zsampling(self, prompts, negative_prompts, height, width) -> GaussianTarget:
        if self.prompt_means:
            means = torch.stack([self.mean(p) for p in prompts])
            self.denoiser = GaussianDenoiser(self.scheduler.alphas_cumprod, means,
                                             **self.denoiser_kwargs)  # type: ignore[arg-type]
        self.target = GaussianTarget(self.denoiser, self.scheduler, len(prompts), self.latent_shape, self.dtype,
                                     output_types=self.output_types)
        return self.target
