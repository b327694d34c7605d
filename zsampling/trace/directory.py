"""Trace directories: a long sweep's batches streamed to disk and read back.

A long sweep streams into a directory with :class:`TraceWriter`: one file per
batch (``batch-000000.safetensors``, ...) written to a temp file, fsynced and
moved into place with ``os.replace``, then one line appended to
``index.jsonl``. A run killed at any point leaves every finished batch
readable: a half-appended index line is ignored (and repaired by the next
writer), a batch file whose index line was lost is recovered from its own
header, and a half-written temp file is never seen under a batch name.
:class:`TraceDir` reads such a directory back.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsampling.atomic import atomic_write_text
from zsampling.trace.data import Trace
from zsampling.trace.storage import TraceFormatError, read_trace_meta, save_trace

if TYPE_CHECKING:
    import pandas as pd

INDEX_NAME = "index.jsonl"
_BATCH_RE = re.compile(r"^batch-(\d{6,})\.safetensors$")


# ----------------------------------------------------------------- directories
def _index_entry(name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "file": name,
        "batch": meta.get("batch"),
        "key": meta.get("key"),
        "sample_ids": meta.get("sample_ids"),
        "prompts": meta.get("prompts"),
        "config": meta.get("config"),
        "created": meta.get("created"),
    }


def _read_index(directory: Path) -> tuple[list[dict[str, Any]], bool]:
    """Entries of ``index.jsonl``; a line that does not parse (a write cut
    short) is skipped. Returns (entries, clean)."""
    path = directory / INDEX_NAME
    if not path.exists():
        return [], True
    entries: list[dict[str, Any]] = []
    clean = True
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        clean = False  # the last line was cut short
        lines.pop()
    for line in lines:
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            clean = False
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            entries.append(entry)
        else:
            clean = False
    return entries, clean


def _scan(directory: Path) -> tuple[list[dict[str, Any]], bool]:
    """Index entries plus batch files the index does not list (recovered
    from their own headers), sorted by batch number."""
    entries, clean = _read_index(directory)
    listed = {entry["file"] for entry in entries}
    entries = [entry for entry in entries if _BATCH_RE.match(entry["file"]) and (directory / entry["file"]).exists()]
    for path in sorted(directory.iterdir()):
        if _BATCH_RE.match(path.name) and path.name not in listed:
            try:
                meta = read_trace_meta(path)
            except (TraceFormatError, OSError) as error:
                warnings.warn(f"skipping unreadable trace file {path}: {error}", stacklevel=3)
                continue
            entries.append(_index_entry(path.name, meta))
            clean = False
    entries.sort(key=lambda entry: int(_BATCH_RE.match(entry["file"]).group(1)))  # type: ignore[union-attr]
    return entries, clean


class TraceWriter:
    """Streams traces into a directory, one safetensors file per batch.

    Memory stays bounded (each trace is written as soon as its batch
    finishes and can be dropped), and a run killed mid-way leaves every
    finished batch readable. Opening an existing directory resumes it:
    batch numbers and sample ids continue, ``done_keys()`` lists the keys
    already written so a sweep can skip finished cells.

    Usage::

        with TraceWriter("runs/sweep") as writer:
            for key, prompts in cells:
                if key in writer.done_keys():
                    continue
                sample_with_trace(pipe, prompts, writer=writer, key=key, ...)
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stray in self.directory.glob(".*.tmp"):
            stray.unlink()  # a write interrupted before its os.replace
        self._entries, clean = _scan(self.directory)
        if not clean:
            self._rewrite_index()
        numbers = [int(_BATCH_RE.match(e["file"]).group(1)) for e in self._entries]  # type: ignore[union-attr]
        self._next = max(numbers, default=-1) + 1
        self._samples = sum(len(entry.get("sample_ids") or []) for entry in self._entries)

    @property
    def num_samples(self) -> int:
        """Samples written so far (including earlier sessions)."""
        return self._samples

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The index: one dict per batch file."""
        return [dict(entry) for entry in self._entries]

    def done_keys(self) -> set[str]:
        """Keys of the batches already written."""
        return {entry["key"] for entry in self._entries if entry.get("key") is not None}

    def write(self, trace: Trace, *, key: str | None = None) -> Trace:
        """Write one batch; returns the trace with its global sample ids,
        batch number and key set in ``meta``."""
        key = key if key is not None else trace.meta.get("key")
        ids = list(range(self._samples, self._samples + trace.num_samples))
        trace = trace.with_meta(sample_ids=ids, batch=self._next, key=key)
        name = f"batch-{self._next:06d}.safetensors"
        save_trace(trace, self.directory / name)
        entry = _index_entry(name, trace.meta)
        line = json.dumps(entry) + "\n"
        with open(self.directory / INDEX_NAME, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._entries.append(entry)
        self._next += 1
        self._samples += trace.num_samples
        return trace

    def _rewrite_index(self) -> None:
        atomic_write_text(self.directory / INDEX_NAME, "".join(json.dumps(entry) + "\n" for entry in self._entries))

    def close(self) -> None:
        """Nothing is buffered: every write is already on disk."""

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TraceDir:
    """Read access to a directory written by :class:`TraceWriter`.

    Indexing gives lazily loaded :class:`Trace` objects (one per batch);
    :meth:`to_frame` concatenates every batch's scalars with the batch
    number, key and config columns, ready for analysis.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"no trace directory at {self.directory}")
        self.entries, _ = _scan(self.directory)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Trace:
        return Trace.load(self.directory / self.entries[index]["file"])

    def __iter__(self) -> Iterator[Trace]:
        for index in range(len(self)):
            yield self[index]

    @property
    def num_samples(self) -> int:
        return sum(len(entry.get("sample_ids") or []) for entry in self.entries)

    def keys(self) -> list[str | None]:
        return [entry.get("key") for entry in self.entries]

    def find(self, sample_id: int) -> tuple[Trace, int]:
        """The batch trace holding ``sample_id`` and the sample's index in it."""
        for index, entry in enumerate(self.entries):
            ids = entry.get("sample_ids") or []
            if sample_id in ids:
                return self[index], ids.index(sample_id)
        raise KeyError(f"sample {sample_id} is not in {self.directory}")

    def to_frame(self, *, config_columns: bool = True) -> pd.DataFrame:
        """All batches' :meth:`Trace.to_frame` rows, with ``batch`` and ``key``
        columns and (``config_columns``) g1, g2, T, window size, rounds, zag."""
        import pandas as pd

        frames = []
        for index, trace in enumerate(self):
            frame = trace.to_frame()
            frame.insert(0, "batch", index)
            frame.insert(1, "key", trace.meta.get("key"))
            config = trace.config
            if config_columns and config is not None:
                frame["g1"] = config["guidance_scale"]
                frame["g2"] = config["inversion_guidance_scale"]
                frame["num_inference_steps"] = config["num_inference_steps"]
                frame["window_size"] = len(config["window"])
                frame["rounds"] = config["rounds"]
                frame["zag"] = config["zag"]
                frame["zag_eval_timestep"] = config["zag_eval_timestep"]
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        for name in ("op", "prompt"):
            if name in frame and not isinstance(frame[name].dtype, pd.CategoricalDtype):
                frame[name] = frame[name].astype("category")
        return frame


def load_traces(directory: str | Path) -> TraceDir:
    """Open a trace directory written by :class:`TraceWriter`."""
    return TraceDir(directory)
