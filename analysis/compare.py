"""Paired comparisons: win rates of method A over method B, and cost-aware matching.

Why: the paper's headline numbers are win rates of Z-Sampling over standard
sampling on the same prompts and initial noise. Samples of two cells are
paired by ``(prompt_index, seed)`` (same prompt, same x_T), so the comparison
removes the prompt and noise variance that an unpaired mean difference keeps.

What: for each pair, ``d = s (a - b)`` with ``s = +1`` for higher-is-better
metrics and ``-1`` for lower-is-better ones (``nn_distance``, ``frechet_*``);
a win scores 1, a tie 0.5, a loss 0. The win rate is the mean score, with a
seeded percentile bootstrap CI (:func:`analysis.stats.bootstrap_ci`) and a
two-sided Wilcoxon signed-rank p-value on the paired differences (zeros
dropped, scipy's default; p = 1 when every pair ties).

Cost-aware comparison (DESIGN.md, "Evaluation honesty"): Z-Sampling spends
more network rows (NFE) per sample than standard sampling with the same T,
so :func:`cost_matched_pairs` matches each Z-Sampling cell with the standard
cell of the same guidance whose NFE is the smallest one >= its own (the
paper's "more steps for the baseline" check), and :func:`cost_curve` gives a
metric against NFE for every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.stats import BOOTSTRAP_METHOD, CONFIDENCE, N_RESAMPLES, SEED, bootstrap_ci, higher_is_better, summarize
from analysis.tables import PAIR_KEYS, cell_table, method_label, metric_columns, unique_standard

Selector = Mapping[str, Any] | Callable[[pd.DataFrame], pd.Series] | pd.DataFrame
"""Rows of a results table: a mapping column -> value (floats compared with
``numpy.isclose``; a list/tuple/set value means "any of"), a function
returning a boolean mask, or the rows themselves."""


@dataclass(frozen=True)
class WinRate:
    """The outcome of one paired comparison of A over B on one metric.

    Attributes:
        win_rate: mean of 1 (A better), 0.5 (tie), 0 (A worse).
        ci_low, ci_high: its bootstrap confidence interval.
        p_value: two-sided Wilcoxon signed-rank p-value of the paired
            differences (1.0 when all pairs tie, NaN with no pairs).
        n: number of pairs; wins, ties, losses: their counts.
        mean_a, mean_b: the metric's means; mean_diff: mean of a - b (raw,
            not direction-corrected).
        higher_is_better: the direction the win was judged with.
    """

    win_rate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    wins: int
    ties: int
    losses: int
    mean_a: float
    mean_b: float
    mean_diff: float
    higher_is_better: bool


def select(frame: pd.DataFrame, selector: Selector | None = None, **values: Any) -> pd.DataFrame:
    """Rows of ``frame`` matching ``selector`` and ``column=value`` keywords.

    Floats are compared with ``numpy.isclose``; a list, tuple or set means
    "any of these values"; ``None`` as a value means "no constraint".
    """
    if isinstance(selector, pd.DataFrame):
        rows = selector
    else:
        rows = frame
        if callable(selector):
            rows = rows[np.asarray(selector(rows), dtype=bool)]
        elif selector is not None:
            values = {**dict(selector), **values}
    mask = np.ones(len(rows), dtype=bool)
    for column, value in values.items():
        if value is None:
            continue
        if column not in rows.columns:
            raise KeyError(f"column {column!r} is not in the table (columns: {list(rows.columns)})")
        col = rows[column]
        options = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        hit = np.zeros(len(rows), dtype=bool)
        for option in options:
            if isinstance(option, float) and pd.api.types.is_numeric_dtype(col):
                hit |= np.isclose(col.to_numpy(dtype=np.float64), option, rtol=0, atol=1e-9)
            else:
                hit |= (col == option).to_numpy()
        mask &= hit
    return rows[mask]


def pair_samples(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metric: str,
    *,
    on: Sequence[str] = PAIR_KEYS,
) -> pd.DataFrame:
    """Join A's and B's values of ``metric`` on the pairing keys.

    Returns columns ``on`` + ``a``, ``b`` (one row per pair with both values
    finite). Raises ValueError when a key appears twice on one side (two cells
    mixed into one side of a comparison).
    """
    on = list(on)
    for name, side in (("A", a), ("B", b)):
        missing = [c for c in [*on, metric] if c not in side.columns]
        if missing:
            raise KeyError(f"side {name} lacks columns {missing}")
        if side.duplicated(on).any():
            raise ValueError(
                f"side {name} has several rows per {tuple(on)} (more than one cell?); select one cell per side "
                "or compare within groups"
            )
    left = a[[*on, metric]].rename(columns={metric: "a"})
    right = b[[*on, metric]].rename(columns={metric: "b"})
    pairs = left.merge(right, on=on, how="inner")
    pairs = pairs[np.isfinite(pairs["a"].astype(float)) & np.isfinite(pairs["b"].astype(float))]
    return pairs.sort_values(on).reset_index(drop=True)


def win_rate(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> WinRate:
    """Win rate of A over B on paired values (``a[k]`` pairs with ``b[k]``).

    A win (A better than B, in the metric's direction) counts 1, a tie 0.5.
    The CI is a seeded bootstrap of the mean score; the p-value a two-sided
    Wilcoxon signed-rank test of ``a - b``.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return WinRate(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0, math.nan, math.nan, math.nan,
                       higher_is_better)
    diff = x - y
    signed = diff if higher_is_better else -diff
    score = np.where(signed > 0, 1.0, np.where(signed < 0, 0.0, 0.5))
    low, high = bootstrap_ci(score, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)
    return WinRate(
        win_rate=float(score.mean()),
        ci_low=low,
        ci_high=high,
        p_value=wilcoxon_p(diff),
        n=n,
        wins=int((signed > 0).sum()),
        ties=int((signed == 0).sum()),
        losses=int((signed < 0).sum()),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        mean_diff=float(diff.mean()),
        higher_is_better=higher_is_better,
    )


def wilcoxon_p(diff: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    Zero differences are dropped (scipy's "wilcox" rule); 1.0 when none is
    left (every pair ties: no evidence of a difference), NaN for no data.
    """
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(scipy_stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def compare(
    results: pd.DataFrame,
    a: Selector,
    b: Selector,
    metrics: Sequence[str] | None = None,
    *,
    on: Sequence[str] = PAIR_KEYS,
    directions: Mapping[str, bool] | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> pd.DataFrame:
    """Win rate of A over B for every metric: the paper's win-rate table.

    Args:
        results: a results table (one row per cell x sample).
        a, b: the two sides (see :data:`Selector`); each must hold one row
            per pairing key (one cell, or one cell per key).
        metrics: metric columns (default: every per-sample metric).
        on: the pairing keys (same prompt and initial noise).
        directions: metric -> higher_is_better overrides.

    Returns:
        One row per metric: ``metric``, ``higher_is_better``, ``win_rate``,
        ``ci_low``, ``ci_high``, ``p_value``, ``n``, ``wins``, ``ties``,
        ``losses``, ``mean_a``, ``mean_b``, ``mean_diff``.
    """
    side_a, side_b = select(results, a), select(results, b)
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    rows = []
    for metric in metrics:
        pairs = pair_samples(side_a, side_b, metric, on=on)
        outcome = win_rate(pairs["a"], pairs["b"], higher_is_better=higher_is_better(metric, directions),
                           confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)
        rows.append({"metric": metric, **asdict(outcome)})
    columns = ["metric", *WinRate.__dataclass_fields__]
    table = pd.DataFrame(rows, columns=columns)
    first = ["metric", "higher_is_better", "win_rate", "ci_low", "ci_high", "p_value", "n"]
    return table[first + [c for c in columns if c not in first]]


def cost_matched_pairs(
    results: pd.DataFrame,
    *,
    match_on: Sequence[str] = ("model", "guidance_scale"),
    candidate: str = "standard",
) -> pd.DataFrame:
    """Match every Z-Sampling cell with a baseline cell of at least its compute.

    For each cell with ``method == "zigzag"``, the cell with ``method ==
    candidate`` and the same ``match_on`` settings whose per-sample NFE is the
    smallest one >= the Z-Sampling cell's (falling back to the largest
    available when none reaches it; ``nfe_ratio`` < 1 flags that).

    Returns one row per Z-Sampling cell: ``cell``, ``baseline_cell``,
    ``match_on`` values, ``num_inference_steps``, ``baseline_steps``,
    ``nfe``, ``baseline_nfe``, ``nfe_ratio`` (baseline / Z-Sampling).
    """
    cells = cell_table(unique_standard(results))
    zig = cells[cells["method"] == "zigzag"]
    base = cells[cells["method"] == candidate]
    rows = []
    for _, cell in zig.iterrows():
        options = select(base, **{k: cell[k] for k in match_on})
        if options.empty:
            continue
        enough = options[options["nfe"] >= cell["nfe"] - 1e-9]
        chosen = enough.sort_values("nfe").iloc[0] if not enough.empty else options.sort_values("nfe").iloc[-1]
        rows.append({
            "cell": cell["cell"], "baseline_cell": chosen["cell"], **{k: cell[k] for k in match_on},
            "num_inference_steps": int(cell["num_inference_steps"]),
            "baseline_steps": int(chosen["num_inference_steps"]),
            "nfe": float(cell["nfe"]), "baseline_nfe": float(chosen["nfe"]),
            "nfe_ratio": float(chosen["nfe"]) / float(cell["nfe"]),
        })
    columns = ["cell", "baseline_cell", *match_on, "num_inference_steps", "baseline_steps", "nfe", "baseline_nfe",
               "nfe_ratio"]
    return pd.DataFrame(rows, columns=columns)


def cost_matched_comparison(
    results: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    match_on: Sequence[str] = ("model", "guidance_scale"),
    candidate: str = "standard",
    directions: Mapping[str, bool] | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Win rates of every Z-Sampling cell over its compute-matched baseline.

    The pairs come from :func:`cost_matched_pairs`; the result is that table
    joined with :func:`compare`'s columns, one row per (cell, metric).
    """
    pairs = cost_matched_pairs(results, match_on=match_on, candidate=candidate)
    frames = []
    for _, pair in pairs.iterrows():
        table = compare(results, {"cell": pair["cell"]}, {"cell": pair["baseline_cell"]}, metrics,
                        directions=directions, seed=seed, n_resamples=n_resamples)
        for key, value in pair.items():
            table[key] = value
        frames.append(table[[*pairs.columns, *[c for c in table.columns if c not in pairs.columns]]])
    if not frames:
        return pd.DataFrame(columns=[*pairs.columns, "metric", "win_rate", "ci_low", "ci_high", "p_value", "n"])
    return pd.concat(frames, ignore_index=True)


def cost_curve(
    results: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    by: Sequence[str] = ("model",),
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """A metric against compute: mean and CI per (method label, T, NFE).

    ``method`` is :func:`analysis.tables.method_label` (``standard``,
    ``zigzag (official)``, ``zigzag (ddim)``, ...). Long format: ``by``
    columns, ``method``, ``num_inference_steps``, ``nfe`` (mean network rows
    per sample of the cell), ``metric``, ``mean``, ``ci_low``, ``ci_high``,
    ``n``. Restrict the rows first (e.g. one g1, full windows) with
    :func:`select`.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    results = unique_standard(results)
    frame = results.assign(method=method_label(results))
    keys = [*by, "method", "num_inference_steps", "nfe"]
    long = frame.melt(id_vars=keys, value_vars=metrics, var_name="metric", value_name="value")
    return summarize(long, [*keys, "metric"], "value", seed=seed, n_resamples=n_resamples)
