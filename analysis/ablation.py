"""Ablation curves: a metric against lambda, g2 (or the gap g1 - g2), T or rounds.

Why: the paper's ablations show how the prompt information Z-Sampling
injects grows with the zigzag window lambda and the guidance gap g1 - g2,
and how it behaves with the step count T and the number of reflection
rounds. Each point here is a mean over samples with a seeded 95 % bootstrap
CI, computed per model (and per any other grouping, e.g. prompt), with the
zag operator as a hue so that the released code's operator ("official") and
the paper's DDIM inversion ("ddim") can be compared on the same axes.

Standard sampling enters each curve where it belongs: as lambda = 0 on the
lambda axis (in every operator's curve, since it has no zag), as its own
curve on the T axis, and as a reference level (x = NaN, ``method ==
"standard"``) on the g2, gap and rounds axes.

Set-level metrics (one value per cell, e.g. ``frechet_pca`` from
``cells.parquet``) are added when a cells table is given: mean = the value,
no CI, n = the cell's sample count, ``level == "set"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from analysis.compare import select
from analysis.stats import N_RESAMPLES, SEED, summarize
from analysis.tables import (
    ABLATION_AXES,
    fixed_except,
    metric_columns,
    operator_label,
    reference_settings,
    unique_standard,
)

AblationAxis = Literal["zigzag_steps", "inversion_guidance_scale", "guidance_gap", "num_inference_steps", "rounds"]

CURVE_COLUMNS: tuple[str, ...] = ("metric", "level", "method", "operator", "mean", "ci_low", "ci_high", "n", "unit",
                                   "n_clusters")


def ablation_curve(
    results: pd.DataFrame,
    x: AblationAxis,
    metrics: Sequence[str] | None = None,
    *,
    by: Sequence[str] = ("model",),
    fixed: Mapping[str, Any] | Literal["reference"] | None = "reference",
    include_standard: bool = True,
    cells: pd.DataFrame | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Mean metric (95 % bootstrap CI) against one ablation axis, per operator.

    Args:
        results: per-sample results (one row per cell x sample).
        x: the varied setting: ``zigzag_steps`` (lambda),
            ``inversion_guidance_scale`` (g2), ``guidance_gap`` (g1 - g2),
            ``num_inference_steps`` (T) or ``rounds``.
        metrics: per-sample metric columns (default: all).
        by: grouping columns (facets), e.g. ``("model",)`` or
            ``("model", "prompt")``.
        fixed: settings held fixed: "reference" (the other axes at
            :func:`analysis.tables.reference_settings`), a selector mapping
            (see :func:`analysis.compare.select`), or None (no filter).
        include_standard: add standard sampling (see the module docstring).
        cells: a cells table whose set-level metrics to add (same selection).
        seed, n_resamples: bootstrap settings.

    Returns:
        Long format: ``by`` columns, ``x`` (and ``guidance_scale`` on the g2
        and gap axes), ``metric``, ``level`` ("sample" | "set"), ``method``
        ("zigzag" | "standard"), ``operator`` (the hue), ``mean``,
        ``ci_low``, ``ci_high``, ``n``, ``unit`` ("prompt" when prompts repeat
        and whole prompts were resampled, else "sample") and ``n_clusters``.
        Sorted by group, operator, x.
    """
    if x not in (*ABLATION_AXES, "guidance_gap"):
        raise ValueError(f"x must be one of {(*ABLATION_AXES, 'guidance_gap')}, got {x!r}")
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    by = list(by)
    if isinstance(fixed, str):
        if fixed != "reference":
            raise ValueError(f"fixed must be 'reference', a mapping or None, got {fixed!r}")
        fixed = fixed_except(reference_settings(results), x)
    fixed = dict(fixed or {})
    frames = [_with_x(_curve_rows(results, x, fixed, include_standard), x)]
    keys = [*by, *(["guidance_scale"] if x in ("inversion_guidance_scale", "guidance_gap") else []), x,
            "method", "operator"]
    per_sample = []
    rows = frames[0]
    for metric in metrics:
        if metric not in rows.columns:
            continue
        if rows.empty:
            continue
        summary = summarize(rows, keys, metric, seed=seed, n_resamples=n_resamples, cluster="prompt_index")
        summary.insert(0, "metric", metric)
        summary["level"] = "sample"
        per_sample.append(summary)
    if cells is not None:
        set_rows = _with_x(_curve_rows(cells, x, fixed, include_standard), x)
        for metric in metric_columns(cells):
            if metric in metrics or metric not in set_rows.columns:
                continue
            part = set_rows[[*keys, metric, *(["n_samples"] if "n_samples" in set_rows else [])]].copy()
            part = part[np.isfinite(part[metric].astype(float))]
            summary = part.groupby(keys, dropna=False, observed=True, sort=True).agg(
                mean=(metric, "mean"), n=("n_samples", "sum") if "n_samples" in part else (metric, "size"),
            ).reset_index()
            summary["ci_low"] = np.nan
            summary["ci_high"] = np.nan
            summary["unit"] = "set (no interval)"
            summary["n_clusters"] = 0
            summary.insert(0, "metric", metric)
            summary["level"] = "set"
            per_sample.append(summary)
    columns = [*by, *(["guidance_scale"] if x in ("inversion_guidance_scale", "guidance_gap") else []), x,
               *CURVE_COLUMNS]
    if not per_sample:
        return pd.DataFrame(columns=columns)
    out = pd.concat(per_sample, ignore_index=True)[columns]
    out["n"] = out["n"].astype(int)
    order = {m: k for k, m in enumerate(pd.unique(out["metric"]))}  # per-sample metrics first, then set-level
    out = out.assign(_order=out["metric"].map(order))
    out = out.sort_values([*by, "_order", "operator", x], na_position="first", kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def _curve_rows(frame: pd.DataFrame, x: str, fixed: Mapping[str, Any], include_standard: bool) -> pd.DataFrame:
    """The rows of one curve: Z-Sampling at ``fixed``, plus standard where it belongs."""
    frame = unique_standard(frame)
    zig = frame[frame["method"] == "zigzag"]
    zig = select(zig, **fixed).assign(operator=lambda f: operator_label(f), method="zigzag")
    parts = [zig]
    operators = sorted(zig["operator"].unique()) or ["official"]
    if include_standard:
        standard_fixed = {k: v for k, v in fixed.items() if k in ("num_inference_steps", "guidance_scale", "model")}
        if x == "num_inference_steps":
            standard_fixed.pop("num_inference_steps", None)
        std = select(frame[frame["method"] == "standard"], **standard_fixed)
        if not std.empty:
            if x == "zigzag_steps":  # lambda = 0 of every operator's curve
                parts += [std.assign(zigzag_steps=0, method="standard", operator=op) for op in operators]
            elif x == "num_inference_steps":
                parts.append(std.assign(method="standard", operator="standard"))
            else:  # a reference level
                parts.append(std.assign(method="standard", operator="standard", **{x: np.nan}))
    rows = pd.concat(parts, ignore_index=True) if parts else zig
    return rows


def _with_x(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Add the derived axis ``guidance_gap`` = g1 - g2 (NaN on standard rows)."""
    if x == "guidance_gap":
        gap = rows["guidance_scale"].astype(float) - rows["inversion_guidance_scale"].astype(float)
        rows = rows.assign(guidance_gap=gap.where(rows["method"] == "zigzag", np.nan))
    if x == "inversion_guidance_scale":
        rows = rows.assign(inversion_guidance_scale=rows["inversion_guidance_scale"].where(
            rows["method"] == "zigzag", np.nan).astype(float))
    return rows
