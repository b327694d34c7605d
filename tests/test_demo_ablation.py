"""`zsampling demo` end to end on a small sample: the trends the issue asks for, figures, resume."""

import pandas as pd
import pytest
import torch

from zsampling.demo_ablation import GUIDANCE, STEPS, demo_specs, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, seeds_per_digit=4, quick=True, progress=False)
    return out, summary


def row(summary: pd.DataFrame, **setting) -> pd.Series:
    mask = pd.Series(True, index=summary.index)
    for key, value in setting.items():
        mask &= summary[key] == value
    assert mask.sum() == 1, setting
    return summary[mask].iloc[0]


def test_alignment_rises_with_the_window_and_falls_with_g2(demo_run):
    _, summary = demo_run
    base = dict(num_inference_steps=STEPS, rounds=1, zag="official")
    standard = row(summary, method="standard", **base)["alignment"]
    window = [row(summary, zigzag_steps=lam, inversion_guidance_scale=0.0, **base)["alignment"]
              for lam in (0, 12, 24)]
    assert window[0] == standard
    assert window[0] < window[1] < window[2]
    gaps = [row(summary, zigzag_steps=24, inversion_guidance_scale=g2, **base)["alignment"]
            for g2 in (0.0, GUIDANCE, 1.5 * GUIDANCE)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < standard  # g2 > g1 reflects away from the prompt


def test_full_window_wins_with_a_ci_above_one_half(demo_run):
    _, summary = demo_run
    z = row(summary, method="zigzag", num_inference_steps=STEPS, zigzag_steps=24, inversion_guidance_scale=0.0,
            rounds=1, zag="official")
    assert z["n"] == 40 and z["nfe"] == 2 * STEPS + 3 * 24
    assert z["ci_low"] > 0.5 and z["win_rate"] > 0.7


def test_equal_compute_baseline_spends_the_same_rows(demo_run):
    _, summary = demo_run
    z_nfe = 2 * STEPS + 3 * (STEPS - 1)
    matched = summary[(summary["method"] == "standard") & (summary["nfe"] >= z_nfe)]
    assert len(matched) == 1 and matched.iloc[0]["nfe"] - z_nfe <= 2


def test_outputs_figures_and_resume(demo_run):
    out, summary = demo_run
    for name in ("results.parquet", "results.csv", "cells.parquet", "manifest.json", "summary.csv",
                 "figures/index.md", "figures/win_rate.png", "figures/metric_vs_lambda.csv",
                 "figures/semantic_gain.png", "figures/sample_grid.png", "figures/x0_grid.png",
                 "figures/metric_vs_rounds.png", "figures/matched_win_rate.png", "figures/effective_guidance.png"):
        assert (out / name).is_file(), name
    before = pd.read_parquet(out / "results.parquet")
    again = run_demo(out, seeds_per_digit=4, quick=True, progress=False, figures=False)
    pd.testing.assert_frame_equal(again, summary)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), before)


def test_bad_seed_count_is_refused():
    with pytest.raises(ValueError, match="seeds_per_digit must be >= 1"):
        demo_specs(0)


def test_the_flow_demo_runs_the_same_ablation_with_the_euler_zag(tmp_path):
    """`zsampling demo --family flow --quick`: every part on the rectified-flow digits model, euler zag."""
    from typer.testing import CliRunner

    from zsampling.cli import app

    torch.set_num_threads(1)
    out = tmp_path / "flow"
    result = CliRunner().invoke(app, ["demo", "--family", "flow", "--quick", "--seeds", "2", "--out", str(out),
                                      "--no-progress", "--no-figures"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["zag"]) == {"euler"} and set(summary["zag_eval_timestep"]) == {"next", "current"}
    z = row(summary, method="zigzag", num_inference_steps=STEPS, zigzag_steps=24, inversion_guidance_scale=0.0,
            rounds=1, zag="euler", zag_eval_timestep="next")
    assert z["nfe"] == 2 * STEPS + 3 * 24 and z["n"] == 20
    standard = row(summary, method="standard", num_inference_steps=STEPS, rounds=1, zag="euler",
                   zag_eval_timestep="next", guidance_scale=GUIDANCE)
    assert z["alignment"] > standard["alignment"]  # the flow model gains as the DDIM one does
    manifest = (out / "manifest.json").read_text()
    assert '"family": "flow"' in manifest


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family must be one of"):
        demo_specs(2, family="sde")


def test_the_closing_table_prints_what_a_reader_needs(demo_run):
    from zsampling.demo_ablation import CLOSING_COLUMNS, closing_table

    _, summary = demo_run
    table = closing_table(summary)
    assert tuple(table.columns) == CLOSING_COLUMNS and len(table) == len(summary)
    z = table[table["setting"] == "Z, T=25, lambda=24, g2=0, rounds=1, official"].iloc[0]
    assert z["nfe"] == 2 * STEPS + 3 * 24 and z["win rate [95% CI]"].startswith("0.")
    assert table[table["setting"].str.startswith("standard, T=25")]["win rate [95% CI]"].tolist() == ["-"]
    assert table["setting"].is_unique  # a matched baseline names the operator of the Z cell it matches
    assert table["setting"].str.contains(r"^cfg_matched_nfe, T=\d+, g=0.75 \(vs Z ddim\)$").sum() == 1
    kinds = [s.split(",")[0] for s in table["setting"]]
    assert kinds == sorted(kinds, key=lambda kind: {"standard": 0, "Z": 1}.get(kind, 2))


def test_the_outer_bar_counts_every_cell_of_every_part(demo_run, capsys):
    """Resumed (nothing left to run), the outer bar still ends at cells done == total, and the total counts the
    matched baselines the matched part derives (2 Z-Sampling cells x 3 baselines) beside every part's grid."""
    from zsampling.sweep import expand_cells, parse_spec

    out, summary = demo_run
    again = run_demo(out, seeds_per_digit=4, quick=True, progress=True, figures=False)
    pd.testing.assert_frame_equal(again, summary)
    grid = sum(len(expand_cells(parse_spec(spec))) for spec in demo_specs(4, quick=True).values())
    bars = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in bars.splitlines() if line.startswith("demo (all parts)")][-1]
    assert f"{grid + 6:.1f}/{grid + 6} cells" in last, last


def test_on_progress_reports_each_batch_of_cells(tmp_path):
    from zsampling.sweep import parse_spec, run_sweep

    spec = parse_spec({"name": "p", "model": "analytic", "prompts": ["0", "1"], "seeds": [0, 1, 2],
                       "grid": {"num_inference_steps": 4, "zigzag_steps": [0, 1, 2]}, "metrics": ["posterior"],
                       "batch_size": 2})
    calls: list[float] = []
    result = run_sweep(spec, tmp_path, progress=False, on_progress=calls.append)
    assert result.cells_run == 3 and sum(calls) == pytest.approx(3.0) and len(calls) == 3  # 3 batches of 2 samples
