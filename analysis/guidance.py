"""Guidance-matched evaluation: does self-reflection beat plain CFG at the same effective strength and compute?

Why (docs/design.md, "Evaluation honesty"; "Guidance Matters: Rethinking the
Evaluation Pitfall for Text-to-Image Generation", ICLR 2026): Z-Sampling
with a null zag acts, to first order, like CFG at 2 g1 - g2, and it spends
more network calls. Beating standard sampling at the same T therefore shows
little; the fair baselines are plain CFG at Z-Sampling's *effective*
guidance with the network-call budget matched. A sweep with
``matched_baselines: true`` runs them (:mod:`zsampling.sweep.matched`):

* ``cfg_matched_nfe``: CFG at g1 with the steps raised to the same NFE
  (is the gain just more compute?);
* ``cfg_matched_measured``: CFG at the measured effective guidance, same
  NFE; by default the signed parallel form (the ||d||-weighted mean of
  g1 + sum_r <v_r, d> / ||d||^2, what a larger CFG scale reproduces; the
  norm form ||g1 d + sum_r v_r|| / ||d|| also counts motion orthogonal to d
  and is reported beside it; see :mod:`zsampling.trace.guidance`, and the
  ``measured_form`` column of the run's ``matched`` table);
* ``cfg_matched_first_order``: CFG at g1 + rounds (g1 - g2), same NFE.

What: :func:`matched_pairs` lists, for each Z-Sampling cell, its baselines
(these three plus standard sampling at the same T and g1);
:func:`matched_comparison` gives the paired win rates (bootstrap CIs,
Wilcoxon p) of Z-Sampling over each, per metric; :func:`verdict_markdown`
states the outcome in words computed from the CIs.
:func:`guidance_frame` turns traces into per-step effective guidance and
the split of each gain along / across eps_c - eps_u;
:func:`guidance_profile` and :func:`decomposition_profile` summarise them
per step (mean, 95 % bootstrap CI) for the figures, and
:func:`matched_cost_curve` puts every method on one metric-vs-NFE plot.

Reading the result: a win over ``standard`` but not over the matched
baselines means the gain is what stronger guidance with more steps also
buys; quality guards show whether alignment went up at the cost of image
quality. ``clipping_fraction`` and ``saturation`` are judged by their
distance from the real data's value (the demo digits: 0.58 of pixels at the
range limits), or from the baseline's when there are no data
(:mod:`analysis.references`); ``nn_distance`` is lower-is-better. Intervals
and tests are prompt-level whenever a prompt has several seeds
(:mod:`analysis.compare`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.compare import compare, cost_curve, select
from analysis.stats import N_RESAMPLES, SEED, higher_is_better, is_guard, summarize
from analysis.tables import metric_columns, operator_label, unique_standard

if TYPE_CHECKING:
    from analysis.run import RunData

MATCHED_METHODS: tuple[str, ...] = ("cfg_matched_nfe", "cfg_matched_measured", "cfg_matched_first_order")
"""The ``method`` values of the derived baseline cells (as in :mod:`zsampling.sweep.matched`)."""

GUIDANCE_MATCHED: tuple[str, ...] = ("cfg_matched_measured", "cfg_matched_first_order")
"""The baselines that match both the effective guidance and the compute."""

BASELINES: tuple[str, ...] = ("standard", *MATCHED_METHODS)
"""Every baseline a Z-Sampling cell is compared with, in display order."""

BASELINE_LABELS: dict[str, str] = {
    "standard": "standard (same T, g1)",
    "cfg_matched_nfe": "CFG at g1, same NFE",
    "cfg_matched_measured": "CFG at measured g_eff (parallel), same NFE",
    "cfg_matched_first_order": "CFG at g1+R(g1\N{MINUS SIGN}g2), same NFE",
}
"""Display labels of the baselines."""

PROFILE_QUANTITIES: dict[str, str] = {
    "eff_guidance": "norm: ||g1 d + \N{GREEK CAPITAL LETTER SIGMA}v|| / ||d||",
    "eff_guidance_parallel": "parallel: g1 + <\N{GREEK CAPITAL LETTER SIGMA}v, d> / ||d||\N{SUPERSCRIPT TWO}",
}
"""Per-step effective-guidance curves (column -> legend label)."""

REFERENCE_LINES: dict[str, str] = {
    "g1": "g1 (standard sampling)",
    "first_order": "first order g1 + R(g1\N{MINUS SIGN}g2)",
    "measured": "measured, parallel form (matched scale)",
    "measured_norm": "measured, norm form",
}
"""Horizontal reference lines of the effective-guidance figure."""

DECOMPOSITION_QUANTITIES: dict[str, str] = {
    "gain_parallel": "along guidance direction (signed)",
    "gain_orthogonal": "orthogonal to guidance direction",
    "cum_gain_parallel": "along guidance direction (signed)",
    "cum_gain_orthogonal": "orthogonal to guidance direction",
}
"""Columns of :func:`zsampling.trace.effective_guidance` drawn by the decomposition figure (latent units)."""


# --------------------------------------------------------------------- pairs
def short_setting(row: Mapping[str, Any]) -> str:
    """A compact label of a Z-Sampling cell for facet titles: "official, T=20, g=3/0, λ=19" (g1/g2; rounds
    R when not 1), from a :func:`matched_pairs` row."""
    text = (f"{row['operator']}, T={int(row['num_inference_steps'])}, g={float(row['guidance_scale']):g}/"
            f"{float(row['inversion_guidance_scale']):g}, λ={int(row['zigzag_steps'])}")
    if int(row.get("rounds", 1)) != 1:
        text += f", R={int(row['rounds'])}"
    return text


def _setting_text(row: Mapping[str, Any]) -> str:
    return (f"T={int(row['num_inference_steps'])}, g1={float(row['guidance_scale']):g}, "
            f"g2={float(row['inversion_guidance_scale']):g}, \N{GREEK SMALL LETTER LAMDA}={int(row['zigzag_steps'])}, "
            f"rounds={int(row['rounds'])}")


def _infer_matched(results: pd.DataFrame) -> pd.DataFrame:
    """A matched table from the results alone (possible with one Z-Sampling cell per model)."""
    rows = []
    for model, by_model in results.groupby("model", sort=True):
        zig = by_model.loc[by_model["method"] == "zigzag", "cell"].unique()
        derived = by_model[by_model["method"].isin(MATCHED_METHODS)].drop_duplicates("cell")
        if derived.empty:
            continue
        if len(zig) != 1:
            raise ValueError(f"model {model!r}: {len(zig)} Z-Sampling cells and matched baselines but no matched "
                             "table to tell which baseline belongs to which; pass RunData.matched (matched.parquet)")
        for _, cell in derived.iterrows():
            rows.append({"cell": cell["cell"], "method": cell["method"], "source_cell": zig[0]})
    return pd.DataFrame(rows, columns=["cell", "method", "source_cell"])


def matched_pairs(results: pd.DataFrame, matched: pd.DataFrame | None = None,
                  zigzag_cells: Sequence[str] | None = None) -> pd.DataFrame:
    """Each Z-Sampling cell with its baselines.

    Args:
        results: a sweep's results table.
        matched: its ``matched`` table (``RunData.matched``); None infers the
            links from ``method`` when each model has one Z-Sampling cell.
        zigzag_cells: restrict to these Z-Sampling cells (default: every one
            that has a baseline).

    Returns:
        One row per (Z-Sampling cell, baseline): ``model``, ``operator``,
        ``setting``, the Z-Sampling cell's ``num_inference_steps``,
        ``guidance_scale``, ``inversion_guidance_scale``, ``zigzag_steps`` and
        ``rounds``, ``zigzag_cell``, ``baseline`` (a :data:`BASELINES`
        name), ``baseline_label``, ``baseline_cell``, ``baseline_scale`` (its
        g), ``baseline_steps``, ``zigzag_nfe``, ``baseline_nfe``.
    """
    if matched is None or matched.empty:
        matched = _infer_matched(results)
    cells = results.drop_duplicates("cell").set_index("cell")
    nfe = results.groupby("cell")["nfe"].mean()
    standard = unique_standard(results)
    standard = standard[standard["method"] == "standard"].drop_duplicates("cell")
    zig = cells[cells["method"] == "zigzag"]
    if zigzag_cells is not None:
        zig = zig.loc[[c for c in zigzag_cells if c in zig.index]]
    rows = []
    for cell, z in zig.iterrows():
        links: list[tuple[str, str]] = []
        base = select(standard, model=z["model"], num_inference_steps=int(z["num_inference_steps"]),
                      guidance_scale=float(z["guidance_scale"]))
        if not base.empty:
            links.append(("standard", sorted(base["cell"])[0]))
        for _, m in matched[matched["source_cell"] == cell].iterrows():
            if m["cell"] in cells.index:
                links.append((str(m["method"]), str(m["cell"])))
        if not any(name in MATCHED_METHODS for name, _ in links) and zigzag_cells is None:
            continue
        operator = operator_label(zig.loc[[cell]].reset_index()).iloc[0]
        for name, other in sorted(links, key=lambda link: BASELINES.index(link[0]) if link[0] in BASELINES else 99):
            b = cells.loc[other]
            rows.append({
                "model": z["model"], "operator": operator, "setting": _setting_text(z),
                "num_inference_steps": int(z["num_inference_steps"]), "guidance_scale": float(z["guidance_scale"]),
                "inversion_guidance_scale": float(z["inversion_guidance_scale"]),
                "zigzag_steps": int(z["zigzag_steps"]), "rounds": int(z["rounds"]), "zigzag_cell": cell,
                "baseline": name, "baseline_label": BASELINE_LABELS.get(name, name), "baseline_cell": other,
                "baseline_scale": float(b["guidance_scale"]), "baseline_steps": int(b["num_inference_steps"]),
                "zigzag_nfe": float(nfe[cell]), "baseline_nfe": float(nfe[other]),
            })
    return pd.DataFrame(rows, columns=["model", "operator", "setting", "num_inference_steps", "guidance_scale",
                                       "inversion_guidance_scale", "zigzag_steps", "rounds", "zigzag_cell",
                                       "baseline", "baseline_label",
                                       "baseline_cell", "baseline_scale", "baseline_steps", "zigzag_nfe",
                                       "baseline_nfe"])


def matched_comparison(
    results: pd.DataFrame,
    matched: pd.DataFrame | None = None,
    metrics: Sequence[str] | None = None,
    *,
    zigzag_cells: Sequence[str] | None = None,
    directions: Mapping[str, bool] | None = None,
    references: Mapping[str, float] | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Win rates of every Z-Sampling cell over each of its baselines, per metric.

    Samples pair by (prompt_index, seed): the same prompt and initial noise.
    Returns :func:`matched_pairs`'s columns joined with
    :func:`analysis.compare.compare`'s (``metric``, ``higher_is_better``,
    ``direction``, ``win_rate``, ``ci_low``, ``ci_high``, ``p_value``, ``n``,
    ``unit``, ``n_clusters``, ..., ``mean_a`` (Z-Sampling), ``mean_b``
    (baseline), ``mean_diff`` with its interval, the guard distance columns),
    one row per (pair, metric). ``references``: guard -> the data's value
    (default: :func:`analysis.references.guard_references` of each model;
    without data a guard is judged against the standard cell's value).
    """
    pairs = matched_pairs(results, matched, zigzag_cells)
    metrics = list(metrics) if metrics is not None else [m for m in metric_columns(results)
                                                         if results[m].notna().any()]
    from analysis.references import guard_references

    frames = []
    standard_means = {row["zigzag_cell"]: row["baseline_cell"] for _, row in pairs.iterrows()
                      if row["baseline"] == "standard"}
    for _, pair in pairs.iterrows():
        refs = dict(references) if references is not None else guard_references(pair["model"], metrics)
        sources = {}
        standard = standard_means.get(pair["zigzag_cell"])
        for metric in metrics:
            if is_guard(metric, directions) and metric not in refs and standard is not None:
                refs[metric] = float(results.loc[results["cell"] == standard, metric].mean())  # no data: standard's
                sources[metric] = "standard baseline"
        table = compare(results, {"cell": pair["zigzag_cell"]}, {"cell": pair["baseline_cell"]}, metrics,
                        directions=directions, references=refs, seed=seed, n_resamples=n_resamples)
        for metric, source in sources.items():
            table.loc[table["metric"] == metric, "reference_source"] = source
        for key in reversed(pairs.columns):
            table.insert(0, key, pair[key])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=[*pairs.columns, "metric", "higher_is_better", "win_rate", "ci_low", "ci_high",
                                     "p_value", "n"])
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------- verdicts
def outcome(row: Mapping[str, Any]) -> str:
    """"better", "worse" or "tie" for Z-Sampling from a win-rate row's CI (tie: the CI covers 0.5)."""
    low, high = float(row["ci_low"]), float(row["ci_high"])
    if not (math.isfinite(low) and math.isfinite(high)):
        return "tie"
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "tie"


def _interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def _phrase(row: Mapping[str, Any]) -> str:
    """One comparison in words, always with its interval (never "equal": "no detectable difference at this n")."""
    unit = row.get("unit", "sample")
    clusters = row.get("n_clusters")
    n_text = f"n={int(row['n'])}" + (f" in {int(clusters)} prompts, prompt-level CI" if unit == "prompt" else "")
    numbers = (f"win rate {float(row['win_rate']):.2f}, 95% CI {_interval(float(row['ci_low']), float(row['ci_high']))}"
               f", {n_text}")
    label = row.get("baseline_label") or row.get("baseline")
    verdict = {"better": "Z-Sampling is better than", "worse": "Z-Sampling is worse than",
               "tie": "no detectable difference at this n from"}[outcome(row)]
    text = f"{verdict} {label} ({numbers}"
    if math.isfinite(float(row.get("diff_ci_low", math.nan))):
        text += (f"; mean difference {float(row['mean_diff']):+.3f} "
                 f"[{float(row['diff_ci_low']):+.3f}, {float(row['diff_ci_high']):+.3f}]")
    return text + ")"


def guard_phrase(row: Mapping[str, Any]) -> str:
    """A guard comparison: each side's distance from the reference value, and the difference with its interval."""
    reference, source = float(row["reference"]), row.get("reference_source") or "reference"
    diff, low, high = float(row["distance_diff"]), float(row["distance_ci_low"]), float(row["distance_ci_high"])
    if high < 0:
        verdict = "closer to"
    elif low > 0:
        verdict = "further from"
    else:
        verdict = "no detectable difference at this n in distance from"
    label = row.get("baseline_label") or row.get("baseline")
    return (f"Z-Sampling is {verdict} the {source}'s value {reference:.3f} than {label} is "
            f"(|Z - ref| {float(row['distance_a']):.3f} vs {float(row['distance_b']):.3f}; difference {diff:+.3f}, "
            f"95% CI [{low:+.3f}, {high:+.3f}])")


def _listing(names: Sequence[str] | set[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def headline(part: pd.DataFrame, quality: set[str]) -> tuple[str, str]:
    """("Yes" | "No" | "No detectable difference" | "Mixed" | "", reason) for one Z-Sampling cell's rows.

    Judged on the target metrics (every metric not in ``quality``) against the
    guidance-matched baselines (:data:`GUIDANCE_MATCHED`): *Yes* when Z-Sampling
    wins (CI above 0.5) on some target metric against each of them and loses on
    none; *No* when one of them beats it on some target metric while it wins
    none there; *No detectable difference* when every CI covers 0.5; *Mixed*
    otherwise. Empty when the rows hold no guidance-matched baseline.
    """
    matched = part[part["baseline"].isin(GUIDANCE_MATCHED) & ~part["metric"].isin(quality)]
    if matched.empty:
        return "", ""
    wins: dict[str, set[str]] = {}
    losses: dict[str, set[str]] = {}
    for baseline, rows in matched.groupby("baseline", sort=False):
        outcomes = rows.apply(outcome, axis=1)
        wins[baseline] = set(rows.loc[outcomes == "better", "metric"])
        losses[baseline] = set(rows.loc[outcomes == "worse", "metric"])
    detail = "; ".join(f"vs {BASELINE_LABELS.get(b, b)}: better on {_listing(wins[b])}, worse on {_listing(losses[b])}"
                       for b in wins)
    if all(wins[b] and not losses[b] for b in wins):
        return "Yes", detail
    if any(losses[b] and not wins[b] for b in wins):
        return "No", detail
    if not any(wins.values()) and not any(losses.values()):
        return "No detectable difference", detail + (" (every win-rate CI covers 0.5: at this sample size the gain "
                                                     "is what stronger guidance with the same compute also gives)")
    return "Mixed", detail


def verdict_markdown(
    table: pd.DataFrame,
    *,
    guidance: pd.DataFrame | None = None,
    quality_metrics: Sequence[str] | None = None,
) -> str:
    """The result in plain words, computed from the win-rate CIs of :func:`matched_comparison`.

    Per Z-Sampling cell: the measured effective guidance beside its
    first-order value (with ``guidance``: the run's ``effective_guidance``
    table, ``RunData.guidance``); the answer to "does self-reflection beat
    plain CFG at the same effective strength and compute?" on the target
    metrics (:func:`headline`); the quality guards against the
    guidance-matched baselines; then one line per metric and baseline (all
    baselines, standard sampling included). ``quality_metrics`` default: the
    quality guards (``clipping_fraction``, ``saturation``: distance from the
    data's value) and the lower-is-better metrics (``nn_distance``). Every
    difference is stated with its interval; a CI covering 0.5 reads "no
    detectable difference at this n", never "equal".
    """
    if table.empty:
        return "No Z-Sampling cell has matched baselines in this run (run the sweep with matched_baselines: true).\n"
    lines: list[str] = []
    for cell, part in table.groupby("zigzag_cell", sort=False):
        first = part.iloc[0]
        lines.append(f"**Z-Sampling ({first['operator']} zag; {first['setting']})**")
        lines.append("")
        if guidance is not None and "cell" in guidance and cell in set(guidance["cell"]):
            g = guidance[guidance["cell"] == cell].iloc[0]
            lines.append(
                f"- Effective guidance (||d||-weighted over the trajectory): signed parallel form "
                f"{float(g['effective_guidance_parallel']):.2f} (the matched baseline's scale), norm form "
                f"{float(g['effective_guidance']):.2f}; in the window "
                f"{float(g['effective_guidance_parallel_window']):.2f} / {float(g['effective_guidance_window']):.2f}; "
                f"first-order value {float(g['first_order']):.2f} "
                f"(g1 = {float(g['guidance_scale']):g}).")
        quality = set(quality_metrics) if quality_metrics is not None else {
            m for m in part["metric"].unique() if is_guard(m) or not higher_is_better(m)}
        answer, detail = headline(part, quality)
        if answer:
            targets = _listing(set(part["metric"]) - quality)
            lines.append(f"- Does self-reflection beat plain CFG at the same effective strength and compute "
                         f"(on {targets})? **{answer}**: {detail}.")
        guards = part[part["baseline"].isin(GUIDANCE_MATCHED) & part["metric"].isin(quality)]
        if not guards.empty:
            words = {"better": "better", "worse": "worse", "tie": "no detectable difference at this n"}
            text = "; ".join(f"{row['metric']} vs {BASELINE_LABELS.get(row['baseline'], row['baseline'])}: "
                             f"{_guard_word(row, words)}" for _, row in guards.iterrows())
            lines.append(f"- Quality guards against the guidance-matched baselines: {text}.")
        for _, row in part.iterrows():
            tag = " (quality guard)" if row["metric"] in quality else ""
            lines.append(f"- {row['metric']}{tag}: {_phrase(row)}.")
            if is_guard(str(row["metric"])) and math.isfinite(float(row.get("distance_diff", math.nan))):
                lines.append(f"  - set level: {guard_phrase(row)}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _guard_word(row: Mapping[str, Any], words: Mapping[str, str]) -> str:
    """A guard's outcome from its set-level distance interval (closer to the reference = better)."""
    if is_guard(str(row["metric"])) and math.isfinite(float(row.get("distance_ci_high", math.nan))):
        low, high = float(row["distance_ci_low"]), float(row["distance_ci_high"])
        word = "better (closer to the reference)" if high < 0 else "worse (further from the reference)" \
            if low > 0 else words["tie"]
        return f"{word}, distance difference {float(row['distance_diff']):+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"{words[outcome(row)]}, win rate {float(row['win_rate']):.2f} " \
           f"{_interval(float(row['ci_low']), float(row['ci_high']))}"


# -------------------------------------------------------------- per-step frames
def guidance_frame(run: RunData, cells: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-step effective guidance and gain decomposition of traced cells, with their settings.

    :func:`zsampling.trace.effective_guidance` of each cell's trace (default:
    every traced Z-Sampling cell), with ``cell``, ``method``, ``operator`` and
    the settings columns in front.
    """
    from zsampling.trace import effective_guidance

    if run.results is None or run.results.empty:
        raise ValueError("the run has no results table")
    settings = run.results.drop_duplicates("cell").set_index("cell")
    if cells is None:
        cells = [c for c in settings.index if settings.loc[c, "method"] == "zigzag" and c in run.trace_files]
    frames = []
    for cell in cells:
        frame = effective_guidance(run.trace(cell))
        row = settings.loc[cell]
        operator = operator_label(settings.loc[[cell]].reset_index()).iloc[0]
        for position, (name, value) in enumerate((("cell", cell), ("model", row["model"]), ("method", row["method"]),
                                                  ("operator", operator),
                                                  ("num_inference_steps", int(row["num_inference_steps"])),
                                                  ("zigzag_steps", int(row["zigzag_steps"])))):
            frame.insert(position, name, value)
        frames.append(frame)
    if not frames:
        raise ValueError("no traced Z-Sampling cell in the run (record traces in the sweep)")
    return pd.concat(frames, ignore_index=True)


def guidance_profile(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] = ("operator", "cell"),
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Per-step effective guidance (mean over samples, 95 % bootstrap CI) plus reference lines.

    Args:
        frame: :func:`guidance_frame` (or ``Trace.effective_guidance()`` with
            the ``by`` columns added).
        by: the curves' grouping (one panel each).

    Returns:
        Long format: ``by``, ``quantity`` (:data:`PROFILE_QUANTITIES` labels
        and, with ``step`` NaN, the :data:`REFERENCE_LINES`: g1, the first-order
        value and the measured ||d||-weighted means of the parallel form (the
        matched baseline's scale) and the norm form), ``step``, ``mean``,
        ``ci_low``, ``ci_high``, ``n``, ``unit``, ``n_clusters``.
    """
    from zsampling.trace import guidance_summary

    by = list(by)
    unit = [*by, "sample", *(["prompt"] if "prompt" in frame.columns else [])]
    long = frame.melt(id_vars=[*unit, "step"], value_vars=list(PROFILE_QUANTITIES), var_name="quantity",
                      value_name="value")
    curves = summarize(long, [*by, "quantity", "step"], "value", seed=seed, n_resamples=n_resamples,
                       cluster="prompt")
    curves["quantity"] = curves["quantity"].map(PROFILE_QUANTITIES)
    lines = []
    for key, part in frame.groupby(by, sort=True, observed=True) if by else [((), frame)]:
        key = key if isinstance(key, tuple) else (key,)
        summary = guidance_summary(part)
        values = {"g1": summary["g1"], "first_order": summary["first_order"],
                  "measured": summary["effective_guidance_parallel"], "measured_norm": summary["effective_guidance"]}
        for name, value in values.items():
            lines.append({**dict(zip(by, key, strict=True)), "quantity": REFERENCE_LINES[name], "step": np.nan,
                          "mean": value, "ci_low": np.nan, "ci_high": np.nan, "n": summary["n_samples"],
                          "unit": "reference line", "n_clusters": 0})
    out = pd.concat([curves, pd.DataFrame(lines, columns=curves.columns)], ignore_index=True)
    return out[[*by, "quantity", "step", "mean", "ci_low", "ci_high", "n", "unit", "n_clusters"]]


def decomposition_profile(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] = ("operator", "cell"),
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """The reflections' gain along and orthogonal to eps_c - eps_u, per step and cumulative (latent units).

    Returns long format: ``by``, ``panel`` ("per step" | "cumulative"),
    ``quantity`` (:data:`DECOMPOSITION_QUANTITIES` labels), ``step``,
    ``mean``, ``ci_low``, ``ci_high``, ``n``, over the reflecting steps
    (cumulative: the running sums, carried to the last step).
    """
    by = list(by)
    parts = []
    for panel, columns, rows in (("per step", ["gain_parallel", "gain_orthogonal"], frame[frame["reflects"]]),
                                 ("cumulative", ["cum_gain_parallel", "cum_gain_orthogonal"], frame)):
        unit = [*by, "sample", *(["prompt"] if "prompt" in rows.columns else [])]
        long = rows.melt(id_vars=[*unit, "step"], value_vars=columns, var_name="quantity", value_name="value")
        summary = summarize(long, [*by, "quantity", "step"], "value", seed=seed, n_resamples=n_resamples,
                            cluster="prompt")
        summary["quantity"] = summary["quantity"].map(DECOMPOSITION_QUANTITIES)
        summary.insert(len(by), "panel", panel)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)[[*by, "panel", "quantity", "step", "mean", "ci_low", "ci_high", "n",
                                                "unit", "n_clusters"]]


def matched_cost_curve(
    results: pd.DataFrame,
    matched: pd.DataFrame | None = None,
    metrics: Sequence[str] | None = None,
    *,
    zigzag_cells: Sequence[str] | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Metric vs network rows per sample: each Z-Sampling cell, standard sampling at its g1 (every T
    in the run) and its matched baselines, one ``panel`` per Z-Sampling cell.

    Returns :func:`analysis.compare.cost_curve`'s columns plus ``panel``
    (operator and setting), ``zigzag_cell`` and ``guidance_scale`` (each
    point's g), with ``method`` = "zigzag (<operator>)", "standard" or the
    matched method name.
    """
    pairs = matched_pairs(results, matched, zigzag_cells)
    metrics = list(metrics) if metrics is not None else [m for m in metric_columns(results)
                                                         if results[m].notna().any()]
    standard = unique_standard(results)
    standard = standard[standard["method"] == "standard"]
    frames = []
    for cell, part in pairs.groupby("zigzag_cell", sort=False):
        first = part.iloc[0]
        z = results[results["cell"] == cell]
        std = select(standard, model=first["model"], guidance_scale=float(z["guidance_scale"].iloc[0]))
        derived = results[results["cell"].isin(part.loc[part["baseline"] != "standard", "baseline_cell"])]
        rows = pd.concat([z, std, derived], ignore_index=True)
        curve = cost_curve(rows, metrics, by=("model", "guidance_scale"), seed=seed, n_resamples=n_resamples)
        curve.insert(0, "panel", short_setting(first))
        curve.insert(1, "zigzag_cell", cell)
        frames.append(curve)
    if not frames:
        raise ValueError("no Z-Sampling cell with matched baselines")
    return pd.concat(frames, ignore_index=True)


__all__ = [
    "BASELINES", "BASELINE_LABELS", "DECOMPOSITION_QUANTITIES", "GUIDANCE_MATCHED", "MATCHED_METHODS",
    "PROFILE_QUANTITIES", "REFERENCE_LINES", "decomposition_profile", "guidance_frame", "guidance_profile",
    "guard_phrase", "headline",
    "matched_comparison", "matched_cost_curve", "matched_pairs", "outcome", "short_setting", "verdict_markdown",
]
