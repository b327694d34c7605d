"""Atomic writes: an interrupted write leaves the previous file intact and no temporary file, on the paths that
write results tables, cell records, traces and trace indexes, and on every file a sweep re-run writes (manifest,
trace, images, record, tables) or `zsampling figures` writes (each figure's PNG, PDF and CSV, index.md) when it
dies inside that writer. (Reproduce's tables: tests/test_reproduce.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from zsampling.atomic import atomic_save_figure, atomic_write, atomic_write_csv, atomic_write_text


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


# --------------------------------------------- every file a sweep run writes, interrupted inside its writer
SWEEP = {
    "name": "atomic", "model": "analytic", "prompts": ["0", "1"], "seeds": [0],
    "grid": {"num_inference_steps": 4, "guidance_scale": 2.0, "zigzag_steps": [0, 2]},
    "metrics": ["posterior"], "trace": True, "images": True, "batch_size": 2,
}


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _dies_on(folder: str | None, name: str | None):
    """``Path.write_bytes`` that writes half and dies when the temporary file is NAME's (or any file in FOLDER)."""
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        mine = (folder is None or self.parent.name == folder) and (name is None or self.name.startswith(f".{name}."))
        if mine:
            real(self, data[: len(data) // 2])
            raise Interrupted(f"killed while writing {self}")
        return real(self, data)

    return write_bytes


@pytest.mark.parametrize("target", ["manifest", "trace", "images", "record", "tables"])
def test_an_interrupted_sweep_write_keeps_every_previous_file(tmp_path: Path, monkeypatch, target: str):
    """A finished sweep loses one cell record; its re-run dies inside one writer (the manifest at start, the cell's
    trace, images or record, or the tables at the end): every file on disk is as before, no temporary file stays,
    and a clean re-run then completes."""
    from zsampling.sweep import parse_spec, run_sweep
    from zsampling.trace import storage

    spec = parse_spec(SWEEP)
    out = tmp_path / "run"
    first = run_sweep(spec, out, progress=False)
    lost = sorted((out / "cells").glob("*.json"))[-1]
    lost.unlink()
    before = _snapshot(out)
    assert any(k.startswith("traces/") for k in before) and any(k.startswith("images/") for k in before)
    with monkeypatch.context() as patch:
        if target == "manifest":
            patch.setattr(Path, "write_bytes", _dies_on(None, "manifest.json"))
        elif target == "trace":
            patch.setattr(storage, "save_file", lambda tensors, tmp, metadata=None: (
                Path(tmp).write_bytes(b"half"), interrupt()))
        elif target == "images":
            patch.setattr(Path, "write_bytes", _dies_on("images", None))
        elif target == "record":
            patch.setattr(Path, "write_bytes", _dies_on("cells", lost.name))
        else:
            patch.setattr(pd.DataFrame, "to_parquet", lambda frame, tmp, *a, **k: (
                Path(tmp).write_bytes(b"PAR1half"), interrupt()))
        with pytest.raises(Interrupted):
            run_sweep(spec, out, progress=False)
    # what the re-run wrote legitimately before it died: the files of the writers that come earlier
    cell = lost.stem
    order = {"manifest": "manifest.json", "trace": f"traces/{cell}.safetensors",
             "images": f"images/{cell}.safetensors", "record": f"cells/{cell}.json", "tables": None}
    earlier = set(list(order.values())[: list(order).index(target)])
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k not in earlier} == {k: v for k, v in before.items()
                                                                  if k not in earlier}
    assert no_temporaries(out) and (target != "record" or not lost.exists())
    again = run_sweep(spec, out, progress=False)
    assert again.cells_run == (0 if target == "tables" else 1) and lost.is_file()  # "tables": the record was in
    pd.testing.assert_frame_equal(again.results.drop(columns="wall_time_s"), first.results.drop(columns="wall_time_s"))


# --------------------------------------------- every file `zsampling figures` writes, interrupted inside its writer
def _half_then_die(real, suffix: str):
    """A writer method (``Figure.savefig(self, path, ...)``, ``DataFrame.to_csv(self, path, ...)``,
    ``Path.write_text(self, text)``) that, when it writes a ``*SUFFIX`` file (or its temporary file), writes the
    whole content, cuts it to half and dies (a kill midway); any other file is written as usual."""

    def write(self, target, *args, **kwargs):
        result = real(self, target, *args, **kwargs)
        tmp = self if isinstance(self, Path) else Path(target)
        if tmp.name.endswith(suffix) or (tmp.name.endswith(".tmp") and f"{suffix}." in tmp.name):
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            raise Interrupted(f"killed while writing {tmp}")
        return result

    return write


@pytest.mark.parametrize("target", ["png", "pdf", "csv", "index"])
def test_an_interrupted_figures_write_keeps_every_previous_file(tmp_path: Path, monkeypatch, target: str):
    """``zsampling figures`` re-run (another bootstrap seed, so every file changes) dies inside one writer (a
    figure's PNG, PDF or CSV, or index.md at the end): that file and every later one hold the previous run's bytes,
    no temporary file stays, and a clean re-run then writes the new files."""
    from matplotlib.figure import Figure
    from test_analysis_helpers import analytic_grid, build_analytic_run

    from analysis.report import write_figures

    grid = [cell for cell in analytic_grid() if cell["num_inference_steps"] == 10 and cell["zag"] == "official"
            and cell["rounds"] == 1 and cell["inversion_guidance_scale"] == 0.0]
    run = build_analytic_run(tmp_path / "run", grid)
    out, figure = tmp_path / "figures", "metric_vs_lambda"
    write_figures(run, out, seed=0, n_resamples=200, names=[figure])
    before = _snapshot(out)
    order = [f"{figure}.png", f"{figure}.pdf", f"{figure}.csv", "index.md"]
    assert sorted(before) == sorted(order)
    with monkeypatch.context() as patch:
        if target in ("png", "pdf"):
            patch.setattr(Figure, "savefig", _half_then_die(Figure.savefig, f".{target}"))
        elif target == "csv":
            patch.setattr(pd.DataFrame, "to_csv", _half_then_die(pd.DataFrame.to_csv, ".csv"))
        else:
            patch.setattr(Path, "write_text", _half_then_die(Path.write_text, "index.md"))
        with pytest.raises(Interrupted):
            write_figures(run, out, seed=1, n_resamples=200, names=[figure])
    # what the re-run wrote legitimately before it died: the files of the writers that come earlier
    killed = order.index(f"{figure}.{target}" if target != "index" else "index.md")
    after = _snapshot(out)
    assert sorted(after) == sorted(order) and no_temporaries(tmp_path)
    assert {k: after[k] for k in order[killed:]} == {k: before[k] for k in order[killed:]}
    write_figures(run, out, seed=1, n_resamples=200, names=[figure])
    again = _snapshot(out)
    assert again[f"{figure}.csv"] != before[f"{figure}.csv"] and again["index.md"] != before["index.md"]
    assert no_temporaries(tmp_path)


def test_table_and_figure_helpers_write_the_format_their_suffix_names(tmp_path: Path):
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    assert atomic_save_figure(tmp_path / "f.pdf", figure).read_bytes()[:4] == b"%PDF"
    assert atomic_save_figure(tmp_path / "f.png", figure, dpi=50).read_bytes()[:4] == b"\x89PNG"
    frame = pd.DataFrame({"a": [1.23456, 2.0]})
    written = atomic_write_csv(tmp_path / "t.csv", frame, index=False, float_format="%.2f").read_text()
    assert written == "a\n1.23\n2.00\n" and no_temporaries(tmp_path)
