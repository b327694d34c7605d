"""One trace file per cell, from the per-batch traces a sweep records.

Why: a cell with more samples than ``batch_size`` runs as several batches,
and :class:`~zsampling.trace.TraceRecorder` records one :class:`Trace` per
batch, while the sweep's layout is one ``traces/<cell>.safetensors`` per
cell. The batches of a cell run the same operations, so their traces share
the events table and concatenate along the sample axis.

What: :func:`concat_traces` joins traces of equal events: scalars and
metrics (E, B) along B, kept tensors (E, B, ...) along B, the initial latents
(B, ...) along B; ``meta`` gets the summed ``batch_size`` and
``decode_rows``, the concatenated prompts and sample ids 0..N-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zsampling.trace import Trace
from zsampling.trace.data import MemorySource

_SAMPLE_FIRST = ("x_init",)
_SHARED = ("image_events",)


def concat_traces(traces: Sequence[Trace]) -> Trace:
    """Concatenate traces of the same operations along the sample axis.

    Raises:
        ValueError: the traces differ in events, kept tensors or metrics.
    """
    if not traces:
        raise ValueError("need at least one trace")
    if len(traces) == 1:
        return traces[0]
    first = traces[0]
    for other in traces[1:]:
        if sorted(other.events) != sorted(first.events) or any(
                not torch.equal(other.events[name], first.events[name]) for name in first.events):
            raise ValueError("traces of different operations cannot be concatenated")
        if other.tensor_names != first.tensor_names or sorted(other.metrics) != sorted(first.metrics):
            raise ValueError("traces keep different tensors or metrics")
    scalars = {name: torch.cat([t.scalars[name] for t in traces], dim=1) for name in first.scalars}
    metrics = {name: torch.cat([t.metrics[name] for t in traces], dim=1) for name in first.metrics}
    tensors: dict[str, torch.Tensor] = {}
    for name in first.tensor_names:
        parts = [t.tensor(name) for t in traces]
        if name in _SHARED:
            tensors[name] = parts[0]
        elif name in _SAMPLE_FIRST or name.startswith("latents_in/"):
            tensors[name] = torch.cat(parts, dim=0)
        else:
            tensors[name] = torch.cat(parts, dim=1)
    total = sum(t.num_samples for t in traces)
    meta = dict(first.meta)
    meta["batch_size"] = total
    meta["sample_ids"] = list(range(total))
    for key in ("prompts", "negative_prompts"):
        values = [t.meta.get(key) for t in traces]
        meta[key] = None if any(v is None for v in values) else [p for v in values for p in v]
    meta["decode_rows"] = sum(int(t.meta.get("decode_rows") or 0) for t in traces)
    for key in ("network_rows",):
        if all(isinstance(t.meta.get(key), int) for t in traces):
            meta[key] = sum(t.meta[key] for t in traces)
    return Trace(meta, first.events, scalars, metrics, MemorySource(tensors))
