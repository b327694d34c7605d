"""zsampling: run, instrument and analyse Zigzag Diffusion Sampling (Z-Sampling).

Z-Sampling (Bai et al., ICLR 2025, "Diffusion Models Can Self-Improve via
Self-Reflection") alternates a denoising step with guidance g1 (zig) and an
inversion with guidance g2 (zag) over a window of steps, so the guidance gap
g1 - g2 injects prompt information step by step.
"""

from zsampling.api import SampleOutput, prepare, resolve_config, sample, sample_target
from zsampling.config import ZigzagConfig
from zsampling.denoisers.base import Branches, Denoiser, EpsPair, SamplingTarget
from zsampling.legs import Leg, Legs
from zsampling.sampler import Event, NonFiniteLatentsError, Recorder, zigzag_sample
from zsampling.schedule import DDIMSchedule, FlowSchedule, build_schedule

__version__ = "0.1.0"

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
