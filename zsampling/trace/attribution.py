"""Prompt-part attribution: which part of the prompt does each reflection inject?

The user names parts of each prompt (``parts=["3", "left of 7"]`` for
``"3 left of 7"``; ``["a red cube", "a blue sphere"]`` for a real model).
Part p's direction at a latent ``x_i`` and timestep ``t_i`` is

    d_p = eps_c(prompt; x_i, t_i) - eps_c(prompt without p; x_i, t_i)

-- what the network predicts differently because the part is in the prompt.
How a part is dropped: by default it is **removed from the prompt string**
(its first whole-word occurrence is deleted and spaces are collapsed:
``"3 left of 7"`` minus ``"3"`` is ``"left of 7"``); with ``replacement=``
it is **replaced** by that text instead (e.g. a neutral token such as
``"something"`` for a real model). The ablated prompts must be valid prompts
of the model (the pairs world's grammar accepts "left of 7" for this reason).

:class:`PartAttributionRecorder` implements the sampler's ``Recorder``
protocol and records, per sample:

* at each reflection (every zig/zag pair of a recorded step, each round) the
  gain ``delta = x_after_zag - x_before_zig`` (kind ``"reflection"``);
* optionally (``reference_guidance=g_ref``, for plain-CFG baselines) at each
  ordinary step the guidance injection ``b_i (g - g_ref) (eps_c - eps_u)``:
  the part of the DDIM step x_i -> x_{i+1} that the step's guidance adds over
  guidance ``g_ref``, where ``b_i = sqrt(1 - ab_{i+1}) - sqrt(ab_{i+1} / ab_i)
  sqrt(1 - ab_i)`` is the DDIM step's coefficient of eps (kind
  ``"guidance"``). With g_ref = g1 of a Z-Sampling run, a CFG run at a matched
  g measures exactly the extra injection stronger guidance buys, to be set
  against Z-Sampling's reflection gain at g1.

Each gain is decomposed on the part directions of its step, computed once
per recorded step at (x_i, t_i) -- the zig's input for reflections, the
step's input for guidance injections:

* ``projection``: <delta, d_p> / ||d_p||, the signed length of delta along
  part p's unit direction;
* ``coefficient`` c_p and ``component`` c_p ||d_p||: the least-squares
  decomposition delta = sum_p c_p d_p + r with r orthogonal to every d_p
  (equal to projection / ||d_p|| and projection when the directions are
  orthogonal);
* the rest: ``rest_norm`` = ||r||, and ``delta_norm`` = ||delta||.

Cost: the directions need eps_c of every ablated prompt, which the sampler
does not compute. The recorder prepares a second ``SamplingTarget`` for the
ablated prompts (``zsampling.api.prepare``) and calls its denoiser with
``Branches(uncond=False, cond=True)``: exactly one extra network row per part
per sample per recorded step, counted in :attr:`PartAttributionRecorder.extra_rows`
(never in the sampling run's own rows). ``stride=k`` records only steps i
with i % k == 0. eps_c of the full prompt comes from the zig's own event, so
g1 must not be 0 (or sample with ``branches="both"``). Projections are moved
to the host at each recorded event (one sync): attribution is an opt-in
diagnostic, not a hot-loop recorder. Without this recorder nothing changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from zsampling.denoisers.base import Branches

KINDS: tuple[str, ...] = ("reflection", "guidance")


def drop_part(prompt: str, part: str, replacement: str | None = None) -> str:
    """``prompt`` without ``part`` (first whole-word occurrence), or with it replaced by ``replacement``.

    Raises:
        ValueError: ``part`` is empty or does not occur in ``prompt`` as whole words.
    """
    if not isinstance(part, str) or not part.strip():
        raise ValueError(f"a prompt part must be a non-empty string, got {part!r}")
    pattern = re.compile(r"(?<!\w)" + re.escape(part.strip()) + r"(?!\w)")
    if not pattern.search(prompt):
        raise ValueError(f"part {part!r} does not occur (as whole words) in prompt {prompt!r}")
    out = pattern.sub(replacement if replacement is not None else "", prompt, count=1)
    return " ".join(out.split())


def _parts_per_prompt(prompts: Sequence[str], parts: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    if not parts:
        raise ValueError("parts must name at least one part of the prompt")
    if all(isinstance(p, str) for p in parts):
        per = [list(parts)] * len(prompts)  # type: ignore[arg-type]
    else:
        per = [list(p) for p in parts]  # type: ignore[arg-type]
        if len(per) != len(prompts):
            raise ValueError(f"parts must be one list of part strings for every prompt, or one list per prompt "
                             f"({len(prompts)}), got {len(per)} lists")
        if len({len(p) for p in per}) != 1:
            raise ValueError(f"every prompt needs the same number of parts, got {[len(p) for p in per]}")
    return per


class PartAttributionRecorder:
    """Records each reflection's (and optionally each step's guidance) gain on prompt-part directions.

    Usage::

        rec = PartAttributionRecorder(pipe, ["3 left of 7"] * 8, ["3", "left of 7"])
        zsampling.sample(pipe, ["3 left of 7"] * 8, recorder=rec, ...)
        frame = rec.to_frame(); rec.extra_rows  # 2 parts x 8 samples x recorded steps

    Args:
        pipe: the pipeline being sampled (anything ``zsampling.api.prepare`` accepts).
        prompts: the batch's prompts, in batch order.
        parts: the parts of every prompt (one list of strings), or one list per
            prompt (all of the same length).
        part_names: column labels of the parts (default: "part0", "part1", ...;
            with one shared list of parts, the part strings themselves).
        replacement: None drops a part from the prompt string; a string
            replaces it (see the module docstring).
        stride: record steps i with ``i % stride == 0``.
        reference_guidance: also record the guidance injection of ordinary
            steps relative to this scale (needs ``schedule``).
        schedule: the run's ``DDIMSchedule`` (for the DDIM coefficient b_i).
        height, width: passed to ``prepare`` (diffusers pipelines).
    """

    def __init__(
        self,
        pipe: Any,
        prompts: Sequence[str],
        parts: Sequence[str] | Sequence[Sequence[str]],
        *,
        part_names: Sequence[str] | None = None,
        replacement: str | None = None,
        stride: int = 1,
        reference_guidance: float | None = None,
        schedule: Any | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        from zsampling.api import prepare

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts must be a non-empty list")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        if reference_guidance is not None and schedule is None:
            raise ValueError("reference_guidance needs schedule= (the run's DDIMSchedule) for the DDIM step "
                             "coefficient")
        per = _parts_per_prompt(prompts, parts)
        self.prompts = prompts
        self.parts = per
        self.num_parts = len(per[0])
        shared = all(isinstance(p, str) for p in parts)
        names = list(part_names) if part_names is not None else (
            list(per[0]) if shared else [f"part{k}" for k in range(self.num_parts)])
        if len(names) != self.num_parts or len(set(names)) != len(names) or "rest" in names:
            raise ValueError(f"part_names must be {self.num_parts} distinct labels other than 'rest', got {names}")
        self.part_names = names
        self.replacement = replacement
        self.stride = stride
        self.reference_guidance = reference_guidance
        self.schedule = schedule
        self.ablated_prompts = [[drop_part(prompts[b], per[b][k], replacement) for b in range(len(prompts))]
                                for k in range(self.num_parts)]
        flat = [p for part in self.ablated_prompts for p in part]
        self.ablated = prepare(pipe, flat, None, height, width)
        self._rows_at_start = self.ablated.denoiser.network_rows
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._directions: dict[tuple[str, int], torch.Tensor] = {}
        self._records: list[dict[str, Any]] = []
        self.recorded_steps: list[tuple[str, int]] = []

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def extra_rows(self) -> int:
        """Network rows this recorder has spent (parts x samples per recorded step)."""
        return self.ablated.denoiser.network_rows - self._rows_at_start

    def _wanted(self, step: int) -> bool:
        return step % self.stride == 0

    def directions(self, x: torch.Tensor, t: int, eps_cond: torch.Tensor) -> torch.Tensor:
        """Part directions (P, B, n): eps_c(prompt) - eps_c(prompt without part p) at (x, t)."""
        if eps_cond is None:
            raise ValueError("prompt-part attribution needs eps_c of the prompt at the recorded operation, which "
                             "the sampler skipped (guidance scale 0); sample with branches='both'")
        stacked = torch.cat([x] * self.num_parts)
        ablated = self.ablated.denoiser(stacked, int(t), Branches(uncond=False, cond=True)).cond
        cond = eps_cond.reshape(1, x.shape[0], -1)
        return cond - ablated.reshape(self.num_parts, x.shape[0], -1).to(cond.dtype)

    def record(self, event: Any) -> None:
        """Sampler hook: zig caches x_i (and the step's directions), zag measures the reflection gain,
        step measures the guidance injection when ``reference_guidance`` is set."""
        op, step = event.op, int(event.step)
        if not self._wanted(step):
            return
        if op == "zig":
            key = ("reflection", step)
            if key not in self._directions:
                self._directions[key] = self.directions(event.x_in, event.move.t_eval, event.eps.cond)
                self.recorded_steps.append(key)
            self._pending[step] = (event.x_in, self._directions[key])
        elif op == "zag":
            if step not in self._pending:
                raise ValueError(f"zag of step {step} arrived without its zig")
            x_before, dirs = self._pending.pop(step)
            self._add("reflection", event, event.x_out - x_before, dirs)
        elif op == "step" and self.reference_guidance is not None:
            g, g_ref = float(event.guidance), float(self.reference_guidance)
            if g == g_ref:
                return
            eps_u, eps_c = event.eps.uncond, event.eps.cond
            if eps_u is None or eps_c is None:
                raise ValueError("the guidance injection needs eps_u and eps_c of the step (g in {0, 1} skips one); "
                                 "sample with branches='both'")
            dirs = self.directions(event.x_in, event.move.t_eval, eps_c)
            self.recorded_steps.append(("guidance", step))
            a_from, a_to = self.schedule.alpha_at(step), self.schedule.alpha_after(step)
            b = math.sqrt(1.0 - a_to) - math.sqrt(a_to / a_from) * math.sqrt(1.0 - a_from)
            self._add("guidance", event, b * (g - g_ref) * (eps_c - eps_u), dirs)

    def _add(self, kind: str, event: Any, delta: torch.Tensor, dirs: torch.Tensor) -> None:
        values = decompose(delta.reshape(delta.shape[0], -1), dirs)
        values = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in values.items()}
        self._records.append({"kind": kind, "step": int(event.step), "round": int(event.round),
                              "t_eval": int(event.move.t_eval), **values})

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (record, sample, part) plus a ``part == "rest"`` row per (record, sample).

        Columns: kind, step, round, t_eval, sample, prompt, part, part_text,
        ablated_prompt, projection, coefficient, component, direction_norm,
        delta_norm (``rest`` rows: component = ||r||, the others NaN except
        delta_norm).
        """
        rows: list[dict[str, Any]] = []
        for rec in self._records:
            for b, prompt in enumerate(self.prompts):
                base = {"kind": rec["kind"], "step": rec["step"], "round": rec["round"], "t_eval": rec["t_eval"],
                        "sample": b, "prompt": prompt, "delta_norm": float(rec["delta_norm"][b])}
                for k, name in enumerate(self.part_names):
                    rows.append({**base, "part": name, "part_text": self.parts[b][k],
                                 "ablated_prompt": self.ablated_prompts[k][b],
                                 "projection": float(rec["projection"][k, b]),
                                 "coefficient": float(rec["coefficient"][k, b]),
                                 "component": float(rec["component"][k, b]),
                                 "direction_norm": float(rec["direction_norm"][k, b])})
                rows.append({**base, "part": "rest", "part_text": "", "ablated_prompt": "",
                             "projection": np.nan, "coefficient": np.nan,
                             "component": float(rec["rest_norm"][b]), "direction_norm": np.nan})
        columns = ["kind", "step", "round", "t_eval", "sample", "prompt", "part", "part_text", "ablated_prompt",
                   "projection", "coefficient", "component", "direction_norm", "delta_norm"]
        return pd.DataFrame(rows, columns=columns)


def decompose(delta: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decompose gains ``delta`` (B, n) on per-sample directions ``dirs`` (P, B, n).

    Returns ``projection``, ``coefficient``, ``component``, ``direction_norm``
    (each (P, B)), ``rest_norm`` and ``delta_norm`` (B,), in float64 (see the
    module docstring). Zero directions get projection and coefficient 0.
    """
    d = dirs.double()
    v = delta.double()
    norms = d.norm(dim=2)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    projection = torch.where(norms > 0, torch.einsum("pbn,bn->pb", d, v) / safe, torch.zeros_like(norms))
    basis = d.permute(1, 2, 0)  # (B, n, P)
    coefficient = (torch.linalg.pinv(basis) @ v.unsqueeze(2)).squeeze(2).T  # (P, B)
    rest = v - torch.einsum("pb,pbn->bn", coefficient, d)
    return {"projection": projection, "coefficient": coefficient, "component": coefficient * norms,
            "direction_norm": norms, "rest_norm": rest.norm(dim=1), "delta_norm": v.norm(dim=1)}
