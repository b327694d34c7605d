"""The released Z-Sampling code's DDIM zigzag, written out with diffusers' schedulers.

The parity tests (test_diffusers_parity, test_hunyuan) compare the "official" operator with this loop; each
builds ``guided(x, t, g)`` from its pipeline's own network call. This module holds no tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler


def released_zigzag(scheduler_config: Mapping[str, Any], guided: Callable[[torch.Tensor, Any, float], torch.Tensor],
                    latents: torch.Tensor, steps: int, g1: float, g2: float, window: int, rounds: int) -> torch.Tensor:
    """``window`` zigzag steps of ``rounds`` reflections, then a plain step: the zig and every step are
    ``DDIMScheduler.step`` with guidance g1, the zag ``DDIMInverseScheduler.step(eps, t_{i+1}, y)`` with g2."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    inverse.set_timesteps(steps)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if i < window:
            for _ in range(rounds):
                y = scheduler.step(guided(latents, t, g1), t, latents).prev_sample
                latents = inverse.step(guided(y, t, g2), timesteps[i + 1], y).prev_sample
        latents = scheduler.step(guided(latents, t, g1), t, latents).prev_sample
    return latents
