"""Effective guidance of a run and the split of each gain along / across the guidance direction.

Why (docs/design.md, "Evaluation honesty"): Z-Sampling with a null zag acts, to
first order, like stronger classifier-free guidance, and it spends more
network calls. The question a reviewer asks ("Guidance Matters", ICLR 2026)
is whether it beats plain CFG at the same *effective* strength and the same
compute. This module measures that strength per step from the scalars every
trace already records -- zero extra network rows, no kept tensors -- and
splits each reflection's gain into the part stronger guidance would also
produce (along d = eps_c - eps_u) and the orthogonal remainder, which
stronger guidance cannot produce.

Derivation. A reflection at step i moves x_i by delta (x_i after the zag
minus x_i before the zig). The ordinary DDIM step that follows,
``ddim(x, e, a_i, a_{i+1}) = sqrt(a_{i+1}/a_i) x + sqrt(a_{i+1}/a_i) c_i e``
with ``c_i = sqrt(a_i/a_{i+1}) sqrt(1-a_{i+1}) - sqrt(1-a_i)``, maps
x_i + delta to x_{i+1} + sqrt(a_{i+1}/a_i) delta, and
sqrt(a_{i+1}/a_i) c_i is exactly the step's eps coefficient. So, seen from
the state x_i the standard step would have started from, step i applies the
eps ``eps_u + g1 d + v`` with ``v = delta / c_i`` (eps units); the network's
change between x_i and x_i + delta is the first-order term left out. With
several rounds the v_r add up. The effective guidance of step i is

* norm form (the critique's definition): ``||g1 d + sum_r v_r|| / ||d||``;
* signed parallel form: ``g1 + sum_r <v_r, d> / ||d||^2``;
* orthogonal part: ``||sum_r v_r - (its projection on d)|| / ||d||``

so that norm^2 = parallel^2 + orthogonal^2. Which d: each round r uses the
direction its own zig computed, d_r = (eps_c - eps_u)(x_i^(r), t_i) at the
latent before that round's reflection (the trace's ``gain_parallel``,
``gain_orthogonal`` and ``zig_guidance_signal`` are taken against it), and
the step's own ``g1 d`` is taken along d_0, the direction at x_i before any
reflection (the expansion point of the derivation). With one round (the
paper's T_max = 1) every quantity is then exact for d = d_0. With several
rounds the parallel parts add exactly (each against its own d_r, to first
order all d_r are d_0); the orthogonal remainders of the rounds are added
as lengths, so the norm form is an upper bound there (the rounds' mutual
angles are not recorded). Steps without reflection have effective guidance
exactly g1 (v = 0).

First-order value: with the "ddim" zag, ``delta = c_i (g1 - g2) d +
residual``, so ``v = (g1 - g2) d + residual / c_i`` and the effective
guidance is ``2 g1 - g2`` (``g1 + rounds (g1 - g2)``) up to
``residual_norm / (|c_i| ||d||)``, a term that vanishes with the step size.
The released code's "official" zag is one schedule level off, so its value
differs at finite T (its per-step offset is O(step size) relative to the
step, and the fallback at the last window step, where t_{i+1} - k < 0, weighs
1/T of the run). On the analytic mixture the weighted parallel forms of the
two operators approach each other and 2 g1 - g2 as T grows
(tests/test_guidance_matched.py); on a trained model at the T one runs, the
difference is a measured number, not a limit to rely on.

Which form to match: the signed parallel form is what a larger CFG scale
reproduces (stronger guidance moves only along d), so it is the default scale
of the matched baseline (``cfg_matched_measured``, :mod:`zsampling.sweep.matched`).
The norm form also counts motion orthogonal to d; with the "official" zag
much of it comes from the one-level schedule offset (most at the last window
step, where the released code falls back to the initial alpha), not from
guidance. Both are reported.

Run summary: a plain CFG run at a constant g applies ``g ||d_i||`` in eps
units at step i, so the constant scale with the same total along the
trajectory is the ``||d||``-weighted mean ``sum_i ||G_i|| / sum_i ||d_i||``
(G_i = g1 d + sum_r v_r). That is ``effective_guidance`` of
:func:`guidance_summary` (norm form) and ``effective_guidance_parallel``
(signed parallel form, the one the matched baseline uses by default). A step
whose guidance direction is exactly zero (||d|| = 0, e.g. late steps on the
analytic model, where eps_c and eps_u agree to the last bit) has no effective
guidance: its ratios are NaN in :func:`effective_guidance` and it carries zero
weight in every summary mean. The unweighted mean is reported too, but it is
dominated by the last steps, where ||d|| -> 0 makes the ratio ill-posed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

    from zsampling.trace.data import Trace

ID_COLUMNS: tuple[str, ...] = ("cell", "model", "method", "run", "batch", "key")
"""Columns of a trace frame that identify the run and are carried through."""

GUIDANCE_COLUMNS: tuple[str, ...] = (
    "step", "t", "reflects", "rounds", "g1", "g2", "direction_norm", "eff_guidance", "eff_guidance_parallel",
    "eff_guidance_orthogonal", "first_order", "extra_parallel", "gain_parallel", "gain_orthogonal", "gain_norm",
    "orthogonal_share", "cum_gain_parallel", "cum_gain_orthogonal", "cum_extra_parallel", "cum_extra_orthogonal",
)
"""Columns of :func:`effective_guidance` (after the id, ``sample`` and ``prompt`` columns).

* ``reflects``, ``rounds``: whether step i reflected, and how many times.
* ``g1`` (the step's guidance), ``g2`` (the zag's; NaN without reflection).
* ``direction_norm``: ||d_0|| (the step's own ||d|| without reflection).
* ``eff_guidance`` / ``_parallel`` / ``_orthogonal``: the three forms above.
* ``first_order``: g1 + rounds (g1 - g2) (g1 without reflection).
* ``extra_parallel``: eff_guidance_parallel - g1, the reflections' part
  along d in guidance-scale units (what a larger g would add).
* ``gain_parallel``: sum_r <delta_r, sign(c_i) d_r / ||d_r||>, the gain along
  the guidance direction in latent units, oriented so that positive is the
  direction a larger g moves the latent (c_i < 0 in DDIM); ``gain_orthogonal``
  the remainder's length (summed over rounds); ``gain_norm`` =
  sqrt(gain_parallel^2 + gain_orthogonal^2) (= ||delta|| for one round).
* ``orthogonal_share``: gain_orthogonal^2 / gain_norm^2.
* ``cum_*``: running sums over steps (per sample) of ``gain_parallel``,
  ``gain_orthogonal``, ``extra_parallel`` and ``eff_guidance_orthogonal``.
"""

SUMMARY_KEYS: tuple[str, ...] = (
    "num_steps", "window_size", "rounds", "g1", "g2", "first_order", "effective_guidance",
    "effective_guidance_window", "effective_guidance_parallel", "effective_guidance_parallel_window",
    "effective_guidance_orthogonal_window", "effective_guidance_mean", "effective_guidance_median",
    "orthogonal_share_window", "n_samples", "no_direction_steps", "complete",
)
"""Keys of :func:`guidance_summary` (see its docstring)."""


def _frame_of(source: Trace | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return source if isinstance(source, pd.DataFrame) else source.to_frame()


def effective_guidance(source: Trace | pd.DataFrame) -> pd.DataFrame:
    """Per-step effective guidance and gain decomposition, one row per sample x ordinary step.

    Args:
        source: a :class:`~zsampling.trace.Trace` or its ``to_frame()``
            (possibly of several runs, told apart by id columns such as
            ``cell``; see :data:`ID_COLUMNS`).

    Returns:
        The id columns present, ``sample``, ``prompt`` (if known) and
        :data:`GUIDANCE_COLUMNS`; see the module docstring for the
        definitions. Reflecting steps whose guidance direction was not
        computed (g1 in {0, 1} without ``branches="both"``) are NaN, and so
        are the ``eff_guidance*`` / ``extra_parallel`` values of steps whose
        direction is exactly zero (``direction_norm == 0``: no guidance to
        measure).
    """
    import pandas as pd

    frame = _frame_of(source)
    required = {"op", "sample", "step", "round", "guidance", "c", "t_eval", "guidance_signal", "gain_parallel",
                "gain_orthogonal", "zig_guidance_signal"}
    missing = sorted(required - set(frame.columns))
    if missing:
        raise KeyError(f"trace frame lacks columns {missing}; pass a Trace or Trace.to_frame()")
    ids = [c for c in ID_COLUMNS if c in frame.columns]
    keys = [*ids, "sample", "step"]
    op = frame["op"].astype(str)
    steps = frame.loc[op == "step", [*ids, "sample", *(["prompt"] if "prompt" in frame else []), "step", "t_eval",
                                     "guidance", "guidance_signal"]]
    steps = steps.rename(columns={"t_eval": "t", "guidance": "g1"})
    zag = frame.loc[op == "zag", [*keys, "round", "guidance", "c", "gain_parallel", "gain_orthogonal",
                                  "zig_guidance_signal"]].copy()
    c = zag["c"].to_numpy(dtype=np.float64)
    signal = zag["zig_guidance_signal"].to_numpy(dtype=np.float64)
    par = zag["gain_parallel"].to_numpy(dtype=np.float64)
    orth = zag["gain_orthogonal"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        zag["extra_parallel"] = par / c / signal  # <v_r, d_r> / ||d_r||^2
        zag["extra_orthogonal"] = orth / np.abs(c) / signal  # ||v_r, orthogonal|| / ||d_r||
    zag["gain_parallel"] = par * np.sign(c)
    zag = zag.sort_values([*keys, "round"])
    summed = ["extra_parallel", "extra_orthogonal", "gain_parallel", "gain_orthogonal"]
    grouped = zag.groupby(keys, sort=False, observed=True)
    per_step = grouped.agg(rounds=("round", "size"), g2=("guidance", "first"),
                           direction_norm=("zig_guidance_signal", "first"))
    sums = grouped[summed].sum()
    flags = zag[summed].isna()
    flags[keys] = zag[keys]
    undefined = flags.groupby(keys, sort=False, observed=True)[summed].any()
    per_step[summed] = sums.mask(undefined)  # NaN when any round's value is
    per_step = per_step.reset_index()
    out = steps.merge(per_step, on=keys, how="left")
    out["rounds"] = out["rounds"].fillna(0).astype(np.int64)
    reflects = out["rounds"].to_numpy() > 0
    out.insert(out.columns.get_loc("t") + 1, "reflects", reflects)
    g1 = out["g1"].to_numpy(dtype=np.float64)
    out["direction_norm"] = np.where(reflects, out["direction_norm"].to_numpy(dtype=np.float64),
                                     out["guidance_signal"].to_numpy(dtype=np.float64))
    extra_par = np.where(reflects, out["extra_parallel"].to_numpy(dtype=np.float64), 0.0)
    extra_orth = np.where(reflects, out["extra_orthogonal"].to_numpy(dtype=np.float64), 0.0)
    no_direction = out["direction_norm"].to_numpy(dtype=np.float64) == 0
    extra_par = np.where(no_direction, np.nan, extra_par)
    extra_orth = np.where(no_direction, np.nan, extra_orth)
    parallel = g1 + extra_par
    out["eff_guidance"] = np.where(reflects | no_direction, np.hypot(parallel, extra_orth), np.abs(g1))
    out["eff_guidance_parallel"] = np.where(reflects | no_direction, parallel, g1)
    out["eff_guidance_orthogonal"] = extra_orth
    g2 = out["g2"].to_numpy(dtype=np.float64)
    out["first_order"] = np.where(reflects, g1 + out["rounds"].to_numpy() * (g1 - g2), g1)
    out["extra_parallel"] = extra_par
    gain_par = np.where(reflects, out["gain_parallel"].to_numpy(dtype=np.float64), 0.0)
    gain_orth = np.where(reflects, out["gain_orthogonal"].to_numpy(dtype=np.float64), 0.0)
    out["gain_parallel"], out["gain_orthogonal"] = gain_par, gain_orth
    out["gain_norm"] = np.hypot(gain_par, gain_orth)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["orthogonal_share"] = np.where(reflects, gain_orth**2 / out["gain_norm"].to_numpy() ** 2, np.nan)
    out = out.sort_values([*ids, "sample", "step"]).reset_index(drop=True)
    by_sample = out.groupby([*ids, "sample"], sort=False, observed=True)
    out["cum_gain_parallel"] = by_sample["gain_parallel"].cumsum()
    out["cum_gain_orthogonal"] = by_sample["gain_orthogonal"].cumsum()
    out["cum_extra_parallel"] = by_sample["extra_parallel"].cumsum()
    out["cum_extra_orthogonal"] = by_sample["eff_guidance_orthogonal"].cumsum()
    front = [*ids, "sample", *(["prompt"] if "prompt" in out else [])]
    out["g1"] = g1
    out["g2"] = g2
    return pd.DataFrame(out[[*front, *GUIDANCE_COLUMNS]])


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    """sum(w v) / sum(w); the plain mean where no weight is known (NaN weights); NaN if any value is.

    Callers drop the zero-weight (zero-direction) entries first: their values
    are undefined and would otherwise poison the mean with 0 * NaN.
    """
    if values.size == 0 or not np.isfinite(values).all():
        return math.nan
    known = np.isfinite(weights) & (weights > 0)
    if not known.any():
        return float(values.mean())
    if not known.all():
        return math.nan
    return float((values * weights).sum() / weights.sum())


def guidance_summary(source: Trace | pd.DataFrame) -> dict[str, Any]:
    """One run's effective guidance in a few numbers (JSON-ready).

    Args:
        source: a trace, its ``to_frame()``, or :func:`effective_guidance`'s
            table of one run.

    Returns:
        A dict with :data:`SUMMARY_KEYS`:

        * ``num_steps`` (T), ``window_size`` (steps that reflect), ``rounds``
          (per reflecting step), ``g1``, ``g2`` (None without reflection),
          ``first_order`` = g1 + rounds (g1 - g2) (g1 without reflection);
        * ``effective_guidance``: the ||d||-weighted mean of the norm form
          over every step and sample, sum ||G|| / sum ||d|| (the constant CFG
          scale with the same total perturbation; what
          ``cfg_matched_measured`` uses); ``effective_guidance_window``: the
          same over the reflecting steps only (compare with ``first_order``);
        * ``effective_guidance_parallel`` / ``_parallel_window``: the same
          weighted means of the signed parallel form;
          ``effective_guidance_orthogonal_window`` of the orthogonal part;
        * ``effective_guidance_mean`` / ``_median``: unweighted, over every
          step and sample (sensitive to the last steps, where ||d|| -> 0);
        * ``orthogonal_share_window``: sum gain_orthogonal^2 / sum gain_norm^2
          over the window (latent units): the fraction of the reflections'
          squared gain that stronger guidance would not produce;
        * ``n_samples``; ``no_direction_steps``: sample-steps whose guidance
          direction is exactly zero (||d|| = 0); they carry zero weight and are
          left out of every mean, median and share above (their effective
          guidance is undefined, not a number to average);
        * ``complete``: every step with a direction has a computable value
          (False when g1 in {0, 1} ran one branch: then the reflecting steps
          are NaN, and so are the summary values that need them).

        With no step that has a direction (eps_c == eps_u throughout, e.g.
        an empty prompt) the effective-guidance values are NaN and
        ``complete`` is False.

    Raises:
        ValueError: the trace has no ordinary step.
    """
    import pandas as pd

    table = source if isinstance(source, pd.DataFrame) and "eff_guidance" in source.columns \
        else effective_guidance(source)
    if table.empty:
        raise ValueError("the trace has no ordinary steps")
    no_direction = table["direction_norm"].to_numpy(dtype=np.float64) == 0
    full = table
    table = table.loc[~no_direction]
    eff = table["eff_guidance"].to_numpy(dtype=np.float64)
    par = table["eff_guidance_parallel"].to_numpy(dtype=np.float64)
    orth = table["eff_guidance_orthogonal"].to_numpy(dtype=np.float64)
    weight = table["direction_norm"].to_numpy(dtype=np.float64)
    window = table["reflects"].to_numpy(dtype=bool)
    full_window = full["reflects"].to_numpy(dtype=bool)
    steps_in_window = full.loc[full_window, "step"].nunique()
    rounds = full.loc[full_window, "rounds"]
    g1 = float(full["g1"].iloc[0])
    g2 = float(full.loc[full_window, "g2"].iloc[0]) if full_window.any() else None
    r = int(rounds.max()) if full_window.any() else 0
    gain2 = table.loc[window, "gain_norm"].to_numpy(dtype=np.float64) ** 2
    orth2 = table.loc[window, "gain_orthogonal"].to_numpy(dtype=np.float64) ** 2
    share = float(orth2.sum() / gain2.sum()) if window.any() and gain2.sum() > 0 else math.nan

    def window_mean(values: np.ndarray) -> float:
        return _weighted(values[window], weight[window]) if window.any() else math.nan

    summary: dict[str, Any] = {
        "num_steps": int(full["step"].nunique()),
        "window_size": int(steps_in_window),
        "rounds": r,
        "g1": g1,
        "g2": g2,
        "first_order": g1 + r * (g1 - g2) if g2 is not None else g1,
        "effective_guidance": _weighted(eff, weight),
        "effective_guidance_window": window_mean(eff),
        "effective_guidance_parallel": _weighted(par, weight),
        "effective_guidance_parallel_window": window_mean(par),
        "effective_guidance_orthogonal_window": window_mean(orth),
        "effective_guidance_mean": float(eff.mean()) if eff.size and np.isfinite(eff).all() else math.nan,
        "effective_guidance_median": float(np.median(eff)) if eff.size and np.isfinite(eff).all() else math.nan,
        "orthogonal_share_window": share,
        "n_samples": int(full["sample"].nunique()),
        "no_direction_steps": int(no_direction.sum()),
        "complete": bool(eff.size and np.isfinite(eff).all()),
    }
    return summary


# ---------------------------------------------------------------------- vectors
def split_along(vectors: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each sample's vector into its projection on ``direction`` and the orthogonal remainder.

    Args:
        vectors: (B, ...) e.g. the gains delta.
        direction: (B, ...) e.g. d = eps_c - eps_u, same shape.

    Returns:
        ``(parallel, orthogonal)``, both shaped like ``vectors``, with
        ``parallel + orthogonal == vectors`` and ``<parallel, orthogonal> = 0``
        per sample (up to rounding; computed in float64). A zero direction
        gives a zero parallel part.
    """
    if vectors.shape != direction.shape:
        raise ValueError(f"vectors and direction must have the same shape, got {tuple(vectors.shape)} and "
                         f"{tuple(direction.shape)}")
    batch = vectors.shape[0]
    v = vectors.reshape(batch, -1).to(torch.float64)
    d = direction.reshape(batch, -1).to(torch.float64)
    dd = torch.linalg.vecdot(d, d, dim=1)
    coef = torch.where(dd > 0, torch.linalg.vecdot(v, d, dim=1) / torch.where(dd > 0, dd, 1.0), 0.0)
    parallel = coef.unsqueeze(1) * d
    orthogonal = v - parallel
    return parallel.reshape(vectors.shape), orthogonal.reshape(vectors.shape)


def reflection_vectors(trace: Trace, step: int, round: int = 0) -> dict[str, torch.Tensor]:
    """The vectors of reflection (step, round), rebuilt from a trace that kept latents and eps.

    Returns (each (B, ...), float64): ``delta`` (x after the zag minus x
    before the zig), ``direction`` (d_r, the zig's eps_c - eps_u), ``v`` =
    delta / c_i (eps units), ``parallel`` and ``orthogonal`` (delta split
    along d_r by :func:`split_along`). Needs ``keep`` with "latents" and
    "eps"; store them in float32/float64 for exact checks.

    Raises:
        KeyError: the trace did not keep latents or eps, or there is no such reflection.
        ValueError: the zig computed one branch only (no direction).
    """
    zig = trace.event_index(step, "zig", round)
    zag = trace.event_index(step, "zag", round)
    before = trace.latents_in(zig).to(torch.float64)
    after = trace.tensor("latents", zag).to(torch.float64)
    eps = trace.eps(step, "zig", round)
    if eps.uncond is None or eps.cond is None:
        raise ValueError(f"the zig of step {step} computed one branch only; record with branches='both'")
    direction = eps.cond.to(torch.float64) - eps.uncond.to(torch.float64)
    c = float(trace.events["c"][zag])
    delta = after - before
    parallel, orthogonal = split_along(delta, direction)
    return {"delta": delta, "direction": direction, "v": delta / c, "parallel": parallel, "orthogonal": orthogonal}


def first_order_guidance(guidance_scale: float, inversion_guidance_scale: float, rounds: int = 1) -> float:
    """``g1 + rounds (g1 - g2)``: the first-order effective guidance of a reflecting step (2 g1 - g2 for one round)."""
    return float(guidance_scale + rounds * (guidance_scale - inversion_guidance_scale))


__all__ = [
    "GUIDANCE_COLUMNS", "SUMMARY_KEYS", "effective_guidance", "first_order_guidance", "guidance_summary",
    "reflection_vectors", "split_along",
]
