"""Paired comparisons: win rates of method A over method B, and cost-aware matching.

Why: the paper's headline numbers are win rates of Z-Sampling over standard
sampling on the same prompts and initial noise. Samples of two cells are
paired by ``(prompt_index, seed)`` (same prompt, same x_T), so the comparison
removes the prompt and noise variance that an unpaired mean difference keeps.

What: for each pair, ``d = s (a - b)`` with ``s = +1`` for higher-is-better
metrics and ``-1`` for lower-is-better ones (``nn_distance``, ``frechet_*``);
a win scores 1, a tie 0.5, a loss 0. For a quality guard
(:func:`analysis.stats.is_guard`: ``clipping_fraction``, ``saturation``) a
sample wins when its value is closer to the guard's reference value (the
real data's, else side B's own mean: the baseline's) than its pair's is.

Intervals and tests treat the prompt as the unit (docs/design.md, "Evaluation
honesty"): when some prompt has several seeds (``prompt_index`` repeats) the
win-rate interval is the Wilson score interval with the prompts' effective
sample size (:func:`analysis.stats.effective_sample_size`; ``ci_method``
"wilson (prompt-level effective n)"), the mean difference's interval a
prompt-level cluster bootstrap, and the p-value a two-sided Wilcoxon
signed-rank test on the per-prompt mean differences (``test`` says which);
with one seed per prompt these reduce to Wilson on n pairs, the ordinary
seeded bootstrap and the pairwise Wilcoxon test. ``unit`` and
``n_clusters`` in every table say what was resampled and how many.
``interval="bootstrap"`` gives the (cluster) percentile bootstrap of the win
rate instead, falling back to Wilson when it has zero width (every score
equal), since a zero-width interval at 0/n or n/n is not honest.

Cost-aware comparison (docs/design.md, "Evaluation honesty"): Z-Sampling spends
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

from analysis.stats import (
    BOOTSTRAP_METHOD,
    CONFIDENCE,
    N_RESAMPLES,
    SEED,
    effective_sample_size,
    higher_is_better,
    holm,
    is_clustered,
    is_guard,
    mean_interval,
    resampling_unit,
    seeded_bootstrap,
    summarize,
    wilson_interval,
)
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
        ci_low, ci_high: its confidence interval (``ci_method``).
        p_value: two-sided Wilcoxon signed-rank p-value (``test``): of the
            per-prompt mean differences when prompts repeat, else of the
            pairs; 1.0 when all tie, NaN with no pairs.
        n: number of pairs; wins, ties, losses: their counts.
        mean_a, mean_b: the metric's means; mean_diff: mean of a - b (raw,
            not direction-corrected); diff_ci_low, diff_ci_high: its
            (cluster) bootstrap interval.
        higher_is_better: the direction the win was judged with (None for a
            guard); direction: it in words ("higher", "lower", "closer to 0.584").
        reference: a guard's reference value (NaN otherwise); distance_a,
            distance_b: |mean - reference| of each side; distance_diff:
            distance_a - distance_b (negative: A is closer), with its cluster
            bootstrap interval distance_ci_low, distance_ci_high.
        unit: "prompt" or "sample" (what the intervals resampled); n_clusters:
            how many; n_eff: the effective sample size of the Wilson interval.
        ci_method, test: the interval and test used, in words.
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
    higher_is_better: bool | None
    diff_ci_low: float = math.nan
    diff_ci_high: float = math.nan
    direction: str = ""
    reference: float = math.nan
    distance_a: float = math.nan
    distance_b: float = math.nan
    distance_diff: float = math.nan
    distance_ci_low: float = math.nan
    distance_ci_high: float = math.nan
    unit: str = "sample"
    n_clusters: int = 0
    n_eff: float = math.nan
    ci_method: str = ""
    test: str = ""


INTERVALS: tuple[str, ...] = ("wilson", "bootstrap")
"""Win-rate interval choices (see the module docstring)."""


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
    reference: float | None = None,
    clusters: Sequence[object] | np.ndarray | None = None,
    interval: str = "wilson",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> WinRate:
    """Win rate of A over B on paired values (``a[k]`` pairs with ``b[k]``).

    A win (A better than B, in the metric's direction) counts 1, a tie 0.5.

    Args:
        higher_is_better: the metric's direction (ignored with ``reference``).
        reference: a quality guard's reference value: then a sample wins when
            it is closer to it than its pair, and the set-level distances
            |mean - reference| are compared with a bootstrap interval.
        clusters: one prompt label per pair. When a label repeats, the
            intervals resample whole prompts and the test ranks per-prompt
            mean differences (the module docstring); otherwise pairs are
            independent units.
        interval: "wilson" (default: Wilson score interval on the effective
            sample size) or "bootstrap" (percentile bootstrap of the mean
            score, Wilson when it has zero width).
        confidence, n_resamples, seed, method: as :func:`analysis.stats.bootstrap_ci`.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    labels = None if clusters is None else np.asarray(clusters, dtype=object).reshape(-1)
    if labels is not None and labels.size != x.size:
        raise ValueError(f"clusters must give one label per pair, got {labels.size} for {x.size} pairs")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    labels = None if labels is None else labels[keep]
    n = int(x.size)
    guard = reference is not None
    direction = (f"closer to {reference:.4g}" if guard else "higher" if higher_is_better else "lower")
    judged = None if guard else higher_is_better
    if n == 0:
        return WinRate(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0, math.nan, math.nan, math.nan, judged,
                       direction=direction, reference=math.nan if reference is None else float(reference))
    diff = x - y
    if guard:
        assert reference is not None
        signed = np.abs(y - reference) - np.abs(x - reference)
    else:
        signed = diff if higher_is_better else -diff
    score = np.where(signed > 0, 1.0, np.where(signed < 0, 0.0, 0.5))
    clustered = is_clustered(labels)
    unit, k = resampling_unit(labels, n)
    n_eff = effective_sample_size(score, labels)
    boot = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed, "method": method}
    where = "prompt-level effective n" if clustered else "n pairs"
    if interval == "bootstrap":
        low, high = mean_interval(score, labels, **boot)
        ci_method = f"{'cluster ' if clustered else ''}bootstrap ({method}, {unit}s resampled)"
        if not high > low:
            low, high = wilson_interval(float(score.mean()), n_eff, confidence)
            ci_method = f"wilson ({where}; the bootstrap interval had zero width)"
    else:
        low, high = wilson_interval(float(score.mean()), n_eff, confidence)
        ci_method = f"wilson ({where})"
    diff_low, diff_high = mean_interval(diff, labels, **boot)
    extra: dict[str, Any] = {}
    if guard:
        assert reference is not None
        dist_a, dist_b = abs(float(x.mean()) - reference), abs(float(y.mean()) - reference)
        dist_low, dist_high = _distance_interval(x, y, float(reference), labels, boot)
        extra = {"reference": float(reference), "distance_a": dist_a, "distance_b": dist_b,
                 "distance_diff": dist_a - dist_b, "distance_ci_low": dist_low, "distance_ci_high": dist_high}
    if clustered:
        assert labels is not None
        per_prompt = pd.Series(signed).groupby(pd.factorize(pd.Series(labels))[0]).mean().to_numpy()
        p_value, test = wilcoxon_p(per_prompt), "wilcoxon signed-rank on per-prompt mean differences"
    else:
        p_value, test = wilcoxon_p(signed), "wilcoxon signed-rank on pairs"
    return WinRate(
        win_rate=float(score.mean()),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n=n,
        wins=int((signed > 0).sum()),
        ties=int((signed == 0).sum()),
        losses=int((signed < 0).sum()),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        mean_diff=float(diff.mean()),
        higher_is_better=judged,
        diff_ci_low=diff_low,
        diff_ci_high=diff_high,
        direction=direction,
        unit=unit,
        n_clusters=k,
        n_eff=n_eff,
        ci_method=ci_method,
        test=test,
        **extra,
    )


def _distance_interval(x: np.ndarray, y: np.ndarray, reference: float, labels: np.ndarray | None,
                       boot: dict[str, Any]) -> tuple[float, float]:
    """Bootstrap CI of |mean(x) - r| - |mean(y) - r|, resampling pairs (or whole prompts) jointly."""
    confidence = boot["confidence"]
    if is_clustered(labels):
        assert labels is not None
        codes = pd.factorize(pd.Series(labels))[0]
    else:
        codes = np.arange(x.size)
    k = int(codes.max()) + 1
    sx = np.bincount(codes, weights=x, minlength=k)
    sy = np.bincount(codes, weights=y, minlength=k)
    m = np.bincount(codes, minlength=k).astype(np.float64)

    def statistic(sx: np.ndarray, sy: np.ndarray, m: np.ndarray, axis: int = -1) -> np.ndarray:
        total = m.sum(axis=axis)
        return np.abs(sx.sum(axis=axis) / total - reference) - np.abs(sy.sum(axis=axis) / total - reference)

    if k < 2:
        value = float(statistic(sx, sy, m))
        return (value, value)
    return seeded_bootstrap((sx, sy, m), statistic, paired=True, confidence=confidence,
                            n_resamples=boot["n_resamples"], seed=boot["seed"], method="percentile")


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
    references: Mapping[str, float] | None = None,
    cluster: str | None = "prompt_index",
    interval: str = "wilson",
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
        references: guard metric -> reference value (the real data's value of
            that guard). A guard without one is judged against side B's mean
            (``reference_source`` "baseline").
        cluster: the prompt column: when a prompt has several seeds, intervals
            and tests work at the prompt level (module docstring). None treats
            every pair as independent (not recommended with several seeds).
        interval: "wilson" or "bootstrap" (see :func:`win_rate`).

    Returns:
        One row per metric: ``metric``, ``higher_is_better`` (None for
        guards), ``direction``, ``win_rate``, ``ci_low``, ``ci_high``,
        ``p_value``, ``n``, ``unit``, ``n_clusters``, ``n_eff``, ``wins``,
        ``ties``, ``losses``, ``mean_a``, ``mean_b``, ``mean_diff``,
        ``diff_ci_low``, ``diff_ci_high``, the guard columns (``reference``,
        ``reference_source``, ``distance_a``, ``distance_b``,
        ``distance_diff``, ``distance_ci_low``, ``distance_ci_high``; NaN /
        "none" for other metrics), ``ci_method`` and ``test``.
    """
    side_a, side_b = select(results, a), select(results, b)
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    keys = list(on)
    if cluster is not None and cluster in results.columns and cluster not in keys:
        raise ValueError(f"the cluster column {cluster!r} must be one of the pairing keys {keys}")
    rows = []
    for metric in metrics:
        pairs = pair_samples(side_a, side_b, metric, on=on)
        labels = pairs[cluster].to_numpy() if cluster is not None and cluster in pairs.columns else None
        guard = is_guard(metric, directions)
        reference, source = None, "none"
        if guard:
            if references is not None and metric in references:
                reference, source = float(references[metric]), "data"
            elif len(pairs):
                reference, source = float(pairs["b"].mean()), "baseline"
        outcome = win_rate(pairs["a"], pairs["b"],
                           higher_is_better=True if guard else higher_is_better(metric, directions),
                           reference=reference, clusters=labels, interval=interval, confidence=confidence,
                           n_resamples=n_resamples, seed=seed, method=method)
        rows.append({"metric": metric, **asdict(outcome), "reference_source": source})
    columns = ["metric", *WinRate.__dataclass_fields__, "reference_source"]
    table = pd.DataFrame(rows, columns=columns)
    first = ["metric", "higher_is_better", "direction", "win_rate", "ci_low", "ci_high", "p_value", "n", "unit",
             "n_clusters", "n_eff"]
    return table[first + [c for c in columns if c not in first]]


def add_holm(table: pd.DataFrame, family: Sequence[str] = ("metric",), p_column: str = "p_value") -> pd.DataFrame:
    """Add ``p_holm``: Holm-adjusted ``p_column`` within each family of rows.

    A family is the set of tests one question runs at once, e.g. the
    categories of a per-category table (``family=("metric",)``: for each
    metric, adjust over the categories). Raw p-values stay beside it.
    """
    out = table.copy()
    out["p_holm"] = np.nan
    groups = out.groupby(list(family), sort=False, dropna=False) if family else [((), out)]
    for _, part in groups:
        out.loc[part.index, "p_holm"] = holm(part[p_column].to_numpy(dtype=np.float64))
    position = out.columns.get_loc(p_column) + 1
    return out[[*out.columns[:position], "p_holm", *[c for c in out.columns[position:] if c != "p_holm"]]]


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
    ``n``, ``unit``, ``n_clusters`` (prompt-level bootstrap when prompts
    repeat: :func:`analysis.stats.summarize`). Restrict the rows first (e.g. one g1, full windows) with
    :func:`select`.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(results)
    results = unique_standard(results)
    frame = results.assign(method=method_label(results))
    keys = [*by, "method", "num_inference_steps", "nfe"]
    ids = [*keys, *(["prompt_index"] if "prompt_index" in frame.columns else [])]
    long = frame.melt(id_vars=ids, value_vars=metrics, var_name="metric", value_name="value")
    return summarize(long, [*keys, "metric"], "value", seed=seed, n_resamples=n_resamples, cluster="prompt_index")
