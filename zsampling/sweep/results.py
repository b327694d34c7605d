"""Cell records on disk and the tidy results tables built from them.

Why: a finished cell must survive a kill at any instant and be found again
on resume, and the tables other code analyses must have one fixed schema.

What: each finished cell is one JSON record ``DIR/cells/<cell>.json``
(settings, per-sample rows, set-level metrics, network rows, order key, the
spec hash), written atomically (temporary file, fsync, ``os.replace``) after
its trace and image files, so the record's presence means the cell is
complete. :func:`build_tables` merges every record into

* ``results`` (``DIR/results.parquet`` + ``.csv``): one row per cell x
  sample, columns :data:`RESULT_COLUMNS` then one float column per
  per-sample metric;
* ``cells`` (``DIR/cells.parquet`` + ``.csv``): one row per cell, columns
  :data:`CELL_COLUMNS` then one float column per set-level metric;

both ordered by the cells' grid order (cells added by ``--extend`` after the
earlier ones) and then by ``sample_index``. :func:`build_guidance_tables`
adds, when the records have them,

* ``effective_guidance`` (``DIR/effective_guidance.parquet`` + ``.csv``): one
  row per traced cell, columns :data:`GUIDANCE_TABLE_COLUMNS` (the cell's
  :func:`zsampling.trace.guidance_summary`);
* ``matched`` (``DIR/matched.parquet`` + ``.csv``): one row per derived
  matched-baseline cell, columns :data:`MATCHED_COLUMNS` (which Z-Sampling
  cell it matches, at what scale, with what budget).
 ``wall_time_s`` is a cell's wall
time as if it had run alone (its share of the shared trunk included),
divided among its samples in ``results``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from zsampling.atomic import atomic_write, atomic_write_bytes
from zsampling.config import KNOBS, LEG_KNOBS, OPTIONAL_KNOBS, SCHEDULE_KNOB, timesteps_label

RECORD_SCHEMA = "zsampling.sweep.record"
RECORD_VERSION = 1

SETTINGS_COLUMNS: tuple[str, ...] = ("cell", "model", "method", *KNOBS)
"""A cell's settings columns; the optional knobs a sweep sets (:data:`~zsampling.config.OPTIONAL_KNOBS`: legs,
timesteps) follow them."""
RESULT_COLUMNS: tuple[str, ...] = (
    "cell", "model", "method", "prompt", "prompt_index", "seed", "sample_index", *KNOBS, "nfe", "wall_time_s",
)
"""The fixed leading columns of ``results``; the sweep's optional knobs, then per-sample metric columns follow."""
CELL_COLUMNS: tuple[str, ...] = (*SETTINGS_COLUMNS, "n_samples", "nfe", "wall_time_s")
"""The fixed leading columns of ``cells``; set-level metric columns follow."""

GUIDANCE_TABLE_COLUMNS: tuple[str, ...] = (
    *SETTINGS_COLUMNS, "nfe", "window_size", "first_order", "effective_guidance", "effective_guidance_window",
    "effective_guidance_parallel", "effective_guidance_parallel_window", "effective_guidance_orthogonal_window",
    "effective_guidance_mean", "effective_guidance_median", "orthogonal_share_window", "n_samples", "complete",
)
"""Columns of the ``effective_guidance`` table (see :func:`zsampling.trace.guidance_summary`)."""
MATCHED_COLUMNS: tuple[str, ...] = (
    "cell", "method", "source_cell", "num_inference_steps", "guidance_scale", "nfe", "source_num_inference_steps",
    "source_guidance_scale", "source_inversion_guidance_scale", "source_zigzag_steps", "source_rounds", "source_zag",
    "source_zag_eval_timestep", "source_nfe", "measured_form", "measured_scale", "measured_scale_parallel",
    "measured_scale_norm", "measured_scale_window", "first_order_scale",
)
"""Columns of the ``matched`` table: the derived cell (``cell``, ``method``, T, g, NFE) and its source."""

_STR = ("cell", "model", "method", "prompt", "zag", "zag_eval_timestep", SCHEDULE_KNOB)
_UNSET = {SCHEDULE_KNOB: timesteps_label(None)}
"""An optional knob's value in a record written without it (a leg knob's is NaN: the run's own value)."""
_INT = ("prompt_index", "seed", "sample_index", "num_inference_steps", "zigzag_steps", "rounds", "nfe", "n_samples")
_FLOAT = ("guidance_scale", "inversion_guidance_scale", "wall_time_s", *LEG_KNOBS)

CELLS_DIR = "cells"
TRACES_DIR = "traces"
IMAGES_DIR = "images"


# ----------------------------------------------------------------------- images
def images_to_uint8(images: Any) -> Any:
    """[0, 1] float images (N, C, H, W) as uint8 (``round(255 x)``, clamped): how sweeps store them."""
    import torch

    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def images_to_float(images: Any) -> Any:
    """Stored images back to float32: uint8 (the sweep's image files) / 255, anything else as float32.

    Accepts a torch tensor or a NumPy array and returns the same kind.
    """
    import numpy as np

    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        return images.astype(np.float32)
    import torch

    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def load_images(path: str | Path) -> Any:
    """The ``images`` tensor of an ``images/<cell>.safetensors`` file as float32 (images in [0, 1])."""
    from safetensors.torch import load_file

    return images_to_float(load_file(str(path))["images"])


# -------------------------------------------------------------------- atomic IO
def atomic_write_json(path: Path, value: Any) -> None:
    """JSON (NaN allowed, as Python writes it) written atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=1, allow_nan=True) + "\n").encode("utf-8"))


def _atomic_frame(path: Path, frame: pd.DataFrame, kind: str) -> None:
    if kind == "parquet":
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


# ----------------------------------------------------------------------- records
def record_path(out: Path, cell: str) -> Path:
    return out / CELLS_DIR / f"{cell}.json"


def write_record(out: Path, record: Mapping[str, Any]) -> None:
    """Commit a finished cell (call after its trace and image files exist)."""
    atomic_write_json(record_path(out, record["cell"]), {"schema": RECORD_SCHEMA, "version": RECORD_VERSION,
                                                         **record})


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """Every valid cell record of ``out`` by cell hash (unreadable ones are ignored: not done)."""
    directory = Path(out) / CELLS_DIR
    records: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA and record.get("cell") == path.stem
                and isinstance(record.get("rows"), list)):
            records[path.stem] = record
    return records


# ------------------------------------------------------------------------ tables
def _ordered(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=lambda r: (tuple(r.get("order", (0, 0))), r["cell"]))


def _names(records: Iterable[Mapping[str, Any]], key: str) -> list[str]:
    names: list[str] = []
    for record in records:
        for name in record.get(key, []):
            if name not in names:
                names.append(name)
    return names


def _typed(frame: pd.DataFrame, extra_float: Iterable[str]) -> pd.DataFrame:
    for column in frame.columns:
        if column in _INT:
            frame[column] = frame[column].astype("int64")
        elif column in _FLOAT or column in extra_float:
            frame[column] = frame[column].astype("float64")
        elif column in _STR:
            frame[column] = frame[column].astype(object).astype(str)
    return frame


def build_tables(records: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``results`` and ``cells`` tables of a set of cell records."""
    ordered = _ordered(records)
    sample_metrics = _names(ordered, "sample_metrics")
    set_metrics = _names(ordered, "set_metrics")
    optional = [knob for knob in OPTIONAL_KNOBS if any(knob in record["settings"] for record in ordered)]
    result_rows, cell_rows = [], []
    for record in ordered:
        settings = record["settings"]
        optional_values = {knob: settings.get(knob, _UNSET.get(knob, float("nan"))) for knob in optional}
        for row in sorted(record["rows"], key=lambda r: r["sample_index"]):
            values = {column: row[column] if column in row else settings.get(column) for column in RESULT_COLUMNS}
            values.update(optional_values)
            values.update({name: row.get(name, float("nan")) for name in sample_metrics})
            result_rows.append(values)
        cell = {column: settings[column] for column in SETTINGS_COLUMNS}
        cell.update(optional_values)
        cell.update(n_samples=record["n_samples"], nfe=record["nfe"], wall_time_s=record["wall_time_s"])
        cell.update({name: record["set_metric_values"].get(name, float("nan")) for name in set_metrics})
        cell_rows.append(cell)
    results = pd.DataFrame(result_rows, columns=[*RESULT_COLUMNS, *optional, *sample_metrics])
    cells = pd.DataFrame(cell_rows, columns=[*SETTINGS_COLUMNS, *optional, *CELL_COLUMNS[len(SETTINGS_COLUMNS):],
                                             *set_metrics])
    return _typed(results, sample_metrics), _typed(cells, set_metrics)


def build_guidance_tables(records: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``effective_guidance`` and ``matched`` tables of a set of cell records (empty when none apply)."""
    guidance_rows, matched_rows = [], []
    for record in _ordered(records):
        settings = record["settings"]
        summary = record.get("effective_guidance")
        if summary:
            row = {column: settings.get(column) for column in SETTINGS_COLUMNS}
            row["nfe"] = record.get("nfe")
            row.update({k: summary.get(k) for k in GUIDANCE_TABLE_COLUMNS if k not in row})
            guidance_rows.append(row)
        info = record.get("matched")
        if info:
            source = info.get("source_settings") or {}
            matched_rows.append({
                "cell": record["cell"], "method": settings.get("method"), "source_cell": info.get("source"),
                "num_inference_steps": settings.get("num_inference_steps"),
                "guidance_scale": settings.get("guidance_scale"), "nfe": record.get("nfe"),
                **{f"source_{k}": source.get(k) for k in ("num_inference_steps", "guidance_scale",
                                                         "inversion_guidance_scale", "zigzag_steps", "rounds", "zag",
                                                         "zag_eval_timestep")},
                "source_nfe": info.get("source_nfe"), "measured_form": info.get("measured_form"),
                "measured_scale": info.get("measured_scale"),
                "measured_scale_parallel": info.get("measured_scale_parallel"),
                "measured_scale_norm": info.get("measured_scale_norm"),
                "measured_scale_window": info.get("measured_scale_window"),
                "first_order_scale": info.get("first_order_scale"),
            })
    guidance = pd.DataFrame(guidance_rows, columns=list(GUIDANCE_TABLE_COLUMNS))
    matched = pd.DataFrame(matched_rows, columns=list(MATCHED_COLUMNS))
    for frame in (guidance, matched):
        for column in frame.columns:
            if column in ("first_order", "measured_scale", "measured_scale_parallel", "measured_scale_norm",
                          "measured_scale_window", "first_order_scale") \
                    or column.startswith("effective_guidance") or column == "orthogonal_share_window":
                frame[column] = frame[column].astype("float64")
    return _typed(guidance, ()), matched


def write_guidance_tables(out: Path, guidance: pd.DataFrame, matched: pd.DataFrame) -> None:
    """Write the non-empty ``effective_guidance`` / ``matched`` tables as Parquet and CSV (atomically)."""
    for name, frame in (("effective_guidance", guidance), ("matched", matched)):
        if frame.empty:
            continue
        _atomic_frame(out / f"{name}.parquet", frame, "parquet")
        _atomic_frame(out / f"{name}.csv", frame, "csv")


def write_tables(out: Path, results: pd.DataFrame, cells: pd.DataFrame) -> None:
    """Write results/cells as Parquet and CSV, each file atomically."""
    for name, frame in (("results", results), ("cells", cells)):
        _atomic_frame(out / f"{name}.parquet", frame, "parquet")
        _atomic_frame(out / f"{name}.csv", frame, "csv")


def load_results(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``DIR/results.parquet`` and ``DIR/cells.parquet`` of a finished sweep."""
    out = Path(out)
    return pd.read_parquet(out / "results.parquet"), pd.read_parquet(out / "cells.parquet")
