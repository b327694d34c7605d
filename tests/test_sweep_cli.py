"""The `zsampling sweep` command: runs, errors, cell selection, W&B (offline) and accelerate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from zsampling.cli import app
from zsampling.sweep import load_spec, run_sweep
from zsampling.sweep.wandb_log import WandbOptions, log_sweep

torch.set_num_threads(1)

SPEC = {
    "name": "cli-test",
    "model": "analytic",
    "prompts": ["0", "1"],
    "seeds": [0, 1],
    "grid": {"num_inference_steps": 5, "guidance_scale": [2.0, 3.0], "zigzag_steps": {"range": [0, 5]}},
    "metrics": ["posterior"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


def frames_equal(a, b):
    pd.testing.assert_frame_equal(a.drop(columns="wall_time_s"), b.drop(columns="wall_time_s"))


def test_cli_runs_resumes_and_refuses_a_changed_spec(tmp_path, spec_path):
    out = tmp_path / "out"
    result = invoke(spec_path, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "10 cells run" in result.output and "results.parquet (40 rows)" in result.output
    again = invoke(spec_path, "--out", out, "--no-progress")
    assert again.exit_code == 0 and "0 cells run, 10 already done" in again.output
    spec_path.write_text(yaml.safe_dump({**SPEC, "seeds": [0, 1, 2]}))
    refused = invoke(spec_path, "--out", out, "--no-progress")
    assert refused.exit_code == 2 and "changed: seeds" in refused.output and "--extend" in refused.output
    extended = invoke(spec_path, "--out", out, "--no-progress", "--extend")
    assert extended.exit_code == 0 and "10 cells run" in extended.output
    assert len(pd.read_parquet(out / "results.parquet")) == 40 + 60


def test_cli_bad_spec_and_dry_run(tmp_path, spec_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "grid": {"zag": ["reverse"]}}))
    result = invoke(bad, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "grid.zag[0] must be one of 'official', 'ddim', 'euler'" in result.output
    assert not (tmp_path / "out").exists()
    plan = invoke(spec_path, "--dry-run")
    assert plan.exit_code == 0 and "10 cells in 2 lambda-sharing groups" in plan.output
    missing = invoke(spec_path)
    assert missing.exit_code == 2 and "--out DIR is required" in missing.output
    unknown = invoke(spec_path, "--out", tmp_path / "o", "lambda=3")
    assert unknown.exit_code == 2 and "unknown knob 'lambda'" in unknown.output


def test_wandb_sweep_config_and_agent_style_cells(tmp_path, spec_path, monkeypatch):
    out, config = tmp_path / "out", tmp_path / "wandb-sweep.yaml"
    result = invoke(spec_path, "--out", out, "--wandb-sweep", config)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(config.read_text())
    assert written["method"] == "grid"
    assert written["parameters"]["guidance_scale"] == {"values": [2.0, 3.0]}
    assert written["parameters"]["zigzag_steps"] == {"values": [0, 1, 2, 3, 4]}
    assert written["parameters"]["zag"] == {"values": ["official"]}
    command = written["command"]
    assert command[2:5] == ["-m", "zsampling", "sweep"] and command[-1] == "${args_no_hyphens}"
    assert str(out.resolve()) in command and "--wandb" in command
    # what `wandb agent` runs for one grid point (${args_no_hyphens} expanded), W&B switched off
    args = [f"{key}={values['values'][-1]}" for key, values in written["parameters"].items()]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    agent = CliRunner().invoke(app, [*command[4:-1], "--no-progress", *args])
    assert agent.exit_code == 0, agent.output
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 1 and cells.iloc[0]["zigzag_steps"] == 4 and cells.iloc[0]["guidance_scale"] == 3.0
    more = invoke(spec_path, "--out", out, "--no-progress", "--cell", "zigzag_steps=2")
    assert more.exit_code == 0 and "2 cells run" in more.output


def test_wandb_offline_run_holds_the_tables(tmp_path, spec_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "zsampling", "sweep", str(spec_path), "--out", str(out),
                           "--no-progress", "--wandb", "--wandb-project", "zs-test", "--wandb-name", "lambda"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in
              (runs[0] / "files" / "media" / "table" / "sweep").glob("*.table.json")}
    results = pd.read_parquet(out / "results.parquet")
    assert tables["results"]["columns"] == list(results.columns) and len(tables["results"]["data"]) == 40
    assert len(tables["cells"]["data"]) == 10
    plots = {p.name for p in (runs[0] / "files" / "media" / "table" / "sweep" / "plots").glob("*.table.json")}
    assert any(name.startswith("posterior_vs_lambda") for name in plots)


def test_wandb_failure_warns_once_and_never_kills_the_sweep(tmp_path, spec_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_sweep(load_spec(spec_path), tmp_path / "out", progress=False, wandb=WandbOptions(mode="offline"))
    messages = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(messages) == 1 and "no network" in messages[0]
    assert result.manifest["status"] == "complete" and len(result.results) == 40
    with pytest.warns(RuntimeWarning, match="W&B logging of the sweep failed"):
        assert log_sweep(WandbOptions(), tmp_path / "out", result.results, result.cells, result.manifest) is False


def test_importing_zsampling_does_not_import_wandb_or_accelerate():
    code = ("import sys, zsampling, zsampling.cli, zsampling.sweep, zsampling.sweep.runner; "
            "print('wandb' in sys.modules, 'accelerate' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def accelerate(*args):
    return [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", *args]


@pytest.mark.parametrize("launch", [
    # the documented CPU command (accelerate's simple launcher: one process on CPU)
    ["--cpu", "--num_processes", "2"],
    # two real processes on CPU (torchrun; the sweep uses PartialState(cpu=True) with gloo when CUDA is absent)
    ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
])
def test_accelerate_launch_gives_the_single_process_table(tmp_path, spec_path, launch):
    if torch.cuda.is_available() and "--multi_gpu" in launch:
        pytest.skip("the CPU multi-process check runs where CUDA is absent")
    out = tmp_path / "out"
    command = accelerate(*launch, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "zsampling", "sweep",
                         str(spec_path), "--out", str(out), "--no-progress")
    done = subprocess.run(command, env={**ENV, "WANDB_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = run_sweep(load_spec(spec_path), tmp_path / "reference", progress=False)
    frames_equal(pd.read_parquet(out / "results.parquet"), reference.results)
    frames_equal(pd.read_parquet(out / "cells.parquet"), reference.cells)
    processes = {json.loads(p.read_text())["process"]["index"] for p in (out / "cells").glob("*.json")}
    assert processes == ({0, 1} if "--multi_gpu" in launch else {0})
