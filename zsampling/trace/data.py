"""The :class:`Trace` data model: per-sample, per-operation records of one run.

A trace of a batch of B samples holds E events (one per zig, zag and ordinary
step, in loop order) and, for each, B values of every scalar. Layout:

* ``events``: one 1-D tensor of length E per column of :data:`EVENT_COLUMNS`
  (op code, step i, round r, timesteps from/to/evaluated, alphas, guidance,
  reflection coefficient c_i).
* ``scalars``: one (E, B) float32 tensor per name of :data:`SCALAR_NAMES`;
  NaN where a value is undefined for the op (e.g. the gain on a zig row) or
  could not be computed without extra network rows.
* ``metrics``: one (E, B) float32 tensor per plug-in metric value, NaN on
  the rows where the metric did not run.
* large tensors (kept only on request): ``latents`` (E, B, ...) = each
  event's output latent, ``x_init`` (B, ...) = the initial latent,
  ``eps_uncond`` / ``eps_cond`` (E, B, ...) (NaN where the branch was not
  computed), ``x0`` (E, B, ...) = the predicted x0 of each event,
  ``images`` (D, B, C, H, W) uint8 = decoded x0 at the events listed in
  ``image_events`` (D,).

An event's input latent is the previous event's output (the loop chains
them), so only outputs are stored; :meth:`Trace.latents` rebuilds inputs.
Large tensors of a trace loaded from disk are read lazily, slice by slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from zsampling.denoisers.base import EpsPair
from zsampling.trace import storage
from zsampling.trace.schema import EVENT_COLUMNS, OPS

if TYPE_CHECKING:
    import pandas as pd

SCALAR_NAMES: tuple[str, ...] = (
    "latent_norm",
    "latent_std",
    "eps_norm",
    "guidance_signal",
    "x0_norm",
    "x0_change",
    "gain_norm",
    "gap_norm",
    "residual_norm",
    "gain_cos",
    "gain_parallel",
    "gain_orthogonal",
    "zig_guidance_signal",
    "gain_cum_norm",
)
"""Built-in per-event scalars (L2 norms over all latent elements of a sample).

On every row:

* ``latent_norm``, ``latent_std``: of the event's output latent.
* ``eps_norm``: ||eps_g|| of the guided eps that drove the move.
* ``guidance_signal``: ||eps_c - eps_u|| at the event's input (NaN when the
  operation computed only one branch).
* ``x0_norm``: ||x0_hat|| with x0_hat = (x_in - sqrt(1 - a_from) eps_g) /
  sqrt(a_from), the move's own clean estimate.
* ``x0_change`` (zig and step rows): ||x0_hat - x0_hat(step i-1)||, the change
  of the predicted x0 since the previous ordinary step (NaN at step 0).

On zag rows, i.e. per reflection (i, r), with x = x_i before the zig, d =
(eps_c - eps_u)(x_i, t_i) from the zig and delta = x(after zag) - x:

* ``gain_norm`` ||delta||; ``gap_norm`` ||c_i (g1 - g2) d|| (the guidance-gap
  term, exactly 0 when g1 == g2); ``residual_norm`` ||delta - gap term||.
* ``gain_cos``: cos(delta, d); ``gain_parallel``: <delta, d / ||d||> (signed);
  ``gain_orthogonal``: ||delta - gain_parallel d / ||d|| ||.
* ``zig_guidance_signal``: ||d|| (the zig row's guidance_signal, repeated
  here so effective guidance needs only zag rows).
* ``gain_cum_norm``: ||sum of delta over all reflections so far||.

Effective guidance ingredients (the perturbation in eps units is v = delta /
c_i): ||v|| = gain_norm / |c|, its part along d is gain_parallel / c (a
signed length; ~ (g1 - g2) ||d|| for the ideal operator) and its orthogonal
part gain_orthogonal / |c|; divide by zig_guidance_signal for a scale.
:meth:`Trace.effective_guidance` combines them per step with the step's own
g1 (||g1 d + sum_r v_r|| / ||d||; see :mod:`zsampling.trace.guidance`).

When g1 is 0 or 1 the zig computes one branch only, so d and everything that
needs it are NaN; ``zsampling.sample(..., branches="both")`` buys them (one
extra network row per sample for every zig and step, counted in
``network_rows``).
"""

KEEP_KINDS: tuple[str, ...] = ("scalars", "latents", "eps", "x0")
"""What a trace can keep: scalars (always), each event's output latent, its
eps_u / eps_c, its predicted x0."""


def resolve_keep(keep: str | Iterable[str]) -> frozenset[str]:
    """Validate a ``keep`` spec: "scalars", "all", or a collection of :data:`KEEP_KINDS`."""
    if isinstance(keep, str):
        kinds = set(KEEP_KINDS) if keep == "all" else {keep}
    else:
        kinds = set(keep)
    kinds.add("scalars")
    unknown = kinds - set(KEEP_KINDS)
    if unknown:
        raise ValueError(f"keep must be 'all' or a subset of {KEEP_KINDS}, got unknown {sorted(unknown)}")
    return frozenset(kinds)


Op = Literal["zig", "zag", "step"]


class TensorSource(Protocol):
    """Where a trace's large tensors live (memory or a safetensors file)."""

    def names(self) -> list[str]: ...

    def get(self, name: str, index: int | slice | None = None) -> torch.Tensor: ...

    def shape(self, name: str) -> tuple[int, ...]: ...


class MemorySource:
    """Large tensors held in memory (a freshly recorded trace)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def get(self, name: str, index: int | slice | None = None) -> torch.Tensor:
        tensor = self._tensors[name]
        return tensor if index is None else tensor[index]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)


class Trace:
    """Per-sample, per-operation records of one Z-Sampling run (one batch).

    Build one with :class:`zsampling.trace.TraceRecorder` or
    :func:`zsampling.trace.sample_with_trace`; persist it with :meth:`save`
    and :meth:`load`. ``meta`` is plain JSON (config, prompts, seeds,
    versions, storage settings, network rows).
    """

    def __init__(
        self,
        meta: dict[str, Any],
        events: Mapping[str, torch.Tensor],
        scalars: Mapping[str, torch.Tensor],
        metrics: Mapping[str, torch.Tensor] | None = None,
        tensors: TensorSource | None = None,
    ) -> None:
        self.meta = meta
        self.events = dict(events)
        self.scalars = dict(scalars)
        self.metrics = dict(metrics or {})
        self._tensors: TensorSource = tensors if tensors is not None else MemorySource({})
        self._index: dict[tuple[int, str, int], int] | None = None

    # ------------------------------------------------------------------ shape
    @property
    def num_events(self) -> int:
        """E, the number of recorded operations."""
        return int(self.events["op"].shape[0])

    @property
    def num_samples(self) -> int:
        """B, the number of samples in the batch."""
        return int(self.meta["batch_size"])

    @property
    def num_steps(self) -> int:
        """T, the number of ordinary steps recorded."""
        return int((self.events["op"] == OPS.index("step")).sum())

    @property
    def prompts(self) -> list[str] | None:
        return self.meta.get("prompts")

    @property
    def sample_ids(self) -> list[int]:
        """Sample identifiers (global across a streamed sweep)."""
        return list(self.meta.get("sample_ids") or range(self.num_samples))

    @property
    def config(self) -> dict[str, Any] | None:
        """The run's :class:`~zsampling.ZigzagConfig` as a dict (None if unknown)."""
        return self.meta.get("config")

    @property
    def tensor_names(self) -> list[str]:
        """Names of the large tensors kept (``latents``, ``eps_cond``, ...)."""
        return self._tensors.names()

    @property
    def ops(self) -> list[str]:
        return [OPS[int(code)] for code in self.events["op"]]

    def __repr__(self) -> str:
        return (
            f"Trace(samples={self.num_samples}, steps={self.num_steps}, events={self.num_events}, "
            f"tensors={self.tensor_names}, metrics={sorted(self.metrics)})"
        )

    # -------------------------------------------------------------- indexing
    def event_index(self, step: int, op: Op = "step", round: int | None = None) -> int:
        """Index e of the event (step i, op, round r).

        ``round`` defaults to 0 for zig/zag and to the step's own round for
        "step" (``rounds`` if the step reflected, else 0).
        """
        if self._index is None:
            ops, steps, rounds = self.events["op"].tolist(), self.events["step"].tolist(), self.events["round"].tolist()
            self._index = {}
            for e, (code, i, r) in enumerate(zip(ops, steps, rounds, strict=True)):
                self._index[(i, OPS[code], r)] = e
                if OPS[code] == "step":
                    self._index[(i, "step", -1)] = e
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        key = (step, op, (-1 if op == "step" else 0) if round is None else round)
        if key not in self._index:
            raise KeyError(f"no {op} event at step {step}, round {round} in this trace")
        return self._index[key]

    def _first_event(self, step: int) -> int:
        steps = self.events["step"]
        hits = (steps == step).nonzero()
        if len(hits) == 0:
            raise KeyError(f"step {step} is not in this trace (0..{self.num_steps - 1}, or {self.num_steps} = final)")
        return int(hits[0])

    # --------------------------------------------------------------- tensors
    def tensor(self, name: str, event: int | slice | None = None) -> torch.Tensor:
        """A large tensor (or a slice of it along the event axis), read lazily."""
        if name not in self._tensors.names():
            raise KeyError(
                f"tensor {name!r} was not kept; this trace has {self.tensor_names} "
                "(record with keep=('scalars', 'latents', 'eps', 'x0') or keep='all')"
            )
        return self._tensors.get(name, event)

    def latents(self, step: int, op: Op | None = None, round: int | None = None) -> torch.Tensor:
        """Latents (B, ...) in the storage dtype.

        ``op=None``: x_i, the state at t_i before step i's first operation
        (``step == num_steps`` gives the final latents). With ``op``: that
        operation's output (e.g. ``op="zag"``: x_i after reflection ``round``).
        """
        if op is not None:
            return self.tensor("latents", self.event_index(step, op, round))
        if step == self.num_steps:
            return self.tensor("latents", self.num_events - 1)
        return self.latents_in(self._first_event(step))

    def latents_in(self, event: int) -> torch.Tensor:
        """The input latent of event ``event`` (the previous event's output)."""
        name = f"latents_in/{event}"
        if name in self._tensors.names():
            return self._tensors.get(name)
        if event == 0:
            return self.tensor("x_init")
        return self.tensor("latents", event - 1)

    def eps(self, step: int, op: Op = "step", round: int | None = None) -> EpsPair:
        """eps_u / eps_c that the operation computed (None for a branch it skipped)."""
        e = self.event_index(step, op, round)
        uncond, cond = self.tensor("eps_uncond", e), self.tensor("eps_cond", e)
        return EpsPair(uncond=None if _all_nan(uncond) else uncond, cond=None if _all_nan(cond) else cond)

    def x0(self, step: int, op: Op = "step", round: int | None = None) -> torch.Tensor:
        """The operation's predicted x0 (B, ...)."""
        return self.tensor("x0", self.event_index(step, op, round))

    def images(self, step: int | None = None) -> torch.Tensor:
        """Decoded predicted-x0 images (B, C, H, W) uint8 of ordinary step ``step``
        (all decoded steps, (D, B, C, H, W), when None)."""
        if step is None:
            return self.tensor("images")
        event = self.event_index(step, "step")
        decoded = self.tensor("image_events").tolist()
        if event not in decoded:
            raise KeyError(f"step {step} was not decoded; decoded steps: {self.decoded_steps}")
        return self.tensor("images", decoded.index(event))

    @property
    def decoded_steps(self) -> list[int]:
        """Steps whose predicted x0 was decoded to pixels."""
        if "image_events" not in self._tensors.names():
            return []
        steps = self.events["step"]
        return [int(steps[e]) for e in self.tensor("image_events").tolist()]

    # ----------------------------------------------------------------- frame
    def to_frame(self, *, prompts: bool = True) -> pd.DataFrame:
        """A tidy DataFrame: one row per sample x event (step, round, op).

        Columns: ``sample`` (id), ``prompt`` (if known), the event columns
        (:data:`EVENT_COLUMNS`, ``op`` as a categorical), every scalar of
        :data:`SCALAR_NAMES` and every metric. Undefined values are NaN.
        """
        import pandas as pd

        num_events, batch = self.num_events, self.num_samples
        columns: dict[str, Any] = {
            "sample": np.repeat(np.asarray(self.sample_ids, dtype=np.int64), num_events),
        }
        if prompts and self.prompts is not None:
            columns["prompt"] = pd.Categorical(np.repeat(np.asarray(self.prompts, dtype=object), num_events))
        for name in EVENT_COLUMNS:
            values = np.tile(self.events[name].numpy(), batch)
            columns[name] = pd.Categorical.from_codes(values, OPS) if name == "op" else values
        names = [n for n in SCALAR_NAMES if n in self.scalars] + sorted(set(self.scalars) - set(SCALAR_NAMES))
        for name in names:
            columns[name] = self.scalars[name].t().reshape(-1).numpy()
        for name in sorted(self.metrics):
            columns[name] = self.metrics[name].t().reshape(-1).numpy()
        return pd.DataFrame(columns)

    def reflections(self) -> pd.DataFrame:
        """The zag rows of :meth:`to_frame` (one per sample x reflection) with
        the effective-guidance ingredients in eps units: ``v_norm`` = ||delta|| /
        |c|, ``v_parallel`` = gain_parallel / c, ``v_orthogonal`` =
        gain_orthogonal / |c|."""
        frame = self.to_frame()
        frame = frame[frame["op"] == "zag"].reset_index(drop=True)
        frame["v_norm"] = frame["gain_norm"] / frame["c"].abs()
        frame["v_parallel"] = frame["gain_parallel"] / frame["c"]
        frame["v_orthogonal"] = frame["gain_orthogonal"] / frame["c"].abs()
        return frame

    def effective_guidance(self) -> pd.DataFrame:
        """Per-step effective guidance and the split of each gain along / across
        eps_c - eps_u, one row per sample x ordinary step (from the scalars; no
        kept tensors needed). See :func:`zsampling.trace.guidance.effective_guidance`."""
        from zsampling.trace.guidance import effective_guidance

        return effective_guidance(self)

    def guidance_summary(self) -> dict[str, Any]:
        """The run's effective guidance in a few numbers (the ||d||-weighted mean
        the matched baselines use, the window mean, the first-order value g1 +
        rounds (g1 - g2), ...). See :func:`zsampling.trace.guidance.guidance_summary`."""
        from zsampling.trace.guidance import guidance_summary

        return guidance_summary(self)

    # --------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write the trace to one safetensors file (atomically: temp file +
        os.replace). Tensors go in the safetensors body, everything else as
        JSON in its header; no pickle."""
        return storage.save_trace(self, path)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = False) -> Trace:
        """Open a trace written by :meth:`save`.

        Events, scalars and metrics are read (and their checksums checked);
        large tensors stay on disk and are read slice by slice on access.
        ``verify=True`` also checks the checksums of the large tensors (reads
        them all once). Raises :class:`~zsampling.trace.TraceFormatError` for
        anything that is not a valid trace of this schema version.
        """
        return cls(*storage.read_trace(path, verify=verify))

    def verify(self) -> None:
        """Check the checksums of a loaded trace's large tensors (reads them
        once); a no-op for a trace in memory. Raises TraceFormatError."""
        verify = getattr(self._tensors, "verify", None)
        if verify is not None:
            verify()

    def with_meta(self, **updates: Any) -> Trace:
        """A shallow copy with ``meta`` updated (tensors shared)."""
        return Trace({**self.meta, **updates}, self.events, self.scalars, self.metrics, self._tensors)


def _all_nan(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and bool(torch.isnan(tensor).all())


def estimate_trace_bytes(
    latent_shape: Sequence[int],
    num_inference_steps: int,
    reflections: int,
    *,
    batch_size: int = 1,
    keep: str | Iterable[str] = "scalars",
    latent_dtype: torch.dtype = torch.float16,
    downsample: int | None = None,
    num_metrics: int = 0,
) -> int:
    """Bytes a trace occupies (in memory and, up to a small JSON header, on disk).

    Per event and sample: 4 bytes per scalar (len(SCALAR_NAMES) + metrics)
    and, per kept kind, one latent in ``latent_dtype`` (``latents``: 1,
    ``eps``: 2 (uncond and cond), ``x0``: 1), spatially divided by
    ``downsample**2``; plus one initial latent per sample with ``latents``.
    Events per sample: ``num_inference_steps + 2 * reflections``.

    Example (SDXL 1024px, latent (4, 128, 128), fp16, T = 50, lambda = 49,
    rounds = 1, keep="all"): 148 events x 4 x 128 KiB + 128 KiB = 74.1 MiB
    per sample; ``downsample=2`` gives 18.5 MiB; scalars only 8.3 KB.
    """

    kinds = resolve_keep(keep)
    shape = list(latent_shape)
    if downsample:
        shape = shape[:-2] + [shape[-2] // downsample, shape[-1] // downsample]  # avg_pool2d floors
    elements = int(np.prod(shape))
    item = torch.empty((), dtype=latent_dtype).element_size()
    events = num_inference_steps + 2 * reflections
    per_event = 4 * (len(SCALAR_NAMES) + num_metrics)
    tensors_per_event = ("latents" in kinds) + 2 * ("eps" in kinds) + ("x0" in kinds)
    per_event += tensors_per_event * elements * item
    # events table: int8 op, 2 x int32, 3 x int64, 4 x float64 per event
    table = events * (1 + 8 + 24 + 32)
    initial = elements * item if "latents" in kinds else 0
    return batch_size * (events * per_event + initial) + table
