"""``zsampling.sample``: Z-Sampling on a pipeline in one call.

Validates the settings, encodes the prompts once, draws the initial latents
the way diffusers does (same generator semantics), runs the loop and
decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

from zsampling.config import ZagEvalTimestep, ZagOperator, ZigzagConfig
from zsampling.denoisers.base import SamplingTarget
from zsampling.sampler import Recorder, zigzag_sample
from zsampling.schedule import DDIMSchedule

OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class SampleOutput:
    """Result of :func:`sample`.

    Attributes:
        images: decoded images in ``output_type`` (the latents for "latent").
        latents: final latents before decoding (B, ...).
        nfe: network rows spent per sample (standard CFG: 2T).
        network_rows: network rows spent for the whole batch.
        config: the validated settings of the run.
    """

    images: Any
    latents: torch.Tensor
    nfe: int
    network_rows: int
    config: ZigzagConfig


def sample(
    pipe: Any,
    prompt: str | list[str],
    *,
    negative_prompt: str | list[str] | None = None,
    latents: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.5,
    inversion_guidance_scale: float = 0.0,
    zigzag_steps: int | list[int] | None = None,
    rounds: int = 1,
    zag: ZagOperator = "official",
    zag_eval_timestep: ZagEvalTimestep = "next",
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    recorder: Recorder | None = None,
    branches: Literal["needed", "both"] = "needed",
    progress: bool = True,
) -> SampleOutput:
    """Sample with Z-Sampling (``zigzag_steps=0`` is standard DDIM sampling).

    ``pipe`` is a diffusers pipeline (SD 1.x/2.x, SDXL, PixArt) with a
    ``DDIMScheduler``, or any object with ``prepare_zsampling`` (the demo
    and analytic models). Guidance follows diffusers' convention
    ``eps_u + g (eps_c - eps_u)`` for every g (the paper's w is g - 1), but
    unlike diffusers CFG stays on for g <= 1. See :class:`ZigzagConfig` for
    the Z-Sampling settings; ``branches="both"`` disables the branch-aware
    saving (for benchmarks).
    """
    config = ZigzagConfig(
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        inversion_guidance_scale=inversion_guidance_scale,
        zigzag_steps=zigzag_steps,
        rounds=rounds,
        zag=zag,
        zag_eval_timestep=zag_eval_timestep,
    )
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    prompts = _as_list("prompt", prompt)
    negative_prompts = None if negative_prompt is None else _as_list("negative_prompt", negative_prompt)
    if negative_prompts is not None and len(negative_prompts) == 1 < len(prompts):
        negative_prompts = negative_prompts * len(prompts)
    if negative_prompts is not None and len(negative_prompts) != len(prompts):
        raise ValueError(
            f"negative_prompt must be one string or {len(prompts)} strings, got {len(negative_prompts)}"
        )
    if hasattr(pipe, "scheduler"):
        DDIMSchedule.from_scheduler(pipe.scheduler, num_inference_steps)  # refuse before encoding

    target = prepare(pipe, prompts, negative_prompts, height, width)
    if output_type not in target.output_types:
        raise ValueError(
            f"output_type must be one of {target.output_types} for {type(pipe).__name__}, got {output_type!r}"
        )
    schedule = DDIMSchedule.from_scheduler(target.scheduler, num_inference_steps)
    x = initial_latents(target, latents, generator)
    rows_before = target.denoiser.network_rows
    final = zigzag_sample(target.denoiser, x, schedule, config, recorder=recorder, branches=branches,
                          progress=progress)
    rows = target.denoiser.network_rows - rows_before
    images = target.decode(final, output_type)
    return SampleOutput(images=images, latents=final, nfe=rows // target.batch_size, network_rows=rows,
                        config=config)


def prepare(
    pipe: Any,
    prompts: list[str],
    negative_prompts: list[str] | None = None,
    height: int | None = None,
    width: int | None = None,
) -> SamplingTarget:
    """Encode prompts for ``pipe``: its own ``prepare_zsampling`` or a diffusers adapter."""
    if hasattr(pipe, "prepare_zsampling"):
        return pipe.prepare_zsampling(prompts, negative_prompts, height, width)
    from zsampling.denoisers.diffusers import prepare_diffusers

    return prepare_diffusers(pipe, prompts, negative_prompts, height, width)


def initial_latents(
    target: SamplingTarget,
    latents: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
) -> torch.Tensor:
    """x_{t_0}: the given latents, or Gaussian noise drawn like diffusers'
    ``prepare_latents`` (so one generator or one per sample gives the same
    noise as the pipeline), times the scheduler's init_noise_sigma."""
    shape = (target.batch_size, *target.latent_shape)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=target.device, dtype=target.dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} (batch, *latent_shape), got {tuple(latents.shape)}")
    else:
        latents = latents.to(device=target.device, dtype=target.dtype)
    return latents * target.scheduler.init_noise_sigma


def _as_list(name: str, value: str | list[str]) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return values
