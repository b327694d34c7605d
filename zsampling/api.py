"""``zsampling.sample``: Z-Sampling on a pipeline in one call, and its parts.

``sample`` = :func:`prepare` (encode the prompts once into a sampling
target) + :func:`resolve_config` (the validated settings, with the defaults
that depend on the model family filled in) + :func:`sample_target` (draw the
initial latents the way the pipeline does, run the loop, decode). Tracing
and sweeps compose the three parts themselves.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

from zsampling.config import ZagEvalTimestep, ZagOperator, ZigzagConfig
from zsampling.denoisers.base import SamplingTarget
from zsampling.denoisers.legs import LegRouter, LoraScales, denoising_network
from zsampling.legs import Legs
from zsampling.sampler import Recorder, zigzag_sample
from zsampling.schedule import DDIMSchedule, FlowSchedule, build_schedule, check_run, resolve_timesteps

OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")

DEFAULT_ZAG: dict[str, str] = {"ddim": "official", "flow": "euler"}
"""The zag operator each family uses when none is given: the released
code's operator for DDIM, the exact reverse Euler move for flow matching
(there is no released flow-matching Z-Sampling to reproduce)."""

DEFAULT_STEPS = 50
"""T when neither the call nor a custom timestep list gives one: the released SDXL setting."""

DEFAULT_GUIDANCE = 5.5
"""g1 when neither the call nor the pipeline gives one: the released SDXL setting."""


@dataclass(frozen=True)
class SampleOutput:
    """Result of :func:`sample`.

    Attributes:
        images: decoded images in ``output_type`` (the latents for "latent").
        latents: final latents before decoding (B, ...).
        nfe: network rows spent per sample (standard CFG: 2T).
        network_rows: network rows spent for the whole batch.
        config: the validated settings of the run (family defaults resolved).
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
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    inversion_guidance_scale: float = 0.0,
    zigzag_steps: int | list[int] | None = None,
    rounds: int = 1,
    zag: ZagOperator | None = None,
    zag_eval_timestep: ZagEvalTimestep = "next",
    legs: Legs | None = None,
    measure_gap: bool = False,
    timesteps: Sequence[int] | str | None = None,
    models: Mapping[str, Any] | None = None,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    recorder: Recorder | None = None,
    branches: Literal["needed", "both"] = "needed",
    progress: bool = True,
) -> SampleOutput:
    """Sample with Z-Sampling (``zigzag_steps=0`` is standard sampling).

    ``pipe`` is a diffusers pipeline (SD 1.x/2.x, SDXL, PixArt with a
    ``DDIMScheduler``; SD3 / SD3.5 and Flux with a
    ``FlowMatchEulerDiscreteScheduler``), or any object with
    ``prepare_zsampling`` (the demo and analytic models). Guidance follows
    diffusers' convention ``eps_u + g (eps_c - eps_u)`` for every g (the
    paper's w is g - 1), but unlike diffusers CFG stays on for g <= 1. On
    guidance-distilled Flux without a negative prompt, ``guidance_scale`` is
    the guidance-embedding value (as in ``FluxPipeline``); with a negative
    prompt it is the true-CFG scale.

    ``legs`` generalises the zig / zag / step settings (:mod:`zsampling.legs`:
    guidance, embedding mix, LoRA scale, another prompt, another pipeline
    named in ``models``); the default is plain Z-Sampling.

    Defaults: ``num_inference_steps=None`` is 50, or the length of custom
    ``timesteps`` (DDIM only: a list, or a name of
    :data:`~zsampling.schedule.NAMED_TIMESTEPS` such as "ays-sdxl"); ``zag=None`` is
    "official" on DDIM and "euler" on flow matching; ``guidance_scale=None`` is the pipeline's own default (5.5,
    the released SDXL setting, for models that have none). Both are recorded
    in ``SampleOutput.config``. See :class:`ZigzagConfig` for the other
    settings; ``branches="both"`` disables the branch-aware saving (for
    benchmarks).
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    settings = dict(
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        inversion_guidance_scale=inversion_guidance_scale, zigzag_steps=zigzag_steps, rounds=rounds, zag=zag,
        zag_eval_timestep=zag_eval_timestep, legs=legs, measure_gap=measure_gap, timesteps=timesteps,
    )
    check_leg_models(resolve_config(pipe, **settings), models)  # refuse bad settings before encoding anything
    prompts, negative_prompts = prompt_lists(prompt, negative_prompt)
    target = prepare(pipe, prompts, negative_prompts, height, width)
    check_output_type(target, output_type, type(pipe).__name__)
    config = resolve_config(target, **settings)
    target = route_legs(target, config, pipe, models, prompts, negative_prompts, height, width)
    return sample_target(target, config, latents=latents, generator=generator, output_type=output_type,
                         recorder=recorder, branches=branches, progress=progress)


SETTING_NAMES: tuple[str, ...] = tuple(
    name for name in inspect.signature(ZigzagConfig).parameters
)
"""The run settings :func:`sample` passes to :func:`resolve_config` (the
:class:`ZigzagConfig` fields)."""


def prompt_lists(prompt: str | list[str], negative_prompt: str | list[str] | None = None
                 ) -> tuple[list[str], list[str] | None]:
    """Prompts as a list, and negative prompts as a list of the same length (or None)."""
    prompts = _as_list("prompt", prompt)
    negative_prompts = None if negative_prompt is None else _as_list("negative_prompt", negative_prompt)
    if negative_prompts is not None and len(negative_prompts) == 1 < len(prompts):
        negative_prompts = negative_prompts * len(prompts)
    if negative_prompts is not None and len(negative_prompts) != len(prompts):
        raise ValueError(
            f"negative_prompt must be one string or {len(prompts)} strings, got {len(negative_prompts)}"
        )
    return prompts, negative_prompts


def resolve_config(
    pipe_or_target: Any,
    *,
    num_inference_steps: int | None = None,
    timesteps: Sequence[int] | str | None = None,
    guidance_scale: float | None = None,
    zag: ZagOperator | None = None,
    legs: Legs | None = None,
    **settings: Any,
) -> ZigzagConfig:
    """The validated :class:`ZigzagConfig` of a run on ``pipe_or_target``,
    with the defaults filled in (T, zag operator, guidance scale), and
    the schedule's refusals (wrong scheduler, an operator of the other
    family) raised before any model call."""
    scheduler = getattr(pipe_or_target, "scheduler", None)
    family = schedule_family(scheduler)
    if guidance_scale is None:
        guidance_scale = getattr(pipe_or_target, "default_guidance", None)
        if guidance_scale is None:
            guidance_scale = _pipeline_default_guidance(pipe_or_target)
    timesteps = resolve_timesteps(timesteps)
    if num_inference_steps is None:
        num_inference_steps = DEFAULT_STEPS if timesteps is None else len(timesteps)
    config = ZigzagConfig(
        num_inference_steps=num_inference_steps, timesteps=timesteps,
        guidance_scale=guidance_scale, zag=zag if zag is not None else DEFAULT_ZAG[family],
        legs=legs if legs is not None else Legs(), **settings,
    )
    if scheduler is not None:
        check_run(scheduler, config)
    return config


def schedule_family(scheduler: object) -> str:
    """ "flow" for a flow-matching scheduler, else "ddim" (validated when the schedule is built)."""
    return "flow" if "FlowMatch" in type(scheduler).__name__ else "ddim"


def target_schedule(target: Any, config: ZigzagConfig | int) -> DDIMSchedule | FlowSchedule:
    """The schedule of a target (or pipeline) for a config (or a step count),
    with the pipeline's own ``set_timesteps`` arguments where it has any
    (Flux's sigmas and mu) and the config's custom timesteps."""
    steps = config if isinstance(config, int) else config.num_inference_steps
    timesteps = None if isinstance(config, int) else config.timesteps
    options = getattr(target, "set_timesteps_kwargs", None)
    kwargs = options(steps) if callable(options) else {}
    return build_schedule(target.scheduler, steps, timesteps, **kwargs)


def sample_target(
    target: SamplingTarget,
    config: ZigzagConfig,
    *,
    latents: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "pil",
    recorder: Recorder | None = None,
    branches: Literal["needed", "both"] = "needed",
    progress: bool = True,
) -> SampleOutput:
    """Run ``config`` on a prepared target: initial latents, the loop, decoding."""
    check_output_type(target, output_type, type(target).__name__)
    schedule = target_schedule(target, config)
    x = initial_latents(target, latents, generator)
    rows_before = target.denoiser.network_rows
    try:
        final = zigzag_sample(target.denoiser, x, schedule, config, recorder=recorder, branches=branches,
                              progress=progress)
    finally:
        close = getattr(target.denoiser, "close", None)
        if callable(close):
            close()  # e.g. give LoRA adapters their own scales back
    rows = target.denoiser.network_rows - rows_before
    images = target.decode(final, output_type)
    return SampleOutput(images=images, latents=final, nfe=rows // target.batch_size, network_rows=rows,
                        config=config)


def check_leg_models(config: ZigzagConfig, models: Mapping[str, Any] | None) -> None:
    """Refuse legs that name a pipeline ``models`` does not hold (before any encoding)."""
    missing = sorted(config.legs.models - set(models or {}))
    if missing:
        raise ValueError(f"legs name pipelines {missing} that are not in models= (given: {sorted(models or {})}); "
                         "pass zsampling.sample(..., models={name: pipe})")


def route_legs(
    target: SamplingTarget,
    config: ZigzagConfig,
    pipe: Any,
    models: Mapping[str, Any] | None,
    prompts: list[str],
    negative_prompts: list[str] | None,
    height: int | None = None,
    width: int | None = None,
) -> SamplingTarget:
    """The target with a :class:`~zsampling.denoisers.legs.LegRouter` when the
    legs use another pipeline, another prompt or LoRA scales (else unchanged).

    Each (pipeline, prompt) pair the legs use is prepared once here, by that
    pipeline's own encoders; every pipeline must share the base's latent
    shape and model family.
    """
    legs = config.legs
    if not (legs.models or legs.prompts or legs.uses_lora):
        return target
    check_leg_models(config, models)
    pipes: dict[str | None, Any] = {None: pipe, **dict(models or {})}
    family = schedule_family(target.scheduler)
    targets = {(None, None): target}
    for leg in (legs.zig, legs.zag, legs.step):
        route = (leg.model, leg.prompt)
        if route in targets:
            continue
        leg_prompts = prompts if leg.prompt is None else [leg.prompt] * len(prompts)
        routed = prepare(pipes[leg.model], leg_prompts, negative_prompts, height, width)
        if tuple(routed.latent_shape) != tuple(target.latent_shape):
            raise ValueError(f"pipeline {leg.model!r} has latents of shape {tuple(routed.latent_shape)}, the base "
                             f"pipeline {tuple(target.latent_shape)}: the legs must share one latent space")
        if schedule_family(routed.scheduler) != family:
            raise ValueError(f"pipeline {leg.model!r} is a {schedule_family(routed.scheduler)} model and the base "
                             f"a {family} model: the legs must share one family")
        targets[route] = routed
    lora_models = {getattr(legs, name).model for name in ("zig", "zag", "step") if getattr(legs, name).lora_scale
                   is not None}
    lora = {model: LoraScales(denoising_network(pipes[model])) for model in lora_models}
    return dataclasses.replace(target, denoiser=LegRouter(targets, lora))


def check_output_type(target: SamplingTarget, output_type: str, owner: str) -> None:
    """Refuse an ``output_type`` the target cannot decode to, naming ``owner``."""
    if output_type not in target.output_types:
        raise ValueError(f"output_type must be one of {target.output_types} for {owner}, got {output_type!r}")


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
    """x_{t_0}: the given latents, or Gaussian noise drawn like the pipeline's
    ``prepare_latents`` (so one generator or one per sample gives the same
    noise as the pipeline; Flux packs it), times the scheduler's
    init_noise_sigma (1 for flow matching)."""
    shape = (target.batch_size, *target.latent_shape)
    if latents is None:
        draw = getattr(target, "draw_latents", None)
        if callable(draw):
            latents = draw(generator)
        else:
            latents = randn_tensor(shape, generator=generator, device=target.device, dtype=target.dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} (batch, *latent_shape), got {tuple(latents.shape)}")
    else:
        latents = latents.to(device=target.device, dtype=target.dtype)
    return latents * getattr(target.scheduler, "init_noise_sigma", 1.0)


def _pipeline_default_guidance(pipe: Any) -> float:
    """The ``guidance_scale`` default of a diffusers pipeline's ``__call__`` (SD3: 7.0,
    Flux: 3.5), else :data:`DEFAULT_GUIDANCE`."""
    if "FlowMatch" in type(getattr(pipe, "scheduler", None)).__name__ and callable(pipe):
        parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
        if parameter is not None and isinstance(parameter.default, (int, float)):
            return float(parameter.default)
    return DEFAULT_GUIDANCE


def _as_list(name: str, value: str | list[str]) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return values
