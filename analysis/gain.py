"""Semantic gain of Z-Sampling's reflections: per step, cumulative, decomposed.

Notation (docs/design.md): a reflection at step i moves x_i by
``delta_i = x_i(after zag) - x_i(before)``. With the "ddim" operator it
splits exactly into the guidance-gap term and an inversion residual,

    delta_i = c_i (g1 - g2) (eps_c - eps_u)(x_i, t_i)  +  residual_i,
    c_i = sqrt(ab[t_i] / ab[t_{i+1}]) sqrt(1 - ab[t_{i+1}]) - sqrt(1 - ab[t_i]),

and for the "official" operator the same gap term is recorded and the
residual is delta minus it. The trace stores the norms of the three vectors,
the projection of delta on the unit guidance direction d / ||d|| (d = eps_c -
eps_u) and the orthogonal remainder, and ||sum of delta so far||.

Why these views: the paper's theory says each reflection injects prompt
information proportional to the gap g1 - g2, and that Z-Sampling
*accumulates* it step by step; the residual should be small next to the gap
term (it vanishes with the step size). :func:`semantic_gain` puts the
per-reflection numbers in one table, with the projection re-signed so that
positive means "along the gap term" (c_i < 0, so the raw projection on d is
negative when the gain follows the prompt). :func:`injection_schedule` puts
the stepwise accumulation beside the alternative the theory compares it
with: injecting the same total gap budget once, at the end of the window,
each term first carried to that noise level with the DDIM step's
first-order factor (so "same budget" holds at one level).
:func:`summed_gap` computes that one-shot injection vector from a trace with
eps kept (so a notebook can add it to a standard run's latent and score the
outcome), and :func:`injection_comparison` compares the two outcome tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from analysis.compare import compare
from analysis.stats import N_RESAMPLES, SEED, summarize
from analysis.tables import PAIR_KEYS

GAIN_COLUMNS: tuple[str, ...] = (
    "gain_norm", "gap_norm", "residual_norm", "gain_along_gap", "gain_orthogonal", "gap_share",
    "cum_gain_norm", "cum_gap_budget", "cum_gain_sum", "cum_along_gap",
)
"""Columns :func:`semantic_gain` adds per reflection (see its docstring)."""

GAIN_QUANTITIES: dict[str, str] = {
    "gain_norm": "||\N{GREEK SMALL LETTER DELTA}|| (total gain)",
    "gap_norm": "||gap term|| c(g1\N{MINUS SIGN}g2)(\N{GREEK SMALL LETTER EPSILON}c\N{MINUS SIGN}"
                "\N{GREEK SMALL LETTER EPSILON}u)",
    "residual_norm": "||residual||",
    "gain_along_gap": "\N{GREEK SMALL LETTER DELTA} along gap direction",
    "gain_orthogonal": "\N{GREEK SMALL LETTER DELTA} orthogonal to guidance",
}
"""Per-step quantities (column -> legend label) of the semantic-gain figure."""

SCHEDULES: tuple[str, ...] = (
    "stepwise (Z-Sampling): cumulative gap budget, carried to the window's end",
    "end-to-end injection: the same carried budget once",
    "recorded ||\N{GREEK CAPITAL LETTER SIGMA}\N{GREEK SMALL LETTER DELTA}|| (Z-Sampling, not carried)",
)
"""Curves of :func:`injection_schedule`."""


def semantic_gain(trace_frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sample x reflection (step i, round r) with the gain decomposition.

    Args:
        trace_frame: ``Trace.to_frame()`` (optionally with extra id columns
            such as ``cell``, kept as they are).

    Returns:
        The zag rows with ``g1`` (the zig's guidance), ``g2`` (the zag's),
        ``guidance_gap`` = g1 - g2, the trace's norms (``gain_norm``,
        ``gap_norm``, ``residual_norm``, ``gain_parallel``,
        ``gain_orthogonal``, ``gain_cos``, ``gain_cum_norm``) and:

        * ``gain_along_gap``: the projection of delta on the unit direction
          of the gap term, ``gain_parallel * sign(c (g1 - g2))`` (positive:
          the gain follows the prompt as the theory predicts);
        * ``gap_share``: ||gap term|| / ||delta||;
        * ``cum_gain_norm``: ||sum of delta so far|| (the realised
          accumulated gain, = ``gain_cum_norm``);
        * ``cum_gap_budget``: sum of ||gap term|| so far (the injected budget);
        * ``cum_gain_sum``: sum of ||delta|| so far;
        * ``cum_along_gap``: sum of ``gain_along_gap`` so far;
        * ``a_step_from``, ``a_step_to``: ab at the ordinary step's start
          and end (t_i and t_{i+1}), the levels :func:`injection_schedule`
          carries the gap terms with.

        ``reflection`` numbers the reflections of a sample in loop order.
    """
    required = {"op", "sample", "step", "round", "guidance", "c", "gain_norm", "gap_norm", "residual_norm",
                "gain_parallel", "gain_orthogonal"}
    missing = sorted(required - set(trace_frame.columns))
    if missing:
        raise KeyError(f"trace frame lacks columns {missing}; pass Trace.to_frame()")
    ids = [c for c in trace_frame.columns if c in ("cell", "model", "run")]
    frame = trace_frame.assign(op=trace_frame["op"].astype(str))
    zig = frame[frame["op"] == "zig"][[*ids, "sample", "step", "round", "guidance"]].rename(columns={"guidance": "g1"})
    zag = frame[frame["op"] == "zag"].rename(columns={"guidance": "g2"})
    gain = zag.merge(zig, on=[*ids, "sample", "step", "round"], how="left")
    gain = gain.sort_values([*ids, "sample", "step", "round"]).reset_index(drop=True)
    gain["guidance_gap"] = gain["g1"] - gain["g2"]
    sign = np.sign(gain["c"].to_numpy(dtype=np.float64) * gain["guidance_gap"].to_numpy(dtype=np.float64))
    sign = np.where(sign == 0, 1.0, sign)
    gain["gain_along_gap"] = gain["gain_parallel"] * sign
    with np.errstate(divide="ignore", invalid="ignore"):
        gain["gap_share"] = gain["gap_norm"] / gain["gain_norm"]
    grouped = gain.groupby([*ids, "sample"], sort=False, observed=True)
    gain["reflection"] = grouped.cumcount()
    gain["cum_gain_norm"] = gain["gain_cum_norm"] if "gain_cum_norm" in gain else np.nan
    gain["cum_gap_budget"] = grouped["gap_norm"].cumsum()
    gain["cum_gain_sum"] = grouped["gain_norm"].cumsum()
    gain["cum_along_gap"] = grouped["gain_along_gap"].cumsum()
    steps = frame[frame["op"] == "step"][[*ids, "sample", "step", "a_from", "a_to"]]
    gain = gain.merge(steps.rename(columns={"a_from": "a_step_from", "a_to": "a_step_to"}),
                      on=[*ids, "sample", "step"], how="left")
    keep = [*ids, "sample", *(["prompt"] if "prompt" in gain else []), "reflection", "step", "round", "t_from",
            "t_to", "a_step_from", "a_step_to", "c", "g1", "g2", "guidance_gap", "gain_norm", "gap_norm",
            "residual_norm", "gain_parallel",
            "gain_along_gap", "gain_orthogonal", "gain_cos", "gap_share", "cum_gain_norm", "cum_gap_budget",
            "cum_gain_sum", "cum_along_gap"]
    return gain[[c for c in keep if c in gain.columns]]


def gain_profile(
    gain: pd.DataFrame,
    quantities: Sequence[str] = tuple(GAIN_QUANTITIES),
    *,
    by: Sequence[str] = (),
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Mean and 95 % bootstrap CI over samples of per-step gain quantities.

    Args:
        gain: :func:`semantic_gain`'s table.
        quantities: its columns to summarise (default: the per-step set of
            :data:`GAIN_QUANTITIES`).
        by: extra grouping (e.g. ``("operator",)``).

    Returns:
        Long format: ``by``, ``step``, ``quantity``, ``mean``, ``ci_low``,
        ``ci_high``, ``n`` (rounds are summed per step first, so a step's
        value is its total over rounds; for one round it is the reflection).
    """
    by = list(by)
    unit = [*by, "sample", *(["prompt"] if "prompt" in gain.columns else [])]
    per_step = gain.groupby([*unit, "step"], observed=True, sort=True)[list(quantities)].sum(min_count=1)
    long = per_step.reset_index().melt(id_vars=[*unit, "step"], var_name="quantity", value_name="value")
    return summarize(long, [*by, "quantity", "step"], "value", seed=seed, n_resamples=n_resamples, cluster="prompt")


def injection_schedule(
    gain: pd.DataFrame,
    *,
    num_steps: int | None = None,
    by: Sequence[str] = (),
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Cumulative gap budget: step-by-step (Z-Sampling) vs once at the end of the window.

    The gap terms c_j (g1 - g2) d_j are injected at different noise levels
    (x_j at ab[t_j]), so their norms are not one budget until they are
    expressed at one level. Each term is carried to the level at the end of
    the window (ab[t_{w+1}], w the sample's last reflecting step) with the
    toolkit's own first-order factor: an ordinary DDIM step maps a latent
    perturbation delta at x_j to ``sqrt(ab[t_{j+1}] / ab[t_j]) delta`` at
    x_{j+1} (eps held fixed; :mod:`zsampling.trace.guidance`), so through
    step w it becomes ``sqrt(ab[t_{w+1}] / ab[t_j]) delta`` (the product
    telescopes). The stepwise curve after step i is
    ``sum_{j <= i} sqrt(ab[t_{w+1}] / ab[t_j]) ||gap_j||``; the end-to-end
    curve injects its total once, after step w (0 before). Both then reach
    the same budget at the same level; what differs is *when* the prompt
    information enters (later steps see, and build on, the earlier stepwise
    gains; the first-order carry ignores exactly that network response).
    The third curve is the trace's recorded ``||sum_{j <= i} delta_j||``,
    a sum of vectors at different levels, not carried (the trace keeps norms
    only): read its shape, not its height against the other two.

    Args:
        gain: :func:`semantic_gain`'s table (with ``a_step_from`` / ``a_step_to``).
        num_steps: extend the curves flat to step ``num_steps - 1`` (T - 1),
            so they cover the whole trajectory.
        by: extra grouping (e.g. ``("operator",)``).

    Returns:
        Long format: ``by``, ``schedule`` (:data:`SCHEDULES`), ``step``,
        ``mean``, ``ci_low``, ``ci_high``, ``n``, ``unit``, ``n_clusters``
        (prompt-level bootstrap when the table has ``prompt`` and prompts repeat).

    Raises:
        KeyError: ``gain`` lacks the step levels (make it with :func:`semantic_gain`).
    """
    missing = [c for c in ("a_step_from", "a_step_to") if c not in gain.columns]
    if missing:
        raise KeyError(f"gain lacks columns {missing} (the step levels the gap terms are carried with); "
                       "build it with analysis.semantic_gain(trace.to_frame())")
    by = list(by)
    unit = [*by, "sample", *(["prompt"] if "prompt" in gain.columns else [])]
    per_step = gain.groupby([*unit, "step"], observed=True, sort=True).agg(
        gap=("gap_norm", "sum"), realised=("cum_gain_norm", "last"), a_from=("a_step_from", "first"),
        a_to=("a_step_to", "first")).reset_index()
    last = int(per_step["step"].max()) if not per_step.empty else 0
    steps = np.arange(0, max(last + 1, num_steps or 0))
    rows = []
    for key, sample in per_step.groupby(unit, observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ids = dict(zip(unit, key, strict=True))
        sample = sample.sort_values("step")
        a_end = float(sample["a_to"].iloc[-1])
        carried = sample["gap"].to_numpy() * np.sqrt(a_end / sample["a_from"].to_numpy(dtype=np.float64))
        gap = pd.Series(carried, index=sample["step"].to_numpy()).reindex(steps, fill_value=0.0)
        realised = pd.Series(sample["realised"].to_numpy(), index=sample["step"].to_numpy()).reindex(steps).ffill()
        stepwise = gap.cumsum().to_numpy()
        total = stepwise[-1]
        window_end = int(sample["step"].max())
        end_to_end = np.where(steps >= window_end, total, 0.0)
        realised = realised.fillna(0.0).to_numpy()
        for name, values in zip(SCHEDULES, (stepwise, end_to_end, realised), strict=True):
            rows += [{**ids, "schedule": name, "step": int(s), "value": float(v)} for s, v in zip(steps, values,
                                                                                                   strict=True)]
    long = pd.DataFrame(rows, columns=[*unit, "schedule", "step", "value"])
    out = summarize(long, [*by, "schedule", "step"], "value", seed=seed, n_resamples=n_resamples, cluster="prompt")
    out["schedule"] = pd.Categorical(out["schedule"], SCHEDULES)
    return out.sort_values([*by, "schedule", "step"]).reset_index(drop=True).assign(
        schedule=lambda f: f["schedule"].astype(str))


class _TraceLike(Protocol):
    """What :func:`summed_gap` needs of a :class:`zsampling.trace.Trace`."""

    events: Mapping[str, Any]

    def tensor(self, name: str, event: Any = None) -> Any: ...


def summed_gap(trace: _TraceLike, *, through_step: int | None = None) -> np.ndarray:
    """The total gap term ``sum_i c_i (g1 - g2) (eps_c - eps_u)(x_i, t_i)`` per sample.

    The one-shot "end-to-end injection" of the theory: the gap terms
    Z-Sampling injects reflection by reflection, summed as they are (each at
    its own noise level, not carried to a common one as
    :func:`injection_schedule` does) into one vector that
    a notebook adds once (e.g. to a standard run's final latent, same seed)
    and scores with the model's metric, then compares with
    :func:`injection_comparison`. Computed from the eps_u / eps_c the zig
    rows recorded (record with ``keep=("eps",)`` or ``keep="all"`` and, when
    g1 is 0 or 1, ``branches="both"``); no network call, no model import.

    Args:
        trace: a trace (duck-typed: ``events`` and ``tensor(name, event)``).
        through_step: include only reflections at steps <= this one.

    Returns:
        float64 array (B, *latent_shape).
    """
    ops = np.asarray(trace.events["op"]).astype(int)
    steps = np.asarray(trace.events["step"]).astype(int)
    c = np.asarray(trace.events["c"], dtype=np.float64)
    guidance = np.asarray(trace.events["guidance"], dtype=np.float64)
    zig_code, zag_code = 0, 1  # zsampling.trace.OPS = ("zig", "zag", "step")
    total: np.ndarray | None = None
    for e in np.flatnonzero(ops == zig_code):
        if through_step is not None and steps[e] > through_step:
            continue
        if e + 1 >= len(ops) or ops[e + 1] != zag_code:
            raise ValueError(f"event {e} is a zig not followed by its zag; not a Z-Sampling trace")
        uncond = np.asarray(trace.tensor("eps_uncond", int(e)), dtype=np.float64)
        cond = np.asarray(trace.tensor("eps_cond", int(e)), dtype=np.float64)
        if np.isnan(uncond).all() or np.isnan(cond).all():
            raise ValueError("the zig rows computed one branch only (g1 in {0, 1}); record with branches='both'")
        term = c[e] * (guidance[e] - guidance[e + 1]) * (cond - uncond)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the trace has no reflections (standard sampling): there is no gap to sum")
    return total


def injection_comparison(
    stepwise: pd.DataFrame,
    end_to_end: pd.DataFrame,
    metrics: Sequence[str],
    *,
    on: Sequence[str] = PAIR_KEYS,
    directions: Mapping[str, bool] | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Win rate of stepwise accumulation (Z-Sampling) over one-shot injection, per metric.

    Both tables hold per-sample outcomes with the pairing keys ``on`` (same
    prompt and initial noise) and the metric columns; the result is
    :func:`analysis.compare.compare`'s table (A = stepwise, B = end-to-end).
    """
    a = stepwise.assign(_side="stepwise")
    b = end_to_end.assign(_side="end_to_end")
    both = pd.concat([a, b], ignore_index=True)
    return compare(both, {"_side": "stepwise"}, {"_side": "end_to_end"}, metrics, on=on, directions=directions,
                   seed=seed, n_resamples=n_resamples)
