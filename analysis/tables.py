"""The results-table schema: settings columns, metric columns, labels, reference settings.

A sweep's ``results.parquet`` has one row per cell x sample with the settings
of :data:`SETTING_COLUMNS` and one float column per per-sample metric;
``cells.parquet`` has one row per cell with the same settings and set-level
metrics (e.g. ``frechet_pca``). Everything not in :data:`RESERVED_COLUMNS`
that is numeric counts as a metric, so new scorers need no change here.

Notation (docs/design.md): T = ``num_inference_steps``, g1 = ``guidance_scale``,
g2 = ``inversion_guidance_scale``, lambda = ``zigzag_steps`` (0 = standard
sampling), rounds, zag operator ("official" | "ddim") and, for "ddim", the
zag's evaluation timestep ("next" = t_{i+1}, "current" = t_i).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from zsampling.config import KNOBS, LEG_KNOBS, OPTIONAL_KNOBS, SCHEDULE_KNOB, timesteps_label

PAIR_KEYS: tuple[str, ...] = ("prompt_index", "seed")
"""Samples of different cells with the same keys share the prompt and x_T."""

SETTING_COLUMNS: tuple[str, ...] = ("model", "method", *KNOBS, *OPTIONAL_KNOBS)
"""The settings that identify a cell (besides its hash ``cell``): the sweep knobs of
:mod:`zsampling.config` (the leg knobs only appear in runs that set them)."""

RESERVED_COLUMNS: frozenset[str] = frozenset({
    "cell", *SETTING_COLUMNS, "prompt", "prompt_index", "seed", "sample_index", "nfe", "wall_time_s", "n_samples",
    "guidance_gap", "operator",
})
"""Columns that are never metrics."""

ABLATION_AXES: tuple[str, ...] = ("zigzag_steps", "inversion_guidance_scale", "num_inference_steps", "rounds")
"""The settings an ablation curve can vary (x axes)."""

AXIS_LABELS: dict[str, str] = {
    "zigzag_steps": "zigzag window \N{GREEK SMALL LETTER LAMDA} (steps that reflect)",
    "inversion_guidance_scale": "inversion guidance g2",
    "guidance_gap": "guidance gap g1 \N{MINUS SIGN} g2",
    "num_inference_steps": "steps T",
    "rounds": "reflection rounds per step",
    "nfe": "network rows per sample (NFE)",
    "guidance_scale": "guidance g1",
}
"""Axis labels in the paper's notation."""


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a results or cells table (numeric, not reserved)."""
    return [
        c for c in frame.columns
        if c not in RESERVED_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def operator_label(frame: pd.DataFrame) -> pd.Series:
    """The zag operator of each row: "official", "ddim", "euler", or "ddim (eval t_i)" / "euler (eval t_i)".

    The exact operators ("ddim", flow matching's "euler") with
    ``zag_eval_timestep == "current"`` (network evaluated at t_i, as the
    released code does) are told apart from the textbook ones (evaluated at
    t_{i+1}); "official" ignores the evaluation setting.
    """
    zag = frame["zag"].astype(str) if "zag" in frame.columns else pd.Series("official", index=frame.index)
    if "zag_eval_timestep" in frame.columns:
        current = (zag != "official") & (frame["zag_eval_timestep"].astype(str) == "current")
        zag = zag.where(~current, zag + " (eval t_i)")
    return zag.rename("operator")


OPERATOR_ORDER: tuple[str, ...] = ("official", "ddim", "ddim (eval t_i)", "euler", "euler (eval t_i)")
"""Display order of zag operators: the released code's first (the default)."""


def ordered(labels: Iterable[str]) -> list[str]:
    """Unique labels in display order: standard, then the operators of
    :data:`OPERATOR_ORDER` (bare or as "zigzag (...)"), then the rest sorted."""
    unique = list(dict.fromkeys(str(v) for v in labels))
    rank = {"standard": 0}
    for k, op in enumerate(OPERATOR_ORDER, start=1):
        rank[op] = rank[f"zigzag ({op})"] = k
    return sorted(unique, key=lambda v: (rank.get(v, len(OPERATOR_ORDER) + 1), v))


def method_label(frame: pd.DataFrame) -> pd.Series:
    """A display label per row: "standard", "zigzag (official)", "zigzag (ddim)", or the method name."""
    method = frame["method"].astype(str)
    zig = method == "zigzag"
    label = method.where(~zig, "zigzag (" + operator_label(frame) + ")")
    return label.rename("method")


STANDARD_KEYS: tuple[str, ...] = ("model", "num_inference_steps", "guidance_scale", SCHEDULE_KNOB,
                                  *(knob for knob in LEG_KNOBS if knob.startswith("step.")))
"""The settings that matter for standard sampling (lambda = 0): T, g1, the timestep schedule and the
step leg; g2, rounds, the zag operator and the zig / zag legs never act, so cells differing only in
those are the same run."""


def unique_standard(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop duplicate standard-sampling cells: keep one cell per (model, T, g1, schedule, step leg).

    A sweep crosses lambda = 0 with every other knob, so one standard run
    appears once per g2, rounds and zag value (identical samples, as the
    knobs do not act). Counting them all would multiply n and shrink every
    CI; this keeps the cell with the smallest id per :data:`STANDARD_KEYS`
    and leaves other rows untouched.
    """
    if "method" not in frame.columns or "cell" not in frame.columns:
        return frame
    standard = frame["method"] == "standard"
    if not standard.any():
        return frame
    keys = [k for k in STANDARD_KEYS if k in frame.columns]
    cells = frame.loc[standard, [*keys, "cell"]].drop_duplicates()
    keep = set(cells.sort_values("cell").drop_duplicates(keys)["cell"]) if keys else set(cells["cell"])
    return frame[~standard | frame["cell"].isin(keep)]


def cell_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: ``cell``, the settings columns present and the mean NFE."""
    settings = [c for c in SETTING_COLUMNS if c in results.columns]
    cells = results.drop_duplicates("cell")[["cell", *settings]].reset_index(drop=True)
    if "nfe" in results.columns:
        cells = cells.merge(results.groupby("cell", sort=False)["nfe"].mean().reset_index(), on="cell")
    return cells


def _mode(values: pd.Series, prefer: Any = None, tie: str = "max") -> Any:
    """The most frequent value; ``prefer`` wins when present; ties go to the max (or min)."""
    values = values.dropna()
    if values.empty:
        return None
    if prefer is not None:
        hits = values[np.isclose(values.astype(float), prefer)] if pd.api.types.is_numeric_dtype(values) \
            else values[values == prefer]
        if not hits.empty:
            return hits.iloc[0]
    counts = values.value_counts()
    best = counts[counts == counts.max()].index
    return max(best) if tie == "max" else min(best)


def reference_settings(results: pd.DataFrame) -> dict[str, Any]:
    """The settings an ablation holds fixed while it varies one axis.

    Chosen per cell (not per sample) among the Z-Sampling cells, following
    the paper's defaults where the grid has them: T = the most common T (ties:
    the largest), g1 = the most common g1 at that T, g2 = 0 if present (null
    inversion) else the most common, rounds = 1 if present else the smallest,
    lambda = the largest window at that T (the paper's full window T - 1).
    With no Z-Sampling cells, T and g1 come from the standard cells. A run
    that varies the timestep schedule holds it at the scheduler's own
    spacing if present, else the most common, and picks T within it.

    Returns a dict with the keys ``num_inference_steps``, ``guidance_scale``,
    ``inversion_guidance_scale``, ``zigzag_steps``, ``rounds`` and ``model``
    (the most common model; ablations are computed per model anyway), and
    ``timesteps`` when the run has that column.
    """
    cells = cell_table(results)
    zig = cells[cells["method"] == "zigzag"]
    pool = zig if not zig.empty else cells[cells["method"] == "standard"]
    if pool.empty:
        pool = cells
    schedule = {}
    if SCHEDULE_KNOB in pool.columns:
        schedule = {SCHEDULE_KNOB: _mode(pool[SCHEDULE_KNOB], prefer=timesteps_label(None))}
        pool = pool[pool[SCHEDULE_KNOB] == schedule[SCHEDULE_KNOB]]
        zig = zig[zig[SCHEDULE_KNOB] == schedule[SCHEDULE_KNOB]]
    steps = _mode(pool["num_inference_steps"])
    at_t = pool[pool["num_inference_steps"] == steps]
    ref: dict[str, Any] = {
        "model": _mode(pool["model"]) if "model" in pool else None,
        "num_inference_steps": int(steps) if steps is not None else None,
        "guidance_scale": float(_mode(at_t["guidance_scale"])),
        **schedule,
    }
    if not zig.empty:
        at_g = at_t[np.isclose(at_t["guidance_scale"].astype(float), ref["guidance_scale"])]
        ref["inversion_guidance_scale"] = float(_mode(at_g["inversion_guidance_scale"], prefer=0.0))
        ref["rounds"] = int(_mode(at_g["rounds"], prefer=1, tie="min"))
        ref["zigzag_steps"] = int(at_g["zigzag_steps"].max())
    else:
        ref.update(inversion_guidance_scale=None, rounds=None, zigzag_steps=None)
    return ref


def at_reference_schedule(results: pd.DataFrame) -> pd.DataFrame:
    """The rows at each model's reference timestep schedule (all rows when the run has one schedule)."""
    if SCHEDULE_KNOB not in results.columns or results[SCHEDULE_KNOB].nunique() < 2:
        return results
    keep = [by_model[by_model[SCHEDULE_KNOB] == reference_settings(by_model)[SCHEDULE_KNOB]]
            for _, by_model in results.groupby("model", sort=False)]
    return pd.concat(keep).sort_index()


def fixed_except(reference: Mapping[str, Any], *free: str) -> dict[str, Any]:
    """The reference settings as a selector, leaving the ``free`` axes (and model) unconstrained.

    ``guidance_gap`` frees ``inversion_guidance_scale`` (the gap is g1 - g2).
    """
    free_set = {"model", *free}
    if "guidance_gap" in free_set:
        free_set.add("inversion_guidance_scale")
    return {k: v for k, v in reference.items() if k not in free_set and v is not None}
