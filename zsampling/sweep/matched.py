"""Matched baselines: plain CFG at Z-Sampling's effective guidance and network-call budget.

Why (docs/design.md, "Evaluation honesty"; "Guidance Matters", ICLR 2026): much
of a Z-Sampling gain may be stronger effective guidance bought with more
network calls. For every Z-Sampling cell of a sweep with
``matched_baselines: true`` (``zsampling sweep --matched-baselines``) the
runner derives, after the Z cell has run with its trace, up to three plain
CFG cells (lambda = 0) on the same samples -- the same prompts, seeds and
per-(prompt_index, seed) initial noise, so they pair with the Z cell -- each
with the step count raised so that its network rows per sample are the
smallest ones >= the Z cell's (within one step, 2 rows per sample):

=============================  ==============================================
``method``                     guidance scale
=============================  ==============================================
``cfg_matched_nfe``            g1 (compute matched only: "is it just more steps?")
``cfg_matched_measured``       the Z cell's measured effective guidance in the
                               signed parallel form (default): the ||d||-weighted
                               mean of g1 + sum_r <v_r, d> / ||d||^2 over its trace
                               (see :mod:`zsampling.trace.guidance`), rounded to 4
                               decimals; ``form="norm"`` uses the norm form
                               ||g1 d + sum_r v_r|| / ||d|| instead
``cfg_matched_first_order``    the first-order value g1 + rounds (g1 - g2) (2 g1 - g2)
=============================  ==============================================

Why the parallel form: plain CFG at a larger scale moves the latent only
along d = eps_c - eps_u, so the parallel form is the part of a reflection
that stronger guidance reproduces. The norm form also counts motion
orthogonal to d; with the released "official" zag much of that comes from its
one-level schedule offset, not from guidance (on the demo model its norm form
reaches ~14 at the last window step while the parallel form is ~0.5). Both
forms are recorded with every derived cell (``measured_scale_parallel``,
``measured_scale_norm``; ``measured_form`` names the one the cell used).

A Z cell whose legs differ in more than guidance (a weight gap: LoRA scales,
guidance embeddings; W2SD) is not described by an effective guidance; its
baselines are its legs applied plainly at the same rows instead:
``legs_matched_strong`` (the zig leg on every step) and
``legs_matched_step`` (the step leg on every step); no trace is needed.

A derived cell's knobs are those of a standard cell (``zigzag_steps = 0``)
with T and g replaced; g2, rounds and the zag operator are copied from the
Z cell (they do not act at lambda = 0, and keep the cell filterable by its
source). Its hash covers the kind and the source cell, so a resumed sweep
derives the same cells (the measured scale is recomputed from the trace on
disk) and skips the finished ones. Its record carries a ``matched`` entry
(source cell, scales, budgets) and the run directory gets ``matched.parquet``
(one row per derived cell).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsampling.denoisers.base import Branches
from zsampling.legs import Legs
from zsampling.sampler import expected_network_rows
from zsampling.sweep.cells import Cell, cell_identity
from zsampling.sweep.spec import SpecError, SweepSpec, stable_hash

MATCHED_METHODS: tuple[str, ...] = ("cfg_matched_nfe", "cfg_matched_measured", "cfg_matched_first_order")
WEIGHT_GAP_METHODS: tuple[str, ...] = ("legs_matched_strong", "legs_matched_step")
"""Baselines of a weight-gap (W2SD) cell: its strong (zig) leg, and its step leg, applied plainly."""
"""The ``method`` values of derived baseline cells, in run order."""

SCALE_DECIMALS = 4
"""Measured scales are rounded to this many decimals (stable hashes, readable tables)."""

MEASURED_FORMS: dict[str, str] = {"parallel": "effective_guidance_parallel", "norm": "effective_guidance"}
"""Form of the measured effective guidance -> its key in :func:`~zsampling.trace.guidance.guidance_summary`."""

DEFAULT_FORM = "parallel"
"""The form ``cfg_matched_measured`` uses unless told otherwise (what stronger CFG reproduces)."""

_INDEX_BASE = 1_000_000
"""Derived cells sort after every grid cell (order key = _INDEX_BASE + 3 * source index + kind)."""


def rows_per_step(guidance_scale: float, branches: str = "needed") -> int:
    """Network rows per sample of one plain CFG step at ``guidance_scale``."""
    return 2 if branches == "both" else Branches.for_guidance(guidance_scale).count


def matched_steps(nfe: int, guidance_scale: float, branches: str = "needed") -> int:
    """The fewest steps T' whose plain CFG rows per sample (T' x rows per step) are >= ``nfe``.

    The baseline then spends at least the Z cell's budget and less than one
    extra step more (``T' rows - nfe < rows per step``).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return max(1, math.ceil(nfe / rows_per_step(guidance_scale, branches)))


def matched_hash(spec: SweepSpec, knobs: Mapping[str, Any], kind: str, source: str, legs: Legs | None = None) -> str:
    """Stable hash of a derived cell: a grid cell's identity plus its kind and source cell."""
    return stable_hash({**cell_identity(spec, knobs, legs), "matched": kind, "source": source})


def has_weight_gap(cell: Cell) -> bool:
    """Whether the zig and zag legs differ in more than guidance (a LoRA-scale or guidance-embedding
    gap, W2SD): then the effective guidance does not describe the reflection and the baselines are
    the legs applied plainly instead (:func:`weight_gap_cells`)."""
    return dataclasses.replace(cell.legs.zig, guidance=None) != dataclasses.replace(cell.legs.zag, guidance=None)


def weight_gap_cells(spec: SweepSpec, source: Cell) -> list[tuple[Cell, dict[str, Any]]]:
    """The baselines of a weight-gap cell: plain sampling (lambda = 0) with its strong (zig) leg on
    every step, and with its step leg on every step, steps raised to the same network rows."""
    nfe = source_nfe(source, spec.branches)
    config = source.config()
    out = []
    for k, (kind, name) in enumerate(zip(WEIGHT_GAP_METHODS, ("zig", "step"), strict=True)):
        leg = getattr(source.legs, name)
        cell, info = _derived(spec, source, k, kind, nfe, config.leg_guidance(name),
                              Legs(step=dataclasses.replace(leg, guidance=None)))
        info["rule"] = (f"plain sampling (lambda = 0) with the source's {name} leg on every step, on the same "
                        "samples; steps = the fewest with rows >= the source's")
        out.append((cell, info))
    return out


def _derived(spec: SweepSpec, source: Cell, k: int, kind: str, nfe: int, scale: float,
             legs: Legs | None = None) -> tuple[Cell, dict[str, Any]]:
    """A derived standard cell (lambda = 0) at guidance ``scale`` with the fewest steps whose rows
    reach ``nfe``, and the common part of its ``matched`` record entry."""
    steps = matched_steps(nfe, scale, spec.branches)
    knobs = {**source.knobs(), "num_inference_steps": steps, "guidance_scale": scale, "zigzag_steps": 0}
    legs = legs if legs is not None else Legs()
    cell = Cell(index=_INDEX_BASE + 3 * source.index + k, hash=matched_hash(spec, knobs, kind, source.hash, legs),
                model=source.model, legs=legs, matched=kind, source=source.hash, **knobs)
    return cell, {
        "kind": kind,
        "source": source.hash,
        "source_settings": source.settings(),
        "source_nfe": nfe,
        "nfe": steps * rows_per_step(scale, spec.branches),
        "target_scale": scale,
    }


def source_nfe(cell: Cell, branches: str) -> int:
    """Network rows per sample of a Z-Sampling cell run alone."""
    return expected_network_rows(cell.config(), 1, branches)


def _check_form(form: str) -> str:
    if form not in MEASURED_FORMS:
        raise ValueError(f"form must be one of {sorted(MEASURED_FORMS)}, got {form!r}")
    return form


def matched_cells(spec: SweepSpec, source: Cell, summary: Mapping[str, Any],
                  form: str = DEFAULT_FORM) -> list[tuple[Cell, dict[str, Any]]]:
    """The baseline cells of one Z-Sampling cell and their ``matched`` record entries.

    Args:
        spec: the sweep (model, samples, branch mode).
        source: a Z-Sampling cell (lambda > 0).
        summary: its :func:`~zsampling.trace.guidance.guidance_summary`.
        form: which measured effective guidance ``cfg_matched_measured``
            uses: ``"parallel"`` (default, the signed parallel form) or
            ``"norm"`` (see :data:`MEASURED_FORMS`).

    Raises:
        ValueError: ``source`` is not a Z-Sampling cell, ``form`` is unknown,
            or the measured scale is not finite.
    """
    _check_form(form)
    if source.method != "zigzag":
        raise ValueError(f"cell {source.hash} is not a Z-Sampling cell (method {source.method!r})")
    measured = summary.get(MEASURED_FORMS[form])
    if measured is None or not math.isfinite(float(measured)):
        raise ValueError(f"cell {source.hash}: the measured effective guidance is not finite ({measured!r}); with "
                         "g1 in {0, 1} record the guidance direction with branches: both")
    g1, g2 = source.guidance_scale, source.inversion_guidance_scale
    first_order = g1 + source.rounds * (g1 - g2)
    scales = {
        "cfg_matched_nfe": float(g1),
        "cfg_matched_measured": round(float(measured), SCALE_DECIMALS),
        "cfg_matched_first_order": float(first_order),
    }
    nfe = source_nfe(source, spec.branches)
    out = []
    for k, kind in enumerate(MATCHED_METHODS):
        cell, info = _derived(spec, source, k, kind, nfe, scales[kind])
        info.update({
            "measured_scale": float(measured),
            "measured_form": form,
            "measured_scale_parallel": _float_or_none(summary.get("effective_guidance_parallel")),
            "measured_scale_norm": _float_or_none(summary.get("effective_guidance")),
            "measured_scale_window": summary.get(f"{MEASURED_FORMS[form]}_window"),
            "first_order_scale": float(first_order),
            "rule": "plain CFG (lambda = 0) on the same samples; steps = the fewest with rows >= the source's",
        })
        out.append((cell, info))
    return out


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def check_matched_spec(spec: SweepSpec, cells: Sequence[Cell]) -> None:
    """Refuse, before any model call, a spec whose matched baselines cannot be built.

    Raises:
        SpecError: no traces, no Z-Sampling cell, g1 in {0, 1} with one-branch
            zigs, or a matched step count above the model's training steps.
    """
    from zsampling.sweep import models

    zig = [cell for cell in cells if cell.method == "zigzag"]
    if not zig:
        raise SpecError("matched_baselines: the grid has no Z-Sampling cell (zigzag_steps > 0) to match")
    measured = [cell for cell in zig if not has_weight_gap(cell)]
    if measured and spec.trace is None:
        raise SpecError("matched_baselines needs the Z-Sampling cells' traces (the effective guidance is measured "
                        "from their scalars): set trace: true (or a mapping), not false")
    if spec.branches != "both":
        bad = sorted({cell.guidance_scale for cell in measured if cell.guidance_scale in (0.0, 1.0)})
        if bad:
            raise SpecError(f"matched_baselines: with guidance_scale {bad[0]:g} the zig computes one CFG branch, so "
                            "the guidance direction eps_c - eps_u (and the effective guidance) is not recorded; "
                            "set branches: both")
    steps = sorted({matched_steps(source_nfe(cell, spec.branches), 2.0, spec.branches) for cell in zig})
    try:
        models.check_steps(spec.model, models.model_kind(spec.model.name), steps)
    except SpecError as error:
        raise SpecError(f"matched_baselines: a compute-matched baseline needs {steps[-1]} steps: {error}") from None


def derive_matched(spec: SweepSpec, out: Path, cells: Sequence[Cell],
                   records: Mapping[str, Mapping[str, Any]],
                   form: str = DEFAULT_FORM) -> list[tuple[Cell, dict[str, Any]]]:
    """The baseline cells of every finished Z-Sampling cell among ``cells``.

    The measured scale (``form``: see :func:`matched_cells`) comes from the
    cell record's ``effective_guidance`` summary, else from its trace file
    (``traces/<cell>.safetensors``).

    Raises:
        SpecError: a finished Z-Sampling cell has neither (it ran without traces).
    """
    from zsampling.sweep import results as res

    _check_form(form)
    derived: list[tuple[Cell, dict[str, Any]]] = []
    for cell in cells:
        if cell.method != "zigzag" or cell.hash not in records:
            continue
        if has_weight_gap(cell):
            derived += weight_gap_cells(spec, cell)
            continue
        summary = records[cell.hash].get("effective_guidance")
        if not summary:
            path = Path(out) / res.TRACES_DIR / f"{cell.hash}.safetensors"
            if not path.is_file():
                record = res.record_path(Path(out), cell.hash)
                raise SpecError(f"matched_baselines: Z-Sampling cell {cell.hash} finished without a trace, so its "
                                f"effective guidance cannot be measured; delete {record} to rerun it with trace: true")
            from zsampling.trace import Trace, guidance_summary

            summary = guidance_summary(Trace.load(path))
        try:
            derived += matched_cells(spec, cell, summary, form)
        except ValueError as error:
            raise SpecError(f"matched_baselines: {error}") from None
    return derived
