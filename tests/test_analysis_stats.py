"""Analysis statistics on constructed data with known answers (no model, no files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from analysis import (
    ablation_curve,
    bootstrap_ci,
    compare,
    cost_matched_comparison,
    cost_matched_pairs,
    higher_is_better,
    injection_comparison,
    injection_schedule,
    mean_ci,
    pair_samples,
    pca_project,
    reference_settings,
    semantic_gain,
    trajectory_segments,
    win_rate,
)


def results_table(values_a: np.ndarray, values_b: np.ndarray, metric: str = "alignment") -> pd.DataFrame:
    """Two cells (A zigzag, B standard) with paired samples over 2 prompts x n/2 seeds."""
    n = len(values_a)
    keys = pd.DataFrame({"prompt_index": np.arange(n) % 2, "seed": np.arange(n) // 2})
    a = keys.assign(cell="A", method="zigzag", **{metric: values_a})
    b = keys.assign(cell="B", method="standard", **{metric: values_b})
    return pd.concat([a, b], ignore_index=True)


# ---------------------------------------------------------------- win rate
def test_all_wins_is_one_with_an_honest_ci() -> None:
    a, b = np.arange(10.0) + 1.0, np.arange(10.0)
    out = win_rate(a, b)
    # 10/10 wins: the Wilson interval keeps positive width (a zero-width [1, 1] claimed certainty)
    assert out.win_rate == 1.0 and out.ci_high == 1.0 and out.ci_low == pytest.approx(10 / (10 + 1.959964**2))
    assert out.ci_method == "wilson (n pairs)"
    assert (out.wins, out.ties, out.losses, out.n) == (10, 0, 0, 10)
    assert out.p_value == pytest.approx(stats.wilcoxon(a - b).pvalue) and out.p_value < 0.01
    assert win_rate(b, a).win_rate == 0.0


def test_lower_is_better_flips_the_win() -> None:
    a, b = np.zeros(8), np.ones(8)  # A has the smaller distance
    assert win_rate(a, b, higher_is_better=False).win_rate == 1.0
    table = compare(results_table(a, b, "nn_distance"), {"cell": "A"}, {"cell": "B"})
    assert table.loc[0, "higher_is_better"] == False  # noqa: E712 (numpy bool)
    assert table.loc[0, "win_rate"] == 1.0
    frechet = compare(results_table(a, b, "frechet_pca"), {"cell": "A"}, {"cell": "B"})
    assert frechet.loc[0, "win_rate"] == 1.0


def test_ties_count_half_and_give_p_one() -> None:
    out = win_rate(np.ones(6), np.ones(6))
    assert out.win_rate == 0.5 and out.ties == 6 and out.p_value == 1.0
    mixed = win_rate([1.0, 1.0, 2.0, 0.0], [1.0, 0.0, 1.0, 1.0])  # tie, win, win, loss
    assert mixed.win_rate == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_symmetric_noise_ci_covers_half() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    out = win_rate(base + rng.normal(size=200), base + rng.normal(size=200))
    assert out.ci_low < 0.5 < out.ci_high
    assert 0.35 < out.win_rate < 0.65 and out.p_value > 0.05
    # exactly symmetric: half the pairs win by d, half lose by d
    d = np.abs(rng.normal(size=100)) + 0.1
    exact = win_rate(np.concatenate([d, -d]), np.zeros(200))
    assert exact.win_rate == 0.5 and exact.ci_low < 0.5 < exact.ci_high


def test_bootstrap_is_seeded_scipy_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    first, again = bootstrap_ci(x, seed=7), bootstrap_ci(x, seed=7)
    assert first == again
    assert bootstrap_ci(x, seed=8) != first
    direct = stats.bootstrap((x,), np.mean, n_resamples=9999, method="percentile", rng=np.random.default_rng(7))
    assert first == pytest.approx((direct.confidence_interval.low, direct.confidence_interval.high), abs=0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert win_rate(a, b, seed=3) == win_rate(a, b, seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([], seed=0))
    assert bootstrap_ci([2.0], seed=0) == (2.0, 2.0)
    summary = mean_ci([1.0, 2.0, np.nan, 3.0])
    assert summary.mean == 2.0 and summary.n == 3 and summary.ci_low <= 2.0 <= summary.ci_high


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=30))
def test_win_rates_of_a_over_b_and_b_over_a_sum_to_one(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    ab, ba = win_rate(a, b, n_resamples=200), win_rate(b, a, n_resamples=200)
    assert ab.win_rate + ba.win_rate == pytest.approx(1.0)
    assert 0.0 <= ab.ci_low <= ab.ci_high <= 1.0
    assert ab.p_value == pytest.approx(ba.p_value)


def test_compare_pairs_by_prompt_and_seed_not_row_order() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=12)
    table = results_table(a, a - 1.0)
    shuffled = table.sample(frac=1.0, random_state=0)
    out = compare(shuffled, {"cell": "A"}, {"cell": "B"}, ["alignment"])
    assert out.loc[0, "win_rate"] == 1.0 and out.loc[0, "n"] == 12
    assert out.loc[0, "mean_diff"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="several rows"):
        pair_samples(table, table[table["cell"] == "B"], "alignment")


def test_compare_table_across_metrics_respects_direction() -> None:
    n = 10
    table = results_table(np.ones(n), np.zeros(n), "alignment")
    table["nn_distance"] = np.where(table["cell"] == "A", 1.0, 0.0)  # A further from data: worse
    out = compare(table, {"method": "zigzag"}, {"method": "standard"}).set_index("metric")
    assert out.loc["alignment", "win_rate"] == 1.0
    assert out.loc["nn_distance", "win_rate"] == 0.0
    assert list(out.columns[:9]) == ["higher_is_better", "direction", "win_rate", "ci_low", "ci_high", "p_value",
                                     "n", "unit", "n_clusters"]
    assert (out["unit"] == "prompt").all() and (out["n_clusters"] == 2).all()  # 2 prompts x 5 seeds


def test_metric_directions() -> None:
    assert higher_is_better("alignment") and higher_is_better("accuracy") and higher_is_better("posterior")
    assert not higher_is_better("nn_distance") and not higher_is_better("frechet_pca")
    assert higher_is_better("nn_distance", {"nn_distance": True})


# ------------------------------------------------------------------ ablations
def ablation_table() -> pd.DataFrame:
    """Z-Sampling cells at lambda 2, 4 (both operators) and a standard cell; metric = lambda + offset."""
    rows = []
    for cell, method, zag, lam in (("s", "standard", "official", 0), ("o2", "zigzag", "official", 2),
                                   ("o4", "zigzag", "official", 4), ("d2", "zigzag", "ddim", 2),
                                   ("d4", "zigzag", "ddim", 4)):
        for seed in range(6):
            rows.append({"cell": cell, "model": "m", "method": method, "prompt_index": 0, "seed": seed,
                         "num_inference_steps": 5, "guidance_scale": 3.0, "inversion_guidance_scale": 0.0,
                         "zigzag_steps": lam, "rounds": 1, "zag": zag, "zag_eval_timestep": "next",
                         "nfe": 10 + 3 * lam, "alignment": lam + (0.5 if zag == "ddim" and lam else 0.0) + seed * 0.1})
    return pd.DataFrame(rows)


def test_ablation_curve_means_and_standard_at_lambda_zero() -> None:
    table = ablation_table()
    assert reference_settings(table)["zigzag_steps"] == 4
    curve = ablation_curve(table, "zigzag_steps", ["alignment"], n_resamples=500)
    assert set(curve["operator"]) == {"official", "ddim"}
    for _, row in curve.iterrows():
        sub = table[(table["zigzag_steps"] == row["zigzag_steps"])]
        if row["zigzag_steps"] > 0:
            sub = sub[sub["zag"] == row["operator"]]
        assert row["mean"] == pytest.approx(sub["alignment"].mean())
        assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n"] == 6
    zero = curve[curve["zigzag_steps"] == 0]
    assert len(zero) == 2 and (zero["method"] == "standard").all()  # standard in both operators' curves
    again = ablation_curve(table, "zigzag_steps", ["alignment"], n_resamples=500)
    pd.testing.assert_frame_equal(curve, again)


def test_ablation_curve_g2_has_standard_reference_and_gap() -> None:
    table = ablation_table()
    extra = table[table["cell"] == "o4"].assign(cell="o4g", inversion_guidance_scale=1.0, alignment=0.0)
    table = pd.concat([table, extra], ignore_index=True)
    curve = ablation_curve(table, "guidance_gap", ["alignment"], n_resamples=200)
    zig = curve[curve["method"] == "zigzag"]
    assert sorted(zig.loc[zig["operator"] == "official", "guidance_gap"]) == [2.0, 3.0]
    ref = curve[curve["method"] == "standard"]
    assert len(ref) == 1 and math.isnan(ref["guidance_gap"].iloc[0])


def test_ablation_curve_over_steps_has_a_standard_curve() -> None:
    table = ablation_table()
    more = table[table["cell"] == "s"].assign(cell="s8", num_inference_steps=8, nfe=16, alignment=1.0)
    curve = ablation_curve(pd.concat([table, more]), "num_inference_steps", ["alignment"], n_resamples=200)
    standard = curve[curve["method"] == "standard"].set_index("num_inference_steps")["mean"]
    assert standard.to_dict() == pytest.approx({5: 0.25, 8: 1.0})
    assert set(curve["operator"]) == {"standard", "official", "ddim"}


def test_cost_matched_pairs_pick_the_cheapest_baseline_with_enough_compute() -> None:
    table = ablation_table()
    more = [table[table["cell"] == "s"].assign(cell=f"s{t}", num_inference_steps=t, nfe=2 * t) for t in (8, 12)]
    table = pd.concat([table, *more], ignore_index=True)
    pairs = cost_matched_pairs(table).set_index("cell")
    assert pairs.loc["o2", "baseline_cell"] == "s8"  # nfe 16 >= 16
    assert pairs.loc["o4", "baseline_cell"] == "s12"  # nfe 24 >= 22
    assert (pairs["nfe_ratio"] >= 1).all()
    table = cost_matched_comparison(table, ["alignment"], n_resamples=200).set_index("cell")
    assert table.loc["o4", "baseline_steps"] == 12 and table.loc["o4", "win_rate"] == 1.0  # 4.x beats 0.x


# -------------------------------------------------------------- gain, paths
ALPHAS = (0.25, 0.5, 0.8, 0.95, 1.0)
"""ab[t_i] of the constructed trace's steps (t_0 ... t_3, then the final alpha)."""


def constructed_trace_frame() -> pd.DataFrame:
    """Two samples, three reflections each, gap norms 1, 2, 3 and c < 0; step levels :data:`ALPHAS`."""
    rows = []
    for sample in range(2):
        for step in range(3):
            rows.append({"sample": sample, "op": "zig", "step": step, "round": 0, "guidance": 3.0, "c": -0.5})
            rows.append({"sample": sample, "op": "zag", "step": step, "round": 0, "guidance": 0.0, "c": -0.5,
                         "gain_norm": step + 1.5, "gap_norm": step + 1.0, "residual_norm": 0.5,
                         "gain_parallel": -(step + 1.0), "gain_orthogonal": 0.1, "gain_cos": -0.9,
                         "gain_cum_norm": float(step + 2)})
            rows.append({"sample": sample, "op": "step", "step": step, "round": 1, "guidance": 3.0, "c": -0.5,
                         "a_from": ALPHAS[step], "a_to": ALPHAS[step + 1]})
        rows.append({"sample": sample, "op": "step", "step": 3, "round": 0, "guidance": 3.0, "c": -0.5,
                     "a_from": ALPHAS[3], "a_to": ALPHAS[4]})
    frame = pd.DataFrame(rows)
    frame["op"] = pd.Categorical(frame["op"], ["zig", "zag", "step"])
    return frame


def test_semantic_gain_resigns_projection_and_accumulates() -> None:
    gain = semantic_gain(constructed_trace_frame())
    assert len(gain) == 6 and set(gain["guidance_gap"]) == {3.0}
    s0 = gain[gain["sample"] == 0]
    assert list(s0["gain_along_gap"]) == [1.0, 2.0, 3.0]  # c (g1 - g2) < 0: the raw projection on d is negative
    assert list(s0["cum_gap_budget"]) == [1.0, 3.0, 6.0]
    assert list(s0["cum_gain_norm"]) == [2.0, 3.0, 4.0]
    schedule = injection_schedule(gain, num_steps=4, n_resamples=200)
    stepwise = schedule[schedule["schedule"].str.startswith("stepwise")].set_index("step")["mean"]
    once = schedule[schedule["schedule"].str.startswith("end-to-end")].set_index("step")["mean"]
    # each gap term carried from its level ab[t_j] to the window's end ab[t_3] = 0.95 by sqrt(0.95 / ab[t_j])
    carried = np.cumsum([1.0 * math.sqrt(0.95 / 0.25), 2.0 * math.sqrt(0.95 / 0.5), 3.0 * math.sqrt(0.95 / 0.8)])
    np.testing.assert_allclose(stepwise.to_numpy(), [*carried, carried[-1]], rtol=1e-12)
    np.testing.assert_allclose(once.to_numpy(), [0.0, 0.0, carried[-1], carried[-1]], rtol=1e-12)  # same budget once
    with pytest.raises(KeyError, match="step levels"):
        injection_schedule(gain.drop(columns=["a_step_from"]))


def test_injection_comparison_on_two_outcome_tables() -> None:
    keys = pd.DataFrame({"prompt_index": [0, 0, 1, 1], "seed": [0, 1, 0, 1]})
    stepwise = keys.assign(posterior=[0.9, 0.8, 0.7, 0.6])
    once = keys.assign(posterior=[0.5, 0.5, 0.5, 0.9])
    out = injection_comparison(stepwise, once, ["posterior"])
    assert out.loc[0, "win_rate"] == 0.75 and out.loc[0, "n"] == 4


def test_pca_projection_and_segments() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 20)
    points = np.outer(t, [3.0, 0.0, 4.0]) + 0.01 * rng.normal(size=(20, 3))  # along (3, 0, 4) / 5
    frame = pd.DataFrame(points, columns=["z0", "z1", "z2"]).assign(run="r", sample=0, event=np.arange(20) - 1,
                                                                      op="zig", step=0, round=0)
    projected = pca_project(frame)
    assert projected.attrs["projection"] == "pca" and projected.attrs["explained_variance_ratio"][0] > 0.99
    np.testing.assert_allclose(np.abs(projected["pc1"]), np.abs(5 * t - (5 * t).mean()), atol=0.05)
    segments = trajectory_segments(projected)
    assert len(segments) == 19
    np.testing.assert_allclose(segments["x_end"].to_numpy()[:-1], segments["x_start"].to_numpy()[1:])
    plane = pca_project(frame.drop(columns="z2"))
    assert plane.attrs["projection"] == "identity"
    np.testing.assert_allclose(plane["pc1"], frame["z0"])
