"""Every figure from a small real run: numbers, CSVs, artists, skipping, the CLI.

The run is the analytic Gaussian mixture's (``test_analysis_helpers``):
standard and Z-Sampling cells written in the sweep's RUN_DIR schema without
the sweep engine. Each figure's CSV is checked against the frame drawn, the
frame against numbers recomputed here from the run's files with independent
code, and the Figure's artists against the frame.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image
from test_analysis_helpers import SEEDS, analytic_grid, build_analytic_run
from typer.testing import CliRunner

from analysis import injection_comparison, load_run, summed_gap
from analysis.plots import figure_is_empty
from analysis.report import FIGURES, FigureOutput, build_figures, reference_cells, write_figures
from zsampling.cli import app
from zsampling.denoisers.analytic import GaussianMixtureModel
from zsampling.trace import Trace

N_RESAMPLES = 2000
ROOT = Path(__file__).resolve().parents[1]
NEEDS_MATCHED = ("matched_win_rate", "matched_metric_vs_nfe")
NEEDS_DEMO = ("fidelity",)  # the Frechet noise floor needs the model's data: the demo model's only
"""Figures that need a sweep with matched_baselines (the hand-built run has none: they are skipped)."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_analytic_run(tmp_path_factory.mktemp("analytic") / "run")


@pytest.fixture(scope="module")
def written(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, FigureOutput], Path]:
    out = tmp_path_factory.mktemp("figures")
    outputs = write_figures(run_dir, out, n_resamples=N_RESAMPLES)
    return {o.name: o for o in outputs}, out


@pytest.fixture(scope="module")
def results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def cell_of(results: pd.DataFrame, **settings: object) -> str:
    rows = results
    for key, value in settings.items():
        rows = rows[rows[key] == value]
    cells = rows["cell"].unique()
    assert len(cells) == 1, (settings, cells)
    return str(cells[0])


def drawn_lines(ax: object) -> list[Line2D]:
    """Data lines (not reference / grid lines: those have 2 points spanning the axes)."""
    return [line for line in ax.lines if line.get_label() and not line.get_label().startswith("_")
            and len(line.get_xdata()) > 0]


# --------------------------------------------------------------- everything
def test_every_figure_is_written_with_png_pdf_csv_and_index(written: tuple[dict[str, FigureOutput], Path]) -> None:
    outputs, out = written
    assert list(outputs) == list(FIGURES)
    index = (out / "index.md").read_text()
    for name, output in outputs.items():
        if name in NEEDS_MATCHED:
            assert output.skipped and "matched baselines" in output.skipped, name
            continue
        if name in NEEDS_DEMO:
            assert output.skipped and "demo model" in output.skipped, name
            continue
        assert output.skipped is None, f"{name} skipped: {output.skipped}"
        for ext in ("png", "pdf", "csv"):
            path = out / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 500, path
        with Image.open(out / f"{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 200
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert f"**{name}**" in index and FIGURES[name].description in index
        assert not figure_is_empty(output.figure)
        for ax in output.figure.axes:
            if ax.images:  # image grids label rows/columns instead of axes
                continue
            first_column = ax.get_subplotspec().colspan.start == 0
            assert ax.get_xlabel() and (ax.get_ylabel() or not first_column), (name, ax.get_title())
        if name not in ("sample_grid",) and not any(ax.images for ax in output.figure.axes):
            assert output.figure.legends or any(ax.get_legend() for ax in output.figure.axes), name
    assert index.count(": skipped:") == len(NEEDS_MATCHED) + len(NEEDS_DEMO)


def test_csv_is_exactly_the_frame_drawn(written: tuple[dict[str, FigureOutput], Path]) -> None:
    outputs, out = written
    for name, output in outputs.items():
        if name in NEEDS_MATCHED or name in NEEDS_DEMO:
            continue
        csv = pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""])
        data = output.data.reset_index(drop=True)
        assert list(csv.columns) == list(data.columns), name
        assert len(csv) == len(data) > 0, name
        for column in data.columns:
            if pd.api.types.is_numeric_dtype(data[column]) and not pd.api.types.is_bool_dtype(data[column]):
                np.testing.assert_allclose(csv[column].to_numpy(float), data[column].to_numpy(float), rtol=1e-9,
                                           atol=1e-12, equal_nan=True, err_msg=f"{name}.{column}")
            else:
                assert csv[column].astype(str).tolist() == data[column].astype(str).tolist(), f"{name}.{column}"


def test_figures_are_reproducible(run_dir: Path, written: tuple[dict[str, FigureOutput], Path]) -> None:
    outputs, _ = written
    again = {o.name: o for o in build_figures(run_dir, n_resamples=N_RESAMPLES, names=["win_rate", "semantic_gain"])}
    for name in again:
        pd.testing.assert_frame_equal(again[name].data, outputs[name].data)


# ------------------------------------------------------------ per figure
def test_win_rate_matches_an_independent_count(written: tuple[dict[str, FigureOutput], Path],
                                               results: pd.DataFrame) -> None:
    outputs, _ = written
    data = outputs["win_rate"].data
    assert set(data["comparison"]) == {"same T", "equal NFE"}
    assert set(data["operator"]) == {"official", "ddim"}
    standard = cell_of(results, method="standard", num_inference_steps=10)
    standard24 = cell_of(results, method="standard", num_inference_steps=24)
    for _, row in data.iterrows():
        zig = cell_of(results, method="zigzag", zag=row["operator"], zigzag_steps=9, rounds=1,
                      inversion_guidance_scale=0.0)
        assert row["zigzag_cell"] == zig
        base = standard if row["comparison"] == "same T" else standard24  # nfe 47 -> T=24 (nfe 48)
        assert row["baseline_cell"] == base
        a = results[results["cell"] == zig].set_index(["prompt_index", "seed"])[row["metric"]]
        b = results[results["cell"] == base].set_index(["prompt_index", "seed"])[row["metric"]].reindex(a.index)
        diff = (a - b) if row["metric"] == "posterior" else (b - a)  # mean_distance: lower is better
        expected = ((diff > 0) + 0.5 * (diff == 0)).mean()
        assert row["win_rate"] == pytest.approx(expected) and row["n"] == len(SEEDS) * 3
        assert row["ci_low"] <= row["win_rate"] <= row["ci_high"]
    fig = outputs["win_rate"].figure
    bars = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == len(data)
    assert sorted(round(b.get_height(), 9) for b in bars) == sorted(round(v, 9) for v in data["win_rate"])
    assert [ax.get_title() for ax in fig.axes] == ["same T", "equal NFE"]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"official", "ddim"}


@pytest.mark.parametrize("name, axis", [("metric_vs_lambda", "zigzag_steps"),
                                        ("metric_vs_g2", "inversion_guidance_scale"),
                                        ("metric_vs_rounds", "rounds")])
def test_ablation_means_come_from_the_results(written: tuple[dict[str, FigureOutput], Path], run_dir: Path,
                                              results: pd.DataFrame, name: str, axis: str) -> None:
    outputs, _ = written
    data = outputs[name].data
    cells = pd.read_parquet(run_dir / "cells.parquet")
    reference = {"num_inference_steps": 10, "guidance_scale": 3.0, "inversion_guidance_scale": 0.0, "rounds": 1,
                 "zigzag_steps": 9}
    reference.pop(axis)
    zig = data[data["method"] == "zigzag"]
    assert set(zig["operator"]) == {"official", "ddim"}
    assert zig[axis].nunique() >= 2
    for _, row in data.iterrows():
        table = results if row["level"] == "sample" else cells
        if row["method"] == "standard":
            rows = table[(table["method"] == "standard") & (table["num_inference_steps"] == 10)]
        else:
            rows = table[(table["method"] == "zigzag") & (table["zag"] == row["operator"])
                         & (table[axis] == row[axis])]
            for key, value in reference.items():
                rows = rows[rows[key] == value]
        assert row["mean"] == pytest.approx(rows[row["metric"]].mean()), (name, dict(row))
        if row["level"] == "sample":
            assert row["n"] == len(rows) and row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert set(data["metric"]) == {"posterior", "mean_distance", "frechet_pca"}
    if axis == "zigzag_steps":  # standard sampling is lambda = 0 of each operator's curve
        assert sorted(data.loc[data["method"] == "standard", "zigzag_steps"].unique()) == [0]
    fig = outputs[name].figure
    for ax in fig.axes:
        if not ax.get_ylabel():
            continue  # a secondary (gap) axis
        metric = ax.get_title().split(" (")[0]
        assert ax.get_ylabel().startswith(metric)
        curve = data[(data["metric"] == metric) & data[axis].notna()]
        lines = [line for line in drawn_lines(ax) if "reference" not in line.get_label()]
        assert {line.get_label() for line in lines} == set(curve["operator"])
        for line in lines:
            expected = curve[curve["operator"] == line.get_label()].sort_values(axis)
            np.testing.assert_allclose(line.get_ydata(), expected["mean"])
            np.testing.assert_allclose(line.get_xdata(), expected[axis])
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bands if metric != "frechet_pca" else True
    if axis == "inversion_guidance_scale":
        assert any("gap" in child.get_xlabel() for ax in fig.axes for child in ax.child_axes)


def test_cost_figure_compares_at_equal_nfe(written: tuple[dict[str, FigureOutput], Path],
                                           results: pd.DataFrame) -> None:
    outputs, _ = written
    data = outputs["metric_vs_nfe"].data
    standard = data[data["method"] == "standard"]
    assert sorted(standard["num_inference_steps"].unique()) == [10, 16, 24]
    assert (standard["nfe"] == 2 * standard["num_inference_steps"]).all()
    official = data[data["method"] == "zigzag (official)"]
    assert sorted(official["nfe"].unique()) == [2 * 6 + 3 * 5, 2 * 10 + 3 * 9]  # 2T + 3 lambda (g2 = 0)
    for _, row in data.iterrows():
        rows = results[(results["nfe"] == row["nfe"]) & (results["num_inference_steps"] == row["num_inference_steps"])
                       & (results["rounds"] == 1) & (results["inversion_guidance_scale"] == 0.0)]
        if row["method"] != "standard":
            rows = rows[(rows["method"] == "zigzag") & (rows["zag"] == row["method"][len("zigzag ("):-1])]
        assert row["mean"] == pytest.approx(rows[row["metric"]].mean())
    fig = outputs["metric_vs_nfe"].figure
    for ax in fig.axes:
        assert ax.get_xlabel() == "network rows per sample (NFE)"
        assert {c.get_label() for c in ax.containers} == {"standard", "zigzag (official)", "zigzag (ddim)"}
        metric = ax.get_title()
        for container in ax.containers:
            expected = data[(data["metric"] == metric) & (data["method"] == container.get_label())].sort_values("nfe")
            np.testing.assert_allclose(container.lines[0].get_xdata(), expected["nfe"])
            np.testing.assert_allclose(container.lines[0].get_ydata(), expected["mean"])
        assert sum(t.get_text().startswith("T=") for t in ax.texts) == len(data) // 2


def test_semantic_gain_comes_from_the_traces(written: tuple[dict[str, FigureOutput], Path], run_dir: Path,
                                             results: pd.DataFrame) -> None:
    outputs, _ = written
    data = outputs["semantic_gain"].data
    assert set(data["operator"]) == {"official", "ddim"} and set(data["panel"]) == {"per step", "cumulative"}
    for operator in ("official", "ddim"):
        cell = cell_of(results, method="zigzag", zag=operator, zigzag_steps=9, rounds=1,
                       inversion_guidance_scale=0.0)
        frame = Trace.load(run_dir / "traces" / f"{cell}.safetensors").to_frame()
        zag = frame[frame["op"] == "zag"]
        part = data[(data["operator"] == operator)]
        for quantity_prefix, column in (("||\N{GREEK SMALL LETTER DELTA}||", "gain_norm"), ("||gap", "gap_norm"),
                                        ("||residual", "residual_norm")):
            rows = part[part["quantity"].str.startswith(quantity_prefix)].set_index("step")["mean"]
            expected = zag.groupby("step")[column].mean()
            np.testing.assert_allclose(rows.to_numpy(), expected.to_numpy(), rtol=1e-6)
        cumulative = part[part["panel"] == "cumulative"]
        stepwise = cumulative[cumulative["quantity"].str.startswith("stepwise")].set_index("step")["mean"]
        once = cumulative[cumulative["quantity"].str.startswith("end-to-end")].set_index("step")["mean"]
        # each gap term carried to the window's end level ab[t_9] by sqrt(ab[t_9] / ab[t_i]) (the step's own alphas)
        steps = frame[frame["op"] == "step"].set_index(["sample", "step"])
        a_end = steps.xs(8, level="step")["a_to"]
        a_from = steps.loc[list(zip(zag["sample"], zag["step"], strict=True)), "a_from"].to_numpy()
        carried = zag.assign(value=zag["gap_norm"].to_numpy() * np.sqrt(a_end.loc[zag["sample"]].to_numpy() / a_from))
        total = carried.groupby("sample")["value"].sum().mean()
        assert stepwise.iloc[-1] == pytest.approx(total) and once.iloc[-1] == pytest.approx(total)
        assert total > zag.groupby("sample")["gap_norm"].sum().mean()  # DDIM carries toward less noise: > 1
        assert (once.loc[:7] == 0).all() and len(stepwise) == 10  # T = 10 steps, window 0..8
        np.testing.assert_allclose(stepwise.loc[:8].to_numpy(),
                                   carried.groupby("step")["value"].mean().cumsum().to_numpy(), rtol=1e-6)
    fig = outputs["semantic_gain"].figure
    assert len(fig.axes) == 4 and len(fig.legends) == 2
    for ax in fig.axes:
        assert len(drawn_lines(ax)) in (3, 5)


def test_trajectory_segments_are_the_trace_latents(written: tuple[dict[str, FigureOutput], Path], run_dir: Path,
                                                   results: pd.DataFrame) -> None:
    outputs, _ = written
    data = outputs["trajectory"].data
    assert set(data["run"]) == {"standard", "zigzag (official)"}
    assert set(data.loc[data["run"] != "standard", "op"]) == {"zig", "zag", "step"}
    zig_cell = cell_of(results, method="zigzag", zag="official", zigzag_steps=9, rounds=1,
                       inversion_guidance_scale=0.0)
    trace = Trace.load(run_dir / "traces" / f"{zig_cell}.safetensors")
    latents = trace.tensor("latents").double().numpy()
    path = data[(data["run"] != "standard") & (data["sample"] == 0)].sort_values("event")
    np.testing.assert_allclose(path["x_end"], latents[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(path["y_end"], latents[:, 0, 1], rtol=1e-6)
    np.testing.assert_allclose(path["x_start"].iloc[0], trace.tensor("x_init")[0, 0].item(), rtol=1e-6)
    assert (path["op"] == "zag").sum() == 9
    fig = outputs["trajectory"].figure
    assert len(fig.axes) == data["sample"].nunique() == 3
    for ax in fig.axes:
        labels = {line.get_label() for line in drawn_lines(ax)}
        assert {"standard path", "zig (denoise, g1)", "zag (invert, g2)", "step (denoise, g1)"} <= labels
        assert ax.get_xlabel() == "latent[0]"


def test_x0_grid_and_sample_grid_show_the_stored_points(written: tuple[dict[str, FigureOutput], Path], run_dir: Path,
                                                         results: pd.DataFrame) -> None:
    outputs, _ = written
    x0 = outputs["x0_grid"].data
    zig_cell = cell_of(results, method="zigzag", zag="official", zigzag_steps=9, rounds=1,
                       inversion_guidance_scale=0.0)
    trace = Trace.load(run_dir / "traces" / f"{zig_cell}.safetensors")
    rows = x0[(x0["run"] == "zigzag (official)")]
    for step in rows["step"].unique():
        expected = trace.x0(int(step)).double().numpy()
        got = rows[rows["step"] == step].sort_values("sample")
        np.testing.assert_allclose(got[["z0", "z1"]].to_numpy(), expected[got["sample"].to_numpy()], rtol=1e-6)
    assert len(outputs["x0_grid"].figure.axes) == x0["step"].nunique()

    grid = outputs["sample_grid"].data
    assert set(grid["run"]) == {"standard", "zigzag (official)", "zigzag (ddim)"}
    from safetensors.numpy import load_file

    for run, cell in (("standard", cell_of(results, method="standard", num_inference_steps=10)),
                      ("zigzag (official)", zig_cell)):
        points = load_file(str(run_dir / "images" / f"{cell}.safetensors"))["images"]
        part = grid[grid["run"] == run]
        sample_index = results[results["cell"] == cell].set_index(["prompt_index", "seed"])["sample_index"]
        idx = sample_index.loc[list(zip(part["prompt_index"], part["seed"], strict=True))].to_numpy()
        np.testing.assert_allclose(part[["z0", "z1"]].to_numpy(), points[idx], rtol=1e-6)
    ax = outputs["sample_grid"].figure.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(grid)


def test_zag_operator_pairs_cells_that_differ_only_in_the_operator(
        written: tuple[dict[str, FigureOutput], Path], results: pd.DataFrame) -> None:
    outputs, _ = written
    data = outputs["zag_operator"].data
    assert data["setting"].nunique() == 5 and set(data["metric"]) == {"posterior", "mean_distance"}
    for _, row in data.iterrows():
        settings = {k: row[k] for k in ("num_inference_steps", "inversion_guidance_scale", "zigzag_steps", "rounds")}
        ddim = cell_of(results, method="zigzag", zag="ddim", **settings)
        official = cell_of(results, method="zigzag", zag="official", **settings)
        assert (row["ddim_cell"], row["official_cell"]) == (ddim, official)
        a = results[results["cell"] == ddim].set_index(["prompt_index", "seed"])[row["metric"]]
        b = results[results["cell"] == official].set_index(["prompt_index", "seed"])[row["metric"]].reindex(a.index)
        diff = (a - b) if row["metric"] == "posterior" else (b - a)
        assert row["win_rate"] == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())
    fig = outputs["zag_operator"].figure
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xlim() == pytest.approx((-0.02, 1.02))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(pd.unique(data["setting"]))


# --------------------------------------------------------- injection theory
def test_summed_gap_and_end_to_end_injection(run_dir: Path, results: pd.DataFrame) -> None:
    """The one-shot injection of the summed gap term, scored with the model, against stepwise Z-Sampling."""
    zig_cell = cell_of(results, method="zigzag", zag="ddim", zigzag_steps=9, rounds=1, inversion_guidance_scale=0.0)
    std_cell = cell_of(results, method="standard", num_inference_steps=10)
    trace = Trace.load(run_dir / "traces" / f"{zig_cell}.safetensors")
    gap = summed_gap(trace)
    assert gap.shape == (12, 2)
    frame = trace.to_frame()
    norms = frame[frame["op"] == "zag"].pivot(index="sample", columns="step", values="gap_norm")
    for step in (0, 4, 8):  # each reflection's gap vector has the recorded norm
        single = summed_gap(trace, through_step=step) - (summed_gap(trace, through_step=step - 1) if step else 0.0)
        np.testing.assert_allclose(np.linalg.norm(single, axis=1), norms[step].to_numpy(), rtol=1e-4)
    assert np.linalg.norm(gap, axis=1).max() <= norms.sum(axis=1).max() + 1e-6  # triangle inequality
    model = GaussianMixtureModel.default()
    from safetensors.numpy import load_file

    standard_points = load_file(str(run_dir / "images" / f"{std_cell}.safetensors"))["images"]
    injected = torch.from_numpy(standard_points + gap)
    prompts = results[results["cell"] == std_cell].sort_values("sample_index")
    end_to_end = prompts[["prompt_index", "seed"]].assign(posterior=[
        float(model.posterior(injected[k:k + 1], str(p))[0]) for k, p in enumerate(prompts["prompt"])])
    stepwise = results[results["cell"] == zig_cell][["prompt_index", "seed", "posterior"]]
    table = injection_comparison(stepwise, end_to_end, ["posterior"], n_resamples=N_RESAMPLES)
    merged = stepwise.merge(end_to_end, on=["prompt_index", "seed"])
    diff = merged["posterior_x"] - merged["posterior_y"]
    assert table.loc[0, "n"] == 12
    assert table.loc[0, "win_rate"] == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())


# ------------------------------------------------------------ skipping, CLI
def test_cli_skips_figures_whose_inputs_are_missing(run_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "run"
    partial.mkdir()
    results = pd.read_parquet(run_dir / "results.parquet")
    keep = results[(results["zag"] == "official") & (results["rounds"] == 1)
                   & (results["inversion_guidance_scale"] == 0.0)]
    keep.to_parquet(partial / "results.parquet")  # no cells, traces, images, no ddim, no g2 / rounds grid
    out = tmp_path / "figures"
    out.mkdir()
    (out / "trajectory.png").write_bytes(b"stale")
    result = CliRunner().invoke(app, ["figures", str(partial), "--out", str(out), "--n-resamples", "500"])
    assert result.exit_code == 0, result.output
    index = (out / "index.md").read_text()
    skipped = index.split("## Skipped")[1]
    for name in ("metric_vs_g2", "metric_vs_rounds", "semantic_gain", "trajectory", "x0_grid", "sample_grid",
                 "zag_operator"):
        assert f"**{name}**: skipped:" in skipped, name
        assert not (out / f"{name}.png").exists()
    assert "no traces/" in skipped and "no images/" in skipped and "'official' and a 'ddim'" in skipped
    for name in ("win_rate", "metric_vs_lambda", "metric_vs_nfe"):
        assert (out / f"{name}.png").is_file() and f"**{name}** ([png]" in index
    assert "win_rate: written" in result.output and "trajectory: skipped" in result.output


def test_a_run_without_zigzag_cells_skips_everything(run_dir: Path, tmp_path: Path) -> None:
    results = pd.read_parquet(run_dir / "results.parquet")
    (tmp_path / "run").mkdir()
    results[results["method"] == "standard"].to_csv(tmp_path / "run" / "results.csv", index=False)
    outputs = write_figures(tmp_path / "run", tmp_path / "out")
    assert all(o.skipped for o in outputs)
    assert "Skipped" in (tmp_path / "out" / "index.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert all("no results" in o.skipped for o in build_figures(empty))


def test_reference_cells_follow_the_paper_defaults(run_dir: Path) -> None:
    refs = reference_cells(load_run(run_dir).results)
    assert list(refs["operator"]) == ["official", "ddim"]
    assert (refs["zigzag_steps"] == 9).all() and (refs["inversion_guidance_scale"] == 0).all()
    assert (refs["rounds"] == 1).all() and (refs["num_inference_steps"] == 10).all()


# ---------------------------------------------------------------- hygiene
def test_analysis_imports_no_model_code() -> None:
    code = ("import sys, analysis, analysis.report; "
            "bad = [m for m in sys.modules if m.startswith(('torch', 'zsampling.denoisers', 'diffusers'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "analysis").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("zsampling.denoisers", "torch", "diffusers")), (path.name, name)
        assert "print(" not in path.read_text(), path.name


def test_grid_size_is_what_the_helper_documents() -> None:
    assert len(analytic_grid()) == 14


def test_figures_from_a_sweep_run(tmp_path: Path) -> None:
    """``zsampling figures`` on the sweep engine's own RUN_DIR (analytic model, both operators)."""
    sweep = pytest.importorskip("zsampling.sweep")
    spec = sweep.parse_spec({
        "model": {"name": "analytic"}, "prompts": ["0", "1"], "seeds": [0, 1, 2],
        "grid": {"num_inference_steps": [6], "guidance_scale": [3.0], "inversion_guidance_scale": [0.0, 1.5],
                 "zigzag_steps": [0, 2, 5], "zag": ["official", "ddim"]},
        "metrics": ["posterior"], "trace": {"keep": "all", "latent_dtype": "float32"}, "matched_baselines": True,
    })
    sweep.run_sweep(spec, tmp_path / "run")
    out = tmp_path / "figures"
    result = CliRunner().invoke(app, ["figures", str(tmp_path / "run"), "--out", str(out), "--n-resamples", "500"])
    assert result.exit_code == 0, result.output
    index = (out / "index.md").read_text()
    for name in FIGURES:
        if name == "metric_vs_rounds":  # the spec has one rounds value
            assert "**metric_vs_rounds**: skipped:" in index
            continue
        if name in NEEDS_DEMO:
            assert f"**{name}**: skipped:" in index
            continue
        assert (out / f"{name}.png").is_file() and f"**{name}** ([png]" in index, name
    # the sweep repeats the standard cell for every g2 and zag value: it must count once
    curve = pd.read_csv(out / "metric_vs_lambda.csv")
    assert (curve["n"] == 6).all()
    cost = pd.read_csv(out / "metric_vs_nfe.csv")
    assert (cost.loc[cost["method"] == "standard", "n"] == 6).all()


def test_figures_on_a_directory_that_is_not_a_run_fails_and_says_what_a_run_holds(tmp_path) -> None:
    from typer.testing import CliRunner

    from zsampling.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["figures", str(empty), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 2
    assert "is not a run directory" in result.output and "results.parquet" in result.output
    assert not (tmp_path / "figs").exists()
