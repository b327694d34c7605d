"""Loading a sweep's RUN_DIR and turning traces and images into DataFrames.

This is the one analysis module that reads files. It reads Parquet/CSV,
JSON and safetensors (traces through ``zsampling.trace``'s loader, images
with ``safetensors.numpy``); it never imports a model or a denoiser.

RUN_DIR layout (fixed by the sweep engine):

* ``results.parquet`` (or ``.csv``): one row per cell x sample;
* ``cells.parquet`` (or ``.csv``): one row per cell, set-level metrics;
* ``traces/<cell>.safetensors``: a zsampling trace per cell (optional);
* ``images/<cell>.safetensors``: final images under key ``"images"``,
  (N, C, H, W) uint8 (``round(255 x)``; converted back to float32 in [0, 1]
  on reading), row order = ``sample_index`` (optional; models whose samples
  are points store float (N, D));
* ``effective_guidance.parquet`` (or ``.csv``): one row per traced cell, its
  effective-guidance summary (optional);
* ``matched.parquet`` (or ``.csv``): one row per matched-baseline cell and
  the Z-Sampling cell it matches (optional; ``matched_baselines: true``);
* ``manifest.json``.

The frame builders below return plain pandas (numbers only), so plotting
functions never touch files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.trajectory import LATENT_PREFIX

if TYPE_CHECKING:
    from zsampling.trace import Trace

MAX_IMAGE_SIDE = 64
"""Images are block-averaged to at most this many pixels per side for grids
(and their CSVs): the 8x8 demo digits are untouched, SDXL's 1024 px become 64 px."""

OPS: tuple[str, ...] = ("zig", "zag", "step")
"""zsampling.trace's op codes (index = code)."""


def _read_table(root: Path, name: str) -> pd.DataFrame | None:
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = root / f"{name}{suffix}"
        if path.is_file():
            frame = reader(path)
            for column in ("cell", "source_cell"):
                if column in frame.columns:
                    frame[column] = frame[column].astype(str)
            return frame
    return None


@dataclass
class RunData:
    """What a RUN_DIR holds: tables in memory, traces and images opened on demand.

    Attributes:
        root: the RUN_DIR.
        results: per-sample table (None when absent).
        cells: per-cell table (None when absent).
        manifest: the parsed manifest.json ({} when absent).
        trace_files / image_files: cell -> path of the files present.
        guidance: per-cell effective-guidance summaries (None when absent).
        matched: matched-baseline cells and their sources (None when absent).
    """

    root: Path
    results: pd.DataFrame | None
    cells: pd.DataFrame | None
    manifest: dict[str, Any]
    trace_files: dict[str, Path] = field(default_factory=dict)
    image_files: dict[str, Path] = field(default_factory=dict)
    guidance: pd.DataFrame | None = None
    matched: pd.DataFrame | None = None
    _traces: dict[str, Trace] = field(default_factory=dict, repr=False)

    def trace(self, cell: str) -> Trace:
        """The trace of ``cell`` (loaded once; large tensors stay lazy on disk)."""
        if cell not in self.trace_files:
            raise KeyError(f"no trace for cell {cell!r} in {self.root / 'traces'}")
        if cell not in self._traces:
            from zsampling.trace import Trace

            self._traces[cell] = Trace.load(self.trace_files[cell])
        return self._traces[cell]

    def images(self, cell: str) -> np.ndarray:
        """The final images of ``cell`` as float32 (N, C, H, W) in [0, 1] (stored uint8: / 255) (or (N, D)
        points), row = sample_index."""
        if cell not in self.image_files:
            raise KeyError(f"no images for cell {cell!r} in {self.root / 'images'}")
        from safetensors.numpy import load_file

        tensors = load_file(str(self.image_files[cell]))
        if "images" not in tensors:
            raise KeyError(f"{self.image_files[cell]} has no tensor 'images' (has {sorted(tensors)})")
        images = np.asarray(tensors["images"])
        if images.dtype == np.uint8:  # the sweep stores images as uint8 (4x smaller)
            return images.astype(np.float32) / 255.0
        return images.astype(np.float32)


def load_run(run_dir: str | Path) -> RunData:
    """Open a RUN_DIR (see the module docstring); missing parts are None / empty.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"RUN_DIR {root} is not a directory")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}

    def files(sub: str) -> dict[str, Path]:
        folder = root / sub
        return {p.name.removesuffix(".safetensors"): p for p in sorted(folder.glob("*.safetensors"))} \
            if folder.is_dir() else {}

    return RunData(root=root, results=_read_table(root, "results"), cells=_read_table(root, "cells"),
                   manifest=manifest, trace_files=files("traces"), image_files=files("images"),
                   guidance=_read_table(root, "effective_guidance"), matched=_read_table(root, "matched"))


# ---------------------------------------------------------------- trace frames
def trace_frame(trace: Trace, **ids: Any) -> pd.DataFrame:
    """``trace.to_frame()`` with constant id columns (e.g. ``cell=...``) in front."""
    frame = trace.to_frame()
    for position, (name, value) in enumerate(ids.items()):
        frame.insert(position, name, value)
    return frame


def _sample_positions(trace: Trace, samples: Sequence[int] | None) -> list[tuple[int, int]]:
    """(batch position, sample id) of the requested sample ids (default: all)."""
    ids = list(trace.sample_ids)
    if samples is None:
        return list(enumerate(ids))
    positions = []
    for sample in samples:
        if sample not in ids:
            raise KeyError(f"sample {sample} is not in this trace (samples {ids})")
        positions.append((ids.index(sample), sample))
    return positions


def trajectory_frame(traces: Mapping[str, Trace], samples: Sequence[int] | None = None) -> pd.DataFrame:
    """Latent paths: one row per run x sample x event with the flattened output latent.

    Args:
        traces: run label -> trace recorded with latents (``keep`` including
            "latents").
        samples: sample ids to include (default: all of each trace).

    Returns:
        ``run``, ``sample``, ``event`` (-1 = x_T, the initial latent), ``op``
        ("init", "zig", "zag", "step"), ``step``, ``round``, ``t_to`` and the
        latent in ``z0 .. z{D-1}`` (float64).
    """
    frames = []
    for run, trace in traces.items():
        if "latents" not in trace.tensor_names or "x_init" not in trace.tensor_names:
            raise ValueError(f"trace of {run!r} has no latents (record with keep including 'latents')")
        latents = np.asarray(trace.tensor("latents"), dtype=np.float64)  # (E, B, ...)
        x_init = np.asarray(trace.tensor("x_init"), dtype=np.float64)  # (B, ...)
        events = {k: np.asarray(v) for k, v in trace.events.items()}
        num_events = latents.shape[0]
        for position, sample in _sample_positions(trace, samples):
            path = np.concatenate([x_init[position][None], latents[:, position]], axis=0)
            path = path.reshape(path.shape[0], -1)
            meta = pd.DataFrame({
                "run": run,
                "sample": sample,
                "event": np.arange(-1, num_events),
                "op": ["init", *[OPS[int(code)] for code in events["op"]]],
                "step": np.concatenate([[0], events["step"].astype(int)]),
                "round": np.concatenate([[0], events["round"].astype(int)]),
                "t_to": np.concatenate([[events["t_from"][0]], events["t_to"]]).astype(int),
            })
            coords = pd.DataFrame(path, columns=[f"{LATENT_PREFIX}{k}" for k in range(path.shape[1])])
            frames.append(pd.concat([meta, coords], axis=1))
    if not frames:
        raise ValueError("no traces given")
    return pd.concat(frames, ignore_index=True)


def x0_frame(
    traces: Mapping[str, Trace],
    *,
    samples: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    max_steps: int = 6,
) -> pd.DataFrame:
    """Predicted x0 per ordinary step, as decoded pixels or as points.

    With decoded images in the traces (``decode_every``) it returns a pixel
    frame (``run``, ``sample``, ``step``, ``y``, ``x``, ``channel``,
    ``value`` in [0, 1]; images block-averaged to :data:`MAX_IMAGE_SIDE`);
    otherwise, with ``x0`` kept and 2-D latents (points), ``run``,
    ``sample``, ``step``, ``z0``, ``z1``. ``steps`` defaults to up to
    ``max_steps`` evenly spaced steps the first trace has.
    ``attrs["kind"]`` is "images" or "points".

    Raises:
        ValueError: when the traces have neither decoded images nor x0 points.
    """
    first = next(iter(traces.values()))
    if all(t.decoded_steps for t in traces.values()):
        available = sorted(set.intersection(*(set(t.decoded_steps) for t in traces.values())))
        chosen = _spread(available, max_steps) if steps is None else list(steps)
        frames = []
        for run, trace in traces.items():
            for step in chosen:
                images = np.asarray(trace.images(step), dtype=np.float32) / 255.0  # (B, 3, H, W) uint8
                for position, sample in _sample_positions(trace, samples):
                    frames.append(pixel_frame(images[position], run=run, sample=sample, step=step))
        out = pd.concat(frames, ignore_index=True)
        out.attrs["kind"] = "images"
        return out
    if all("x0" in t.tensor_names for t in traces.values()) and len(first.meta.get("latent_shape", [])) == 1 \
            and int(first.meta["latent_shape"][0]) == 2:
        available = list(range(first.num_steps))
        chosen = _spread(available, max_steps) if steps is None else list(steps)
        rows = []
        for run, trace in traces.items():
            for step in chosen:
                x0 = np.asarray(trace.x0(step), dtype=np.float64)
                for position, sample in _sample_positions(trace, samples):
                    rows.append({"run": run, "sample": sample, "step": step, "z0": x0[position, 0],
                                 "z1": x0[position, 1]})
        out = pd.DataFrame(rows, columns=["run", "sample", "step", "z0", "z1"])
        out.attrs["kind"] = "points"
        return out
    raise ValueError(
        "the traces have no decoded x0 images (record with decode_every=...) and no 2-D x0 points "
        "(keep='all' on a 2-D model)"
    )


def _spread(values: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` values evenly spread over ``values`` (first and last included)."""
    values = list(values)
    if len(values) <= count:
        return values
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, count)).astype(int))
    return [values[k] for k in picks]


def downsample_image(image: np.ndarray, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Block-average a (C, H, W) image so that H, W <= ``max_side`` (crop to a multiple first)."""
    c, h, w = image.shape
    factor = max(1, math.ceil(max(h, w) / max_side))
    if factor == 1:
        return image
    h2, w2 = h // factor, w // factor
    cropped = image[:, : h2 * factor, : w2 * factor]
    return cropped.reshape(c, h2, factor, w2, factor).mean(axis=(2, 4))


def pixel_frame(image: np.ndarray, *, max_side: int = MAX_IMAGE_SIDE, **ids: Any) -> pd.DataFrame:
    """A (C, H, W) image in [0, 1] as a long frame: ids, ``y``, ``x``, ``channel``, ``value``."""
    image = downsample_image(np.asarray(image, dtype=np.float64), max_side)
    c, h, w = image.shape
    channel, y, x = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    frame = pd.DataFrame({"y": y.ravel(), "x": x.ravel(), "channel": channel.ravel(),
                          "value": np.clip(image.ravel(), 0.0, 1.0)})
    for position, (name, value) in enumerate(ids.items()):
        frame.insert(position, name, value)
    return frame


def sample_frame(images: Mapping[str, np.ndarray], rows: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Final samples of several runs for the same seeds, as pixels or points.

    Args:
        images: run label -> the run's image array (N, C, H, W) or points (N, D).
        rows: run label -> the run's results rows to show (``sample_index``,
            ``prompt_index``, ``seed``, ``prompt``), in display order; the
            k-th row of every run must be the same (prompt_index, seed).

    Returns:
        Images: ``run``, ``row`` (display row), ``prompt_index``, ``seed``,
        ``prompt``, ``y``, ``x``, ``channel``, ``value``. Points: ``run``,
        ``row``, ``prompt_index``, ``seed``, ``prompt``, ``z0``, ``z1``.
        ``attrs["kind"]`` is "images" or "points".
    """
    kind = "images" if all(np.asarray(a).ndim == 4 for a in images.values()) else "points"
    frames = []
    for run, array in images.items():
        array = np.asarray(array)
        for k, (_, row) in enumerate(rows[run].iterrows()):
            ids = {"run": run, "row": k, "prompt_index": int(row["prompt_index"]), "seed": int(row["seed"]),
                   "prompt": str(row.get("prompt", ""))}
            value = array[int(row["sample_index"])]
            if kind == "images":
                frames.append(pixel_frame(value, **ids))
            else:
                flat = value.reshape(-1)
                frames.append(pd.DataFrame([{**ids, "z0": float(flat[0]),
                                             "z1": float(flat[1]) if flat.size > 1 else 0.0}]))
    out = pd.concat(frames, ignore_index=True)
    out.attrs["kind"] = kind
    return out
