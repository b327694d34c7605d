"""Atomic file writes: a file holds its old content or its new content, never a half.

Every path that writes results, traces, cell records, indexes or scores goes
through :func:`atomic_write`: the new content is written to a temporary file
in the same directory, fsynced, and moved over the target with ``os.replace``
(atomic on POSIX and Windows). If the writer fails (an exception, a full
disk) the temporary file is removed and the target keeps its previous
content; a process killed midway leaves at most a ``.NAME.PID.tmp`` file,
which the sweep runner and trace directories clean up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill ``path`` atomically: ``write(tmp)`` writes the content to ``tmp``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_csv(path: str | Path, frame: Any, **to_csv: Any) -> Path:
    """Write a pandas DataFrame as CSV to ``path`` atomically (``to_csv`` keywords, e.g. ``index=False``)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, **to_csv))


def atomic_save_figure(path: str | Path, figure: Any, **savefig: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically, in the format its suffix names (".png", ".pdf")."""
    path = Path(path)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip("."), **savefig))
