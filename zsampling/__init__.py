"""zsampling: run, instrument and analyse Zigzag Diffusion Sampling (Z-Sampling).

Z-Sampling (Bai et al., ICLR 2025, "Diffusion Models Can Self-Improve via
Self-Reflection") alternates a denoising step with guidance g1 (zig) and an
inversion with guidance g2 (zag) over a window of steps, so the guidance gap
g1 - g2 injects prompt information step by step.

The public names load lazily (PEP 562), so ``import zsampling.config`` stays
free of torch and diffusers and ``analysis`` can read configs without a model
stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "SampleOutput": "zsampling.api",
    "prepare": "zsampling.api",
    "resolve_config": "zsampling.api",
    "sample": "zsampling.api",
    "sample_target": "zsampling.api",
    "ZigzagConfig": "zsampling.config",
    "Branches": "zsampling.denoisers.base",
    "Denoiser": "zsampling.denoisers.base",
    "EpsPair": "zsampling.denoisers.base",
    "SamplingTarget": "zsampling.denoisers.base",
    "Leg": "zsampling.legs",
    "Legs": "zsampling.legs",
    "Event": "zsampling.sampler",
    "NonFiniteLatentsError": "zsampling.sampler",
    "Recorder": "zsampling.sampler",
    "zigzag_sample": "zsampling.sampler",
    "DDIMSchedule": "zsampling.schedule",
    "FlowSchedule": "zsampling.schedule",
    "build_schedule": "zsampling.schedule",
}

__all__ = [
    "Branches",
    "DDIMSchedule",
    "Denoiser",
    "EpsPair",
    "Event",
    "FlowSchedule",
    "Leg",
    "Legs",
    "NonFiniteLatentsError",
    "Recorder",
    "SampleOutput",
    "SamplingTarget",
    "ZigzagConfig",
    "build_schedule",
    "prepare",
    "resolve_config",
    "sample",
    "sample_target",
    "zigzag_sample",
]

if TYPE_CHECKING:
    from zsampling.api import SampleOutput, prepare, resolve_config, sample, sample_target
    from zsampling.config import ZigzagConfig
    from zsampling.denoisers.base import Branches, Denoiser, EpsPair, SamplingTarget
    from zsampling.legs import Leg, Legs
    from zsampling.sampler import Event, NonFiniteLatentsError, Recorder, zigzag_sample
    from zsampling.schedule import DDIMSchedule, FlowSchedule, build_schedule


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zsampling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
