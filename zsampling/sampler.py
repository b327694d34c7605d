"""The Z-Sampling loop: zig, zag and ordinary moves over a denoiser.

For each step i in the window, ``rounds`` times:

1. zig: ``y = move_i(x_i, o_zig(x_i, t_i))`` (the ordinary move, zig leg)
2. zag: ``x_i = ZAG_i(y, o_zag(y, s))`` (the inverse move, zag leg)

then the ordinary step ``x_{i+1} = move_i(x_i, o_step(x_i, t_i))``. Steps
outside the window are ordinary, so an empty window is standard sampling.
The moves come from the schedule (DDIM or flow-matching Euler, see
:mod:`zsampling.schedule`); the legs from the config (:mod:`zsampling.legs`).
The loop knows neither model families nor gap kinds.

The loop asks the denoiser only for the CFG branches each leg needs (g = 0:
eps_u, g = 1: eps_c; one branch on guidance-distilled models), emits one
:class:`Event` per operation to an optional recorder, and makes no host sync
except a finiteness check every ``nan_check_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm

from zsampling.config import ZigzagConfig
from zsampling.denoisers.base import BOTH, COND, Branches, Denoiser, EpsPair
from zsampling.legs import DEFAULT_CONDITION, LEG_NAMES, Condition, Leg
from zsampling.schedule import Move, Schedule

Op = Literal["zig", "zag", "step"]
GuidanceMode = Literal["cfg", "embedded", "none"]
GUIDANCE_MODES: tuple[str, ...] = ("cfg", "embedded", "none")


@dataclass(frozen=True)
class Event:
    """One operation of the loop, as a recorder sees it.

    ``step`` is i, ``round`` the reflection round r (for the ordinary "step"
    it is ``rounds`` if the step reflected, else 0), ``move`` the move
    (evaluation timestep, noise levels, affine coefficients), ``guidance``
    the leg's guidance, ``eps`` the branches the operation computed at
    ``x_in`` (eps for DDIM, velocity for flow matching), ``output`` the
    combined output that drove the move, ``condition`` the leg's
    conditioning, and ``gap_output`` (zag events with ``measure_gap`` only)
    the zag leg's output at the zig's input (x_i, t_i).
    """

    op: Op
    step: int
    round: int
    move: Move
    guidance: float
    x_in: torch.Tensor
    x_out: torch.Tensor
    eps: EpsPair
    output: torch.Tensor | None = None
    condition: Condition = DEFAULT_CONDITION
    gap_output: torch.Tensor | None = None


class Recorder(Protocol):
    """Receives the loop's events; see ``zsampling.trace`` for implementations."""

    def record(self, event: Event) -> None: ...


class NonFiniteLatentsError(FloatingPointError):
    """Latents became NaN or inf; the message names the step and operation."""


@dataclass(frozen=True)
class LegCall:
    """How the loop runs one leg: the branches it asks for, how it combines
    them (``eps_u + cfg_scale (eps_c - eps_u)``; 1.0 = the cond branch
    alone), and the conditioning it passes."""

    guidance: float
    branches: Branches
    cfg_scale: float
    condition: Condition


@dataclass(frozen=True)
class LegPlan:
    """The resolved zig, zag and step calls of a run, and whether the gap
    term needs a probe call (legs that differ in more than the CFG scale)."""

    zig: LegCall
    zag: LegCall
    step: LegCall
    gap_is_free: bool

    @classmethod
    def resolve(cls, config: ZigzagConfig, denoiser: object, branches: str = "needed") -> LegPlan:
        """Resolve ``config``'s legs for ``denoiser``; raises before any network call
        when a leg asks for something the model cannot do."""
        if branches not in ("needed", "both"):
            raise ValueError(f"branches must be 'needed' or 'both', got {branches!r}")
        mode = guidance_mode(denoiser)
        if mode != "cfg" and branches == "both":
            raise ValueError(
                "branches='both' needs classifier-free guidance, but this model runs one branch (guidance-distilled "
                "or unguided): pass a negative_prompt to run true CFG"
            )
        calls = {}
        for name in LEG_NAMES:
            leg = getattr(config.legs, name)
            guidance = config.leg_guidance(name)
            _check_leg(name, leg, denoiser)
            if mode == "cfg":
                wanted = BOTH if branches == "both" else Branches.for_guidance(guidance)
                calls[name] = LegCall(guidance, wanted, guidance, _condition(leg, leg.guidance_embed))
            else:
                embed = (leg.guidance_embed if leg.guidance_embed is not None else guidance) \
                    if mode == "embedded" else None
                calls[name] = LegCall(guidance, COND, 1.0, _condition(leg, embed))
        same_condition = calls["zig"].condition == calls["zag"].condition
        if mode != "cfg" and config.window and same_condition:
            raise ValueError(
                "the zig and zag legs are identical on this one-branch model, so a reflection injects nothing: "
                + ("give the zag another guidance value, " if mode == "embedded" else "")
                + "use an embedding mix (legs=Legs.embedding_mix()) or a negative prompt for true CFG"
            )
        plan = cls(**calls, gap_is_free=mode == "cfg" and same_condition)
        return plan

    def probes(self, config: ZigzagConfig, recording: bool) -> bool:
        """Whether each reflection pays one extra call for o_zag(x_i, t_i)."""
        return recording and config.measure_gap and not self.gap_is_free


def _condition(leg: Leg, guidance_embed: float | None) -> Condition:
    return Condition(guidance_embed=guidance_embed, mix=leg.mix, lora_scale=leg.lora_scale, model=leg.model,
                     prompt=leg.prompt)


def _check_leg(name: str, leg: Leg, denoiser: object) -> None:
    """Refuse a leg setting the denoiser cannot run, naming the fix."""
    if leg.guidance_embed is not None and not getattr(denoiser, "has_guidance_embeds", False):
        raise ValueError(
            f"legs.{name}.guidance_embed={leg.guidance_embed} needs a model with a guidance embedding "
            "(e.g. FLUX.1-dev); this one has none"
        )
    if leg.mix is not None and not getattr(denoiser, "supports_mix", False):
        raise ValueError(
            f"legs.{name}.mix needs an adapter that encodes the empty prompt for the embedding mix "
            "(SD3, Flux); this model does not support it"
        )
    if leg.lora_scale is not None and not getattr(denoiser, "supports_lora", False):
        raise ValueError(
            f"legs.{name}.lora_scale={leg.lora_scale} needs a pipeline with a LoRA adapter loaded "
            "(pipe.load_lora_weights(...)); this one has none"
        )
    models = getattr(denoiser, "models", frozenset())
    if leg.model is not None and leg.model not in models:
        raise ValueError(
            f"legs.{name}.model={leg.model!r} names no pipeline: pass it as zsampling.sample(..., "
            f"models={{{leg.model!r}: pipe}}) (given: {sorted(models) or 'none'})"
        )
    if leg.prompt is not None and not getattr(denoiser, "supports_prompts", False):
        raise ValueError(f"legs.{name}.prompt needs the leg router of zsampling.sample; this denoiser has none")


def guidance_mode(denoiser: object) -> GuidanceMode:
    """How a denoiser applies guidance: "cfg" (two branches), "embedded"
    (one branch with a guidance embedding) or "none"."""
    mode = getattr(denoiser, "guidance_mode", "cfg")
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"denoiser.guidance_mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    return mode


def expected_network_rows(config: ZigzagConfig, batch_size: int, branches: str = "needed",
                          mode: GuidanceMode = "cfg", recording: bool = False) -> int:
    """Network rows the loop spends on a batch: T steps with the step leg's
    branches plus, per reflection, a zig and a zag with their legs' branches
    (and a gap probe with the zag's when ``measure_gap`` is paid). Recording
    adds no rows otherwise.

    With CFG legs and g2 in {0, 1} this is ``2T + 3 lambda rounds`` per
    sample; on a guidance-distilled model ``T + 2 lambda rounds``.
    """
    capabilities = _Capabilities(mode)
    plan = LegPlan.resolve(config, capabilities, branches)
    per_reflection = plan.zig.branches.count + plan.zag.branches.count
    if plan.probes(config, recording):
        per_reflection += plan.zag.branches.count
    return batch_size * (config.num_inference_steps * plan.step.branches.count + config.reflections * per_reflection)


@dataclass(frozen=True)
class _Capabilities:
    """A stand-in denoiser that can do everything, for counting rows without a model."""

    guidance_mode: GuidanceMode
    has_guidance_embeds: bool = True
    supports_mix: bool = True
    supports_lora: bool = True
    supports_prompts: bool = True

    @property
    def models(self) -> _Everything:
        return _Everything()


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def zigzag_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    config: ZigzagConfig,
    *,
    recorder: Recorder | None = None,
    branches: Literal["needed", "both"] = "needed",
    progress: bool = False,
    nan_check_every: int = 10,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Run Z-Sampling from initial latents ``x`` at t_0 and return x after T steps.

    With ``start``/``stop`` only steps ``start <= i < stop`` run: ``x`` is then
    the state x_start at t_start and the result is x_stop (x after T steps when
    ``stop`` is None). Chaining ``[0, k)`` and ``[k, T)`` gives exactly the
    full run; sweeps use it to share the common zigzag prefix of cells that
    differ only in lambda.

    Args:
        denoiser: returns the network output per CFG branch; counts network rows.
        x: initial latents (B, ...), already scaled by the scheduler's
            init_noise_sigma.
        schedule: the run's schedule (:class:`~zsampling.schedule.DDIMSchedule`
            or :class:`~zsampling.schedule.FlowSchedule`) for
            ``config.num_inference_steps``.
        config: the validated run settings.
        recorder: receives one :class:`Event` per zig, zag and step.
        branches: "needed" evaluates only the CFG branches each guidance
            scale uses; "both" always evaluates eps_u and eps_c (what the
            released code pays; also lets a recorder see the guidance
            direction when g1 is 0 or 1).
        progress: show a tqdm bar over steps.
        nan_check_every: check finiteness every this many steps (one host
            sync each) and at the end.
        start, stop: run only steps ``[start, stop)`` (0 <= start <= stop <= T;
            stop None means T).

    Raises:
        ValueError: a config the schedule or the model cannot run (before any
            network call).
        NonFiniteLatentsError: naming the first step and operation whose
            output is not finite.
    """
    schedule.check(config)
    plan = LegPlan.resolve(config, denoiser, branches)
    stop = schedule.num_steps if stop is None else stop
    if not 0 <= start <= stop <= schedule.num_steps:
        raise ValueError(f"need 0 <= start <= stop <= T={schedule.num_steps}, got start={start}, stop={stop}")
    probe_gap = plan.probes(config, recorder is not None)
    guard = _FiniteGuard(nan_check_every)

    def evaluate(call: LegCall, x_in: torch.Tensor, t: float) -> tuple[EpsPair, torch.Tensor]:
        """The loop's one network call site."""
        if call.condition.is_default:
            out = denoiser(x_in, t, call.branches)
        else:
            out = denoiser(x_in, t, call.branches, call.condition)
        return out, out.guided(call.cfg_scale)

    def apply(op: Op, step: int, round_: int, move: Move, call: LegCall, x_in: torch.Tensor,
              gap_output: torch.Tensor | None = None) -> torch.Tensor:
        out, output = evaluate(call, x_in, move.t_eval)
        x_out = move.apply(x_in, output)
        guard.watch(x_out, op, step, round_)
        if recorder is not None:
            recorder.record(Event(op, step, round_, move, call.guidance, x_in, x_out, out, output, call.condition,
                                  gap_output))
        return x_out

    for i in tqdm(range(start, stop), disable=not progress, desc="z-sampling", leave=False):
        zig = schedule.zig(i)
        reflects = i in config.window
        if reflects:
            zag = schedule.zag(i, config)
            for r in range(config.rounds):
                gap_output = evaluate(plan.zag, x, zig.t_eval)[1] if probe_gap else None
                y = apply("zig", i, r, zig, plan.zig, x)
                x = apply("zag", i, r, zag, plan.zag, y, gap_output)
        x = apply("step", i, config.rounds if reflects else 0, zig, plan.step, x)
        if (i + 1) % nan_check_every == 0:
            guard.check()
    guard.check()
    return x


class _FiniteGuard:
    """Collects per-operation finiteness flags on the device; checks them in
    one sync so the hot loop never waits on the host."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"nan_check_every must be >= 1, got {every}")
        self._flags: list[torch.Tensor] = []
        self._where: list[tuple[str, int, int]] = []

    def watch(self, x: torch.Tensor, op: str, step: int, round_: int) -> None:
        self._flags.append(torch.isfinite(x).all())
        self._where.append((op, step, round_))

    def check(self) -> None:
        if not self._flags:
            return
        flags = torch.stack(self._flags).cpu()
        if not bool(flags.all()):
            op, step, round_ = self._where[int((~flags).nonzero()[0])]
            raise NonFiniteLatentsError(
                f"latents became NaN/inf after the {op} of step {step} (round {round_}); in fp16 "
                "this is usually an overflow: try bfloat16 or float32, or a smaller guidance scale"
            )
        self._flags.clear()
        self._where.clear()
