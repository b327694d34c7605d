"""Devices and dtypes by name: the one place that reads "auto", "cuda:1", "fp16", ...

Presets, sweeps, the scorers and ``zsampling reproduce`` accept the same
names, so a value that works in one works in all.
"""

from __future__ import annotations

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
"""Every dtype name zsampling accepts (case-insensitive) and its torch dtype."""


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name of :data:`DTYPE_NAMES` (or a floating torch dtype itself).

    Raises:
        ValueError: naming the allowed names.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"dtype must be a floating dtype ({', '.join(DTYPE_NAMES)}), got {dtype}")
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (or a torch.dtype), got {dtype!r}")
    return DTYPE_NAMES[name]


def resolve_device(device: str | torch.device | None = "auto", default: torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: ``default`` (e.g. the accelerate process's device), else CUDA when
    available, else the CPU; any other value must name a torch device ("cpu", "cuda", "cuda:1", ...).

    Raises:
        ValueError: not a device name.
        RuntimeError: a CUDA device on a machine without CUDA.
    """
    if device is None or str(device) == "auto":
        if default is not None:
            return torch.device(default)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device, "
                         f"got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was requested but CUDA is not available "
                           "(pass device='cpu' or 'auto')")
    return resolved
