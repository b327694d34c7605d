"""Guidance-matched evaluation: effective guidance, the gain split, matched baselines, quality guards.

The analytic Gaussian mixture has exact eps, so the first-order claims are
checked against their construction: with the "ddim" zag a reflection's gain
in eps units is (g1 - g2) d plus a residual that vanishes with the step size,
so the effective guidance of a reflecting step tends to 2 g1 - g2; standard
sampling has exactly g1. The demo model runs one small end-to-end sweep.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import analysis
from analysis.report import build_figures
from zsampling import ZigzagConfig
from zsampling.cli import app
from zsampling.demo_model import DEMO_MODEL_DIR, METRICS_FILE, WEIGHTS_FILE
from zsampling.denoisers.analytic import GaussianMixtureModel
from zsampling.metrics import get_scorer
from zsampling.metrics.quality import ClippingFraction, Saturation
from zsampling.sweep import SpecError, load_results, parse_spec, run_sweep
from zsampling.sweep.matched import MATCHED_METHODS, matched_steps
from zsampling.trace import (
    Trace,
    effective_guidance,
    expected_network_rows,
    guidance_summary,
    reflection_vectors,
    sample_with_trace,
    split_along,
)

torch.set_num_threads(1)

PROMPTS = ["0", "1", "2"] * 4
SEEDS = list(range(12))
MATCHED_FIGURES = ["matched_win_rate", "matched_metric_vs_nfe", "effective_guidance", "guidance_decomposition"]


@pytest.fixture(scope="module")
def mixture() -> GaussianMixtureModel:
    return GaussianMixtureModel.default()


def run(model: GaussianMixtureModel, **kwargs: object) -> Trace:
    settings = {"guidance_scale": 3.0, "inversion_guidance_scale": 0.5, "zag": "ddim", **kwargs}
    _, trace = sample_with_trace(model, PROMPTS, seed=SEEDS, output_type="pt", progress=False, **settings)
    return trace


# ------------------------------------------------------------ effective guidance
@pytest.mark.parametrize("g1", [3.0, 1.0, 0.4])
def test_standard_sampling_has_effective_guidance_exactly_g1(mixture: GaussianMixtureModel, g1: float) -> None:
    trace = run(mixture, num_inference_steps=8, guidance_scale=g1, zigzag_steps=0)
    frame = trace.effective_guidance()
    assert len(frame) == 8 * len(PROMPTS) and not frame["reflects"].any()
    assert (frame["eff_guidance"] == g1).all() and (frame["eff_guidance_parallel"] == g1).all()
    assert (frame["eff_guidance_orthogonal"] == 0).all() and (frame["first_order"] == g1).all()
    summary = trace.guidance_summary()
    assert summary["effective_guidance"] == g1 and summary["effective_guidance_parallel"] == g1
    assert summary["window_size"] == 0 and summary["first_order"] == g1 and summary["complete"]


def test_effective_guidance_is_first_order_2g1_minus_g2(mixture: GaussianMixtureModel) -> None:
    g1, g2 = 3.0, 0.5
    coarse, fine = run(mixture, num_inference_steps=20), run(mixture, num_inference_steps=80)
    target = 2 * g1 - g2
    errors = {}
    for name, trace in (("coarse", coarse), ("fine", fine)):
        summary = guidance_summary(trace)
        assert summary["first_order"] == target and summary["window_size"] == trace.num_steps - 1
        errors[name] = abs(summary["effective_guidance_window"] - target) / target
        # per step, the deviation from 2 g1 - g2 is bounded by the recorded residual: v = (g1 - g2) d + residual / c
        frame = effective_guidance(trace)
        refl = trace.reflections()
        bound = refl["residual_norm"] / (refl["c"].abs() * refl["zig_guidance_signal"])
        window = frame[frame["reflects"]].reset_index(drop=True)
        assert np.all(np.abs(window["eff_guidance"] - target) <= bound * (1 + 1e-4) + 1e-4)
        # steps outside the window are standard steps: exactly g1
        assert (frame.loc[~frame["reflects"], "eff_guidance"] == g1).all()
    assert errors["fine"] < 0.06  # within first-order error at T = 80 ...
    assert errors["coarse"] > 3 * errors["fine"]  # ... and the error shrinks like the step size


def test_rounds_add_up(mixture: GaussianMixtureModel) -> None:
    one = guidance_summary(run(mixture, num_inference_steps=80, rounds=1))
    two = guidance_summary(run(mixture, num_inference_steps=80, rounds=2))
    assert two["first_order"] == 3.0 + 2 * 2.5 and two["rounds"] == 2
    assert abs(two["effective_guidance_window"] - 8.0) / 8.0 < 0.15
    assert two["effective_guidance_parallel_window"] > one["effective_guidance_parallel_window"] + 1.5


def test_measured_from_scalars_alone_without_extra_rows(mixture: GaussianMixtureModel) -> None:
    scalars = run(mixture, num_inference_steps=10)
    everything = run(mixture, num_inference_steps=10, keep="all")
    assert scalars.tensor_names == [] and scalars.meta["network_rows"] == scalars.meta["expected_network_rows"]
    pd.testing.assert_frame_equal(effective_guidance(scalars), effective_guidance(everything))


def test_parallel_and_orthogonal_parts_add_back_and_are_orthogonal(mixture: GaussianMixtureModel) -> None:
    trace = run(mixture, num_inference_steps=10, keep="all", latent_dtype=torch.float64, zag="official")
    refl = trace.reflections()
    for step in range(9):
        vectors = reflection_vectors(trace, step)
        delta, par, orth = vectors["delta"], vectors["parallel"], vectors["orthogonal"]
        assert torch.allclose(par + orth, delta, rtol=0, atol=1e-5)
        dot = torch.linalg.vecdot(par, orth, dim=1)
        assert torch.all(dot.abs() <= 1e-5 * par.norm(dim=1) * orth.norm(dim=1) + 1e-12)
        # the trace's scalars are these vectors' lengths (float32 storage)
        rows = refl[refl["step"] == step].sort_values("sample")
        unit = vectors["direction"] / vectors["direction"].norm(dim=1, keepdim=True)
        np.testing.assert_allclose(rows["gain_parallel"], torch.linalg.vecdot(delta, unit, dim=1), rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(rows["gain_orthogonal"], orth.norm(dim=1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rows["gain_norm"] ** 2, rows["gain_parallel"] ** 2 + rows["gain_orthogonal"] ** 2,
                                   rtol=1e-5, atol=1e-10)
    frame = trace.effective_guidance()
    np.testing.assert_allclose(frame["eff_guidance"] ** 2,
                               frame["eff_guidance_parallel"] ** 2 + frame["eff_guidance_orthogonal"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(frame["gain_norm"] ** 2, frame["gain_parallel"] ** 2 + frame["gain_orthogonal"] ** 2,
                               rtol=1e-9)
    cum = frame.groupby("sample")[["gain_parallel", "gain_orthogonal"]].cumsum()
    np.testing.assert_allclose(frame["cum_gain_parallel"], cum["gain_parallel"], rtol=1e-12)
    np.testing.assert_allclose(frame["cum_gain_orthogonal"], cum["gain_orthogonal"], rtol=1e-12)


def test_split_along_edge_cases() -> None:
    generator = torch.Generator().manual_seed(0)
    v, d = torch.randn(4, 3, 5, generator=generator), torch.randn(4, 3, 5, generator=generator)
    d[1] = 0.0
    par, orth = split_along(v, d)
    assert torch.allclose(par + orth, v.double(), atol=1e-12) and torch.all(par[1] == 0)
    dots = torch.linalg.vecdot(par.reshape(4, -1), orth.reshape(4, -1))
    assert torch.allclose(dots, torch.zeros(4, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        split_along(v, d[:, :2])


# --------------------------------------------------------------- matched sweep
SPEC = {
    "model": "analytic",
    "prompts": ["0", "1", "2"],
    "seeds": [0, 1, 2, 3],
    "grid": {"num_inference_steps": 8, "guidance_scale": 3.0, "zigzag_steps": [0, "full"]},
    "metrics": ["posterior"],
    "trace": {"keep": ["latents"], "latent_dtype": "float32"},
    "batch_size": 5,
    "matched_baselines": True,
}


@pytest.fixture(scope="module")
def matched_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    out = tmp_path_factory.mktemp("matched") / "run"
    return run_sweep(parse_spec(SPEC), out, progress=False), out


def test_matched_baselines_share_seeds_and_budget(matched_run: tuple[object, object]) -> None:
    result, out = matched_run
    results, cells = load_results(out)
    assert list(cells["method"]) == ["standard", "zigzag", *MATCHED_METHODS]
    assert result.cells_run == 5 and result.cells_total == 5
    zig = cells[cells["method"] == "zigzag"].iloc[0]
    nfe = int(zig["nfe"])
    assert nfe == expected_network_rows(ZigzagConfig(num_inference_steps=8, guidance_scale=3.0, zigzag_steps=7), 1)
    keys = set(map(tuple, results.loc[results["cell"] == zig["cell"], ["prompt_index", "seed"]].to_numpy().tolist()))
    z_trace = Trace.load(out / "traces" / f"{zig['cell']}.safetensors")
    matched = pd.read_parquet(out / "matched.parquet")
    guidance = pd.read_parquet(out / "effective_guidance.parquet").set_index("cell")
    for method in MATCHED_METHODS:
        cell = cells[cells["method"] == method].iloc[0]
        rows = results[results["cell"] == cell["cell"]]
        assert set(map(tuple, rows[["prompt_index", "seed"]].to_numpy().tolist())) == keys
        assert int(cell["zigzag_steps"]) == 0
        assert 0 <= int(cell["nfe"]) - nfe < 2 and int(cell["nfe"]) == 2 * int(cell["num_inference_steps"])
        trace = Trace.load(out / "traces" / f"{cell['cell']}.safetensors")
        assert torch.equal(trace.tensor("x_init"), z_trace.tensor("x_init"))  # the same initial noise per sample
        link = matched[matched["cell"] == cell["cell"]].iloc[0]
        assert link["source_cell"] == zig["cell"] and link["method"] == method and link["source_nfe"] == nfe
    scales = dict(zip(cells["method"], cells["guidance_scale"], strict=True))
    assert scales["cfg_matched_nfe"] == 3.0 and scales["cfg_matched_first_order"] == 6.0
    # the matched cell uses the signed parallel form by default; both forms are recorded beside it
    assert scales["cfg_matched_measured"] == round(guidance.loc[zig["cell"], "effective_guidance_parallel"], 4)
    link = matched[matched["method"] == "cfg_matched_measured"].iloc[0]
    assert link["measured_form"] == "parallel"
    assert link["measured_scale_parallel"] == guidance.loc[zig["cell"], "effective_guidance_parallel"]
    assert link["measured_scale_norm"] == guidance.loc[zig["cell"], "effective_guidance"]
    assert link["measured_scale_norm"] != link["measured_scale_parallel"]
    assert guidance.loc[zig["cell"], "first_order"] == 6.0
    record = json.loads((out / "cells" / f"{zig['cell']}.json").read_text())
    assert record["effective_guidance"]["effective_guidance"] == guidance.loc[zig["cell"], "effective_guidance"]


def test_matched_steps_rule() -> None:
    assert matched_steps(97, 5.5) == 49 and matched_steps(96, 5.5) == 48
    assert matched_steps(97, 1.0) == 97 and matched_steps(97, 1.0, "both") == 49
    for nfe in range(1, 60):
        steps = matched_steps(nfe, 2.5)
        assert 0 <= 2 * steps - nfe < 2


def test_matched_baselines_resume_and_toggle(matched_run: tuple[object, object], tmp_path) -> None:
    _, out = matched_run
    again = run_sweep(parse_spec(SPEC), out, progress=False)
    assert again.cells_run == 0 and again.cells_skipped == 5
    matched = pd.read_parquet(out / "matched.parquet")
    victim = matched["cell"].iloc[1]
    (out / "cells" / f"{victim}.json").unlink()
    resumed = run_sweep(parse_spec(SPEC), out, progress=False)
    assert resumed.cells_run == 1 and victim in set(resumed.results["cell"])
    # turning the flag on for an existing run adds the baselines (the spec hash ignores it)
    plain = tmp_path / "plain"
    first = run_sweep(parse_spec({**SPEC, "matched_baselines": False}), plain, progress=False)
    assert first.cells_run == 2 and not (plain / "matched.parquet").exists()
    more = run_sweep(parse_spec(SPEC), plain, progress=False)
    assert more.cells_run == 3 and more.cells_skipped == 2
    pd.testing.assert_frame_equal(more.results.drop(columns="wall_time_s"),
                                  load_results(out)[0].drop(columns="wall_time_s"), check_exact=False, rtol=1e-6)


def test_matched_baselines_are_refused_when_they_cannot_be_measured() -> None:
    with pytest.raises(SpecError, match="matched_baselines needs the Z-Sampling cells' traces"):
        parse_spec({**SPEC, "trace": False})
    with pytest.raises(SpecError, match="guidance_scale 1 .*branches: both"):
        parse_spec({**SPEC, "grid": {**SPEC["grid"], "guidance_scale": 1.0}})
    parse_spec({**SPEC, "grid": {**SPEC["grid"], "guidance_scale": 1.0}, "branches": "both"})
    with pytest.raises(SpecError, match="no Z-Sampling cell"):
        parse_spec({**SPEC, "grid": {**SPEC["grid"], "zigzag_steps": 0}})
    with pytest.raises(SpecError, match="matched_baselines must be true or false"):
        parse_spec({**SPEC, "matched_baselines": "yes"})
    with pytest.raises(SpecError, match="compute-matched baseline needs"):
        parse_spec({**SPEC, "grid": {**SPEC["grid"], "num_inference_steps": 500}})


def test_cli_flag(tmp_path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "matched_baselines": False}))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--matched-baselines"])
    assert result.exit_code == 0, result.output
    assert "matched baselines: 3 more cells" in result.output
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "run"), "--matched-baselines",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(tmp_path / "run" / "results.parquet")["method"]) == {"standard", "zigzag",
                                                                                     *MATCHED_METHODS}


# -------------------------------------------------------------------- analysis
def test_comparison_verdict_and_figures(matched_run: tuple[object, object]) -> None:
    _, out = matched_run
    data = analysis.load_run(out)
    table = analysis.matched_comparison(data.results, data.matched, n_resamples=200)
    assert list(table["baseline"]) == ["standard", *MATCHED_METHODS]
    assert (table["n"] == 12).all() and table["win_rate"].between(0, 1).all()
    # the same numbers as a direct paired comparison
    direct = analysis.compare(data.results, {"method": "zigzag"}, {"method": "cfg_matched_measured"}, ["posterior"],
                              n_resamples=200)
    row = table[table["baseline"] == "cfg_matched_measured"].iloc[0]
    assert row["win_rate"] == direct["win_rate"].iloc[0] and row["ci_low"] == direct["ci_low"].iloc[0]
    text = analysis.verdict_markdown(table, guidance=data.guidance)
    answer, _ = analysis.guidance.headline(table, set())
    assert f"**{answer}**" in text and "first-order value 6.00" in text
    assert text.count("posterior:") == 4
    # inferred links (no matched table) give the same pairs when there is one Z-Sampling cell
    pd.testing.assert_frame_equal(analysis.matched_pairs(data.results, None)[["baseline", "baseline_cell"]],
                                  analysis.matched_pairs(data.results, data.matched)[["baseline", "baseline_cell"]])
    outputs = {o.name: o for o in build_figures(data, n_resamples=200, names=MATCHED_FIGURES)}
    for name in MATCHED_FIGURES:
        assert outputs[name].skipped is None, (name, outputs[name].skipped)
        assert not outputs[name].data.empty
    profile = outputs["effective_guidance"].data
    lines = profile[profile["step"].isna()].set_index("quantity")["mean"]
    assert lines[analysis.guidance.REFERENCE_LINES["first_order"]] == 6.0
    cost = outputs["matched_metric_vs_nfe"].data
    assert set(cost["method"]) == {"standard", "zigzag (official)", *MATCHED_METHODS}


def test_verdict_rules() -> None:
    def rows(*outcomes: tuple[str, str, float, float]) -> pd.DataFrame:
        return pd.DataFrame([{"zigzag_cell": "z", "operator": "official", "setting": "T=1", "baseline": b,
                              "baseline_label": b, "metric": m, "win_rate": (lo + hi) / 2, "ci_low": lo, "ci_high": hi,
                              "n": 10} for b, m, lo, hi in outcomes])

    yes = rows(("cfg_matched_measured", "alignment", 0.6, 0.8), ("cfg_matched_first_order", "alignment", 0.55, 0.7))
    no = rows(("cfg_matched_measured", "alignment", 0.1, 0.3), ("cfg_matched_first_order", "alignment", 0.4, 0.6))
    tie = rows(("cfg_matched_measured", "alignment", 0.4, 0.6), ("cfg_matched_first_order", "alignment", 0.3, 0.7))
    guard = rows(("cfg_matched_measured", "alignment", 0.6, 0.8), ("cfg_matched_measured", "nn_distance", 0.1, 0.2),
                 ("cfg_matched_first_order", "alignment", 0.6, 0.8))
    assert analysis.guidance.headline(yes, set())[0] == "Yes"
    assert analysis.guidance.headline(no, set())[0] == "No"
    assert analysis.guidance.headline(tie, set())[0] == "No detectable difference"
    assert analysis.guidance.headline(guard, {"nn_distance"})[0] == "Yes"  # quality guards are reported apart
    text = analysis.verdict_markdown(guard)
    assert "**Yes**" in text and "nn_distance vs CFG at measured g_eff (parallel), same NFE: worse" in text
    tie_text = analysis.verdict_markdown(tie)
    # a CI covering 0.5 is "no detectable difference at this n", always with its interval, never "equal"
    assert "no detectable difference at this n from cfg_matched_measured (win rate 0.50, 95% CI [0.40, 0.60]" \
        in tie_text and "equal" not in tie_text.lower()


# -------------------------------------------------------------- quality guards
def test_quality_scorers() -> None:
    images = torch.tensor([[[[0.0, 1.0], [0.5, 0.2]]], [[[0.3, 0.4], [0.5, 0.6]]]])
    clip = get_scorer("clipping_fraction")
    assert isinstance(clip, ClippingFraction) and clip.name == "clipping_fraction" and not clip.higher_is_better
    assert clip.score(images, ["a", "b"]).tolist() == [0.5, 0.0]
    assert ClippingFraction(low=False).score(images).tolist() == [0.25, 0.0]
    # guards have no fixed direction in the analysis: they are judged by the distance from the data's value
    assert analysis.stats.is_guard("clipping_fraction") and analysis.stats.is_guard("saturation")
    rgb = torch.zeros(2, 3, 2, 2)
    rgb[0, 0] = 1.0  # pure red: saturation 1
    rgb[1] = 0.5  # grey: 0
    saturation = get_scorer("saturation")
    assert isinstance(saturation, Saturation) and saturation.score(rgb).tolist() == [1.0, 0.0]
    assert saturation.score(images).tolist() == [0.0, 0.0]
    assert saturation.score(rgb).dtype == torch.float32
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        clip.score(images * 3)
    from PIL import Image

    pil = [Image.new("RGB", (4, 4), (255, 0, 0))]
    assert clip.score(pil).tolist() == [1.0] and saturation.score(pil).tolist() == [1.0]


# ------------------------------------------------------------------ demo model
@pytest.mark.skipif(not (DEMO_MODEL_DIR / WEIGHTS_FILE).is_file() or not (DEMO_MODEL_DIR / METRICS_FILE).is_file(),
                    reason="the demo model's weights are not built")
def test_demo_end_to_end(tmp_path) -> None:
    spec = parse_spec({
        "model": "demo", "prompts": ["1", "7"], "seeds": [0, 1, 2],
        "grid": {"num_inference_steps": 6, "guidance_scale": 0.75, "zigzag_steps": [0, "full"]},
        "metrics": ["alignment", "nn_distance", "clipping_fraction", "frechet_pca"], "matched_baselines": True,
    })
    result = run_sweep(spec, tmp_path / "run", progress=False)
    assert set(result.results["method"]) == {"standard", "zigzag", *MATCHED_METHODS}
    assert result.results["clipping_fraction"].between(0, 1).all()
    assert result.cells["frechet_pca"].notna().all()
    images = load_file(tmp_path / "run" / "images" / f"{result.cells['cell'].iloc[-1]}.safetensors")["images"]
    assert images.shape == (6, 1, 8, 8)
    data = analysis.load_run(tmp_path / "run")
    table = analysis.matched_comparison(data.results, data.matched, n_resamples=100)
    assert set(table["metric"]) == {"alignment", "nn_distance", "clipping_fraction"}
    text = analysis.verdict_markdown(table, guidance=data.guidance)
    assert "Does self-reflection beat plain CFG" in text and "(quality guard)" in text
    summary = data.guidance.set_index("method").loc["zigzag"]
    assert math.isfinite(summary["effective_guidance"]) and summary["first_order"] == 1.5
    outputs = build_figures(data, n_resamples=100, names=MATCHED_FIGURES)
    assert all(o.skipped is None for o in outputs), [(o.name, o.skipped) for o in outputs]


# ------------------------------------------------------- degenerate directions and limits
def test_guidance_summary_ignores_steps_without_direction() -> None:
    """Late steps on a well-separated mixture have eps_c == eps_u exactly; they must not make the summary NaN."""
    model = GaussianMixtureModel([0.5, 0.5], [[-2.0], [2.0]], [0.3, 0.3])
    _, trace = sample_with_trace(model, ["0", "1"] * 4, seed=list(range(8)), output_type="pt", progress=False,
                                 num_inference_steps=50, guidance_scale=3.0, inversion_guidance_scale=0.0,
                                 zigzag_steps=49)
    frame = trace.effective_guidance()
    zero = frame["direction_norm"].to_numpy() == 0
    assert zero.any() and not zero.all()  # the degenerate case does occur
    assert frame.loc[zero, "eff_guidance"].isna().all()  # undefined there, not a number
    summary = guidance_summary(trace)
    assert summary["no_direction_steps"] == int(zero.sum()) and summary["complete"]
    kept = frame.loc[~zero]
    weight = kept["direction_norm"].to_numpy()
    for key, column in (("effective_guidance", "eff_guidance"),
                        ("effective_guidance_parallel", "eff_guidance_parallel")):
        expected = float((kept[column].to_numpy() * weight).sum() / weight.sum())
        assert math.isfinite(summary[key]) and summary[key] == pytest.approx(expected, rel=1e-12)
    assert summary["effective_guidance_median"] == pytest.approx(float(np.median(kept["eff_guidance"])), rel=1e-12)
    assert summary["window_size"] == 49 and summary["num_steps"] == 50  # counts still see every step


def test_official_effective_guidance_approaches_the_ddim_value(mixture: GaussianMixtureModel) -> None:
    """The docstring's claim: the one-level offset of the "official" zag fades as T grows."""
    g1, g2 = 3.0, 0.5
    gaps = []
    for steps in (25, 100, 400):
        values = {}
        for zag in ("official", "ddim"):
            _, trace = sample_with_trace(mixture, ["0", "1", "2"] * 3, seed=list(range(9)), output_type="pt",
                                         progress=False, num_inference_steps=steps, guidance_scale=g1,
                                         inversion_guidance_scale=g2, zag=zag)
            values[zag] = guidance_summary(trace)["effective_guidance_parallel"]
        gaps.append(abs(values["official"] - values["ddim"]))
    assert gaps[0] > 3 * gaps[1] > 9 * gaps[2]  # about 1/T
    assert abs(values["official"] - (2 * g1 - g2)) < 0.2 and gaps[2] < 0.2
