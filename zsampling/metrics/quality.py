"""Quality guards that need no weights: clipping and colour saturation of decoded images.

Why (docs/design.md, "Evaluation honesty"): stronger guidance -- and Z-Sampling,
which acts like stronger guidance -- raises alignment and human-preference
scores while it pushes pixels to the ends of their range and over-saturates
colours. These scorers sit beside the alignment scorers so that "alignment
up" can be read against "quality down". They follow the scorer protocol of
:mod:`zsampling.metrics.base` (``name``, ``higher_is_better``,
``score(images, prompts) -> (B,)``); ``prompts`` is accepted and ignored.

Direction: real images are not free of clipped or saturated pixels (the demo
digits have 58 % of their pixels at the range limits), so "lower is better"
would reward images that look less like the data. The analysis therefore
judges a guard by the distance of a set's value from the reference data's
value, or from the standard baseline's where there are no data
(:func:`analysis.stats.is_guard`, :mod:`analysis.references`). The
``higher_is_better = False`` attribute below only satisfies the scorer
protocol (and orders per-cell summaries); it is not how the guards are scored.

* :class:`ClippingFraction` (``"clipping_fraction"``): the fraction of
  channel values within ``tol`` of 0 or 1. Decoders clamp to [0, 1], so an
  over-driven latent shows up as values sitting exactly at the bounds. Any
  channel count; compare methods with each other (and with the data: e.g.
  the demo digits have a black background, so their own fraction is not 0).
* :class:`Saturation` (``"saturation"``): the mean HSV saturation
  ``(max - min) / max`` over pixels of RGB images (0 where max = 0); 0 for
  single-channel images, which have no colour.

Images are float tensors (B, C, H, W) in [0, 1] (what ``decode(latents,
"pt")`` returns) or PIL images; values outside [0, 1] raise ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_RANGE_TOL = 1e-4


def as_image_batch(images: Any) -> torch.Tensor:
    """Images as a float64 CPU tensor (B, C, H, W) in [0, 1].

    Accepts a tensor (B, C, H, W), a numpy array (B, H, W, C) or a list of
    PIL images.

    Raises:
        ValueError: wrong shape or values outside [0, 1].
    """
    if isinstance(images, (list, tuple)):
        array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 for image in images])
        images = torch.from_numpy(array).permute(0, 3, 1, 2)
    elif isinstance(images, np.ndarray):
        images = torch.from_numpy(np.asarray(images, dtype=np.float64)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a tensor (B, C, H, W) in [0, 1] or PIL images, got {shape}")
    x = images.detach().to("cpu", torch.float64)
    if x.numel() and (float(x.min()) < -_RANGE_TOL or float(x.max()) > 1.0 + _RANGE_TOL):
        raise ValueError(f"images must be in [0, 1] (decode with output_type='pt'), got range "
                         f"[{float(x.min()):.3f}, {float(x.max()):.3f}]")
    return x.clamp(0.0, 1.0)


class ClippingFraction:
    """Fraction of channel values at the ends of the range (within ``tol`` of 0 or 1); closer to the data is better.

    Args:
        tol: distance from 0 or 1 that counts as clipped (default half a
            uint8 level, so 8-bit images count exactly 0 and 255).
        low, high: count values at the bottom / top of the range (both by
            default; ``low=False`` ignores black, e.g. a dark background).
    """

    name = "clipping_fraction"
    higher_is_better = False

    def __init__(self, tol: float = 0.5 / 255.0, *, low: bool = True, high: bool = True) -> None:
        if not 0.0 <= tol < 0.5:
            raise ValueError(f"tol must be in [0, 0.5), got {tol!r}")
        if not (low or high):
            raise ValueError("count at least one end of the range (low=True or high=True)")
        self.tol = float(tol)
        self.low = low
        self.high = high

    def score(self, images: Any, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """(B,) fractions in [0, 1], float32 on the CPU."""
        x = as_image_batch(images)
        clipped = torch.zeros_like(x, dtype=torch.bool)
        if self.low:
            clipped |= x <= self.tol
        if self.high:
            clipped |= x >= 1.0 - self.tol
        return clipped.reshape(x.shape[0], -1).double().mean(dim=1).float()


class Saturation:
    """Mean HSV saturation ``(max - min) / max`` of RGB pixels; closer to the data is better (0 for grayscale)."""

    name = "saturation"
    higher_is_better = False

    def score(self, images: Any, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """(B,) mean saturations in [0, 1], float32 on the CPU."""
        x = as_image_batch(images)
        if x.shape[1] == 1:
            return torch.zeros(x.shape[0], dtype=torch.float32)
        if x.shape[1] < 3:
            raise ValueError(f"saturation needs RGB (3 channels) or grayscale (1) images, got {x.shape[1]} channels")
        rgb = x[:, :3]
        top, bottom = rgb.amax(dim=1), rgb.amin(dim=1)
        sat = torch.where(top > 0, (top - bottom) / torch.where(top > 0, top, 1.0), 0.0)
        return sat.reshape(x.shape[0], -1).mean(dim=1).float()


__all__ = ["ClippingFraction", "Saturation", "as_image_batch"]
