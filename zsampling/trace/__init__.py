"""Traces of Z-Sampling runs: recording, the semantic gain, storage.

Record::

    from zsampling.trace import TraceRecorder, sample_with_trace

    rec = TraceRecorder(keep="scalars")                  # or keep="all"
    out = zsampling.sample(pipe, prompts, recorder=rec)
    trace = rec.trace

    out, trace = sample_with_trace(pipe, prompts, keep="all", decode_every=10, seed=0)

Analyse: ``trace.to_frame()`` (one row per sample x step x round x op),
``trace.reflections()`` (the zag rows with effective-guidance ingredients),
``trace.latents(i)``, ``trace.eps(i, "zig")``, ``trace.x0(i)``.

Effective guidance (docs/design.md, "Evaluation honesty"): ``trace.effective_guidance()``
(per step: ||g1 d + sum_r delta_r / c_i|| / ||d||, its signed parallel and its
orthogonal part) and ``trace.guidance_summary()``; see :mod:`zsampling.trace.guidance`.

Store: ``trace.save(path)`` / ``Trace.load(path)`` (one safetensors file,
JSON metadata, no pickle); :class:`TraceWriter` streams a sweep into a
directory, one file per batch plus an append-only index; :class:`TraceDir`
reads it back.

Semantic gain (docs/design.md): for every reflection (i, r) the zag row holds
||delta||, the guidance-gap term ||c_i (g1 - g2) (eps_c - eps_u)(x_i, t_i)||,
the residual ||delta - gap||, cos(delta, eps_c - eps_u), the projection of
delta on the unit guidance direction and the orthogonal remainder, and the
cumulative gain; see :data:`SCALAR_NAMES`. Everything comes from the eps the
loop already computed: recording adds zero network rows. With g1 in {0, 1}
the zig computes one branch, so the gap-term columns are NaN unless the run
uses ``branches="both"``.

Bytes per step (per sample, per event; E = T + 2 * reflections events,
e.g. 148 for SDXL's T = 50, lambda = 49): scalars 4 bytes x 14 = 56 bytes;
each kept tensor kind one latent in ``latent_dtype`` (``latents`` 1, ``eps``
2, ``x0`` 1). SDXL 1024px latents (4, 128, 128) in fp16 are 128 KiB, so
keep="all" costs 512 KiB per event and 74.1 MiB per sample (18.5 MiB with
``downsample=2``); see :func:`estimate_trace_bytes`.
"""

from zsampling.trace.data import KEEP_KINDS, SCALAR_NAMES, Trace, estimate_trace_bytes
from zsampling.trace.directory import TraceDir, TraceWriter, load_traces
from zsampling.trace.guidance import (
    GUIDANCE_COLUMNS,
    effective_guidance,
    first_order_guidance,
    guidance_summary,
    reflection_vectors,
    split_along,
)
from zsampling.trace.recorder import MultiRecorder, ScorerMetric, StepMetric, StepState, TraceRecorder
from zsampling.trace.run import expected_network_rows, sample_with_trace
from zsampling.trace.schema import EVENT_COLUMNS, OPS, SCHEMA_VERSION
from zsampling.trace.storage import TraceFormatError, read_trace_meta

__all__ = [
    "EVENT_COLUMNS",
    "GUIDANCE_COLUMNS",
    "KEEP_KINDS",
    "OPS",
    "SCALAR_NAMES",
    "SCHEMA_VERSION",
    "MultiRecorder",
    "ScorerMetric",
    "StepMetric",
    "StepState",
    "Trace",
    "TraceDir",
    "TraceFormatError",
    "TraceRecorder",
    "TraceWriter",
    "effective_guidance",
    "estimate_trace_bytes",
    "expected_network_rows",
    "first_order_guidance",
    "guidance_summary",
    "load_traces",
    "read_trace_meta",
    "reflection_vectors",
    "sample_with_trace",
    "split_along",
]
