"""Atomic writes: an interrupted write leaves the previous file intact and no temporary file, on the paths that
write results tables, cell records, traces and trace indexes (zsampling.atomic is also what writes reproduce's
score tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from zsampling.atomic import atomic_write, atomic_write_text


class Interrupted(RuntimeError):
    pass


def interrupt(*args, **kwargs):
    raise Interrupted("killed midway")


def no_temporaries(directory: Path) -> bool:
    return not list(directory.rglob("*.tmp"))


def test_an_interrupted_write_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write_text(path, "old")

    def half(tmp: Path) -> None:
        tmp.write_text("ne")  # half of the new content, then the process dies
        raise Interrupted

    with pytest.raises(Interrupted):
        atomic_write(path, half)
    assert path.read_text() == "old" and no_temporaries(tmp_path)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and no_temporaries(tmp_path)


def test_results_tables_and_cell_records(tmp_path: Path, monkeypatch):
    from zsampling.sweep import results as res

    res._atomic_frame(tmp_path / "results.parquet", pd.DataFrame({"a": [1]}), "parquet")
    res.atomic_write_json(tmp_path / "cells" / "c.json", {"cell": "c"})
    monkeypatch.setattr(pd.DataFrame, "to_parquet", interrupt)
    with pytest.raises(Interrupted):
        res._atomic_frame(tmp_path / "results.parquet", pd.DataFrame({"a": [2]}), "parquet")
    monkeypatch.setattr(res.json, "dumps", lambda *a, **k: interrupt())
    with pytest.raises(Interrupted):
        res.atomic_write_json(tmp_path / "cells" / "c.json", {"cell": "changed"})
    monkeypatch.undo()
    assert pd.read_parquet(tmp_path / "results.parquet")["a"].tolist() == [1]
    assert json.loads((tmp_path / "cells" / "c.json").read_text()) == {"cell": "c"}
    assert no_temporaries(tmp_path)


def test_traces_and_their_index(tmp_path: Path, monkeypatch):
    from zsampling.denoisers.analytic import GaussianMixtureModel
    from zsampling.trace import Trace, TraceWriter, sample_with_trace, storage

    _, trace = sample_with_trace(GaussianMixtureModel.default(), ["0", "1"], num_inference_steps=4,
                                 output_type="pt", progress=False, seed=0)
    path = trace.save(tmp_path / "t.safetensors")
    before = path.read_bytes()
    monkeypatch.setattr(storage, "save_file", interrupt)
    with pytest.raises(Interrupted):
        trace.with_meta(note="changed").save(path)
    assert path.read_bytes() == before and Trace.load(path).num_events == trace.num_events
    monkeypatch.undo()
    writer = TraceWriter(tmp_path / "dir")
    writer.write(trace, key="a")
    index = (tmp_path / "dir" / "index.jsonl").read_text()
    monkeypatch.setattr("zsampling.trace.directory.json.dumps", interrupt)
    with pytest.raises(Interrupted):
        writer._rewrite_index()
    assert (tmp_path / "dir" / "index.jsonl").read_text() == index
    assert no_temporaries(tmp_path)
    assert torch.equal(Trace.load(path).events["op"], trace.events["op"])
