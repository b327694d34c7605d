"""Evaluation rigor (issue 12): prompts as the statistical unit, honest proportion intervals,
Holm adjustment, and quality guards judged against the data.

The cluster tests simulate the situation the fix is for: a strong prompt
effect (each prompt has its own probability that Z-Sampling wins) and 10
seeds per prompt, where treating the 10 seeds as independent samples gives
intervals that are too narrow. The true win rate is the mean of the prompts'
probabilities; the prompt-level intervals must cover it at about the nominal
95 %, and the naive ones must not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import compare, win_rate
from analysis.compare import add_holm
from analysis.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    effective_sample_size,
    higher_is_better,
    holm,
    is_guard,
    mean_ci,
    summarize,
    wilson_interval,
)

PROMPTS, SEEDS, REPLICATES = 20, 10, 300
TRUE_WIN = 0.7


def clustered_draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A, B values for PROMPTS x SEEDS pairs whose win probability is a per-prompt Beta draw (mean TRUE_WIN)."""
    p = rng.beta(1.4, 0.6, size=PROMPTS)  # mean 0.7, strongly spread: a strong prompt effect
    wins = rng.random((PROMPTS, SEEDS)) < p[:, None]
    a = np.where(wins, 1.0, -1.0).reshape(-1) + rng.normal(0, 0.01, PROMPTS * SEEDS)
    b = np.zeros(PROMPTS * SEEDS)
    return a, b, np.repeat(np.arange(PROMPTS), SEEDS)


def test_cluster_intervals_are_wider_and_cover_the_true_win_rate() -> None:
    rng = np.random.default_rng(12)
    covered = {"cluster": 0, "naive": 0, "cluster_boot": 0}
    widths = {"cluster": [], "naive": []}
    for replicate in range(REPLICATES):
        a, b, prompts = clustered_draw(rng)
        clustered = win_rate(a, b, clusters=prompts)
        naive = win_rate(a, b)
        assert clustered.win_rate == naive.win_rate and clustered.unit == "prompt" and clustered.n_clusters == PROMPTS
        for name, out in (("cluster", clustered), ("naive", naive)):
            covered[name] += out.ci_low <= TRUE_WIN <= out.ci_high
            widths[name].append(out.ci_high - out.ci_low)
        if replicate < 60:  # the bootstrap variant: fewer replicates keep the test fast
            boot = win_rate(a, b, clusters=prompts, interval="bootstrap", n_resamples=999)
            covered["cluster_boot"] += boot.ci_low <= TRUE_WIN <= boot.ci_high
    cluster_rate, naive_rate = covered["cluster"] / REPLICATES, covered["naive"] / REPLICATES
    assert np.mean(widths["cluster"]) > 1.8 * np.mean(widths["naive"])
    assert 0.90 <= cluster_rate <= 0.99, cluster_rate  # nominal 95 % (binomial sd over 300 replicates: 1.3 %)
    assert naive_rate < 0.80, naive_rate  # treating seeds as independent under-covers badly
    assert covered["cluster_boot"] / 60 >= 0.85


def test_cluster_bootstrap_of_means_is_wider_and_covers() -> None:
    rng = np.random.default_rng(5)
    hits, ratio = 0, []
    for _ in range(100):
        prompt_effect = rng.normal(0, 1, PROMPTS)
        values = (prompt_effect[:, None] + rng.normal(0, 0.3, (PROMPTS, SEEDS))).reshape(-1)
        prompts = np.repeat(np.arange(PROMPTS), SEEDS)
        low, high = cluster_bootstrap_ci(values, prompts, n_resamples=999)
        naive = bootstrap_ci(values, n_resamples=999)
        hits += low <= 0.0 <= high
        ratio.append((high - low) / (naive[1] - naive[0]))
    assert hits >= 88 and np.mean(ratio) > 2.0  # percentile bootstrap at 20 clusters: slightly below 95 %


def test_one_seed_per_prompt_cluster_and_naive_agree() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=40), rng.normal(size=40)
    prompts = np.arange(40)
    assert cluster_bootstrap_ci(a, prompts) == pytest.approx(bootstrap_ci(a), rel=1e-12)
    assert cluster_bootstrap_ci(a, prompts, method="BCa") == pytest.approx(bootstrap_ci(a, method="BCa"), rel=1e-12)
    with_prompts, without = win_rate(a, b, clusters=prompts), win_rate(a, b)
    assert (with_prompts.ci_low, with_prompts.ci_high, with_prompts.p_value) == (without.ci_low, without.ci_high,
                                                                                without.p_value)
    assert (with_prompts.diff_ci_low, with_prompts.diff_ci_high) == (without.diff_ci_low, without.diff_ci_high)
    assert with_prompts.unit == "sample" and with_prompts.n_clusters == 40
    table = pd.DataFrame({"prompt_index": prompts, "seed": 0})
    frame = pd.concat([table.assign(cell="A", alignment=a), table.assign(cell="B", alignment=b)])
    row = compare(frame, {"cell": "A"}, {"cell": "B"}, ["alignment"]).iloc[0]
    assert (row["ci_low"], row["ci_high"], row["p_value"]) == (without.ci_low, without.ci_high, without.p_value)
    assert mean_ci(a, prompts) == mean_ci(a)


def test_prompt_level_test_ranks_per_prompt_means() -> None:
    rng = np.random.default_rng(4)
    a, b, prompts = clustered_draw(rng)
    out = win_rate(a, b, clusters=prompts)
    per_prompt = pd.Series(a - b).groupby(prompts).mean().to_numpy()
    assert out.p_value == pytest.approx(stats.wilcoxon(per_prompt).pvalue)
    assert out.test == "wilcoxon signed-rank on per-prompt mean differences"
    assert win_rate(a, b).test == "wilcoxon signed-rank on pairs"


def test_summarize_reports_the_resampled_unit() -> None:
    frame = pd.DataFrame({"g": 0, "prompt_index": np.repeat(np.arange(5), 4), "v": np.arange(20.0)})
    clustered = summarize(frame, ["g"], "v", cluster="prompt_index", n_resamples=500).iloc[0]
    plain = summarize(frame, ["g"], "v", n_resamples=500).iloc[0]
    assert (clustered["unit"], clustered["n_clusters"]) == ("prompt", 5)
    assert (plain["unit"], plain["n_clusters"]) == ("sample", 20)
    assert clustered["ci_high"] - clustered["ci_low"] > plain["ci_high"] - plain["ci_low"]


# ------------------------------------------------------------ proportions, Holm
@pytest.mark.parametrize("n", [1, 3, 10, 200])
def test_win_rate_interval_has_width_at_zero_and_n_of_n(n: int) -> None:
    a, b = np.arange(n) + 1.0, np.arange(n, dtype=float)
    for out, value in ((win_rate(a, b), 1.0), (win_rate(b, a), 0.0),
                       (win_rate(a, b, interval="bootstrap"), 1.0)):
        assert out.win_rate == value and out.ci_high - out.ci_low > 0
        assert out.ci_low <= value <= out.ci_high
    prompts = np.arange(n) // 2  # several seeds per prompt, every pair a win: each prompt counts once
    if n >= 4:
        clustered = win_rate(a, b, clusters=prompts)
        assert clustered.n_eff == len(np.unique(prompts))
        assert clustered.ci_low == pytest.approx(wilson_interval(1.0, len(np.unique(prompts)))[0])


def test_wilson_matches_its_closed_form() -> None:
    z = stats.norm.ppf(0.975)
    low, high = wilson_interval(0.0, 20)
    assert low == 0.0 and high == pytest.approx(z**2 / (20 + z**2))
    p, n = 0.3, 50
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert wilson_interval(p, n) == pytest.approx((centre - half, centre + half))
    assert effective_sample_size(np.ones(12), np.repeat(np.arange(3), 4)) == 3.0


def test_holm_adjustment() -> None:
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])
    assert holm([0.2, 0.3])[0] == pytest.approx(0.4)
    table = pd.DataFrame({"category": ["x", "y", "z", "x", "y", "z"], "metric": ["m"] * 3 + ["k"] * 3,
                          "p_value": [0.01, 0.02, 0.04, 0.5, 0.01, 0.6]})
    out = add_holm(table)
    assert list(out.columns) == ["category", "metric", "p_value", "p_holm"]
    np.testing.assert_allclose(out["p_holm"], [0.03, 0.04, 0.04, 1.0, 0.03, 1.0])


# -------------------------------------------------------------------- guards
def test_guards_have_no_fixed_direction() -> None:
    assert is_guard("clipping_fraction") and is_guard("saturation") and not is_guard("alignment")
    with pytest.raises(ValueError, match="quality guard"):
        higher_is_better("clipping_fraction")
    assert higher_is_better("clipping_fraction", {"clipping_fraction": False}) is False


def test_a_set_equal_to_the_data_scores_best_on_every_guard() -> None:
    rng = np.random.default_rng(7)
    n = 60
    data = {"clipping_fraction": rng.uniform(0.45, 0.7, n), "saturation": rng.uniform(0.2, 0.4, n)}
    reference = {guard: float(values.mean()) for guard, values in data.items()}
    keys = pd.DataFrame({"prompt_index": np.arange(n) % 6, "seed": np.arange(n) // 6})
    sides = {"data": data,  # the data's own samples, paired with every competitor
             "less": {g: v * 0.5 for g, v in data.items()},  # "lower is better" would have picked this one
             "more": {g: np.minimum(v * 1.4, 1.0) for g, v in data.items()}}
    frame = pd.concat([keys.assign(cell=name, **values) for name, values in sides.items()], ignore_index=True)
    for other in ("less", "more"):
        table = compare(frame, {"cell": "data"}, {"cell": other}, list(data), references=reference,
                        n_resamples=999).set_index("metric")
        for guard in data:
            row = table.loc[guard]
            assert row["reference_source"] == "data" and row["direction"].startswith("closer to")
            assert row["distance_a"] == pytest.approx(0.0, abs=1e-12) and row["distance_b"] > 0
            assert row["distance_ci_high"] < 0  # the data's set is closer, significantly
            # per sample "closer to the reference" is a weaker, noisier reading of the same question
            assert row["win_rate"] > 0.5 and row["higher_is_better"] is None
    no_data = compare(frame, {"cell": "less"}, {"cell": "data"}, ["clipping_fraction"], n_resamples=200).iloc[0]
    assert no_data["reference_source"] == "baseline" and no_data["reference"] == pytest.approx(
        reference["clipping_fraction"])
