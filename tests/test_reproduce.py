"""``zsampling reproduce``: prompts -> sweep (standard + Z-Sampling) -> scores -> win rates, on a tiny pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from zsampling import presets
from zsampling.cli import app
from zsampling.metrics import base as scorer_base
from zsampling.presets import WeightsNotFoundError
from zsampling.reproduce import PAPER_WIN_RATES, paper_spec, reproduce
from zsampling.tiny_pipelines import tiny_sdxl_pipeline


class MeanBrightness:
    """A cheap scorer: mean pixel value (higher is better); counts its calls."""

    name = "brightness"
    higher_is_better = True
    calls = 0

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        MeanBrightness.calls += 1
        assert images.ndim == 4 and prompts is not None and len(prompts) == images.shape[0]
        return images.float().mean(dim=(1, 2, 3))


@pytest.fixture
def brightness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scorer_base._REGISTRY, "brightness", MeanBrightness)
    MeanBrightness.calls = 0


def test_paper_spec_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "_offline", lambda: False)
    spec = paper_spec("sdxl", ["a cat", "a dog"], device="cpu")
    assert spec.model.name == "sdxl" and spec.model.dtype == "float32"  # the preset, via load_preset_pipeline
    assert dict(spec.model.options) == {"height": 1024, "width": 1024}
    assert spec.grid["zigzag_steps"] == (0, 49) and spec.grid["guidance_scale"] == (5.5,)
    assert spec.grid["num_inference_steps"] == (50,) and spec.grid["inversion_guidance_scale"] == (0.0,)
    # the paper's seeds: prompt i <-> seed offset + i, each with its own generator seeded with that seed
    assert spec.paired and spec.seeds == (0, 1) and spec.noise == "seed" and spec.num_samples == 2
    assert paper_spec("sdxl", ["a", "b", "c"], device="cpu", seed=10).seeds == (10, 11, 12)
    quick = paper_spec("sdxl", ["a cat"], device="cpu", num_inference_steps=4, dtype="float16")
    assert quick.grid["zigzag_steps"] == (0, 3) and quick.model.dtype == "float16"
    dpo = paper_spec("sdxl-dpo", ["a cat"], device="cpu")  # no save_pretrained / --model-path workaround
    assert dpo.model.name == "sdxl-dpo" and dpo.grid["guidance_scale"] == (5.0,)
    monkeypatch.setattr(presets, "_offline", lambda: True)
    with pytest.raises(WeightsNotFoundError, match="stabilityai/stable-diffusion-xl-base-1.0"):
        paper_spec("sdxl", ["a cat"], device="cpu")


def test_reproduce_tiny_end_to_end_and_resume(tmp_path: Path, brightness: None) -> None:
    model = tmp_path / "tiny-sdxl"
    tiny_sdxl_pipeline().save_pretrained(model)
    prompts = tmp_path / "drawbench.csv"
    pd.DataFrame({"Prompts": ["a red cube", "a blue ball", "two cats", "a tree"],
                  "Category": ["Colors", "Colors", "Counting", "Counting"]}).to_csv(prompts, index=False)
    out = tmp_path / "run"
    kwargs: dict[str, Any] = dict(model_path=model, scorers=["brightness"], num_inference_steps=2, height=64,
                                  width=64, device="cpu", progress=False, n_resamples=199, batch_size=3)
    result = reproduce("sdxl", prompts, out, **kwargs)

    assert result.sweep.cells_run == 2 and len(result.results) == 8
    # prompt i <-> seed i: the sweep's seeds are the prompt table's
    assert result.results["seed"].tolist() == result.results["prompt_index"].tolist()
    assert pd.read_csv(out / "prompts.csv")["seed"].tolist() == [0, 1, 2, 3]
    assert set(result.results["method"]) == {"standard", "zigzag"}
    assert result.results.groupby("method")["nfe"].first().to_dict() == {"standard": 4, "zigzag": 7}
    assert result.results["brightness"].notna().all()
    assert result.results.loc[result.results["prompt_index"] == 2, "category"].eq("Counting").all()
    table = result.win_rates
    assert table["category"].tolist() == ["all", "Colors", "Counting"] and (table["metric"] == "brightness").all()
    assert table.loc[0, "n"] == 4 and 0 <= table.loc[0, "win_rate"] <= 1
    assert table["paper_win_rate"].isna().all()  # no released number for this scorer
    # Holm over the categories, per metric, beside the raw p-values; the overall row is its own family
    categories = table[table["category"] != "all"]
    expected = np.minimum(1.0, np.maximum.accumulate(np.sort(categories["p_value"].to_numpy()) * [2, 1]))
    np.testing.assert_allclose(np.sort(categories["p_holm"].to_numpy()), expected)
    assert table.loc[0, "p_holm"] == table.loc[0, "p_value"]
    assert list(table.columns).index("p_holm") == list(table.columns).index("p_value") + 1
    for name in ("prompts.csv", "results.csv", "win_rates.csv", "winning_rate.png", "reproduce.json",
                 "scores/brightness.csv", "sweep/results.parquet"):
        assert (out / name).is_file(), name
    calls = MeanBrightness.calls

    # re-running resumes: no cell re-sampled, no image re-scored; the CLI prints the win rate
    runner = CliRunner()
    args = ["reproduce", "sdxl", "--prompts", str(prompts), "--out", str(out), "--model-path", str(model),
            "--scorers", "brightness", "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu",
            "--no-progress", "--batch-size", "3"]
    cli = runner.invoke(app, args, catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    assert "win rate of Z-Sampling on brightness" in cli.output and "n=4" in cli.output
    assert MeanBrightness.calls == calls
    # another resolution is another spec: refused with the sweep's message, nothing run
    cli = runner.invoke(app, [a if a != "64" else "32" for a in args], catch_exceptions=False)
    assert cli.exit_code == 2 and "another spec" in cli.output
    again = reproduce("sdxl", prompts, out, **kwargs)
    assert again.sweep.cells_run == 0 and again.sweep.cells_skipped == 2
    assert MeanBrightness.calls == calls
    pd.testing.assert_frame_equal(again.win_rates, result.win_rates)

    # a re-run killed while writing one of its tables (simulated inside that table's writer) leaves every
    # previous table whole and no temporary file: each table in turn (the score table last, after one cell's
    # scores are dropped so that the re-run rewrites it)
    tables = ("prompts.csv", "results.csv", "win_rates.csv", "scores/brightness.csv")
    real_to_csv = pd.DataFrame.to_csv
    for target in tables:
        if target.startswith("scores/"):
            scores = pd.read_csv(out / target)
            scores[scores["cell"] != scores["cell"].iloc[0]].to_csv(out / target, index=False)
        before = {name: (out / name).read_bytes() for name in tables}

        def half_then_die(frame, path=None, *args, target=target, **kwargs):
            real_to_csv(frame, path, *args, **kwargs)
            mine = out / target  # not the sweep's own results.csv under out/sweep
            if Path(path).parent == mine.parent and Path(path).name.startswith(f".{mine.name}."):
                Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
                raise KeyboardInterrupt(f"killed midway through {target}")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pd.DataFrame, "to_csv", half_then_die)
            with pytest.raises(KeyboardInterrupt, match=target):
                reproduce("sdxl", prompts, out, **kwargs)
        assert {name: (out / name).read_bytes() for name in tables} == before, target
        assert not list(out.rglob("*.tmp")), target


def test_reproduce_refuses_bad_inputs_before_loading(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(ValueError, match="unknown scorer"):
        reproduce("sdxl", prompts, tmp_path / "out", scorers=["nope"], device="cpu")
    with pytest.raises(ValueError, match="unknown model preset"):
        reproduce("sdxl-turbo-x", prompts, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    assert set(PAPER_WIN_RATES) == {"pickapic", "drawbench"}
    assert PAPER_WIN_RATES["drawbench"]["hpsv2"] == 0.94 and PAPER_WIN_RATES["pickapic"]["pick_score"] == 0.76
