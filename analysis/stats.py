"""Statistics shared by every analysis: metric direction, seeded bootstrap CIs.

Why: every number a figure draws carries an uncertainty, and a reviewer must
be able to rerun the analysis and get the same interval. All intervals here
come from :func:`scipy.stats.bootstrap` with an explicit seed (a fresh
``numpy.random.default_rng(seed)`` per call), so the same data and seed give
the same interval, bit for bit.

Metric direction: most metrics are "higher is better" (alignment, accuracy,
the analytic model's posterior, human-preference scores); distances are
"lower is better" (``nn_distance``, ``frechet_*``, ``fid*``). Comparisons
(win rates) flip lower-is-better metrics so that a win always means "better".
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
    r"saturation",
    r"clipping",
    r"^wall_time",
)
"""Regular expressions (searched in the metric name) of lower-is-better
metrics; every other metric is higher-is-better unless overridden."""


def higher_is_better(metric: str, directions: Mapping[str, bool] | None = None) -> bool:
    """Whether larger values of ``metric`` are better.

    ``directions`` (metric name -> higher_is_better) overrides the built-in
    rule, which treats distances (``nn_distance``, ``frechet_pca``, FID, ...)
    as lower-is-better and everything else (alignment, accuracy, posterior,
    preference scores) as higher-is-better.
    """
    if directions is not None and metric in directions:
        return bool(directions[metric])
    return not any(re.search(pattern, metric) for pattern in LOWER_IS_BETTER_PATTERNS)


def direction_label(metric: str, directions: Mapping[str, bool] | None = None) -> str:
    """An axis label with the direction: ``"alignment (higher is better)"``."""
    better = "higher" if higher_is_better(metric, directions) else "lower"
    return f"{metric} ({better} is better)"


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (x,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa on near-degenerate data
        return bootstrap_ci(x, statistic=statistic, confidence=confidence, n_resamples=n_resamples, seed=seed,
                            method="percentile")
    return (low, high)


@dataclass(frozen=True)
class MeanCI:
    """A mean with its bootstrap interval and sample size."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> MeanCI:
    """The mean of ``values`` (NaNs dropped) with a seeded bootstrap CI."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)
    return MeanCI(float(x.mean()), low, high, int(x.size))


def summarize(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = BOOTSTRAP_METHOD,
) -> pd.DataFrame:
    """Mean and bootstrap CI of ``frame[value]`` per group of ``by``.

    Returns one row per group: the ``by`` columns, ``mean``, ``ci_low``,
    ``ci_high``, ``n`` (finite values). Every group uses the same seed, so a
    group's interval does not depend on which other groups exist.
    """
    by = list(by)
    rows = []
    if frame.empty:
        return pd.DataFrame(columns=[*by, "mean", "ci_low", "ci_high", "n"])
    groups = frame.groupby(by, sort=True, dropna=False, observed=True) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        result = mean_ci(group[value].to_numpy(dtype=np.float64), confidence=confidence,
                         n_resamples=n_resamples, seed=seed, method=method)
        rows.append({**dict(zip(by, key, strict=True)), "mean": result.mean, "ci_low": result.ci_low,
                     "ci_high": result.ci_high, "n": result.n})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n"])
