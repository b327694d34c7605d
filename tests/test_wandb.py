"""Tests for zsampling.tracking.wandb: offline runs are read back from disk.

An offline W&B run writes its records (history, config, summary, ...) to a
``run-<id>.wandb`` file: a LevelDB-style log of 32 KiB blocks holding
protobuf ``Record`` messages. ``read_offline_run`` parses it with wandb's own
protobuf classes, so the test checks what W&B would upload.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trace import PROMPTS, trace_pipe

import zsampling
from zsampling.trace import sample_with_trace
from zsampling.tracking.wandb import STEP_AXIS, WandbRecorder, history_rows

wandb = pytest.importorskip("wandb")

STEPS = 5


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def read_offline_run(directory: Path, timeout: float = 60.0) -> tuple[Path, list]:
    """(run directory, protobuf Records) of the single offline run under ``directory``.

    W&B's service process writes the run file asynchronously and may still be flushing after
    ``finish()`` returns (seen on a loaded machine): wait until the file holds its "exit" record.
    """
    deadline = time.monotonic() + timeout
    while True:
        path, records = _parse_offline_run(directory)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return path, records
        time.sleep(0.2)


def _parse_offline_run(directory: Path) -> tuple[Path, list]:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = directory.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return path.parent, parsed


def history(records: list) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def config_of(records: list) -> dict:
    config: dict = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in items:
            key = item.key or "/".join(item.nested_key)
            config[key] = json.loads(item.value_json)
    return config


def test_importing_zsampling_does_not_import_wandb():
    code = ("import sys, zsampling, zsampling.trace, zsampling.tracking.wandb; "
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_offline_run_contains_history_images_config_and_table(tmp_path):
    pipe = trace_pipe()
    wb = WandbRecorder(project="zsampling-tests", mode="offline", dir=str(tmp_path), config={"study": "test"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no W&B failure
        out, trace = sample_with_trace(pipe, PROMPTS, num_inference_steps=STEPS, seed=[1, 2], output_type="pil",
                                       progress=False, wandb=wb, metrics=[lambda s: {"m": s.x0.mean((1, 2, 3))}])
        _, trace2 = sample_with_trace(pipe, ["a green cone", "a grey torus"], num_inference_steps=STEPS, seed=[3, 4],
                                      output_type="pil", progress=False, wandb=wb)
        wb.finish()
    assert wb.enabled and wb.runs_logged == 2
    run_dir, records = read_offline_run(tmp_path)
    rows = history(records)
    step_rows = [row for row in rows if "zsampling/step/latent_norm" in row]
    assert len(step_rows) == 2 * STEPS
    assert [row[STEP_AXIS] for row in step_rows] == list(range(STEPS)) * 2
    means = trace.scalars["latent_norm"][np.array(trace.ops) == "step"].double().mean(dim=1)
    np.testing.assert_allclose([row["zsampling/step/latent_norm"] for row in step_rows[:STEPS]], means.numpy(),
                               rtol=1e-6)
    gain = trace.scalars["gain_norm"][np.array(trace.ops) == "zag"].double().mean(dim=1)
    np.testing.assert_allclose([row["zsampling/reflection/gain_norm"] for row in step_rows[:STEPS - 1]],
                               gain.numpy(), rtol=1e-6)
    assert "zsampling/reflection/gain_norm" not in step_rows[STEPS - 1]  # the last step does not reflect
    assert all(math.isfinite(row["zsampling/step/m"]) for row in step_rows[:STEPS])
    assert "zsampling/timestep" in step_rows[0]
    # images: one list per run, captioned with the prompts
    image_rows = [row for row in rows if any(key.startswith("zsampling/images") for key in row)]
    assert len(image_rows) == 2
    captions = [row[key] for row in image_rows for key in row if key.endswith("captions")]
    assert captions == [PROMPTS, ["a green cone", "a grey torus"]]
    # config: the user's and the run's
    config = config_of(records)
    assert config["study"]["value"] == "test" if isinstance(config["study"], dict) else config["study"] == "test"
    zs = config["zsampling"]["value"] if "value" in config["zsampling"] else config["zsampling"]
    assert zs["config"]["guidance_scale"] == 5.5 and zs["config"]["num_inference_steps"] == STEPS
    assert zs["versions"]["diffusers"] == trace.meta["versions"]["diffusers"]
    # the per-sample table: every sample, with its prompt and seed
    tables = sorted(run_dir.glob("files/media/table/**/*.table.json"))
    data = [json.loads(path.read_text()) for path in tables]
    samples = [dict(zip(table["columns"], row, strict=True)) for table in data for row in table["data"]]
    assert sorted((s["run"], s["sample"]) for s in samples) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(s["prompt"] for s in samples) == sorted(PROMPTS + ["a green cone", "a grey torus"])
    assert sorted(s["seed"] for s in samples) == [1, 2, 3, 4]
    first = next(s for s in samples if s["prompt"] == PROMPTS[0])
    zag = np.array(trace.ops) == "zag"
    assert first["gain_total"] == pytest.approx(float(trace.scalars["gain_norm"][zag, 0].double().sum()), rel=1e-6)
    assert first["nfe"] == out.nfe
    assert first["m"] == pytest.approx(float(trace.metrics["m"][-1, 0]), rel=1e-6)
    assert trace2.meta["network_rows"] == trace2.meta["expected_network_rows"]


def test_disabled_mode_logs_nothing_and_samples_the_same(tmp_path):
    pipe = trace_pipe()
    plain = zsampling.sample(pipe, PROMPTS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                             output_type="latent", progress=False)
    wb = WandbRecorder(mode="disabled", dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = zsampling.sample(pipe, PROMPTS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                               output_type="latent", progress=False, recorder=wb)
        wb.log_run(out, prompts=PROMPTS)
        wb.finish()
    assert torch.equal(out.latents, plain.latents)
    assert wb.enabled
    assert not list(tmp_path.glob("wandb/*run-*"))
    rows = history_rows(wb.recorder.trace)
    assert [row[STEP_AXIS] for row in rows] == list(range(STEPS))
    assert "zsampling/reflection/gain_cos" in rows[0]


def test_a_wandb_failure_warns_once_and_never_kills_sampling(monkeypatch, tmp_path):
    def broken_init(*args, **kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", broken_init)
    pipe = trace_pipe()
    plain = zsampling.sample(pipe, PROMPTS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                             output_type="latent", progress=False)
    wb = WandbRecorder(project="p", mode="online")
    with pytest.warns(RuntimeWarning, match="W&B logging failed") as caught:
        for _ in range(2):
            out, _ = sample_with_trace(pipe, PROMPTS, num_inference_steps=STEPS,
                                       generator=torch.Generator().manual_seed(0), output_type="latent",
                                       progress=False, wandb=wb)
            assert torch.equal(out.latents, plain.latents)
        wb.finish()
    assert len([w for w in caught if "W&B" in str(w.message)]) == 1
    assert not wb.enabled


def test_wandb_not_installed_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    pipe = trace_pipe()
    wb = WandbRecorder(mode="offline")
    with pytest.warns(RuntimeWarning, match="ImportError|ModuleNotFoundError") as caught:
        out = zsampling.sample(pipe, PROMPTS, num_inference_steps=STEPS, output_type="latent", progress=False,
                               recorder=wb)
        wb.log_run(out)
        wb.log_run(out)
        wb.finish()
    assert len(caught) == 1
    assert out.latents.shape == (2, 4, 8, 8)


def test_bad_mode_is_refused_up_front():
    with pytest.raises(ValueError, match="mode"):
        WandbRecorder(mode="sometimes")
