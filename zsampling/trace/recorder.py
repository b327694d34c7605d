"""Recorders: turn the sampler's events into :class:`~zsampling.trace.Trace` records.

:class:`TraceRecorder` implements the sampler's ``Recorder`` protocol. It
never calls the denoiser: every value comes from tensors the loop already
computed (latents in and out, eps_u / eps_c of the operation), so recording
costs zero network rows. Scalars are batched tensor reductions that stay on
the sampler's device; nothing is moved to the host until the run ends, so
the loop never waits on a host sync because of the recorder (plug-in
metrics and x0 decoding are opt-in and may sync).

The reflection coefficient c_i and the guidance scales are read from the
events themselves (the zig's move carries ab[t_i] and ab[t_{i+1}], each
event its guidance), so the recorder needs neither the schedule nor the
config; pass them anyway to store them in the trace's metadata and to let
per-step metrics and decoding include the final step.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from zsampling.config import ZigzagConfig, config_to_dict
from zsampling.legs import Condition
from zsampling.provenance import package_versions
from zsampling.sampler import Event
from zsampling.schedule import Schedule
from zsampling.trace.data import (
    SCALAR_NAMES,
    MemorySource,
    Trace,
    resolve_keep,
)
from zsampling.trace.schema import OPS, SCHEMA, SCHEMA_VERSION

if TYPE_CHECKING:
    from zsampling.trace.directory import TraceWriter

_ZIG, _ZAG, _STEP = (OPS.index(op) for op in OPS)
_SCALAR_INDEX = {name: k for k, name in enumerate(SCALAR_NAMES)}
_I = _SCALAR_INDEX
_RESERVED = frozenset(SCALAR_NAMES) | {
    "sample", "prompt", "op", "step", "round", "t_eval", "t_from", "t_to", "a_from", "a_to", "guidance", "c",
}

Decode = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class StepState:
    """What a per-step metric sees at ordinary step i (after its reflections).

    Attributes:
        step: i.
        timestep: t_i.
        latents: x_i (B, ...), the latent the step's network call saw.
        next_latents: x_{i+1} (B, ...), the step's output.
        x0: the predicted clean latent from x_i (B, ...), in the sampler's dtype.
        images: decoded ``x0`` (B, C, H, W), float in [0, 1], when this step
            was decoded (``decode_every``); else None.
        prompts / negative_prompts: the batch's prompts, when known.
    """

    step: int
    timestep: int
    latents: torch.Tensor
    next_latents: torch.Tensor
    x0: torch.Tensor
    images: torch.Tensor | None
    prompts: tuple[str, ...] | None
    negative_prompts: tuple[str, ...] | None


@runtime_checkable
class StepMetric(Protocol):
    """A per-step metric plug-in (e.g. the demo model's alignment, an image-text
    scorer on decoded x0).

    ``__call__`` returns named values, each a (B,) tensor or a float (a
    single tensor means ``{name: tensor}``). The names become columns of
    :meth:`Trace.to_frame` on the "step" rows where the metric ran.
    """

    name: str

    def __call__(self, state: StepState) -> Mapping[str, torch.Tensor | float] | torch.Tensor: ...


class ScorerMetric:
    """Adapts an image scorer (``name`` and ``score(images, prompts) -> (B,)``,
    e.g. ``zsampling.metrics.demo.DigitAlignment`` or an image-text scorer)
    into a :class:`StepMetric` on the predicted x0.

    Images come from ``to_images(x0)`` when given (a cheap latent-to-pixel
    map, e.g. the demo model's ``latents_to_images``), else from the
    recorder's decoded x0 (``decode_every``): on steps without decoded images
    the metric is skipped (NaN).
    """

    def __init__(self, scorer: Any, to_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 name: str | None = None) -> None:
        if not callable(getattr(scorer, "score", None)):
            raise ValueError(f"scorer must have a score(images, prompts) method, got {scorer!r}")
        self.scorer = scorer
        self.to_images = to_images
        self.name = name or getattr(scorer, "name", type(scorer).__name__)

    def __call__(self, state: StepState) -> Mapping[str, torch.Tensor]:
        images = self.to_images(state.x0) if self.to_images is not None else state.images
        if images is None:
            return {}
        if state.prompts is None:
            raise ValueError(f"metric {self.name!r} needs the prompts: give the recorder prompts=")
        return {self.name: torch.as_tensor(self.scorer.score(images, list(state.prompts)))}


class TraceRecorder:
    """Records one :class:`Trace` per sampling run (one batch of samples).

    Usage::

        rec = TraceRecorder(keep="scalars", prompts=prompts)
        out = zsampling.sample(pipe, prompts, recorder=rec)
        trace = rec.trace
        trace.to_frame()

    or in one call :func:`zsampling.trace.sample_with_trace`.

    Args:
        keep: "scalars" (default), "all", or a collection of :data:`KEEP_KINDS`.
        latent_dtype: storage dtype of kept latents / eps / x0 (None: the
            sampler's dtype). Use float32/float64 for exact re-computation.
        downsample: average-pool kept tensors spatially by this factor
            (4-D latents only); scalars always use full resolution.
        metrics: :class:`StepMetric` plug-ins evaluated at ordinary steps.
        every: run metrics every this many steps (and at the last step when
            the step count is known from ``config``/``schedule``).
        decode: callable mapping latents (B, C, h, w) to images (B, C', H, W)
            in [0, 1] (a SamplingTarget's ``lambda z: target.decode(z, "pt")``);
            the predicted x0 is decoded every ``decode_every`` steps, stored
            as uint8 and handed to the metrics. Costs VAE calls, counted in
            ``meta["decode_rows"]``, never in network rows.
        decode_every: decoding cadence (default: ``every``).
        config / schedule: stored in the metadata; give the step count.
        prompts / negative_prompts: stored, and handed to metrics.
        meta: extra JSON-serialisable metadata.
        writer: a :class:`~zsampling.trace.TraceWriter`: each finished run is
            flushed to disk and dropped from memory (bounded memory in
            sweeps); ``rec.trace`` still returns the last one.
        offload: move kept tensors to the CPU as they are recorded (bounds
            accelerator memory at the cost of a copy per event).

    Memory (and disk) per sample: see :func:`~zsampling.trace.estimate_trace_bytes`.
    With ``latent_dtype=float16`` every kept kind costs 2 bytes per latent
    element per event (latents: 1 tensor, eps: 2, x0: 1), scalars 56 bytes
    per event; SDXL 1024px, T=50, lambda=49 (148 events), keep="all":
    74.1 MiB per sample, 18.5 MiB with ``downsample=2``.
    """

    def __init__(
        self,
        *,
        keep: str | Iterable[str] = "scalars",
        latent_dtype: torch.dtype | None = torch.float16,
        downsample: int | None = None,
        metrics: Sequence[StepMetric] = (),
        every: int = 1,
        decode: Decode | None = None,
        decode_every: int | None = None,
        config: ZigzagConfig | None = None,
        schedule: Schedule | None = None,
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        writer: TraceWriter | None = None,
        offload: bool = False,
    ) -> None:
        self.keep = resolve_keep(keep)
        if latent_dtype is not None and not (isinstance(latent_dtype, torch.dtype) and latent_dtype.is_floating_point):
            raise ValueError(f"latent_dtype must be a floating torch dtype or None, got {latent_dtype!r}")
        self.latent_dtype = latent_dtype
        if downsample is not None and (isinstance(downsample, bool) or not isinstance(downsample, int)
                                       or downsample < 1):
            raise ValueError(f"downsample must be None or an integer >= 1, got {downsample!r}")
        self.downsample = None if downsample == 1 else downsample
        for name, value in (("every", every), ("decode_every", decode_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.metrics = list(metrics)
        for metric in self.metrics:
            if not callable(metric):
                raise ValueError(f"metrics must be callables (StepMetric), got {metric!r}")
        self.every = every
        self.decode_every = decode_every
        self.offload = offload
        self.writer = writer
        self._context: dict[str, Any] = {}
        self.begin(prompts, negative_prompts, config=config, schedule=schedule, decode=decode, meta=meta)
        self._run: _Run | None = None
        self._traces: list[Trace] = []
        self._last: Trace | None = None

    # ----------------------------------------------------------------- runs
    def begin(
        self,
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        *,
        config: ZigzagConfig | None = None,
        schedule: Schedule | None = None,
        decode: Decode | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the context (prompts, config, schedule, decode, metadata) of the
        next run; arguments left None keep their current value. Finishes a
        run in progress. Optional: without it every run is recorded with the
        context given at construction."""
        if getattr(self, "_run", None) is not None and self._run.events:
            self.finish()
        previous = self._context
        prompts = prompts if prompts is not None else previous.get("prompts")
        negative_prompts = negative_prompts if negative_prompts is not None else previous.get("negative_prompts")
        if schedule is None:
            schedule = previous.get("schedule")
            if schedule is not None and config is not None and schedule.num_steps != config.num_inference_steps:
                schedule = None  # the previous run's schedule does not fit the new config
        config = config if config is not None else previous.get("config")
        decode = decode if decode is not None else previous.get("decode")
        meta = meta if meta is not None else previous.get("meta")
        if config is not None and not isinstance(config, ZigzagConfig):
            raise ValueError(f"config must be a ZigzagConfig, got {type(config).__name__}")
        if config is not None and schedule is not None and schedule.num_steps != config.num_inference_steps:
            raise ValueError(
                f"schedule has {schedule.num_steps} steps but config.num_inference_steps is "
                f"{config.num_inference_steps}"
            )
        self._context = {
            "prompts": None if prompts is None else tuple(prompts),
            "negative_prompts": None if negative_prompts is None else tuple(negative_prompts),
            "config": config,
            "schedule": schedule,
            "decode": decode,
            "meta": dict(meta or {}),
        }

    @property
    def num_steps(self) -> int | None:
        """T when known from the config or schedule."""
        config, schedule = self._context["config"], self._context["schedule"]
        if schedule is not None:
            return schedule.num_steps
        return None if config is None else config.num_inference_steps

    def record(self, event: Event) -> None:
        """Receive one event of the loop (the ``Recorder`` protocol)."""
        run = self._run
        if run is not None and run.starts_new_run(event):
            self.finish()
            run = None
        if run is None:
            run = self._run = _Run(self, event)
        run.add(event)
        if self.writer is not None and run.complete:
            self.finish()

    def finish(self, **meta: Any) -> Trace:
        """End the current run: build its :class:`Trace` (tensors moved to the
        CPU), add ``meta``, flush it to the writer if there is one, and return it."""
        if self._run is None or not self._run.events:
            raise RuntimeError("no run in progress: nothing was recorded since the last finish()")
        trace = self._run.to_trace(meta)
        self._run = None
        if self.writer is not None:
            trace = self.writer.write(trace)
        else:
            self._traces.append(trace)
        self._last = trace
        return trace

    @property
    def trace(self) -> Trace:
        """The trace of the latest run (finishing it if still open)."""
        if self._run is not None and self._run.events:
            self.finish()
        if self._last is None:
            raise RuntimeError("nothing recorded yet: pass this recorder to zsampling.sample(..., recorder=rec)")
        return self._last

    @property
    def traces(self) -> list[Trace]:
        """Every finished run's trace, oldest first (empty with a writer, which
        keeps them on disk instead)."""
        if self._run is not None and self._run.events:
            self.finish()
        return list(self._traces)

    # ---------------------------------------------------------------- helpers
    def _due(self, step: int, every: int | None) -> bool:
        if every is None:
            return False
        return step % every == 0 or step == (self.num_steps or 0) - 1


class _EventRow(NamedTuple):
    """One event's row of the trace's event table."""

    op: int
    step: int
    round: int
    t_eval: float
    a_from: float
    a_to: float
    guidance: float
    c: float


@dataclass(frozen=True)
class _PendingZig:
    """What a zag's reflection needs from its zig (flattened, compute dtype)."""

    step: int
    round: int
    x_in: torch.Tensor
    output: torch.Tensor
    direction: torch.Tensor | None
    signal: torch.Tensor
    guidance: float
    condition: Condition
    c: float


def _timestep_dtype(values: Sequence[float]) -> torch.dtype:
    """int64 for DDIM's integer timesteps, float64 for flow matching's."""
    return torch.int64 if all(float(v).is_integer() for v in values) else torch.float64


class _Run:
    """Mutable state of one run being recorded (the hot path)."""

    def __init__(self, recorder: TraceRecorder, first: Event) -> None:
        self.rec = recorder
        self.context = dict(recorder._context)
        x = first.x_in
        self.batch = int(x.shape[0])
        self.shape = tuple(x.shape[1:])
        self.dtype = x.dtype
        self.device = x.device
        self.cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if recorder.downsample and x.dim() != 4:
            raise ValueError(
                f"downsample needs 4-D latents (B, C, H, W); these are {tuple(x.shape)}: use downsample=None"
            )
        self.nan = torch.full((self.batch,), math.nan, dtype=self.cdtype, device=self.device)
        self.events: list[_EventRow] = []
        self.rows: list[torch.Tensor] = []
        self.kept: dict[str, list[torch.Tensor]] = {name: [] for name in ("latents", "eps_uncond", "eps_cond", "x0")}
        self.inputs: dict[int, torch.Tensor] = {}
        self.x_init: torch.Tensor | None = None
        self.metric_rows: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.images: list[tuple[int, torch.Tensor]] = []
        self.decode_rows = 0
        self.last_out: torch.Tensor | None = None
        self.last_op: int | None = None
        self.last_step = -1
        self.pending: _PendingZig | None = None
        self.cum: torch.Tensor | None = None
        self.prev_x0: torch.Tensor | None = None
        self.complete = False
        self._nan_kept: torch.Tensor | None = None

    def starts_new_run(self, event: Event) -> bool:
        """A loop moves from a "step" event to step i+1; anything else after a
        "step" (e.g. step 0 again) is the next run."""
        return self.complete or (self.last_op == _STEP and event.step != self.last_step + 1)

    # -------------------------------------------------------------- storage
    def store(self, tensor: torch.Tensor) -> torch.Tensor:
        """A private copy of ``tensor`` in the storage dtype (and resolution)."""
        rec = self.rec
        dtype = rec.latent_dtype or self.dtype
        tensor = tensor.detach()
        if rec.downsample:
            tensor = F.avg_pool2d(tensor.to(self.cdtype), rec.downsample)
        stored = tensor.to(dtype=dtype, copy=True)
        return stored.cpu() if rec.offload else stored

    def nan_kept(self) -> torch.Tensor:
        if self._nan_kept is None:
            template = self.store(torch.zeros((self.batch, *self.shape), dtype=self.cdtype, device=self.device))
            self._nan_kept = torch.full_like(template, math.nan)
        return self._nan_kept

    # ------------------------------------------------------------ hot path
    def add(self, ev: Event) -> None:
        rec, batch = self.rec, self.batch
        code = OPS.index(ev.op)
        e = len(self.events)
        keep = rec.keep
        if "latents" in keep:
            if e == 0:
                self.x_init = self.store(ev.x_in)
            elif ev.x_in is not self.last_out:
                self.inputs[e] = self.store(ev.x_in)
        self.last_out, self.last_op, self.last_step = ev.x_out, code, ev.step

        cdtype = self.cdtype
        x_in = ev.x_in.reshape(batch, -1).to(cdtype)
        x_out = ev.x_out.reshape(batch, -1).to(cdtype)
        eps_u, eps_c = ev.eps.uncond, ev.eps.cond
        direction = None
        if eps_u is not None and eps_c is not None:
            direction = eps_c.reshape(batch, -1).to(cdtype) - eps_u.reshape(batch, -1).to(cdtype)
        output = ev.output if ev.output is not None else ev.eps.guided(ev.guidance)  # what drove the move
        eps = output.reshape(batch, -1).to(cdtype)
        x0 = ev.move.predicted_x0(x_in, eps)
        norm = torch.linalg.vector_norm
        nan = self.nan
        values = [nan] * len(SCALAR_NAMES)
        values[_I["latent_norm"]] = norm(x_out, dim=1)
        values[_I["latent_std"]] = x_out.std(dim=1)
        values[_I["eps_norm"]] = norm(eps, dim=1)
        signal = nan if direction is None else norm(direction, dim=1)
        values[_I["guidance_signal"]] = signal
        values[_I["x0_norm"]] = norm(x0, dim=1)

        if code == _ZAG:
            c = self._reflection(ev, x_out, values)
        else:
            c = ev.move.reflection_coefficient()
            if self.prev_x0 is not None:
                values[_I["x0_change"]] = norm(x0 - self.prev_x0, dim=1)
            if code == _ZIG:
                self.pending = _PendingZig(ev.step, ev.round, x_in, eps, direction, signal, ev.guidance,
                                           ev.condition, c)
            else:
                self.prev_x0 = x0
                self.pending = None
        self.rows.append(torch.stack(values))
        self.events.append(_EventRow(code, ev.step, ev.round, ev.move.t_eval, ev.move.level_from, ev.move.level_to,
                                     ev.guidance, c))

        if "latents" in keep:
            self.kept["latents"].append(self.store(ev.x_out))
        if "eps" in keep:
            self.kept["eps_uncond"].append(self.nan_kept() if eps_u is None else self.store(eps_u))
            self.kept["eps_cond"].append(self.nan_kept() if eps_c is None else self.store(eps_c))
        if "x0" in keep:
            self.kept["x0"].append(self.store(x0.reshape(batch, *self.shape)))
        if code == _STEP:
            if rec.metrics or self.context["decode"] is not None:
                self._step_extras(ev, e, x0)
            total = rec.num_steps
            self.complete = total is not None and ev.step == total - 1

    def _reflection(self, ev: Event, x_out: torch.Tensor, values: list[torch.Tensor]) -> float:
        """Fill the semantic-gain scalars of the reflection ending with this zag."""
        zig = self.pending
        self.pending = None
        if zig is None or (zig.step, zig.round) != (ev.step, ev.round):
            return math.nan  # a zag without its zig: nothing to compare against
        g2, c = ev.guidance, zig.c
        norm = torch.linalg.vector_norm
        delta = x_out - zig.x_in
        gain = norm(delta, dim=1)
        values[_I["gain_norm"]] = gain
        if self.cum is None:
            self.cum = delta.clone()
        else:
            self.cum.add_(delta)
        values[_I["gain_cum_norm"]] = norm(self.cum, dim=1)
        direction, signal = zig.direction, zig.signal
        if direction is not None:
            dot = torch.linalg.vecdot(delta, direction, dim=1)
            parallel = dot / signal
            values[_I["gain_cos"]] = parallel / gain
            values[_I["gain_parallel"]] = parallel
            values[_I["gain_orthogonal"]] = norm(delta - (dot / (signal * signal)).unsqueeze(1) * direction, dim=1)
            values[_I["zig_guidance_signal"]] = signal
        same_condition = zig.condition == ev.condition
        if same_condition and zig.guidance == g2:
            values[_I["gap_norm"]] = torch.zeros_like(gain)
            values[_I["residual_norm"]] = gain
        elif same_condition and direction is not None:
            coef = c * (zig.guidance - g2)
            values[_I["gap_norm"]] = abs(coef) * signal
            values[_I["residual_norm"]] = norm(torch.add(delta, direction, alpha=-coef), dim=1)
        elif ev.gap_output is not None:  # legs differ beyond CFG: the measured o_zag(x_i, t_i)
            gap = (zig.output - ev.gap_output.reshape(self.batch, -1).to(self.cdtype)).mul_(c)
            values[_I["gap_norm"]] = norm(gap, dim=1)
            values[_I["residual_norm"]] = norm(delta - gap, dim=1)
        return c

    def _step_extras(self, ev: Event, e: int, x0: torch.Tensor) -> None:
        """Decode the predicted x0 and run the metrics, when due at this step."""
        rec = self.rec
        decode_every = rec.decode_every if rec.decode_every is not None else (
            rec.every if self.context["decode"] is not None else None)
        do_decode = self.context["decode"] is not None and rec._due(ev.step, decode_every)
        do_metrics = bool(rec.metrics) and rec._due(ev.step, rec.every)
        if not (do_decode or do_metrics):
            return
        x0_latents = x0.reshape(ev.x_in.shape).to(ev.x_in.dtype)
        images = None
        if do_decode:
            images = _as_image_tensor(self.context["decode"](x0_latents))
            self.decode_rows += self.batch
            self.images.append((e, (images.clamp(0, 1) * 255).round().to(torch.uint8)))
        if not do_metrics:
            return
        state = StepState(
            step=ev.step, timestep=ev.move.t_eval, latents=ev.x_in, next_latents=ev.x_out, x0=x0_latents,
            images=images, prompts=self.context["prompts"], negative_prompts=self.context["negative_prompts"],
        )
        results: dict[str, torch.Tensor] = {}
        for metric in rec.metrics:
            name = getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)
            out = metric(state)
            if not isinstance(out, Mapping):
                out = {name: out}
            for key, value in out.items():
                if key in _RESERVED or key in results:
                    raise ValueError(
                        f"metric {name!r} returns {key!r}, which clashes with a built-in trace column or "
                        "another metric; rename it"
                    )
                tensor = torch.as_tensor(value).detach().to(dtype=torch.float32)
                results[key] = tensor.expand(self.batch) if tensor.dim() == 0 else tensor.reshape(self.batch)
        self.metric_rows.append((e, results))

    # -------------------------------------------------------------- finish
    def to_trace(self, extra_meta: Mapping[str, Any]) -> Trace:
        """Move everything to the CPU and build the :class:`Trace`."""
        num_events, batch = len(self.events), self.batch
        columns = list(zip(*self.events, strict=True))
        op = torch.tensor(columns[0], dtype=torch.int8)
        step = torch.tensor(columns[1], dtype=torch.int32)
        t_from, t_to = self._nominal_timesteps()
        events = {
            "op": op,
            "step": step,
            "round": torch.tensor(columns[2], dtype=torch.int32),
            "t_eval": torch.tensor(columns[3], dtype=_timestep_dtype(columns[3])),
            "t_from": torch.tensor(t_from, dtype=_timestep_dtype(t_from)),
            "t_to": torch.tensor(t_to, dtype=_timestep_dtype(t_to)),
            "a_from": torch.tensor(columns[4], dtype=torch.float64),
            "a_to": torch.tensor(columns[5], dtype=torch.float64),
            "guidance": torch.tensor(columns[6], dtype=torch.float64),
            "c": torch.tensor(columns[7], dtype=torch.float64),
        }
        table = torch.stack(self.rows).to(device="cpu", dtype=torch.float32)  # (E, K, B): the one host transfer
        scalars = {name: table[:, k, :].contiguous() for name, k in _SCALAR_INDEX.items()}
        metrics: dict[str, torch.Tensor] = {}
        for e, results in self.metric_rows:
            for key, value in results.items():
                if key not in metrics:
                    metrics[key] = torch.full((num_events, batch), math.nan, dtype=torch.float32)
                metrics[key][e] = value.cpu()
        tensors: dict[str, torch.Tensor] = {}
        for name, items in self.kept.items():
            if items:
                tensors[name] = torch.stack(items).cpu()
        if self.x_init is not None:
            tensors["x_init"] = self.x_init.cpu()
        for e, tensor in self.inputs.items():
            tensors[f"latents_in/{e}"] = tensor.cpu()
        if self.images:
            tensors["images"] = torch.stack([image for _, image in self.images]).cpu()
            tensors["image_events"] = torch.tensor([e for e, _ in self.images], dtype=torch.int64)
        meta = self._meta(tensors, sorted(metrics))
        meta.update(extra_meta)
        return Trace(meta, events, scalars, metrics, MemorySource(tensors))

    def _nominal_timesteps(self) -> tuple[list[float], list[float]]:
        schedule: Schedule | None = self.context["schedule"]
        step_t: dict[int, int] = {}
        for row in self.events:
            if row.op != _ZAG:
                step_t.setdefault(row.step, row.t_eval)
        if schedule is not None:
            step_t = dict(enumerate(schedule.timesteps))
        t_from, t_to = [], []
        for row in self.events:
            current, following = step_t.get(row.step, -1), step_t.get(row.step + 1, -1)
            if row.op == _ZAG:
                t_from.append(following)
                t_to.append(current)
            else:
                t_from.append(current)
                t_to.append(following)
        return t_from, t_to

    def _meta(self, tensors: Mapping[str, torch.Tensor], metric_names: list[str]) -> dict[str, Any]:
        rec, ctx = self.rec, self.context
        stored_shape = list(tensors["latents"].shape[2:]) if "latents" in tensors else None
        prompts = ctx["prompts"]
        if prompts is not None and len(prompts) != self.batch:
            prompts = None  # the prompts given do not describe this batch
        negative = ctx["negative_prompts"]
        if negative is not None and len(negative) == 1 < self.batch:
            negative = negative * self.batch
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "batch_size": self.batch,
            "sample_ids": list(range(self.batch)),
            "prompts": None if prompts is None else list(prompts),
            "negative_prompts": None if negative is None or len(negative) != self.batch else list(negative),
            "config": None if ctx["config"] is None else config_to_dict(ctx["config"]),
            "schedule": None if ctx["schedule"] is None else ctx["schedule"].to_dict(),
            "latent_shape": list(self.shape),
            "sampler_dtype": str(self.dtype).removeprefix("torch."),
            "storage": {
                "keep": sorted(rec.keep),
                "latent_dtype": str(rec.latent_dtype or self.dtype).removeprefix("torch."),
                "downsample": rec.downsample,
                "stored_shape": stored_shape,
            },
            "every": rec.every,
            "decode_every": rec.decode_every,
            "scalar_names": list(SCALAR_NAMES),
            "metric_names": metric_names,
            "decode_rows": self.decode_rows,
            "extra": ctx["meta"],
        }


def _as_image_tensor(images: Any) -> torch.Tensor:
    """Decoded images as a float tensor (B, C, H, W) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.detach().float()
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).float().permute(0, 3, 1, 2)
    if isinstance(images, (list, tuple)):  # PIL images
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
        return torch.from_numpy(array).float().div(255).permute(0, 3, 1, 2)
    raise TypeError(f"decode must return a tensor (B, C, H, W), an array (B, H, W, C) or PIL images, got {images!r}")


class MultiRecorder:
    """Forwards every event to several recorders (e.g. a trace and a live logger)."""

    def __init__(self, *recorders: Any) -> None:
        self.recorders = [r for r in recorders if r is not None]

    def record(self, event: Event) -> None:
        for recorder in self.recorders:
            recorder.record(event)
