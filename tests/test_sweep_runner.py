"""Sweep execution on the analytic model: prefix sharing, batching, pairing, tables, resume, extend.

The analytic Gaussian mixture has exact eps, so every check is fast and
deterministic; sharing must reproduce cells run alone (and
``zsampling.sample`` itself) to 1e-5.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import zsampling
from zsampling.sweep import (
    CELL_COLUMNS,
    RESULT_COLUMNS,
    SpecChangedError,
    SpecError,
    expand_cells,
    initial_noise,
    load_results,
    parse_spec,
    run_sweep,
    sweep_samples,
)
from zsampling.sweep.cells import plan_groups
from zsampling.sweep.models import build_analytic
from zsampling.trace import Trace, expected_network_rows

torch.set_num_threads(1)

T = 6
BASE = {
    "model": "analytic",
    "prompts": ["0", "1", "2"],
    "seeds": [0, 1],
    "grid": {"num_inference_steps": T, "guidance_scale": [3.0], "zigzag_steps": {"range": [0, T]}},
    "metrics": ["posterior"],
    "batch_size": 4,
}


def make(**changes):
    return parse_spec({**BASE, **changes})


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal row for row, wall time aside (it is measured)."""
    pd.testing.assert_frame_equal(a.drop(columns="wall_time_s"), b.drop(columns="wall_time_s"),
                                  check_exact=False, rtol=1e-12, atol=1e-12)


def test_shared_prefix_equals_each_cell_run_alone(tmp_path):
    grid = {"num_inference_steps": T, "guidance_scale": [3.0], "inversion_guidance_scale": [0.0, 1.5],
            "zigzag_steps": {"range": [0, T]}, "rounds": [1, 2], "zag": ["official", "ddim"],
            "zag_eval_timestep": ["next", "current"]}
    spec = make(grid=grid, trace={"keep": ["latents"], "latent_dtype": "float32"})
    shared = run_sweep(spec, tmp_path / "shared", progress=False)
    alone = run_sweep(spec, tmp_path / "alone", progress=False, share_prefix=False)
    frames_equal(shared.results, alone.results)
    frames_equal(shared.cells, alone.cells)
    assert shared.network_rows_spent < 0.5 * alone.network_rows_spent
    assert shared.network_rows_alone == alone.network_rows_alone

    model, prompts, noise = sample_inputs(spec)
    for cell in expand_cells(spec):
        a = load_file(tmp_path / "shared" / "images" / f"{cell.hash}.safetensors")["images"]
        b = load_file(tmp_path / "alone" / "images" / f"{cell.hash}.safetensors")["images"]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        # and an independent run of zsampling.sample from the same initial noise
        out = zsampling.sample(model, prompts, latents=noise, output_type="pt", progress=False, **cell.knobs())
        torch.testing.assert_close(a, out.images, rtol=0, atol=1e-5)
        ta = Trace.load(tmp_path / "shared" / "traces" / f"{cell.hash}.safetensors")
        tb = Trace.load(tmp_path / "alone" / "traces" / f"{cell.hash}.safetensors")
        assert ta.num_samples == len(prompts) and ta.num_events == tb.num_events
        assert ta.config["window"] == list(range(cell.zigzag_steps))
        assert torch.equal(ta.events["op"], tb.events["op"]) and torch.equal(ta.events["step"], tb.events["step"])
        for name in ta.scalars:
            torch.testing.assert_close(ta.scalars[name], tb.scalars[name], rtol=0, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(ta.tensor("latents"), tb.tensor("latents"), rtol=0, atol=1e-5)
        assert ta.meta["sweep"]["cell"] == cell.hash and ta.meta["nfe"] == cell_nfe(cell)


def sample_inputs(spec):
    """The analytic model, prompts and initial noise of a sweep's samples: what zsampling.sample needs to
    redo any of its cells independently."""
    model = build_analytic({}, torch.float32, "cpu")
    samples = sweep_samples(spec)
    return model, [s.prompt for s in samples], initial_noise(samples, model.latent_shape)


def cell_nfe(cell):
    return expected_network_rows(cell.config(), 1)


def test_network_rows_are_counted_honestly(tmp_path):
    spec = make()
    result = run_sweep(spec, tmp_path / "out", progress=False)
    n = spec.num_samples
    # trunk: 2T + 3 lambda_max, each smaller lambda's branch: 2 (T - 1 - lambda) (its step lambda is the trunk's zig)
    lam_max = T - 1
    expected = n * (2 * T + 3 * lam_max + sum(2 * (T - 1 - lam) for lam in range(lam_max)))
    assert result.network_rows_spent == expected
    assert result.network_rows_alone == n * sum(2 * T + 3 * lam for lam in range(T))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["network_rows"]["spent"] == expected
    assert manifest["network_rows"]["alone"] == result.network_rows_alone
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")]
    assert sum(r["network_rows"]["spent"] for r in records) == expected
    assert sorted(r["nfe"] for r in records) == [2 * T + 3 * lam for lam in range(T)]
    assert list(result.results["nfe"]) == [2 * T + 3 * lam for lam in range(T) for _ in range(n)]


def test_tables_traces_images_and_manifest(tmp_path):
    spec = make(grid={"num_inference_steps": T, "guidance_scale": [2.0, 4.0], "zigzag_steps": [0, 3]})
    result = run_sweep(spec, tmp_path / "out", progress=False)
    results, cells = load_results(tmp_path / "out")
    assert list(results.columns) == [*RESULT_COLUMNS, "posterior"]
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert len(results) == 4 * 6 and len(cells) == 4
    frames_equal(results, result.results)
    csv = pd.read_csv(tmp_path / "out" / "results.csv", dtype={"cell": str, "prompt": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(csv, results, check_dtype=False)
    assert results.dtypes["seed"] == "int64" and results.dtypes["guidance_scale"] == "float64"
    assert results.dtypes["zigzag_steps"] == "int64" and results.dtypes["posterior"] == "float64"
    assert list(results["method"].unique()) == ["standard", "zigzag"]
    first = results[results.cell == results.cell.iloc[0]]
    assert list(first["sample_index"]) == list(range(6))
    assert list(first["prompt"]) == ["0", "0", "1", "1", "2", "2"] and list(first["seed"]) == [0, 1] * 3
    assert list(first["prompt_index"]) == [0, 0, 1, 1, 2, 2]
    assert results["posterior"].between(0, 1).all()
    # wall time: the cell's, divided among its samples
    for row in cells.itertuples():
        per_sample = results.loc[results.cell == row.cell, "wall_time_s"]
        assert per_sample.sum() == pytest.approx(row.wall_time_s)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["spec_hash"] == spec.hash
    assert manifest["spec"]["grid"]["guidance_scale"] == [2.0, 4.0]
    assert {"zsampling", "torch", "diffusers", "python"} <= set(manifest["versions"])
    assert manifest["started"] and manifest["finished"] and manifest["cells"]["finished"] == 4
    for cell in cells["cell"]:
        trace = Trace.load(tmp_path / "out" / "traces" / f"{cell}.safetensors")
        assert trace.num_samples == 6 and trace.tensor_names == []  # scalars by default
        path = tmp_path / "out" / "images" / f"{cell}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["zsampling"])
            assert tuple(handle.get_tensor("images").shape) == (6, 2)
        assert meta["cell"] == cell and meta["prompts"] == ["0", "0", "1", "1", "2", "2"]


def test_batch_size_does_not_change_results(tmp_path):
    spec = make(grid={"num_inference_steps": T, "zigzag_steps": [0, 2, 5]})
    one = run_sweep(spec, tmp_path / "b1", progress=False, batch_size=1)
    all_ = run_sweep(spec, tmp_path / "b6", progress=False, batch_size=6)
    frames_equal(one.results, all_.results)


def test_same_sample_starts_from_the_same_noise_in_every_cell(tmp_path):
    spec = make(grid={"num_inference_steps": T, "guidance_scale": [2.0, 4.0], "zigzag_steps": [0, 4]},
                trace={"keep": ["latents"], "latent_dtype": "float32"})
    run_sweep(spec, tmp_path / "out", progress=False)
    inits = [Trace.load(p).tensor("x_init") for p in sorted((tmp_path / "out" / "traces").glob("*.safetensors"))]
    for x in inits[1:]:
        assert torch.equal(x, inits[0])
    samples = sweep_samples(spec)
    noise = initial_noise(samples, (2,))
    # depends only on (seed, prompt_index): not on the batch it is drawn in
    assert torch.equal(initial_noise(samples[3:4], (2,))[0], noise[3])
    assert not torch.equal(noise[0], noise[2])  # prompt 0 and prompt 1 with seed 0 differ
    shared = initial_noise(sweep_samples(make(noise="seed")), (2,), "seed")
    assert torch.equal(shared[0], shared[2])  # noise: seed gives every prompt the seed's noise
    assert torch.equal(shared[0:1], torch.randn((1, 2), generator=torch.Generator().manual_seed(0)))


def test_resume_skips_finished_cells_and_rebuilds_the_same_table(tmp_path):
    spec = make()
    first = run_sweep(spec, tmp_path / "out", progress=False)
    again = run_sweep(spec, tmp_path / "out", progress=False)
    assert again.cells_run == 0 and again.cells_skipped == T and again.network_rows_spent == 0
    frames_equal(first.results, again.results)
    victim = first.cells["cell"].iloc[2]
    (tmp_path / "out" / "cells" / f"{victim}.json").unlink()
    third = run_sweep(spec, tmp_path / "out", progress=False)
    assert third.cells_run == 1
    frames_equal(first.results, third.results)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 3 and manifest["sessions"][-1]["cells_run"] == 1


def test_changed_spec_is_refused_unless_extended(tmp_path):
    spec = make(grid={"num_inference_steps": T, "guidance_scale": [3.0], "zigzag_steps": [0, 3]})
    first = run_sweep(spec, tmp_path / "out", progress=False)
    bigger = make(grid={"num_inference_steps": T, "guidance_scale": [3.0, 5.0], "zigzag_steps": [0, 3]})
    with pytest.raises(SpecChangedError, match=r"another spec .*changed: grid.*--extend"):
        run_sweep(bigger, tmp_path / "out", progress=False)
    extended = run_sweep(bigger, tmp_path / "out", progress=False, extend=True)
    assert extended.cells_run == 2 and extended.cells_skipped == 2
    old = first.results
    frames_equal(extended.results.iloc[: len(old)].reset_index(drop=True), old)
    assert len(extended.cells) == 4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["spec_hash"] == bigger.hash and len(manifest["spec_history"]) == 2
    # the old spec is now the changed one
    with pytest.raises(SpecChangedError):
        run_sweep(spec, tmp_path / "out", progress=False)
    # an extension that drops cells keeps the old ones in the tables
    smaller = make(grid={"num_inference_steps": T, "guidance_scale": [5.0], "zigzag_steps": [3]})
    last = run_sweep(smaller, tmp_path / "out", progress=False, extend=True)
    assert last.cells_run == 0 and len(last.cells) == 4


def test_select_runs_only_matching_cells(tmp_path):
    spec = make(grid={"num_inference_steps": T, "guidance_scale": [2.0, 4.0], "zigzag_steps": [0, 3, "full"]})
    part = run_sweep(spec, tmp_path / "out", progress=False, select=["zigzag_steps=3", "guidance_scale=4"])
    assert part.cells_run == 1 and list(part.cells["zigzag_steps"]) == [3]
    assert part.manifest["status"] == "partial"
    full = run_sweep(spec, tmp_path / "out", progress=False, select={"zigzag_steps": "full"})
    assert full.cells_run == 2 and sorted(full.cells["zigzag_steps"]) == [3, 5, 5]
    rest = run_sweep(spec, tmp_path / "out", progress=False)
    assert rest.cells_run == 3 and rest.manifest["status"] == "complete"
    reference = run_sweep(spec, tmp_path / "ref", progress=False)
    frames_equal(rest.results, reference.results)


def test_duplicate_settings_are_computed_once(tmp_path):
    grid = {"num_inference_steps": T, "zigzag_steps": [0, 3], "zag": ["official", "ddim"],
            "zag_eval_timestep": ["next", "current"], "inversion_guidance_scale": [0.0, 1.0]}
    spec = make(grid=grid)
    cells = expand_cells(spec)
    assert len(cells) == 16
    groups = plan_groups(cells)
    # official ignores zag_eval_timestep; standard cells ignore g2 and the zag
    assert sum(len(g.units) for g in groups) == 1 + 2 * 3
    result = run_sweep(spec, tmp_path / "out", progress=False)
    standard = result.results[result.results.method == "standard"]
    assert standard.groupby("sample_index")["posterior"].nunique().eq(1).all()
    assert len(result.cells) == 16


def test_trace_options_step_metrics_and_noise_mode(tmp_path):
    spec = make(grid={"num_inference_steps": T, "zigzag_steps": [0, 3]}, noise="seed",
                trace={"keep": ["latents", "x0"], "latent_dtype": "float32", "step_metrics": ["posterior"],
                       "every": 2})
    result = run_sweep(spec, tmp_path / "out", progress=False)
    for cell in result.cells["cell"]:
        trace = Trace.load(tmp_path / "out" / "traces" / f"{cell}.safetensors")
        assert set(trace.tensor_names) >= {"latents", "x0", "x_init"}
        values = trace.metrics["posterior"]
        assert values.shape == (trace.num_events, 6)
        assert int(torch.isfinite(values[:, 0]).sum()) == 4  # steps 0, 2, 4 and the last
        x_init = trace.tensor("x_init")
        assert torch.equal(x_init[0], x_init[2]) and not torch.equal(x_init[0], x_init[1])  # noise: seed
    with pytest.raises(SpecError, match="trace.decode_every: the analytic model's samples are points"):
        make(trace={"decode_every": 2})


def test_paired_seeds_pair_prompt_i_with_seed_offset_plus_i(tmp_path):
    spec = make(seeds={"paired": True, "offset": 5}, trace={"keep": ["latents"], "latent_dtype": "float32"},
                grid={"num_inference_steps": T, "zigzag_steps": [0, 3]})
    assert spec.paired and spec.noise == "seed" and spec.seeds == (5, 6, 7) and spec.num_samples == 3
    assert make(seeds="paired").seeds == (0, 1, 2)
    samples = sweep_samples(spec)
    assert [(s.sample_index, s.prompt_index, s.prompt, s.seed) for s in samples] == [
        (0, 0, "0", 5), (1, 1, "1", 6), (2, 2, "2", 7)]
    # each sample's generator is seeded with exactly its seed (what seed_generators gives)
    noise = initial_noise(samples, (2,), spec.noise)
    for row, seed in enumerate(spec.seeds):
        assert torch.equal(noise[row], torch.randn((2,), generator=torch.Generator().manual_seed(seed)))
    # not the same sample set as every prompt x the same seeds
    assert spec.hash != make(seeds=[5, 6, 7], noise="seed", trace=spec.to_dict()["trace"],
                             grid={"num_inference_steps": T, "zigzag_steps": [0, 3]}).hash

    result = run_sweep(spec, tmp_path / "out", progress=False)
    assert len(result.results) == 2 * 3
    assert (result.results["seed"] - result.results["prompt_index"]).eq(5).all()
    inits = [Trace.load(p).tensor("x_init") for p in sorted((tmp_path / "out" / "traces").glob("*.safetensors"))]
    assert len(inits) == 2 and torch.equal(inits[0], inits[1])  # the same x_T in both cells (paired samples)
    torch.testing.assert_close(inits[0].float(), noise.float())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["spec"]["paired_seeds"] is True and manifest["spec"]["seeds"] == [5, 6, 7]


@pytest.mark.parametrize(
    ("seeds", "noise", "message"),
    [
        ({"paired": "yes"}, ..., r"seeds.paired must be true or false"),
        ({"paired": True, "count": 3}, ..., r"seeds.count: paired seeds are offset \+ i"),
        ({"paired": True, "offset": -1}, ..., r"seeds.offset must be an integer >= 0"),
        ({"start": 0, "count": 2, "offset": 1}, ..., r"seeds.offset applies to paired seeds"),
        ({"paired": True, "ofset": 1}, ..., r"unknown key seeds.'ofset' \(did you mean 'offset'\?\)"),
        ("paired", "seed_prompt", r"noise: paired seeds seed sample i's generator with exactly seed offset \+ i"),
    ],
)
def test_paired_seed_errors_name_the_key(seeds, noise, message):
    data = {**BASE, "seeds": seeds}
    if noise is not ...:
        data["noise"] = noise
    with pytest.raises(SpecError, match=message):
        parse_spec(data)


def test_images_are_stored_as_uint8_and_read_back_as_float(tmp_path):
    from zsampling.sweep.results import images_to_float, images_to_uint8, load_images

    images = torch.tensor([[[[0.0, 0.5, 1.0, 1.2], [-0.1, 0.25, 0.999, 0.001]]]])
    stored = images_to_uint8(images)
    assert stored.dtype == torch.uint8 and stored.flatten().tolist() == [0, 128, 255, 255, 0, 64, 255, 0]
    back = images_to_float(stored)
    assert back.dtype == torch.float32 and (back - images.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-7
    assert images_to_float(stored.numpy()).dtype.name == "float32"
    # the analytic model's points stay float32 (they are not images)
    spec = make(grid={"num_inference_steps": T, "zigzag_steps": [0]})
    run_sweep(spec, tmp_path / "out", progress=False)
    (path,) = (tmp_path / "out" / "images").glob("*.safetensors")
    assert load_file(path)["images"].dtype == torch.float32 and load_images(path).shape == (6, 2)
