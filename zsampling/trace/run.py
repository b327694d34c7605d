"""``sample_with_trace``: :func:`zsampling.sample` plus a :class:`Trace` in one call.

It composes the parts of ``zsampling.sample`` -- :func:`~zsampling.api.prepare`,
:func:`~zsampling.api.resolve_config`, :func:`~zsampling.api.sample_target`
-- and hands the recorder the schedule and the target's decoder before the
first network call. The sampled latents and images are exactly those of
``zsampling.sample`` (the recorder only reads the loop's tensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from zsampling.api import (
    SETTING_NAMES,
    SampleOutput,
    check_leg_models,
    prepare,
    prompt_lists,
    resolve_config,
    route_legs,
    sample_target,
    target_schedule,
)
from zsampling.config import ZigzagConfig
from zsampling.sampler import expected_network_rows as _loop_rows
from zsampling.sampler import guidance_mode
from zsampling.trace.data import Trace
from zsampling.trace.recorder import MultiRecorder, StepMetric, TraceRecorder

if TYPE_CHECKING:
    from zsampling.trace.directory import TraceWriter

_PREPARE_ARGS = ("negative_prompt", "height", "width")


def sample_with_trace(
    pipe: Any,
    prompt: str | list[str],
    *,
    keep: str | Sequence[str] = "scalars",
    latent_dtype: torch.dtype | None = torch.float16,
    downsample: int | None = None,
    metrics: Sequence[StepMetric] = (),
    every: int = 1,
    decode_every: int | None = None,
    seed: int | Sequence[int] | None = None,
    writer: TraceWriter | None = None,
    key: str | None = None,
    wandb: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    **sample_kwargs: Any,
) -> tuple[SampleOutput, Trace]:
    """Run :func:`zsampling.sample` and record its trace.

    Args:
        pipe, prompt, **sample_kwargs: as for :func:`zsampling.sample`
            (``recorder=`` adds a recorder of your own beside the trace).
        keep, latent_dtype, downsample, metrics, every: see
            :class:`~zsampling.trace.TraceRecorder`.
        decode_every: decode the predicted x0 with the pipeline's VAE every
            this many steps (stored as uint8 images, handed to metrics; VAE
            rows are counted in ``meta["decode_rows"]``).
        seed: an int (one generator for the batch, as diffusers does) or one
            int per sample (a generator each); recorded in the metadata.
            Alternative to ``generator=``.
        writer: a :class:`~zsampling.trace.TraceWriter` to flush the trace to.
        key: the batch's key in the writer's index (for resumable sweeps).
        wandb: a :class:`~zsampling.tracking.wandb.WandbRecorder` (or any
            object with ``log_run(output, trace)``) to log the run to.
        meta: extra JSON metadata stored in the trace.

    Returns:
        ``(output, trace)``; ``trace.meta`` holds ``network_rows`` (what the
        run spent), ``expected_network_rows`` (what the loop alone costs:
        recording adds none) and ``decode_rows``.
    """
    extra_recorder = sample_kwargs.pop("recorder", None)
    settings = {name: sample_kwargs.pop(name) for name in SETTING_NAMES if name in sample_kwargs}
    negative, height, width = (sample_kwargs.pop(name, None) for name in _PREPARE_ARGS)
    models = sample_kwargs.pop("models", None)
    check_leg_models(resolve_config(pipe, **settings), models)  # refuse bad settings before encoding anything
    prompts, negative_prompts = prompt_lists(prompt, negative)
    generator, seed_meta = _generators(seed, sample_kwargs)
    if generator is not None:
        sample_kwargs["generator"] = generator
    target = prepare(pipe, prompts, negative_prompts, height, width)
    config = resolve_config(target, **settings)
    target = route_legs(target, config, pipe, models, prompts, negative_prompts, height, width)
    if downsample not in (None, 1) and len(target.latent_shape) != 3:
        raise ValueError(f"downsample needs (C, H, W) latents; this model's are {target.latent_shape}")
    decode = None
    if decode_every is not None:
        if "pt" not in getattr(target, "output_types", ("pt",)):
            raise ValueError(f"decode_every needs a target that decodes to 'pt'; {type(pipe).__name__} "
                             f"decodes to {target.output_types}")

        def decode(latents: torch.Tensor) -> Any:
            return target.decode(latents, "pt")
    recorder = TraceRecorder(
        keep=keep, latent_dtype=latent_dtype, downsample=downsample, metrics=metrics, every=every,
        decode_every=decode_every, config=config, schedule=target_schedule(target, config),
        decode=decode, prompts=prompts, negative_prompts=negative_prompts, meta=meta,
    )
    output = sample_target(target, config, recorder=MultiRecorder(recorder, extra_recorder), **sample_kwargs)
    branches = sample_kwargs.get("branches", "needed")
    mode = guidance_mode(target.denoiser)
    trace = recorder.finish(
        network_rows=output.network_rows,
        nfe=output.nfe,
        expected_network_rows=_loop_rows(config, len(prompts), branches, mode, recording=True),
        branches=branches,
        guidance_mode=mode,
        output_type=sample_kwargs.get("output_type", "pil"),
        seed=seed_meta,
        key=key,
    )
    if writer is not None:
        trace = writer.write(trace, key=key)
    if wandb is not None:
        wandb.log_run(output, trace)
    return output, trace


def expected_network_rows(config: ZigzagConfig, batch_size: int, branches: str = "needed") -> int:
    """Network rows the loop spends on a batch of a two-branch (CFG) model:
    T steps with g1's branches plus, per reflection, a zig (g1's branches) and
    a zag (g2's). Recording adds none. See
    :func:`zsampling.sampler.expected_network_rows` for other models and the
    gap probe."""
    return _loop_rows(config, batch_size, branches)


def _generators(
    seed: int | Sequence[int] | None, sample_kwargs: Mapping[str, Any]
) -> tuple[torch.Generator | list[torch.Generator] | None, Any]:
    """Generators for ``seed`` and the seed metadata (also read back from a
    caller's generators via ``initial_seed``)."""
    given = sample_kwargs.get("generator")
    if seed is not None and given is not None:
        raise ValueError("pass either seed= or generator=, not both")
    if seed is None:
        if given is None:
            return None, None
        if isinstance(given, torch.Generator):
            return None, {"generator_seed": given.initial_seed()}
        return None, {"generator_seeds": [g.initial_seed() for g in given]}
    if isinstance(seed, int) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(seed), {"seed": seed}
    seeds = [int(s) for s in seed]
    return [torch.Generator().manual_seed(s) for s in seeds], {"seeds": seeds}
