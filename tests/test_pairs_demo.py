"""`zsampling demo --world pairs --quick` end to end through the CLI, and the prompt-level comparison."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from zsampling.cli import app
from zsampling.pairs_ablation import QUICK_PROMPTS, pairs_specs


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs-demo")
    result = CliRunner().invoke(app, ["demo", "--world", "pairs", "--quick", "--seeds", "2", "--out", str(out),
                                      "--no-progress", "--no-figures"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_quick_pairs_demo_runs_every_part(quick_run) -> None:
    out, output = quick_run
    summary = pd.read_csv(out / "summary.csv")
    results = pd.read_parquet(out / "results.parquet")
    for column in ("exact_match", "binding_error", "missing_digit", "slot_accuracy", "pairs_nn_distance"):
        assert column in results and results[column].between(0, 1e3).all()
    methods = set(summary["method"])
    assert {"standard", "zigzag", "cfg_matched_measured", "cfg_matched_first_order", "cfg_matched_nfe"} <= methods
    assert set(results["prompt"]) == set(QUICK_PROMPTS)
    assert (summary["n"] == len(QUICK_PROMPTS) * 2).all()
    z = summary[(summary["method"] == "zigzag") & (summary["num_inference_steps"] == 8)
                & (summary["inversion_guidance_scale"] == 0.0)].iloc[0]
    assert z["nfe"] == 2 * 8 + 3 * 7
    assert "exact_match" in output


def test_matched_prompt_comparison_pairs_the_same_rows(quick_run) -> None:
    out, _ = quick_run
    table = pd.read_csv(out / "matched_prompts.csv")
    assert set(table["baseline"]) == {"cfg_matched_nfe", "cfg_matched_measured", "cfg_matched_first_order"}
    assert (table["baseline_nfe"] >= table["zigzag_nfe"]).all()
    assert (table["baseline_nfe"] - table["zigzag_nfe"] < 2).all()
    assert (table["ci_low"] <= table["diff"] + 1e-12).all() and (table["diff"] <= table["ci_high"] + 1e-12).all()
    binding = table[table["metric"] == "binding_error"]
    assert (binding["n_prompts"] == 3).all()  # relation prompts only: "and" prompts cannot bind wrongly
    assert (table.loc[table["metric"] == "exact_match", "n_prompts"] == len(QUICK_PROMPTS)).all()


def test_specs_validate_and_refuse_bad_seeds() -> None:
    from zsampling.sweep import parse_spec

    for spec in pairs_specs(8).values():
        parse_spec(spec)
    with pytest.raises(ValueError, match="seeds_per_prompt"):
        pairs_specs(0)
