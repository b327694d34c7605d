"""``sample_with_trace``: :func:`zsampling.sample` plus a :class:`Trace` in one call.

``zsampling.sample`` builds its sampling target (encoded prompts, denoiser,
decoder) internally. To give the recorder the schedule and the target's
decoder without duplicating ``sample``'s logic, the pipeline is wrapped in a
thin proxy whose ``prepare_zsampling`` delegates to ``zsampling.api.prepare``
and hands the target to the recorder before the first network call. The
sampled latents and images are exactly those of ``zsampling.sample`` (the
recorder only reads the loop's tensors).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from zsampling.api import SampleOutput, prepare, sample
from zsampling.config import ZigzagConfig
from zsampling.denoisers.base import Branches, SamplingTarget
from zsampling.schedule import DDIMSchedule
from zsampling.trace.data import Trace
from zsampling.trace.recorder import MultiRecorder, StepMetric, TraceRecorder

if TYPE_CHECKING:
    from zsampling.trace.storage import TraceWriter

_CONFIG_FIELDS = ("num_inference_steps", "guidance_scale", "inversion_guidance_scale", "zigzag_steps", "rounds",
                  "zag", "zag_eval_timestep")


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
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    config = _config(sample_kwargs)
    generator, seed_meta = _generators(seed, sample_kwargs)
    negative = sample_kwargs.get("negative_prompt")
    negative_prompts = None if negative is None else ([negative] if isinstance(negative, str) else list(negative))
    recorder = TraceRecorder(
        keep=keep, latent_dtype=latent_dtype, downsample=downsample, metrics=metrics, every=every,
        decode_every=decode_every, config=config, prompts=prompts, negative_prompts=negative_prompts, meta=meta,
    )

    def on_prepare(target: SamplingTarget) -> None:
        schedule = DDIMSchedule.from_scheduler(target.scheduler, config.num_inference_steps)
        if downsample not in (None, 1) and len(target.latent_shape) != 3:
            raise ValueError(f"downsample needs (C, H, W) latents; this model's are {target.latent_shape}")
        decode = None
        if decode_every is not None:
            if "pt" not in getattr(target, "output_types", ("pt",)):
                raise ValueError(f"decode_every needs a target that decodes to 'pt'; {type(pipe).__name__} "
                                 f"decodes to {target.output_types}")

            def decode(latents: torch.Tensor) -> Any:
                return target.decode(latents, "pt")
        recorder.begin(schedule=schedule, decode=decode)

    proxy = _PreparingProxy(pipe, on_prepare)
    if generator is not None:
        sample_kwargs["generator"] = generator
    output = sample(proxy, prompts, recorder=MultiRecorder(recorder, extra_recorder), **sample_kwargs)
    branches = sample_kwargs.get("branches", "needed")
    trace = recorder.finish(
        network_rows=output.network_rows,
        nfe=output.nfe,
        expected_network_rows=expected_network_rows(config, len(prompts), branches),
        branches=branches,
        output_type=sample_kwargs.get("output_type", inspect.signature(sample).parameters["output_type"].default),
        seed=seed_meta,
        key=key,
    )
    if writer is not None:
        trace = writer.write(trace, key=key)
    if wandb is not None:
        wandb.log_run(output, trace)
    return output, trace


def expected_network_rows(config: ZigzagConfig, batch_size: int, branches: str = "needed") -> int:
    """Network rows the loop spends on a batch: T steps with g1's branches plus,
    per reflection, a zig (g1's branches) and a zag (g2's). Recording adds none."""
    def rows(scale: float) -> int:
        return 2 if branches == "both" else Branches.for_guidance(scale).count

    g1, g2 = rows(config.guidance_scale), rows(config.inversion_guidance_scale)
    return batch_size * (config.num_inference_steps * g1 + config.reflections * (g1 + g2))


def _config(sample_kwargs: Mapping[str, Any]) -> ZigzagConfig:
    """The config ``sample`` will build, with ``sample``'s own defaults."""
    parameters = inspect.signature(sample).parameters
    values = {name: sample_kwargs.get(name, parameters[name].default) for name in _CONFIG_FIELDS}
    return ZigzagConfig(**values)


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


class _PreparingProxy:
    """Looks like ``pipe`` to ``zsampling.sample`` (its ``scheduler`` for the
    early refusal), but prepares through ``zsampling.api.prepare`` and reports
    the target to ``on_prepare`` before any network call."""

    def __init__(self, pipe: Any, on_prepare: Callable[[SamplingTarget], None]) -> None:
        self._pipe = pipe
        self._on_prepare = on_prepare

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_pipe", "_on_prepare"):
            raise AttributeError(name)
        return getattr(self._pipe, name)

    def prepare_zsampling(self, prompts: list[str], negative_prompts: list[str] | None, height: int | None,
                          width: int | None) -> SamplingTarget:
        target = prepare(self._pipe, prompts, negative_prompts, height, width)
        self._on_prepare(target)
        return target
