"""The Z-Sampling loop: zig, zag and ordinary DDIM steps over a denoiser.

For each step i in the window, ``rounds`` times:

1. zig: ``y = ddim(x_i, eps_g1(x_i, t_i), ab[t_i], ab[t_{i+1}])``
2. zag: ``x_i = ZAG(y)`` with guidance g2 ("official" or "ddim" operator)

then the ordinary step ``x_{i+1} = ddim(x_i, eps_g1(x_i, t_i), ...)``. Steps
outside the window are ordinary, so an empty window is standard DDIM.

The loop asks the denoiser only for the CFG branches each operation needs
(g = 0: eps_u, g = 1: eps_c), emits one :class:`Event` per operation to an
optional recorder, and makes no host sync except a finiteness check every
``nan_check_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm

from zsampling.config import ZigzagConfig
from zsampling.denoisers.base import BOTH, Branches, Denoiser, EpsPair
from zsampling.schedule import DDIMMove, DDIMSchedule

Op = Literal["zig", "zag", "step"]


@dataclass(frozen=True)
class Event:
    """One operation of the loop, as a recorder sees it.

    ``step`` is i, ``round`` the reflection round r (for the ordinary "step"
    it is ``rounds`` if the step reflected, else 0), ``move`` the DDIM move
    (evaluation timestep and alphas), ``guidance`` the CFG scale used,
    ``eps`` the branches the operation computed at ``x_in``.
    """

    op: Op
    step: int
    round: int
    move: DDIMMove
    guidance: float
    x_in: torch.Tensor
    x_out: torch.Tensor
    eps: EpsPair


class Recorder(Protocol):
    """Receives the loop's events; see ``zsampling.trace`` for implementations."""

    def record(self, event: Event) -> None: ...


class NonFiniteLatentsError(FloatingPointError):
    """Latents became NaN or inf; the message names the step and operation."""


def zigzag_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: DDIMSchedule,
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
        denoiser: returns eps_u / eps_c; counts network rows.
        x: initial latents (B, ...), already scaled by the scheduler's
            init_noise_sigma.
        schedule: the DDIM schedule for ``config.num_inference_steps``.
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
        NonFiniteLatentsError: naming the first step and operation whose
            output is not finite.
    """
    if schedule.num_steps != config.num_inference_steps:
        raise ValueError(
            f"schedule has {schedule.num_steps} steps but config.num_inference_steps is "
            f"{config.num_inference_steps}"
        )
    if branches not in ("needed", "both"):
        raise ValueError(f"branches must be 'needed' or 'both', got {branches!r}")
    stop = schedule.num_steps if stop is None else stop
    if not 0 <= start <= stop <= schedule.num_steps:
        raise ValueError(f"need 0 <= start <= stop <= T={schedule.num_steps}, got start={start}, stop={stop}")
    g1, g2 = config.guidance_scale, config.inversion_guidance_scale
    zig_branches = BOTH if branches == "both" else Branches.for_guidance(g1)
    zag_branches = BOTH if branches == "both" else Branches.for_guidance(g2)
    guard = _FiniteGuard(nan_check_every)

    def apply(op: Op, step: int, round_: int, move: DDIMMove, guidance: float, wanted: Branches,
              x_in: torch.Tensor) -> torch.Tensor:
        eps = denoiser(x_in, move.t_eval, wanted)
        x_out = move.apply(x_in, eps.guided(guidance))
        guard.watch(x_out, op, step, round_)
        if recorder is not None:
            recorder.record(Event(op, step, round_, move, guidance, x_in, x_out, eps))
        return x_out

    for i in tqdm(range(start, stop), disable=not progress, desc="z-sampling", leave=False):
        zig = schedule.zig(i)
        reflects = i in config.window
        if reflects:
            zag = schedule.zag(i, config)
            for r in range(config.rounds):
                y = apply("zig", i, r, zig, g1, zig_branches, x)
                x = apply("zag", i, r, zag, g2, zag_branches, y)
        x = apply("step", i, config.rounds if reflects else 0, zig, g1, zig_branches, x)
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
