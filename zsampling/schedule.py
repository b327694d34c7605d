"""DDIM step and the two zag operators as plain functions of alpha_bar.

Everything here is arithmetic on ``ab = alphas_cumprod`` and explicit
timesteps read from the scheduler's own list (DESIGN.md, "The algorithm"):

    ddim(x, e, a_from, a_to) = sqrt(a_to) (x - sqrt(1 - a_from) e) / sqrt(a_from)
                               + sqrt(1 - a_to) e

* zig i:              ddim(x_i, eps_g1(x_i, t_i), ab[t_i], ab[t_{i+1}])
  (the last step moves to the scheduler's final alpha)
* zag "official" i:   ddim(y, eps_g2(y, t_i), a_from, ab[t_{i+1}]) with
  a_from = ab[t_{i+1} - k], the coefficients of the released code's
  ``DDIMInverseScheduler.step(eps, t_{i+1}, y)`` (one schedule level off)
* zag "ddim" i:       ddim(y, eps_g2(y, s), ab[t_{i+1}], ab[t_i]), s = t_{i+1}
  ("next", textbook inversion) or t_i ("current")

``DDIMInverseScheduler.step`` itself is never called: its meaning has changed
across diffusers versions, and only the arithmetic is the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zsampling.config import ZigzagConfig

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DDIMMove:
    """One deterministic DDIM move from alpha_bar ``a_from`` to ``a_to``.

    ``t_eval`` is the training timestep at which the network is evaluated to
    get the eps that drives the move.
    """

    t_eval: int
    a_from: float
    a_to: float

    def apply(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return ddim(x, eps, self.a_from, self.a_to)

    def predicted_x0(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean estimate ``(x - sqrt(1 - a_from) eps) / sqrt(a_from)``."""
        return (x - math.sqrt(1.0 - self.a_from) * eps) / math.sqrt(self.a_from)


def ddim(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move of ``x`` from alpha_bar a_from to a_to."""
    x0 = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1.0 - a_to) * eps


def reflection_coefficient(a_i: float, a_next: float) -> float:
    """c_i of DESIGN.md: a DDIM zig then exact inversion maps x to
    ``x + c_i (eps_zig - eps_zag)``, with
    ``c_i = sqrt(a_i / a_next) sqrt(1 - a_next) - sqrt(1 - a_i)`` (< 0)."""
    return math.sqrt(a_i / a_next) * math.sqrt(1.0 - a_next) - math.sqrt(1.0 - a_i)


def to_epsilon(output: torch.Tensor, x: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """Convert a network output to eps at alpha_bar (x = sqrt(a) x0 + sqrt(1-a) eps)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return math.sqrt(alpha_bar) * output + math.sqrt(1.0 - alpha_bar) * x
    if prediction_type == "sample":
        return (x - math.sqrt(alpha_bar) * output) / math.sqrt(1.0 - alpha_bar)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


@dataclass(frozen=True)
class DDIMSchedule:
    """The discrete schedule of one run, read from a diffusers DDIMScheduler.

    Attributes:
        timesteps: t_0 > t_1 > ... > t_{T-1}, from the scheduler's own list.
        alphas_cumprod: ab over all training timesteps (float64, CPU).
        final_alpha_cumprod: alpha_bar after the last step.
        initial_alpha_cumprod: what ``DDIMInverseScheduler`` uses below
            timestep 0 (1.0 if set_alpha_to_one else ab[0]).
        stride: k = num_train_timesteps // T (used only by the official zag).
        prediction_type: the network's parameterisation (converted to eps by
            the denoiser adapters).
    """

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    initial_alpha_cumprod: float
    stride: int
    prediction_type: str

    @classmethod
    def from_scheduler(cls, scheduler: object, num_inference_steps: int) -> DDIMSchedule:
        """Read the schedule from ``scheduler`` (a ``DDIMScheduler``) for T steps.

        The scheduler is not modified: its config is copied and
        ``set_timesteps`` runs on the copy. Multistep and stochastic schedulers
        keep state that extra zig/zag calls would corrupt, so they are refused.
        """
        from diffusers import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            raise ValueError(
                f"Z-Sampling needs a DDIMScheduler, got {type(scheduler).__name__}: multistep and "
                "stochastic schedulers keep state that zig/zag calls corrupt. Use "
                "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
            )
        config = scheduler.config
        if config.clip_sample or config.thresholding:
            raise ValueError(
                "scheduler config has clip_sample or thresholding enabled; Z-Sampling's DDIM "
                "inversion needs an unclipped x0 (set clip_sample=False, thresholding=False)"
            )
        if config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {config.prediction_type!r}"
            )
        if num_inference_steps > config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be <= num_train_timesteps={config.num_train_timesteps}, "
                f"got {num_inference_steps}"
            )
        copy = DDIMScheduler.from_config(config)
        copy.set_timesteps(num_inference_steps)
        alphas_cumprod = copy.alphas_cumprod.to(torch.float64)
        return cls(
            timesteps=tuple(int(t) for t in copy.timesteps),
            alphas_cumprod=alphas_cumprod,
            final_alpha_cumprod=float(copy.final_alpha_cumprod),
            initial_alpha_cumprod=1.0 if config.set_alpha_to_one else float(alphas_cumprod[0]),
            stride=config.num_train_timesteps // num_inference_steps,
            prediction_type=config.prediction_type,
        )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def alpha(self, timestep: int) -> float:
        """alpha_bar at a training timestep."""
        return float(self.alphas_cumprod[timestep])

    def alpha_at(self, step: int) -> float:
        """ab[t_i] for step index i."""
        return self.alpha(self.timesteps[step])

    def alpha_after(self, step: int) -> float:
        """ab[t_{i+1}], or the final alpha after the last step."""
        if step + 1 < self.num_steps:
            return self.alpha(self.timesteps[step + 1])
        return self.final_alpha_cumprod

    def zig(self, step: int) -> DDIMMove:
        """The ordinary denoising move of step i: t_i -> t_{i+1}."""
        return DDIMMove(self.timesteps[step], self.alpha_at(step), self.alpha_after(step))

    def zag(self, step: int, config: ZigzagConfig) -> DDIMMove:
        """The inversion move of step i for ``config.zag``; needs i <= T-2."""
        if not 0 <= step < self.num_steps - 1:
            raise ValueError(f"a zag needs a next timestep: step must be in 0..{self.num_steps - 2}, got {step}")
        t_i, t_next = self.timesteps[step], self.timesteps[step + 1]
        if config.zag == "official":
            source = min(t_next - self.stride, len(self.alphas_cumprod) - 1)
            a_from = self.alpha(source) if source >= 0 else self.initial_alpha_cumprod
            return DDIMMove(t_i, a_from, self.alpha(t_next))
        t_eval = t_next if config.zag_eval_timestep == "next" else t_i
        return DDIMMove(t_eval, self.alpha(t_next), self.alpha(t_i))

    def reflection_coefficient(self, step: int) -> float:
        """c_i for step i (see :func:`reflection_coefficient`)."""
        return reflection_coefficient(self.alpha_at(step), self.alpha_after(step))
