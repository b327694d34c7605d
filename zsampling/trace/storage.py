"""Trace files and directories: safetensors for tensors, JSON for the rest.

One trace (one batch) is one ``.safetensors`` file: events, scalars,
metrics and kept tensors in its body, and the trace's JSON description
(config, prompts, seeds, versions, schema version, an inventory of every
tensor with its dtype, shape and SHA-256) in the header's ``__metadata__``
under the key ``"zsampling.trace"``. Nothing is ever unpickled: the header is
parsed as JSON and checked against the body before any tensor is read, so a
truncated, tampered or foreign file (a pickle, a ``torch.save`` archive)
raises :class:`TraceFormatError` and executes nothing.

Directories of trace files (a sweep's stream of batches) are
:mod:`zsampling.trace.directory`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zsampling.atomic import atomic_write
from zsampling.trace.schema import EVENT_COLUMNS, SCHEMA, SCHEMA_VERSION

if TYPE_CHECKING:
    from zsampling.trace.data import Trace

META_KEY = "zsampling.trace"
_MAX_HEADER = 256 * 2**20
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_DTYPE_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.int64: "I64", torch.float64: "F64",
}


class TraceFormatError(ValueError):
    """A file is not a valid zsampling trace (truncated, tampered, foreign or
    of another schema version)."""


# ---------------------------------------------------------------------- files
def _digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor that owns its whole storage (safetensors refuses views)."""
    tensor = tensor.detach().contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _file_tensors(trace: Trace) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, value in trace.events.items():
        tensors[f"events/{name}"] = value
    for name, value in trace.scalars.items():
        tensors[f"scalars/{name}"] = value
    for name, value in trace.metrics.items():
        tensors[f"metrics/{name}"] = value
    for name in trace.tensor_names:
        tensors[f"tensors/{name}"] = trace.tensor(name)
    return {name: _owned(value.cpu()) for name, value in tensors.items()}


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` to ``path`` atomically (temp file, fsync, os.replace)."""
    path = Path(path)
    tensors = _file_tensors(trace)
    inventory = {
        name: {"dtype": _DTYPE_NAMES[value.dtype], "shape": list(value.shape), "sha256": _digest(value)}
        for name, value in tensors.items()
    }
    description = {**trace.meta, "tensors": inventory}
    try:
        header = json.dumps(description, allow_nan=True)
    except TypeError as error:
        raise ValueError(f"trace metadata must be JSON-serialisable: {error}") from error
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: header}))


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse and validate the safetensors header and the trace description.

    Returns (description, tensor entries). Reads only the header bytes.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise TraceFormatError(f"{path} is truncated ({size} bytes): not a zsampling trace")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _MAX_HEADER):
            _refuse_foreign(path, head)
            raise TraceFormatError(
                f"{path}: header length {length} exceeds the file ({size} bytes): truncated, or not a "
                "safetensors trace"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        _refuse_foreign(path, head)
        raise TraceFormatError(f"{path}: the safetensors header is not valid JSON (corrupted or tampered): {error}") \
            from error
    if not isinstance(header, dict):
        raise TraceFormatError(f"{path}: the safetensors header is not a JSON object (corrupted or tampered)")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or META_KEY not in metadata:
        raise TraceFormatError(f"{path} is not a zsampling trace (no {META_KEY!r} entry in its safetensors header)")
    try:
        description = json.loads(metadata[META_KEY])
    except (TypeError, json.JSONDecodeError) as error:
        raise TraceFormatError(f"{path}: the trace description is not valid JSON (corrupted or tampered)") from error
    if not isinstance(description, dict) or description.get("schema") != SCHEMA:
        raise TraceFormatError(f"{path}: the header does not describe a {SCHEMA!r} (corrupted or tampered)")
    version = description.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceFormatError(
            f"{path} was written with trace schema version {version!r}; this zsampling reads version "
            f"{SCHEMA_VERSION} (use the zsampling version that wrote it, or re-record)"
        )
    _check_layout(path, header, size - 8 - length)
    inventory = description.get("tensors")
    if not isinstance(inventory, dict) or set(inventory) != set(header):
        raise TraceFormatError(
            f"{path}: the tensors in the file and the trace description disagree (tampered or corrupted)"
        )
    for name, entry in header.items():
        described = inventory[name]
        if not isinstance(described, dict) or described.get("dtype") != entry["dtype"] \
                or described.get("shape") != entry["shape"]:
            raise TraceFormatError(f"{path}: tensor {name!r} does not match its description (tampered or corrupted)")
    return description, header


def _refuse_foreign(path: Path, head: bytes) -> None:
    """Name the usual suspects when a file is not safetensors at all."""
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise TraceFormatError(
            f"{path} looks like a pickle / torch.save archive, not a zsampling trace; zsampling never "
            "unpickles files (traces are safetensors + JSON)"
        )


def _check_layout(path: Path, header: Mapping[str, Any], data_length: int) -> None:
    """Every tensor lies inside the body with the size its dtype and shape
    imply, and the tensors cover the body exactly (no truncation)."""
    end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = _ITEMSIZE[dtype]
            expected = itemsize * math.prod(int(n) for n in shape)
            valid = all(isinstance(n, int) and n >= 0 for n in (*shape, start, stop))
        except (KeyError, TypeError, ValueError) as error:
            raise TraceFormatError(f"{path}: malformed entry for tensor {name!r} (corrupted or tampered)") from error
        if not valid or stop - start != expected:
            raise TraceFormatError(f"{path}: tensor {name!r} has inconsistent offsets (corrupted or tampered)")
        if stop > data_length:
            raise TraceFormatError(f"{path}: tensor {name!r} extends past the end of the file (truncated)")
        end = max(end, stop)
    if end != data_length:
        raise TraceFormatError(
            f"{path}: the file holds {data_length} data bytes but its tensors describe {end} "
            "(truncated or corrupted)"
        )


class FileSource:
    """Large tensors of a trace file, read lazily with ``safe_open`` (mmap)."""

    def __init__(self, path: Path, inventory: Mapping[str, Mapping[str, Any]]) -> None:
        self.path = path
        self._inventory = dict(inventory)
        self._names = sorted(n.removeprefix("tensors/") for n in inventory if n.startswith("tensors/"))

    def names(self) -> list[str]:
        return self._names

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._inventory[f"tensors/{name}"]["shape"])

    def get(self, name: str, index: int | slice | None = None) -> torch.Tensor:
        key = f"tensors/{name}"
        if key not in self._inventory:
            raise KeyError(name)
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                if index is None:
                    return handle.get_tensor(key)
                return handle.get_slice(key)[index]
        except Exception as error:  # safetensors raises its own error type
            raise TraceFormatError(f"{self.path}: cannot read tensor {name!r}: {error}") from error

    def verify(self) -> None:
        """Check the SHA-256 of every large tensor (reads each once)."""
        for name in self._names:
            if _digest(self.get(name)) != self._inventory[f"tensors/{name}"]["sha256"]:
                raise TraceFormatError(f"{self.path}: tensor {name!r} fails its checksum (corrupted or tampered)")


TraceParts = tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor],
                   "FileSource"]
"""(description, events, scalars, metrics, tensor source): a :class:`Trace`'s constructor arguments."""


def read_trace(path: str | Path, *, verify: bool = False) -> TraceParts:
    """Read and check a trace file's parts (see :meth:`Trace.load`, which builds the trace)."""
    path = Path(path)
    description, header = _read_header(path)
    inventory = description.pop("tensors")
    small: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in header:
                if not name.startswith("tensors/"):
                    small[name] = handle.get_tensor(name)
    except Exception as error:
        raise TraceFormatError(f"{path}: not a readable safetensors file: {error}") from error
    for name, value in small.items():
        if _digest(value) != inventory[name]["sha256"]:
            raise TraceFormatError(f"{path}: tensor {name!r} fails its checksum (corrupted or tampered)")
    events = {name.removeprefix("events/"): v for name, v in small.items() if name.startswith("events/")}
    scalars = {name.removeprefix("scalars/"): v for name, v in small.items() if name.startswith("scalars/")}
    metrics = {name.removeprefix("metrics/"): v for name, v in small.items() if name.startswith("metrics/")}
    _check_shapes(path, description, events, scalars, metrics)
    source = FileSource(path, inventory)
    if verify:
        source.verify()
    return description, events, scalars, metrics, source


def _check_shapes(path: Path, meta: Mapping[str, Any], events: Mapping[str, torch.Tensor],
                  scalars: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]) -> None:
    missing = [name for name in EVENT_COLUMNS if name not in events]
    if missing:
        raise TraceFormatError(f"{path}: event columns {missing} are missing (corrupted or tampered)")
    num_events = int(events["op"].shape[0])
    batch = meta.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise TraceFormatError(f"{path}: invalid batch_size {batch!r} (corrupted or tampered)")
    if sorted(scalars) != sorted(meta.get("scalar_names", [])):
        raise TraceFormatError(f"{path}: scalar columns do not match the description (corrupted or tampered)")
    for name, value in events.items():
        if tuple(value.shape) != (num_events,):
            raise TraceFormatError(f"{path}: event column {name!r} has shape {tuple(value.shape)}, "
                                   f"expected ({num_events},)")
    for name, value in {**scalars, **metrics}.items():
        if tuple(value.shape) != (num_events, batch):
            raise TraceFormatError(f"{path}: column {name!r} has shape {tuple(value.shape)}, "
                                   f"expected ({num_events}, {batch})")


def read_trace_meta(path: str | Path) -> dict[str, Any]:
    """The JSON description of a trace file (header only; validated)."""
    description, _ = _read_header(Path(path))
    description.pop("tensors", None)
    return description
