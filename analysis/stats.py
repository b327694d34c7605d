"""Statistics shared by every analysis: metric direction, seeded (cluster) bootstrap CIs, Wilson, Holm.

Why: every number a figure draws carries an uncertainty, and a reviewer must
be able to rerun the analysis and get the same interval. All bootstrap
intervals here come from :func:`scipy.stats.bootstrap` with an explicit seed
(a fresh ``numpy.random.default_rng(seed)`` per call), so the same data and
seed give the same interval, bit for bit.

Prompts are the unit (docs/design.md, "Evaluation honesty"): samples that share a
prompt are correlated, so whenever some prompt has more than one sample the
bootstrap resamples whole prompts (:func:`cluster_bootstrap_ci`: the pooled
mean of the resampled prompts' samples) instead of single samples, which
would give intervals that are too narrow. With one sample per prompt the two
are the same computation (the same random draws; equal to rounding). Every
summary says which unit was resampled (``unit``: "prompt" or "sample") and
how many there were (``n_clusters``).

Proportions (win rates) get the Wilson score interval (:func:`wilson_interval`),
which keeps a positive width at 0/n and n/n and behaves at small n; with
several samples per prompt its n is the prompts' effective sample size
(:func:`effective_sample_size`, Kish's design effect from the prompt-level
variance).

Metric direction: most metrics are "higher is better" (alignment, accuracy,
the analytic model's posterior, human-preference scores); distances are
"lower is better" (``nn_distance``, ``frechet_*``, ``fid*``). Quality guards
(``clipping_fraction``, ``saturation``; :data:`GUARD_PATTERNS`) have no fixed
direction: real data are not free of clipped pixels (the demo digits have
58 % of their pixels at the range limits), so a guard is scored as the
distance from a reference value (the data's, else the standard baseline's;
see :mod:`analysis.compare`). Comparisons flip lower-is-better metrics so
that a win always means "better".
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
"""Default confidence level of every interval (95 %)."""

N_RESAMPLES = 9999
"""Default number of bootstrap resamples."""

SEED = 0
"""Default bootstrap seed."""

BOOTSTRAP_METHOD = "percentile"
"""Default bootstrap interval: the percentile method, which is well defined
for the 0 / 0.5 / 1 win indicators and for tiny groups (BCa needs a jackknife
that degenerates on such data); pass ``method="BCa"`` for the bias-corrected
interval."""

LOWER_IS_BETTER_PATTERNS: tuple[str, ...] = (
    r"^nn_distance$",
    r"distance",
    r"^frechet",
    r"^fid",
    r"^kid",
    r"^wall_time",
)
"""Regular expressions (searched in the metric name) of lower-is-better
metrics; every other metric that is not a guard is higher-is-better unless
overridden."""

GUARD_PATTERNS: tuple[str, ...] = (r"saturation", r"clipping")
"""Regular expressions of quality guards: scored as the distance from a
reference value (closer is better), never as "lower is better" by assumption."""


def is_guard(metric: str, directions: Mapping[str, bool] | None = None) -> bool:
    """Whether ``metric`` is a quality guard (no fixed direction; see :data:`GUARD_PATTERNS`).

    An explicit entry in ``directions`` makes it an ordinary directed metric.
    """
    if directions is not None and metric in directions:
        return False
    return any(re.search(pattern, metric) for pattern in GUARD_PATTERNS)


def higher_is_better(metric: str, directions: Mapping[str, bool] | None = None) -> bool:
    """Whether larger values of ``metric`` are better.

    ``directions`` (metric name -> higher_is_better) overrides the built-in
    rule, which treats distances (``nn_distance``, ``frechet_pca``, FID, ...)
    as lower-is-better and everything else (alignment, accuracy, posterior,
    preference scores) as higher-is-better.

    Raises:
        ValueError: ``metric`` is a quality guard (:func:`is_guard`), which is
            judged by its distance from a reference value instead.
    """
    if directions is not None and metric in directions:
        return bool(directions[metric])
    if is_guard(metric):
        raise ValueError(f"{metric!r} is a quality guard: it is judged by its distance from the data's (or the "
                         "standard baseline's) value, not by a direction; pass directions={metric: ...} to force one")
    return not any(re.search(pattern, metric) for pattern in LOWER_IS_BETTER_PATTERNS)


def direction_label(metric: str, directions: Mapping[str, bool] | None = None,
                    reference: str | None = None) -> str:
    """An axis label with the direction: ``"alignment (higher is better)"``,
    ``"clipping_fraction (closer to the data's 0.58 is better)"`` for a guard
    (``reference`` names the reference; default "the reference value")."""
    if is_guard(metric, directions):
        return f"{metric} (closer to {reference or 'the reference value'} is better)"
    better = "higher" if higher_is_better(metric, directions) else "lower"
    return f"{metric} ({better} is better)"


def seeded_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    *,
    paired: bool = False,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> tuple[float, float]:
    """The interval of :func:`scipy.stats.bootstrap` of a vectorised ``statistic`` over ``data``, drawn with a
    fresh ``numpy.random.default_rng(seed)`` (scipy's degenerate-data warning silenced). A non-finite interval
    from another method (BCa on near-degenerate data) is recomputed with the percentile method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        result = stats.bootstrap(
            data,
            statistic,
            paired=paired,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if method != "percentile" and not (math.isfinite(low) and math.isfinite(high)):
        return seeded_bootstrap(data, statistic, paired=paired, confidence=confidence, n_resamples=n_resamples,
                                seed=seed, method="percentile")
    return (low, high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> tuple[float, float]:
    """A seeded bootstrap confidence interval of ``statistic(values)``.

    Uses :func:`scipy.stats.bootstrap` with ``rng=numpy.random.default_rng(seed)``
    (reproducible). NaNs are dropped. Returns ``(nan, nan)`` for no data,
    ``(v, v)`` for one value or constant data (a degenerate distribution has
    a zero-width interval; scipy would warn and return NaN).

    Args:
        values: the sample (1-D).
        statistic: a vectorised statistic taking ``axis=`` (default the mean).
        confidence: confidence level in (0, 1).
        n_resamples: bootstrap resamples.
        seed: the generator seed.
        method: "percentile", "basic" or "BCa".
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        value = float(statistic(x, axis=0))
        return (value, value)
    return seeded_bootstrap((x,), statistic, confidence=confidence, n_resamples=n_resamples, seed=seed,
                            method=method)


def _cluster_codes(clusters: Sequence[object] | np.ndarray, size: int) -> np.ndarray:
    codes = pd.factorize(pd.Series(np.asarray(clusters, dtype=object).reshape(-1)))[0]
    if codes.size != size:
        raise ValueError(f"clusters must give one label per value, got {codes.size} labels for {size} values")
    return codes


def is_clustered(clusters: Sequence[object] | np.ndarray | None) -> bool:
    """Whether some cluster label (prompt) occurs more than once."""
    if clusters is None:
        return False
    codes = pd.factorize(pd.Series(np.asarray(clusters, dtype=object).reshape(-1)))[0]
    return bool(codes.size and np.bincount(codes).max() > 1)


def resampling_unit(clusters: Sequence[object] | np.ndarray | None, n: int) -> tuple[str, int]:
    """``("prompt", number of prompts)`` when some prompt has several samples, else ``("sample", n)``."""
    if is_clustered(clusters):
        return "prompt", int(pd.unique(pd.Series(np.asarray(clusters, dtype=object).reshape(-1))).size)
    return "sample", int(n)


def _ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def cluster_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> tuple[float, float]:
    """A seeded cluster (prompt-level) bootstrap CI of the pooled mean of ``values``.

    Each resample draws whole clusters with replacement and keeps every value
    of a drawn cluster (a prompt's seeds stay together); the statistic is
    the pooled mean ``sum of values / number of values`` of the resample.
    Implemented as :func:`scipy.stats.bootstrap` over the per-cluster
    ``(sum, count)`` pairs (``paired=True``), which is exactly that
    resampling; with one value per cluster it makes the same draws as
    :func:`bootstrap_ci` on ``values`` and gives the same interval (to
    rounding). Pairs with a non-finite value are dropped first.

    Args:
        values: the sample (1-D).
        clusters: one cluster label (e.g. the prompt index) per value.
        confidence, n_resamples, seed, method: as :func:`bootstrap_ci`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    codes = _cluster_codes(clusters, x.size)
    keep = np.isfinite(x)
    x, codes = x[keep], codes[keep]
    if x.size == 0:
        return (math.nan, math.nan)
    codes = pd.factorize(codes)[0]
    k = int(codes.max()) + 1
    sums = np.bincount(codes, weights=x, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    if k == 1 or np.allclose(sums / counts, sums[0] / counts[0], rtol=0, atol=0):
        value = float(x.mean())
        return (value, value)
    return seeded_bootstrap((sums, counts), _ratio, paired=True, confidence=confidence, n_resamples=n_resamples,
                            seed=seed, method=method)


def mean_interval(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> tuple[float, float]:
    """The bootstrap CI of the mean: :func:`cluster_bootstrap_ci` when some
    cluster has several values (:func:`is_clustered`), else :func:`bootstrap_ci`."""
    if is_clustered(clusters):
        assert clusters is not None
        return cluster_bootstrap_ci(values, clusters, confidence=confidence, n_resamples=n_resamples, seed=seed,
                                    method=method)
    return bootstrap_ci(values, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)


def wilson_interval(proportion: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion observed on ``n`` (possibly effective, non-integer) trials.

    Unlike the bootstrap or the normal (Wald) interval it has positive width
    at 0/n and n/n (e.g. [0, 0.16] at 0/20 for 95 %) and good coverage at
    small n. NaN for n <= 0 or a NaN proportion.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not (n > 0 and math.isfinite(proportion)):
        return (math.nan, math.nan)
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must be in [0, 1], got {proportion!r}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    z2 = z * z
    centre = (proportion + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(proportion * (1 - proportion) / n + z2 / (4 * n * n))
    low = 0.0 if proportion == 0.0 else max(0.0, centre - half)
    high = 1.0 if proportion == 1.0 else min(1.0, centre + half)
    return (low, high)


def effective_sample_size(scores: Sequence[float] | np.ndarray,
                          clusters: Sequence[object] | np.ndarray | None = None) -> float:
    """The effective number of independent scores behind their mean (Kish's n / design effect).

    With one score per cluster (or no clusters) it is n. Otherwise it is
    ``s^2 / V``: the per-score variance over the cluster-robust variance of
    the pooled mean, ``V = k/(k-1) sum_j (S_j - p m_j)^2 / n^2`` (k clusters
    with sums S_j and sizes m_j, pooled mean p), capped at n. When every score
    is equal (0/n, n/n, all ties) the variance ratio is undefined and the
    number of clusters k is used: each prompt counts once, the conservative
    choice (perfectly correlated seeds).
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)] if clusters is None else x
    n = x.size
    if n == 0:
        return 0.0
    if not is_clustered(clusters):
        return float(n)
    assert clusters is not None
    codes = _cluster_codes(clusters, n)
    keep = np.isfinite(x)
    x, codes = x[keep], pd.factorize(codes[keep])[0]
    n = x.size
    k = int(codes.max()) + 1
    if k < 2:
        return 1.0
    s2 = float(x.var())
    if s2 == 0:
        return float(k)
    p = float(x.mean())
    sums = np.bincount(codes, weights=x, minlength=k)
    counts = np.bincount(codes, minlength=k)
    v = k / (k - 1) * float(((sums - p * counts) ** 2).sum()) / n**2
    return float(n) if v <= 0 else float(min(n, s2 / v))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error), same order as given; NaNs stay NaN.

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``
    over the m finite p-values.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


@dataclass(frozen=True)
class MeanCI:
    """A mean with its bootstrap interval, sample size and resampling unit."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    unit: str = "sample"
    n_clusters: int = 0


def mean_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> MeanCI:
    """The mean of ``values`` (NaNs dropped) with a seeded bootstrap CI.

    With ``clusters`` (one prompt label per value) of which some repeat, the
    interval is the prompt-level :func:`cluster_bootstrap_ci`; ``unit`` and
    ``n_clusters`` say what was resampled.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(x)
    labels = None if clusters is None else np.asarray(clusters, dtype=object).reshape(-1)
    if labels is not None:
        if labels.size != x.size:
            raise ValueError(f"clusters must give one label per value, got {labels.size} for {x.size}")
        labels = labels[keep]
    x = x[keep]
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, "sample", 0)
    low, high = mean_interval(x, labels, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)
    unit, k = resampling_unit(labels, x.size)
    return MeanCI(float(x.mean()), low, high, int(x.size), unit, k)


def summarize(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Mean and bootstrap CI of ``frame[value]`` per group of ``by``.

    Args:
        cluster: a column of prompt labels (e.g. ``"prompt_index"``); when a
            group has several rows per label its interval resamples whole
            prompts (:func:`mean_ci`). None (or a column not in ``frame``):
            samples are resampled.

    Returns one row per group: the ``by`` columns, ``mean``, ``ci_low``,
    ``ci_high``, ``n`` (finite values), ``unit`` ("prompt" or "sample": what
    was resampled) and ``n_clusters`` (how many of them). Every group uses
    the same seed, so a group's interval does not depend on which other
    groups exist.
    """
    by = list(by)
    rows = []
    columns = [*by, "mean", "ci_low", "ci_high", "n", "unit", "n_clusters"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    use = cluster if cluster is not None and cluster in frame.columns else None
    groups = frame.groupby(by, sort=True, dropna=False, observed=True) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        result = mean_ci(group[value].to_numpy(dtype=np.float64),
                         None if use is None else group[use].to_numpy(),
                         confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)
        rows.append({**dict(zip(by, key, strict=True)), "mean": result.mean, "ci_low": result.ci_low,
                     "ci_high": result.ci_high, "n": result.n, "unit": result.unit, "n_clusters": result.n_clusters})
    return pd.DataFrame(rows, columns=columns)
