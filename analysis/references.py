"""Reference values the quality numbers are read against: the data's own guard values and Frechet noise floor.

Why (docs/design.md, "Evaluation honesty"): a quality guard has no fixed
direction. Real digits have 58 % of their pixels at the range limits (a
black background), more than any generated cell, so "less clipping is
better" would reward images that look less like the data. A guard is
therefore the distance of a generated set's value from the data's value
(:func:`guard_references`), or from the standard baseline's when the toolkit
has no data for the model (real checkpoints: :func:`analysis.compare.compare`
falls back to side B's mean).

Set-level metrics (the demo's Frechet distance in PCA space) are biased by
the set size and have no per-sample pairing, so a bare "0.225 vs 0.267"
cannot be read. :func:`frechet_interval` gives a seeded bootstrap interval
of a cell's Frechet distance, and :func:`frechet_noise_floor` what real data
score at the same sample size: real subsets drawn with the generated set's
class counts, scored (a) against the full data statistics exactly like a
generated set, and (b) against a second, disjoint real subset. A generated
set is only distinguishable from the data where its interval sits above the
floor.

Bootstrap design for the Frechet distance: the demo's prompts are its ten
digit classes, the whole prompt population rather than a sample of it, so
the prompts are held fixed and each prompt's seeds are resampled (a
stratified bootstrap); resampling prompts would change the class mix that
the distance itself measures. A with-replacement resample repeats images,
which lowers the set's spread and raises its Frechet distance (on 200 real
digits: +0.03 on a value of 0.055), so the percentile interval of the
``n_resamples`` seeded resamples is shifted by the resamples' mean bias to
sit around the set's own value. It is conservative: on real 200-image
subsets its spread (sd about 0.017) is about twice the actual
subset-to-subset spread (about 0.008; ``frechet_noise_floor``), so read a
difference inside it as "not detectable", not as "equal".

Only the shipped demo model has data here; its metric arrays are plain
numbers (:mod:`zsampling.metrics.demo`), not a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.stats import CONFIDENCE, SEED, is_guard

DEMO_MODEL = "demo"
"""The model name whose training data the toolkit ships (the 8x8 digits)."""

FRECHET_RESAMPLES = 999
"""Default bootstrap resamples of a Frechet distance (each needs a matrix square root)."""

FLOOR_REPEATS = 200
"""Default number of random real subsets behind a noise floor."""


def guard_references(model: str | None, metrics: Sequence[str]) -> dict[str, float]:
    """The data's own value of every quality guard in ``metrics`` for ``model`` (empty without data).

    For the demo model: the mean :class:`~zsampling.metrics.quality.ClippingFraction`
    / :class:`~zsampling.metrics.quality.Saturation` of the 1797 real digits,
    scored exactly as the sweep scores generated images.
    """
    guards = [m for m in metrics if is_guard(m)]
    if model != DEMO_MODEL or not guards:
        return {}
    from zsampling.metrics import get_scorer

    images = _data_pixels().reshape(-1, 8, 8, 1)  # (N, H, W, C) in [0, 1], as the scorers accept
    out = {}
    for guard in guards:
        try:
            scorer = get_scorer(guard)
        except (KeyError, ValueError):
            continue
        out[guard] = float(scorer.score(images).double().mean())
    return out


def _data_pixels() -> np.ndarray:
    """The real digits as float64 (N, 64) in [0, 1] (the stored uint8 levels / 16, as the demo metrics use)."""
    from zsampling.metrics.demo import load_metric_arrays

    return load_metric_arrays()["data_pixels_u8"].astype(np.float64) / 16.0


def _features(pixels: np.ndarray) -> np.ndarray:
    """PCA features (N, 16) of (N, 64) pixels with the stored PCA (as :func:`zsampling.metrics.demo.pca_features`)."""
    from zsampling.metrics.demo import load_metric_arrays

    arrays = load_metric_arrays()
    return (pixels - arrays["pca_mean"]) @ arrays["pca_components"].T


def _stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _frechet(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    from zsampling.metrics.demo import frechet_distance_from_stats

    m, s = _stats(features)
    return frechet_distance_from_stats(m, s, mu, sigma)


def _data_stats() -> tuple[np.ndarray, np.ndarray]:
    from zsampling.metrics.demo import load_metric_arrays

    arrays = load_metric_arrays()
    return arrays["data_feature_mean"], arrays["data_feature_cov"]


def frechet_interval(
    images: np.ndarray,
    strata: Sequence[object] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = FRECHET_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """A generated set's Frechet distance (PCA space, vs the full digits data) and its bootstrap CI.

    Args:
        images: (N, 1, 8, 8) in [0, 1] (e.g. ``RunData.images(cell)``).
        strata: one prompt label per image; seeds are resampled within each
            prompt (module docstring).

    Returns:
        ``(distance, ci_low, ci_high)``: the percentile interval of the
        stratified resamples, shifted by their mean bias (module docstring).
    """
    pixels = np.asarray(images, dtype=np.float64)
    if pixels.ndim != 4 or pixels.shape[1:] != (1, 8, 8):
        raise ValueError(f"images must have shape (N, 1, 8, 8), got {pixels.shape}")
    features = _features(pixels.reshape(pixels.shape[0], 64))
    labels = pd.factorize(pd.Series(np.asarray(strata, dtype=object).reshape(-1)))[0]
    if labels.size != features.shape[0]:
        raise ValueError(f"strata must give one prompt per image, got {labels.size} for {features.shape[0]}")
    mu, sigma = _data_stats()
    value = _frechet(features, mu, sigma)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)]
    draws = np.empty(n_resamples)
    for r in range(n_resamples):
        index = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        draws[r] = _frechet(features[index], mu, sigma)
    alpha = (1 - confidence) / 2
    bias = float(draws.mean()) - value
    low, high = np.quantile(draws, [alpha, 1 - alpha]) - bias
    return value, float(low), float(high)


def frechet_noise_floor(
    class_counts: dict[int, int],
    *,
    repeats: int = FLOOR_REPEATS,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """What real digits score on the Frechet distance at a generated set's size and class mix.

    Each repeat draws two disjoint real subsets, each with ``class_counts``
    images of each digit (without replacement), and scores (a) the first
    against the full data statistics, as a generated set is scored, and
    (b) the first against the second.

    Returns:
        ``n`` (images per subset), ``vs_data`` / ``vs_data_low`` /
        ``vs_data_high`` (median and central ``confidence`` range of (a)),
        ``two_subsets`` / ``two_subsets_low`` / ``two_subsets_high`` (of (b)),
        ``repeats``.

    Raises:
        ValueError: a class asks for more than half of its real images.
    """
    from zsampling.metrics.demo import load_metric_arrays

    features = _features(_data_pixels())
    labels = load_metric_arrays()["data_labels"].astype(np.int64)
    pools = {}
    for digit, count in class_counts.items():
        pool = np.flatnonzero(labels == int(digit))
        if 2 * count > pool.size:
            raise ValueError(f"digit {digit}: two disjoint subsets of {count} need {2 * count} real images, "
                             f"the data have {pool.size}")
        pools[int(digit)] = (pool, int(count))
    mu, sigma = _data_stats()
    rng = np.random.default_rng(seed)
    vs_data, pairs = np.empty(repeats), np.empty(repeats)
    for r in range(repeats):
        first, second = [], []
        for pool, count in pools.values():
            chosen = rng.permutation(pool)[: 2 * count]
            first.append(chosen[:count])
            second.append(chosen[count:])
        a, b = features[np.concatenate(first)], features[np.concatenate(second)]
        vs_data[r] = _frechet(a, mu, sigma)
        pairs[r] = _frechet(a, *_stats(b))
    alpha = (1 - confidence) / 2
    out: dict[str, float] = {"n": float(sum(c for _, c in pools.values())), "repeats": float(repeats)}
    for name, values in (("vs_data", vs_data), ("two_subsets", pairs)):
        low, mid, high = np.quantile(values, [alpha, 0.5, 1 - alpha])
        out.update({name: float(mid), f"{name}_low": float(low), f"{name}_high": float(high)})
    return out


def prompt_classes(prompts: Sequence[str]) -> np.ndarray:
    """The demo's digit class of each prompt (``"3"`` -> 3)."""
    from zsampling.demo_model import prompts_to_classes

    return np.asarray(prompts_to_classes(list(prompts)))


def frechet_table(run: object, cells: Sequence[str] | None = None, *, n_resamples: int = FRECHET_RESAMPLES,
                  seed: int = SEED, repeats: int = FLOOR_REPEATS) -> pd.DataFrame:
    """Per demo cell: Frechet distance with its bootstrap CI, beside the real-data noise floor at its n.

    Args:
        run: :class:`analysis.run.RunData` of a demo-model run (images kept).
        cells: cells to score (default: every demo cell with images).

    Returns:
        One row per cell: ``cell``, the settings columns, ``n``,
        ``frechet_pca`` (recomputed from the stored uint8 images, so it can
        differ in the third decimal from the sweep's float value),
        ``ci_low``, ``ci_high``, ``floor_vs_data`` (+ ``_low``/``_high``),
        ``floor_two_subsets`` (+ ``_low``/``_high``), ``unit`` (what was
        resampled) and ``n_clusters`` (prompts). Empty when the run has no
        demo cell with images.
    """
    from analysis.run import RunData
    from analysis.tables import SETTING_COLUMNS

    assert isinstance(run, RunData)
    results = run.results
    if results is None or results.empty:
        return pd.DataFrame()
    demo = results[results["model"] == DEMO_MODEL]
    chosen = [c for c in (cells if cells is not None else pd.unique(demo["cell"])) if c in run.image_files]
    rows, floors = [], {}
    for cell in chosen:
        samples = demo[demo["cell"] == cell].sort_values("sample_index")
        if samples.empty:
            continue
        images = run.images(cell)[samples["sample_index"].to_numpy()]
        classes = prompt_classes(samples["prompt"].astype(str).tolist())
        counts = dict(zip(*np.unique(classes, return_counts=True), strict=True))
        key = tuple(sorted((int(k), int(v)) for k, v in counts.items()))
        if key not in floors:
            floors[key] = frechet_noise_floor({k: v for k, v in key}, repeats=repeats, seed=seed)
        floor = floors[key]
        value, low, high = frechet_interval(images, samples["prompt_index"].to_numpy(), n_resamples=n_resamples,
                                            seed=seed)
        first = samples.iloc[0]
        rows.append({"cell": cell, **{c: first[c] for c in SETTING_COLUMNS if c in samples.columns},
                     "n": len(samples), "frechet_pca": value, "ci_low": low, "ci_high": high,
                     **{f"floor_{k}": v for k, v in floor.items() if k not in ("n", "repeats")},
                     "unit": "seeds within prompt", "n_clusters": int(samples["prompt_index"].nunique())})
    return pd.DataFrame(rows)


__all__ = [
    "DEMO_MODEL", "FLOOR_REPEATS", "FRECHET_RESAMPLES", "frechet_interval", "frechet_noise_floor", "frechet_table",
    "guard_references", "prompt_classes",
]
