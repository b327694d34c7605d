"""Moves and schedules: DDIM and flow-matching Euler as one affine abstraction.

Every deterministic first-order move of a sampler is affine in the latent
(docs/design.md, "Moves"):

    x_to = A x + B o

with ``o`` the network output in the family's parameterisation: eps for the
DDIM family (adapters convert v- and x0-predicting UNets to eps), the
velocity v = eps - x0 for flow matching (``x_sigma = (1 - sigma) x0 + sigma
eps``, as diffusers' ``FlowMatchEulerDiscreteScheduler``).

* DDIM:  ``A = sqrt(a_to / a_from)``, ``B = sqrt(1 - a_to) - A sqrt(1 - a_from)``
  on ``ab = alphas_cumprod``, i.e.
  ``ddim(x, e, a_from, a_to) = sqrt(a_to) (x - sqrt(1 - a_from) e) / sqrt(a_from) + sqrt(1 - a_to) e``.
* Euler: ``A = 1``, ``B = sigma_to - sigma_from``.

The exact zag is the inverse move, which is again a move of the same family
(from level i+1 back to level i), so a zig then an exact zag moves x_i by
``c_i (o_zig(x_i) - o_zag(y))`` with ``c_i = B / A`` of the zig. Everything
here is arithmetic on the scheduler's own lists (timesteps, alphas, sigmas);
diffusers' ``step`` methods are never called inside the loop.

Zag operators:

* DDIM ``"official"``: the released code's ``DDIMInverseScheduler.step(eps,
  t_{i+1}, y)``, evaluated at t_i and one schedule level off (a_from =
  ab[t_{i+1} - k]); on v-/x0-prediction models it also converts the network
  output at that a_from, exactly as diffusers does.
* DDIM ``"ddim"``: ``ddim(y, eps_g2(y, s), ab[t_{i+1}], ab[t_i])``.
* Flow ``"euler"``: ``y - (sigma_{i+1} - sigma_i) v_g2(y, s)``.

with s = t_{i+1} ("next") or t_i ("current") for the exact operators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from zsampling.config import NAMED_TIMESTEPS, ZigzagConfig

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
FAMILIES: tuple[str, ...] = ("ddim", "flow")


@runtime_checkable
class Move(Protocol):
    """One deterministic affine move ``x_to = A x + B o`` (see the module docstring).

    ``t_eval`` is the timestep the network is evaluated at, in the
    scheduler's own convention (a training timestep for DDIM, ``1000 sigma``
    for flow matching); ``level_from`` / ``level_to`` the noise levels the
    move goes between (alpha_bar for DDIM, sigma for flow matching).
    """

    t_eval: float

    @property
    def level_from(self) -> float: ...

    @property
    def level_to(self) -> float: ...

    @property
    def affine(self) -> tuple[float, float]:
        """(A, B) of ``x_to = A x + B o``."""
        ...

    def apply(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor: ...

    def predicted_x0(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The clean estimate the move implies at its starting level."""
        ...

    def reflection_coefficient(self) -> float:
        """c = B / A: a zig with this move then its exact inverse moves x by c (o_zig - o_zag)."""
        ...


@dataclass(frozen=True)
class OutputReparam:
    """Re-express eps converted at ``a_eval`` as the eps diffusers gets by
    converting the raw network output at ``a_convert`` instead.

    Adapters convert v / x0 predictions to eps at the alpha of the evaluation
    timestep. The released code's ``DDIMInverseScheduler.step`` converts at
    its own ``alpha_prod_t`` (ab[t_{i+1} - k]); the official zag applies this
    to reproduce it exactly on v- and x0-prediction models.
    """

    a_eval: float
    a_convert: float
    prediction_type: str

    def __call__(self, eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raw = from_epsilon(eps, x, self.a_eval, self.prediction_type)
        return to_epsilon(raw, x, self.a_convert, self.prediction_type)


@dataclass(frozen=True)
class DDIMMove:
    """One deterministic DDIM move from alpha_bar ``a_from`` to ``a_to``, driven by eps.

    ``t_eval`` is the training timestep at which the network is evaluated;
    ``reparam`` (official zag on v/x0 models only) re-expresses its eps
    before the move.
    """

    t_eval: int
    a_from: float
    a_to: float
    reparam: OutputReparam | None = None

    @property
    def level_from(self) -> float:
        return self.a_from

    @property
    def level_to(self) -> float:
        return self.a_to

    @property
    def affine(self) -> tuple[float, float]:
        scale = math.sqrt(self.a_to / self.a_from)
        return scale, math.sqrt(1.0 - self.a_to) - scale * math.sqrt(1.0 - self.a_from)

    def apply(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        eps = output if self.reparam is None else self.reparam(output, x)
        return ddim(x, eps, self.a_from, self.a_to)

    def predicted_x0(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``(x - sqrt(1 - a_from) eps) / sqrt(a_from)``."""
        eps = output if self.reparam is None else self.reparam(output, x)
        return torch.add(x, eps, alpha=-math.sqrt(1.0 - self.a_from)).div_(math.sqrt(self.a_from))

    def reflection_coefficient(self) -> float:
        return reflection_coefficient(self.a_from, self.a_to)


@dataclass(frozen=True)
class EulerMove:
    """One flow-matching Euler move ``x + (sigma_to - sigma_from) v``.

    Computed like ``FlowMatchEulerDiscreteScheduler.step``: in at least
    float32 (half-precision latents are upcast) with the step
    ``sigma_to - sigma_from`` taken in float32, cast back to the output's dtype.
    """

    t_eval: float
    sigma_from: float
    sigma_to: float

    @property
    def level_from(self) -> float:
        return self.sigma_from

    @property
    def level_to(self) -> float:
        return self.sigma_to

    @property
    def step_size(self) -> float:
        return float(np.float32(self.sigma_to) - np.float32(self.sigma_from))

    @property
    def affine(self) -> tuple[float, float]:
        return 1.0, self.step_size

    def apply(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        return (x.to(compute) + self.step_size * output).to(output.dtype)

    def predicted_x0(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``x - sigma_from v``."""
        return torch.add(x, output, alpha=-self.sigma_from)

    def reflection_coefficient(self) -> float:
        return self.step_size


def ddim(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move of ``x`` from alpha_bar a_from to a_to."""
    x0 = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1.0 - a_to) * eps


def reflection_coefficient(a_i: float, a_next: float) -> float:
    """c_i of docs/design.md: a DDIM zig then exact inversion maps x to
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


def from_epsilon(eps: torch.Tensor, x: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """Inverse of :func:`to_epsilon`: the raw output that converts to ``eps`` at alpha_bar."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return (eps - math.sqrt(1.0 - alpha_bar) * x) / math.sqrt(alpha_bar)
    if prediction_type == "sample":
        return (x - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class Schedule(Protocol):
    """The discrete schedule of one run: what the loop needs from a family."""

    family: ClassVar[str]
    parameterisation: ClassVar[str]
    zag_operators: ClassVar[tuple[str, ...]]
    timesteps: tuple[Any, ...]

    @property
    def num_steps(self) -> int: ...

    def zig(self, step: int) -> Move: ...

    def zag(self, step: int, config: ZigzagConfig) -> Move: ...

    def reflection_coefficient(self, step: int) -> float: ...

    def check(self, config: ZigzagConfig) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


class _ScheduleChecks:
    """Validation shared by every family."""

    family: ClassVar[str]
    zag_operators: ClassVar[tuple[str, ...]]
    timesteps: tuple[Any, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def check(self, config: ZigzagConfig) -> None:
        """Refuse a config this schedule cannot run (before any network call)."""
        if config.num_inference_steps != self.num_steps:
            raise ValueError(
                f"schedule has {self.num_steps} steps but config.num_inference_steps is {config.num_inference_steps}"
            )
        self.check_operator(config)

    @classmethod
    def check_operator(cls, config: ZigzagConfig) -> None:
        """Refuse a zag operator of the other family, naming this family's."""
        if config.zag not in cls.zag_operators:
            raise ValueError(
                f"zag={config.zag!r} is not an operator of the {cls.family} family; use "
                + " or ".join(repr(op) for op in cls.zag_operators)
                + f" (the pipeline's scheduler makes this a {cls.family} run)"
            )

    def _check_zag_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps - 1:
            raise ValueError(f"a zag needs a next timestep: step must be in 0..{self.num_steps - 2}, got {step}")


@dataclass(frozen=True)
class DDIMSchedule(_ScheduleChecks):
    """The discrete schedule of one run, read from a diffusers DDIMScheduler.

    Attributes:
        timesteps: t_0 > t_1 > ... > t_{T-1}, from the scheduler's own list.
        alphas_cumprod: ab over all training timesteps (float64, CPU).
        final_alpha_cumprod: alpha_bar after the last step.
        initial_alpha_cumprod: what ``DDIMInverseScheduler`` uses below
            timestep 0 (1.0 if set_alpha_to_one else ab[0]).
        stride: k = num_train_timesteps // T (used only by the official zag);
            None on a custom timestep list, where it is undefined.
        prediction_type: the network's parameterisation (converted to eps by
            the denoiser adapters).
    """

    family: ClassVar[str] = "ddim"
    parameterisation: ClassVar[str] = "epsilon"
    zag_operators: ClassVar[tuple[str, ...]] = ("official", "ddim")

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    initial_alpha_cumprod: float
    stride: int | None
    prediction_type: str

    @classmethod
    def from_scheduler(cls, scheduler: object, num_inference_steps: int,
                       timesteps: tuple[int, ...] | None = None) -> DDIMSchedule:
        """Read the schedule from ``scheduler`` (a ``DDIMScheduler``) for T steps.

        The scheduler is not modified: its config is copied and
        ``set_timesteps`` runs on the copy. Multistep and stochastic schedulers
        keep state that extra zig/zag calls would corrupt, so they are refused.
        ``timesteps`` replaces the scheduler's spacing with a custom list
        (``DDIMScheduler.set_timesteps`` takes none): the alphas and the final
        alpha still come from the scheduler.

        Each step goes from t_i to the next listed t_{i+1}. ``DDIMScheduler.step``
        uses t - num_train_timesteps // T instead, which leaves a "trailing" or
        "linspace" list when T does not divide the training steps (a known
        diffusers bug, issue #12633); docs/design.md, "Schedules".
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
        if timesteps is not None and max(timesteps) >= config.num_train_timesteps:
            raise ValueError(f"timesteps must be < num_train_timesteps={config.num_train_timesteps}, "
                             f"got {max(timesteps)}")
        if timesteps is None:
            copy.set_timesteps(num_inference_steps)
        alphas_cumprod = copy.alphas_cumprod.to(torch.float64)
        return cls(
            timesteps=tuple(int(t) for t in copy.timesteps) if timesteps is None else tuple(timesteps),
            alphas_cumprod=alphas_cumprod,
            final_alpha_cumprod=float(copy.final_alpha_cumprod),
            initial_alpha_cumprod=1.0 if config.set_alpha_to_one else float(alphas_cumprod[0]),
            stride=config.num_train_timesteps // num_inference_steps if timesteps is None else None,
            prediction_type=config.prediction_type,
        )

    def check(self, config: ZigzagConfig) -> None:
        """Also refuse the official zag on a custom timestep list (its stride is undefined)."""
        super().check(config)
        if self.stride is None and config.zag == "official" and config.window:
            raise ValueError('zag="official" reproduces the released code\'s stride k = 1000 // T, which a custom '
                             'timestep list does not have; use zag="ddim" (the exact inversion)')

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
        self._check_zag_step(step)
        t_i, t_next = self.timesteps[step], self.timesteps[step + 1]
        if config.zag == "official":
            source = min(t_next - self.stride, len(self.alphas_cumprod) - 1)
            a_from = self.alpha(source) if source >= 0 else self.initial_alpha_cumprod
            reparam = None
            if self.prediction_type != "epsilon":
                reparam = OutputReparam(self.alpha(t_i), a_from, self.prediction_type)
            return DDIMMove(t_i, a_from, self.alpha(t_next), reparam)
        t_eval = t_next if config.zag_eval_timestep == "next" else t_i
        return DDIMMove(t_eval, self.alpha(t_next), self.alpha(t_i))

    def reflection_coefficient(self, step: int) -> float:
        """c_i for step i (see :func:`reflection_coefficient`)."""
        return reflection_coefficient(self.alpha_at(step), self.alpha_after(step))

    def to_dict(self) -> dict[str, Any]:
        """The schedule's family, timesteps and constants (alphas of the used timesteps)."""
        return {
            "family": self.family,
            "parameterisation": self.parameterisation,
            "timesteps": list(self.timesteps),
            "alphas": [self.alpha_at(i) for i in range(self.num_steps)],
            "final_alpha_cumprod": self.final_alpha_cumprod,
            "initial_alpha_cumprod": self.initial_alpha_cumprod,
            "stride": self.stride,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": int(self.alphas_cumprod.shape[0]),
        }


@dataclass(frozen=True)
class FlowSchedule(_ScheduleChecks):
    """The schedule of a flow-matching run, read from a ``FlowMatchEulerDiscreteScheduler``.

    Attributes:
        timesteps: the scheduler's timesteps t_0 > ... > t_{T-1} (floats,
            ``num_train_timesteps * sigma`` for the built-in schedules): what
            the network sees (Flux's adapter divides by 1000 itself).
        sigmas: sigma_0 > ... > sigma_{T-1} > sigma_T = 0 (T + 1 values),
            after the scheduler's shift / dynamic shift.
    """

    family: ClassVar[str] = "flow"
    parameterisation: ClassVar[str] = "velocity"
    zag_operators: ClassVar[tuple[str, ...]] = ("euler",)

    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]

    @classmethod
    def from_scheduler(cls, scheduler: object, num_inference_steps: int, **set_timesteps_kwargs: Any) -> FlowSchedule:
        """Read sigmas and timesteps from a copy of ``scheduler`` after
        ``set_timesteps(num_inference_steps, **set_timesteps_kwargs)`` (the
        pipeline's own arguments: custom ``sigmas``, Flux's ``mu``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        cls.check_scheduler(scheduler)
        copy = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        copy.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
        return cls(
            timesteps=tuple(float(t) for t in copy.timesteps),
            sigmas=tuple(float(s) for s in copy.sigmas),
        )

    @staticmethod
    def check_scheduler(scheduler: object) -> None:
        """Refuse a scheduler the Euler moves cannot follow (no ``set_timesteps`` needed)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"Z-Sampling on flow-matching models needs FlowMatchEulerDiscreteScheduler, got "
                f"{type(scheduler).__name__}: other solvers keep state that zig/zag calls corrupt. Use "
                "`pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)`."
            )
        for flag in ("stochastic_sampling", "invert_sigmas"):
            if scheduler.config.get(flag, False):
                raise ValueError(f"scheduler config has {flag}=True; Z-Sampling's Euler moves need it False")

    def zig(self, step: int) -> EulerMove:
        """The ordinary Euler move of step i: sigma_i -> sigma_{i+1}."""
        return EulerMove(self.timesteps[step], self.sigmas[step], self.sigmas[step + 1])

    def zag(self, step: int, config: ZigzagConfig) -> EulerMove:
        """The exact reverse Euler move sigma_{i+1} -> sigma_i; needs i <= T-2."""
        self._check_zag_step(step)
        t_eval = self.timesteps[step + 1] if config.zag_eval_timestep == "next" else self.timesteps[step]
        return EulerMove(t_eval, self.sigmas[step + 1], self.sigmas[step])

    def reflection_coefficient(self, step: int) -> float:
        """c_i = sigma_{i+1} - sigma_i (< 0)."""
        return self.zig(step).reflection_coefficient()

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "parameterisation": self.parameterisation,
            "timesteps": list(self.timesteps),
            "sigmas": list(self.sigmas),
        }


def resolve_timesteps(schedule: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """A timestep schedule as its list: None stays None (the scheduler's own spacing), a
    :data:`NAMED_TIMESTEPS` name is looked up in diffusers' ``AysSchedules``, a list passes as a tuple
    (:class:`ZigzagConfig` validates it).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if not isinstance(schedule, str):
        return None if schedule is None else tuple(schedule)
    from diffusers.schedulers.scheduling_utils import AysSchedules

    if schedule not in NAMED_TIMESTEPS:
        raise ValueError(f"unknown timestep schedule {schedule!r}; named schedules: {', '.join(NAMED_TIMESTEPS)} "
                         "(or pass a list of integers)")
    return tuple(int(t) for t in AysSchedules[NAMED_TIMESTEPS[schedule]])


def build_schedule(
    scheduler: object, num_inference_steps: int, timesteps: tuple[int, ...] | None = None,
    **set_timesteps_kwargs: Any,
) -> DDIMSchedule | FlowSchedule:
    """The schedule of the scheduler's family: DDIM or flow-matching Euler.

    ``set_timesteps_kwargs`` (flow matching only) are the pipeline's own
    ``set_timesteps`` arguments, e.g. Flux's ``sigmas`` and ``mu``;
    ``timesteps`` a custom DDIM timestep list.

    Raises:
        ValueError: any other scheduler, naming the supported one of its family.
    """
    if "FlowMatch" in type(scheduler).__name__:
        if timesteps is not None:
            raise ValueError("custom timesteps are supported on the DDIM family only; a flow-matching schedule "
                             "comes from the pipeline's own sigmas")
        return FlowSchedule.from_scheduler(scheduler, num_inference_steps, **set_timesteps_kwargs)
    return DDIMSchedule.from_scheduler(scheduler, num_inference_steps, timesteps)


def check_run(scheduler: object, config: ZigzagConfig) -> None:
    """Refuse a scheduler or a zag operator the run cannot use, without
    building the schedule (a flow pipeline's ``set_timesteps`` arguments, such
    as Flux's ``mu``, are known only once the prompts are prepared)."""
    if "FlowMatch" in type(scheduler).__name__:
        FlowSchedule.check_scheduler(scheduler)
        FlowSchedule.check_operator(config)
        if config.timesteps is not None:
            raise ValueError("custom timesteps are supported on the DDIM family only; a flow-matching schedule "
                             "comes from the pipeline's own sigmas")
    else:
        DDIMSchedule.from_scheduler(scheduler, config.num_inference_steps, config.timesteps).check(config)
