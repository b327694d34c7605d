"""ZigzagConfig: the validated settings of one Z-Sampling run.

Notation follows the paper and docs/design.md: T steps, guidance g1 for the zig
(and every ordinary step), inversion guidance g2 for the zag, zigzag window
lambda (the steps that reflect), ``rounds`` reflections per window step
(T_max in the paper's code). Guidance uses diffusers' convention
``eps_u + g (eps_c - eps_u)`` for every g; the paper's w is g - 1.

Every value is checked on construction, so a bad setting fails before any
model is called.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from zsampling.legs import LEG_FIELDS, LEG_NAMES, Leg, Legs

ZagOperator = Literal["official", "ddim", "euler"]
ZagEvalTimestep = Literal["next", "current"]

ZAG_OPERATORS: tuple[str, ...] = ("official", "ddim", "euler")
ZAG_EVAL_TIMESTEPS: tuple[str, ...] = ("next", "current")


_KNOB = {"knob": True}
"""Field metadata of the settings a sweep grid can vary (see :data:`KNOBS`)."""


@dataclass(frozen=True)
class ZigzagConfig:
    """Settings of a Z-Sampling run.

    Args:
        num_inference_steps: T, the number of DDIM steps (>= 1).
        guidance_scale: g1, CFG scale of the zig and of every ordinary step.
        inversion_guidance_scale: g2, CFG scale of the zag (0 = null-text
            inversion, the paper's default).
        zigzag_steps: the window lambda. An int reflects at steps
            ``0 .. lambda-1`` (0 <= lambda <= T-1; None means T-1, the full
            window); an iterable of step indices reflects exactly there
            (each in 0 .. T-2: the last step has no t_{i+1} to zag from).
        rounds: reflections per window step (>= 1).
        zag: "official" reproduces the released code's operator (evaluated at
            t_i, moved one schedule level off); "ddim" is the paper's exact
            DDIM inversion from t_{i+1} back to t_i.
            Flow-matching models use "euler", the exact reverse Euler move
            (the analogue of "ddim"); the schedule refuses an operator of the
            other family.
        zag_eval_timestep: for ``zag="ddim"`` / ``"euler"``, where the zag's
            network is evaluated: "next" = t_{i+1} (textbook inversion) or
            "current" = t_i (as the released code evaluates).
        legs: per-leg overrides (zig / zag / step guidance and conditioning,
            see :mod:`zsampling.legs`); the default is plain Z-Sampling.
        timesteps: a custom decreasing list of training timesteps t_0 > ... >
            t_{T-1} (e.g. an Align-Your-Steps schedule) instead of the
            scheduler's spacing; ``num_inference_steps`` must equal its
            length. DDIM family only,
            with the exact "ddim" zag (the "official" operator's stride is
            undefined on a custom list).
        measure_gap: record the gap term c_i (o_zig - o_zag)(x_i, t_i) when
            the legs differ in more than the CFG scale (then it is not free:
            one extra network row per sample and reflection, counted, and
            only paid when a recorder is attached).
    """

    num_inference_steps: int = field(default=50, metadata=_KNOB)
    guidance_scale: float = field(default=5.5, metadata=_KNOB)
    inversion_guidance_scale: float = field(default=0.0, metadata=_KNOB)
    zigzag_steps: int | Iterable[int] | None = field(default=None, metadata=_KNOB)
    rounds: int = field(default=1, metadata=_KNOB)
    zag: ZagOperator = field(default="official", metadata=_KNOB)
    zag_eval_timestep: ZagEvalTimestep = field(default="next", metadata=_KNOB)
    legs: Legs = field(default_factory=Legs)
    measure_gap: bool = False
    timesteps: tuple[int, ...] | None = None
    window: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", check_timesteps(self.timesteps))
            if self.num_inference_steps != len(self.timesteps):
                raise ValueError(f"num_inference_steps={self.num_inference_steps} must equal the number of custom "
                                 f"timesteps ({len(self.timesteps)})")
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
        _check_finite("guidance_scale", self.guidance_scale)
        _check_finite("inversion_guidance_scale", self.inversion_guidance_scale)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if self.zag not in ZAG_OPERATORS:
            raise ValueError(f"zag must be one of {ZAG_OPERATORS}, got {self.zag!r}")
        if self.zag_eval_timestep not in ZAG_EVAL_TIMESTEPS:
            raise ValueError(
                f"zag_eval_timestep must be one of {ZAG_EVAL_TIMESTEPS}, got {self.zag_eval_timestep!r}"
            )
        if not isinstance(self.legs, Legs):
            raise ValueError(f"legs must be a zsampling.legs.Legs, got {self.legs!r}")
        if not isinstance(self.measure_gap, bool):
            raise ValueError(f"measure_gap must be True or False, got {self.measure_gap!r}")
        window = _resolve_window(self.zigzag_steps, steps)
        object.__setattr__(self, "window", window)
        if not isinstance(self.zigzag_steps, (numbers.Integral, type(None))):
            object.__setattr__(self, "zigzag_steps", tuple(sorted(window)))

    @property
    def reflections(self) -> int:
        """Number of zig-zag reflections per sample: |window| * rounds."""
        return len(self.window) * self.rounds

    def leg_guidance(self, leg: str) -> float:
        """The guidance of leg "zig", "zag" or "step": its override, else g1 (g2 for the zag)."""
        override = getattr(self.legs, leg).guidance
        if override is not None:
            return override
        return self.inversion_guidance_scale if leg == "zag" else self.guidance_scale

    @property
    def is_standard(self) -> bool:
        """True when no step reflects: plain DDIM with CFG."""
        return not self.window


NAMED_TIMESTEPS: dict[str, str] = {"ays-sd15": "StableDiffusionTimesteps", "ays-sdxl": "StableDiffusionXLTimesteps"}
"""Timestep lists zsampling accepts by name (:func:`zsampling.schedule.resolve_timesteps`): the
Align-Your-Steps schedules (Sabour et al. 2024) for SD 1.5 and SDXL, 10 steps each, read from diffusers'
``AysSchedules`` (the value is the entry's name there)."""

KNOBS: tuple[str, ...] = tuple(f.name for f in fields(ZigzagConfig) if f.metadata.get("knob"))
"""The settings a sweep grid varies, in the order of the results tables' settings columns: the
:class:`ZigzagConfig` fields marked as knobs (the one source of truth for sweeps and analysis)."""

KNOB_DEFAULTS: dict[str, object] = {
    f.name: ("full" if f.name == "zigzag_steps" else f.default) for f in fields(ZigzagConfig) if f.name in KNOBS
}
"""Values of knobs a grid leaves out: :class:`ZigzagConfig`'s defaults (lambda None is "full", T-1)."""

LEG_KNOBS: tuple[str, ...] = tuple(f"{leg}.{name}" for leg in LEG_NAMES for name in LEG_FIELDS)
"""Per-leg knobs of a sweep grid ("zig.lora_scale", "zag.guidance_scale", ...): the numeric
:class:`~zsampling.legs.Leg` settings; a grid that leaves them out runs plain Z-Sampling legs."""

SCHEDULE_KNOB = "timesteps"
"""The grid knob of the timestep schedule: null (the scheduler's own spacing at T steps), a name of
:data:`NAMED_TIMESTEPS` or a custom list (which fixes T to its length); a grid that leaves it out runs
the scheduler's spacing, and its cells keep the hashes they had before the knob existed."""

OPTIONAL_KNOBS: tuple[str, ...] = (*LEG_KNOBS, SCHEDULE_KNOB)
"""Knobs that appear in cell hashes and results tables only when a grid sets them."""


def timesteps_label(schedule: str | Sequence[int] | None) -> str:
    """The ``timesteps`` column of a schedule: "scheduler" (its own spacing), a name, or the list
    written t_0,t_1,... (a table cell that pandas can group by)."""
    if schedule is None:
        return "scheduler"
    return schedule if isinstance(schedule, str) else ",".join(str(int(t)) for t in schedule)


def legs_from_knobs(values: dict[str, float | None]) -> Legs:
    """The :class:`Legs` of a grid point's leg knobs (absent or None: no override)."""
    per_leg: dict[str, dict[str, float]] = {leg: {} for leg in LEG_NAMES}
    for knob, value in values.items():
        leg, name = knob.split(".", 1)
        if value is not None:
            per_leg[leg][LEG_FIELDS[name]] = value
    return Legs(**{leg: Leg(**settings) for leg, settings in per_leg.items()})


def leg_knobs(legs: Legs) -> dict[str, float]:
    """The leg knobs a :class:`Legs` sets (inverse of :func:`legs_from_knobs`)."""
    values = {}
    for leg in LEG_NAMES:
        for knob_name, field_name in LEG_FIELDS.items():
            value = getattr(getattr(legs, leg), field_name)
            if value is not None:
                values[f"{leg}.{knob_name}"] = value
    return values


def check_timesteps(values: Iterable[int]) -> tuple[int, ...]:
    """A custom timestep list: integers, strictly decreasing, >= 0."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"timesteps must be a list of integers, got {values!r}")
    steps = list(values)
    if not steps or any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in steps):
        raise ValueError(f"timesteps must be a non-empty list of integers >= 0, got {steps!r}")
    if any(a <= b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly decreasing (t_0 > t_1 > ...), got {steps!r}")
    return tuple(int(t) for t in steps)


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _resolve_window(spec: int | Iterable[int] | None, steps: int) -> frozenset[int]:
    """The set of step indices that reflect, validated against T."""
    if spec is None:
        return frozenset(range(steps - 1))
    if isinstance(spec, bool):
        raise ValueError(f"zigzag_steps must be an int or a set of step indices, got {spec!r}")
    if isinstance(spec, numbers.Integral):
        spec = int(spec)
        if not 0 <= spec <= steps - 1:
            raise ValueError(
                f"zigzag_steps (lambda) must be in 0..{steps - 1} (T-1) for T={steps}, got {spec}"
            )
        return frozenset(range(spec))
    if isinstance(spec, (str, bytes)):
        raise ValueError(f"zigzag_steps must be an int or a set of step indices, got {spec!r}")
    indices = list(spec)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index <= steps - 2:
            raise ValueError(
                f"zigzag_steps indices must be integers in 0..{steps - 2} (T-2) for T={steps}, got {index!r}"
            )
    return frozenset(int(index) for index in indices)


def config_to_dict(config: ZigzagConfig) -> dict[str, Any]:
    """A :class:`ZigzagConfig` as JSON-ready values (plus the resolved window).

    ``legs``, ``measure_gap`` and ``timesteps`` appear only when they differ
    from their defaults, so plain Z-Sampling configs (and the cell hashes sweeps derive
    from them) read as they did before legs existed.
    """
    values: dict[str, Any] = {
        field.name: getattr(config, field.name) for field in fields(config) if field.init
    }
    if isinstance(values["zigzag_steps"], tuple):
        values["zigzag_steps"] = list(values["zigzag_steps"])
    if config.legs.is_default:
        del values["legs"]
    else:
        values["legs"] = asdict(config.legs)
    if not config.measure_gap:
        del values["measure_gap"]
    if config.timesteps is None:
        del values["timesteps"]
    else:
        values["timesteps"] = list(config.timesteps)
    values["window"] = sorted(config.window)
    values["reflections"] = config.reflections
    return values
