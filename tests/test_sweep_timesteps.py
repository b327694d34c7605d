"""The ``timesteps`` sweep knob: custom and named (Align-Your-Steps) DDIM schedules in a grid.

Each cell must equal ``zsampling.sample(..., timesteps=...)`` on the same noise (whose own correctness
against a hand-written loop is tests/test_schedule.py's), share its lambda prefix exactly, keep the
hashes of cells that run the scheduler's spacing, and refuse what a fixed list cannot run.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.schedulers.scheduling_utils import AysSchedules
from safetensors.torch import load_file
from test_sweep_runner import sample_inputs

import zsampling
from zsampling.sweep import SpecError, expand_cells, parse_spec, run_sweep
from zsampling.sweep.cells import parse_assignments, select_cells
from zsampling.sweep.models import build_analytic

torch.set_num_threads(1)

CUSTOM = [999, 700, 400, 100]
BASE = {
    "model": "analytic",
    "prompts": ["0", "1"],
    "seeds": [0, 1],
    "grid": {"num_inference_steps": [6], "guidance_scale": [3.0], "zigzag_steps": [0, 2, "full"], "zag": ["ddim"],
             "timesteps": [None, "ays-sd15", CUSTOM]},
    "metrics": ["posterior"],
    "batch_size": 4,
}


def make(spec=None, **grid):
    return parse_spec({**BASE, **(spec or {}), "grid": {**BASE["grid"], **grid}})


def test_a_list_fixes_T_and_null_cells_keep_the_hashes_of_a_grid_without_the_knob():
    spec = make()
    cells = expand_cells(spec)
    by_schedule = {}
    for cell in cells:
        by_schedule.setdefault(cell.value("timesteps") if cell.schedule is None or isinstance(cell.schedule, str)
                               else "custom", []).append(cell)
    assert [c.num_inference_steps for c in by_schedule[None]] == [6, 6, 6]
    assert [c.num_inference_steps for c in by_schedule["ays-sd15"]] == [10, 10, 10]
    assert [c.zigzag_steps for c in by_schedule["ays-sd15"]] == [0, 2, 9]  # "full" is T-1 of the list
    assert [c.num_inference_steps for c in by_schedule["custom"]] == [4, 4, 4]
    assert by_schedule["ays-sd15"][1].config().timesteps == tuple(AysSchedules["StableDiffusionTimesteps"])
    assert by_schedule["custom"][2].config().timesteps == tuple(CUSTOM)
    assert len({c.hash for c in cells}) == len(cells) == 9
    plain = parse_spec({**BASE, "grid": {k: v for k, v in BASE["grid"].items() if k != "timesteps"}})
    assert [c.hash for c in by_schedule[None]] == [c.hash for c in expand_cells(plain)]
    assert "timesteps" not in plain.to_dict()["grid"] and make().hash != plain.hash
    # the settings columns name the schedule
    assert [c.settings().get("timesteps") for c in cells[:3]] == [None, "ays-sd15", "999,700,400,100"]


def test_each_cell_equals_sample_with_its_timesteps_and_shares_its_prefix(tmp_path):
    spec = make({"trace": {"keep": ["latents"], "latent_dtype": "float32"}})
    shared = run_sweep(spec, tmp_path / "shared", progress=False)
    alone = run_sweep(spec, tmp_path / "alone", progress=False, share_prefix=False)
    assert shared.network_rows_spent < alone.network_rows_spent
    model, prompts, noise = sample_inputs(spec)
    for cell in expand_cells(spec):
        a = load_file(tmp_path / "shared" / "images" / f"{cell.hash}.safetensors")["images"]
        b = load_file(tmp_path / "alone" / "images" / f"{cell.hash}.safetensors")["images"]
        out = zsampling.sample(model, prompts, latents=noise, output_type="pt", progress=False,
                               timesteps=cell.timesteps, **cell.knobs())
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, out.images, rtol=0, atol=1e-5)
    # a list changes the samples: the AYS cell differs from the scheduler's spacing at the same lambda = 0
    cells = {(c.num_inference_steps, c.zigzag_steps, c.value("timesteps") is None): c for c in expand_cells(spec)}
    ays = load_file(tmp_path / "shared" / "images" / f"{cells[10, 0, False].hash}.safetensors")["images"]
    spaced = load_file(tmp_path / "shared" / "images" / f"{cells[6, 0, True].hash}.safetensors")["images"]
    assert (ays - spaced).abs().max() > 1e-3
    results = shared.results
    assert results["timesteps"].tolist().count("scheduler") == 3 * spec.num_samples
    assert set(results["timesteps"]) == {"scheduler", "ays-sd15", "999,700,400,100"}
    assert results.dtypes["timesteps"] == results.dtypes["zag"]  # a string column like the other labels
    assert set(shared.cells.groupby("timesteps")["num_inference_steps"].first()) == {6, 10, 4}


def test_cell_selection_reads_the_table_labels():
    spec = make()
    cells = expand_cells(spec)
    chosen = select_cells(spec, cells, parse_assignments(["timesteps=ays-sd15", "zigzag_steps=2"]))
    assert [(c.schedule, c.zigzag_steps) for c in chosen] == [("ays-sd15", 2)]
    custom = select_cells(spec, cells, parse_assignments(["timesteps=999,700,400,100"]))
    assert [c.schedule for c in custom] == [tuple(CUSTOM)] * 3
    assert len(select_cells(spec, cells, parse_assignments(["timesteps=scheduler"]))) == 3


@pytest.mark.parametrize(("grid", "message"), [
    ({"zag": ["official"]}, r"grid.zag: the 'official' operator .* use zag: \[ddim\]"),
    ({"timesteps": CUSTOM}, r"one custom list is written in brackets twice: timesteps: \[\[999, 700, 400, 100\]\]"),
    ({"timesteps": ["ays-sd99"]}, r"grid.timesteps\[0\] must be null .*ays-sd15, ays-sdxl or a list"),
    ({"timesteps": [[999, 999, 100]]}, r"grid.timesteps\[0\]: timesteps must be strictly decreasing"),
    ({"timesteps": [[1000, 500]]}, r"grid.timesteps: t_0=1000 must be < the model's num_train_timesteps=1000"),
    ({"zigzag_steps": [5]}, r"lambda=5 is > T-1=3 for T=4 steps"),
])
def test_refusals_name_the_setting(grid, message):
    with pytest.raises(SpecError, match=message):
        make(**grid)


def test_official_zag_is_fine_on_standard_cells_and_matched_baselines_are_refused():
    assert len(expand_cells(make(zag=["official"], zigzag_steps=[0]))) == 3
    with pytest.raises(SpecError, match="matched_baselines: a matched baseline raises T"):
        parse_spec({**BASE, "matched_baselines": True})


def test_sample_takes_a_named_schedule():
    model = build_analytic({}, torch.float32, "cpu")
    noise = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    named = zsampling.sample(model, ["0", "1"], latents=noise, timesteps="ays-sdxl", zag="ddim", zigzag_steps=3,
                             guidance_scale=3.0, output_type="pt", progress=False)
    listed = zsampling.sample(model, ["0", "1"], latents=noise, timesteps=AysSchedules["StableDiffusionXLTimesteps"],
                              zag="ddim", zigzag_steps=3, guidance_scale=3.0, output_type="pt", progress=False)
    assert named.config.timesteps == tuple(AysSchedules["StableDiffusionXLTimesteps"])
    assert torch.equal(named.images, listed.images)
    with pytest.raises(ValueError, match="unknown timestep schedule 'ays-sd2'; named schedules: ays-sd15, ays-sdxl"):
        zsampling.sample(model, ["0"], timesteps="ays-sd2", zag="ddim", progress=False)


def test_analysis_keeps_schedules_apart(tmp_path):
    """Two standard cells at the same T and g1 but different schedules are two runs, and the
    figures hold the schedule at the scheduler's own spacing."""
    from analysis.tables import at_reference_schedule, reference_settings, unique_standard

    spec = make(num_inference_steps=[10], zigzag_steps=[0, 4], timesteps=[None, "ays-sd15"])
    results = run_sweep(spec, tmp_path / "run", progress=False).results
    standard = unique_standard(results)
    standard = standard[standard["method"] == "standard"]
    assert sorted(standard.drop_duplicates("cell")["timesteps"]) == ["ays-sd15", "scheduler"]
    assert reference_settings(results)["timesteps"] == "scheduler"
    drawn = at_reference_schedule(results)
    assert set(drawn["timesteps"]) == {"scheduler"} and len(drawn) == len(results) // 2
    ays_only = results[results["timesteps"] == "ays-sd15"]
    assert reference_settings(ays_only)["timesteps"] == "ays-sd15" and at_reference_schedule(ays_only) is ays_only


def test_wandb_grid_covers_every_cell_through_the_labels(tmp_path):
    """Every point of the W&B grid (knob values as `wandb agent` passes them: KEY=VALUE words) selects
    exactly one cell, together every cell; optional knobs (legs, timesteps) are parameters too."""
    import itertools

    from zsampling.sweep.wandb_log import wandb_sweep_config

    spec = make(num_inference_steps=[10], timesteps=[None, "ays-sd15"], **{"zig.guidance_scale": [None, 4.0]})
    parameters = wandb_sweep_config(spec, tmp_path / "spec.yaml", tmp_path / "out")["parameters"]
    assert parameters["timesteps"] == {"values": ["scheduler", "ays-sd15"]}
    assert parameters["zig.guidance_scale"] == {"values": [None, 4.0]}
    cells = expand_cells(spec)
    chosen = []
    for point in itertools.product(*(p["values"] for p in parameters.values())):
        words = [f"{key}={value}" for key, value in zip(parameters, point, strict=True)]
        matches = select_cells(spec, cells, parse_assignments(words))
        assert len(matches) == 1, words
        chosen += matches
    assert sorted(c.hash for c in chosen) == sorted(c.hash for c in cells)
    with pytest.raises(SpecError, match=r"--wandb-sweep: .* num_inference_steps \[6\] would pair lists"):
        wandb_sweep_config(make(), tmp_path / "spec.yaml", tmp_path / "out")


def test_the_shipped_example_spec_parses():
    from pathlib import Path

    from zsampling.sweep import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "examples" / "timesteps-digits.yaml")
    assert [(c.schedule, c.num_inference_steps, c.zigzag_steps) for c in expand_cells(spec)] == [
        (None, 10, 0), ("ays-sd15", 10, 0), (None, 10, 9), ("ays-sd15", 10, 9)]
