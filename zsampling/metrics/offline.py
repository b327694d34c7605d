"""What the metrics of the shipped offline worlds (digits, pairs) share: stored arrays and the image check.

Both worlds fit their metric models offline (``scripts/train_*_model.py``) and
store them as plain arrays in a ``metrics.safetensors`` next to the model (no
pickle, no scikit-learn at run time), and both score decoded images
(B, 1, H, W) with values in [0, 1]; loading those arrays and validating those
images is the same code for both, so it lives here once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

RANGE_TOL = 1e-4
"""How far outside [0, 1] an image value may stray (float rounding) before it is rejected."""


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``metrics.safetensors`` file, cached per resolved path."""
    return _load(str(path.resolve()))


def unit_images(images: torch.Tensor, shape: tuple[int, int, int], hint: str) -> np.ndarray:
    """Validate images (B, *shape) in [0, 1] and return them as float64 (B, *shape), clipped to [0, 1].

    ``hint`` says how to get such images; the range error quotes it.

    Raises:
        ValueError: not a tensor, wrong shape, or values outside [0, 1] by more than ``RANGE_TOL``.
    """
    dims = ", ".join(map(str, shape))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, {dims}) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must have shape (B, {dims}), got {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float64).numpy()
    if x.size and (x.min() < -RANGE_TOL or x.max() > 1.0 + RANGE_TOL):
        raise ValueError(f"images must be in [0, 1] ({hint}), got range [{x.min():.3f}, {x.max():.3f}]")
    return np.clip(x, 0.0, 1.0)
