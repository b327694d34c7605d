"""Kill a sweep subprocess at random points (SIGKILL), resume, and get the uninterrupted table row for row."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from zsampling.sweep import load_spec, run_sweep

torch.set_num_threads(1)

SPEC = {
    "name": "kill-test",
    "model": "analytic",
    "prompts": ["0", "1", "2"],
    "seeds": [0, 1],
    "grid": {"num_inference_steps": 8, "guidance_scale": [2.0, 3.0, 4.0], "inversion_guidance_scale": [0.0, 1.0],
             "zigzag_steps": {"range": [0, 8]}, "zag": ["official", "ddim"]},
    "metrics": ["posterior"],
    "batch_size": 4,
}


def records(out: Path) -> int:
    directory = out / "cells"
    return len(list(directory.glob("*.json"))) if directory.is_dir() else 0


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "zsampling", "sweep", str(spec_path), "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    rng = random.Random(1234)
    total = 3 * 2 * 8 * 2
    kills = 0
    for _ in range(4):
        before = records(out)
        if before >= total:
            break
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = before + rng.randint(1, 12)
        deadline = time.monotonic() + 120
        while process.poll() is None and records(out) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # land anywhere: mid-batch, mid-write, between cells
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert process.returncode in (0, -signal.SIGKILL), process.stderr.read().decode()
        process.stderr.close()
    assert kills >= 2
    assert 0 < records(out)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert records(out) == total

    reference = run_sweep(load_spec(spec_path), tmp_path / "reference", progress=False)
    for name in ("results", "cells"):
        resumed = pd.read_parquet(out / f"{name}.parquet")
        expected = getattr(reference, name)
        assert len(resumed) == len(expected)
        pd.testing.assert_frame_equal(resumed.drop(columns="wall_time_s"), expected.drop(columns="wall_time_s"),
                                      check_exact=False, rtol=1e-12, atol=1e-12)
    assert not resumed.duplicated(["cell"]).any()
    assert len(list((out / "traces").glob("*.safetensors"))) == total
    assert len(list((out / "images").glob("*.safetensors"))) == total
