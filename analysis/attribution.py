"""Prompt-part attribution and the pairs world's matched-guidance question.

Two analyses, both with prompt-level (cluster) intervals: samples of one
prompt share the prompt, so they are not independent; every interval here is
a bootstrap over prompts of per-prompt means (``scipy.stats.bootstrap``,
BCa, 95%, seed 0) -- samples are never resampled on their own.

* :func:`matched_prompt_comparison`: from a pairs sweep with matched
  baselines (``zsampling demo --world pairs``), Z-Sampling minus each plain
  CFG baseline that spends the same network rows, per metric, as the mean
  over prompts of the per-prompt mean difference (samples pair by prompt and
  seed). ``binding_error`` is averaged over relation prompts only ("A left of
  B", "B right of A"): for "and" prompts order is free, so it is 0 by
  definition there.
* :func:`cumulative_gain` / :func:`attribution_table` /
  :func:`plot_attribution`: which prompt part each reflection injects, from
  the long tables of :class:`zsampling.trace.attribution.PartAttributionRecorder`
  (recorded by :func:`zsampling.pairs_attribution.attribution_runs`: this
  module never runs a model).
  For relation prompts the parts are the *subject* ("3" in "3 left of 7":
  dropping it leaves "left of 7") and the *relation* ("left of 7": dropping it
  leaves "3", i.e. a 3 next to a blank). Z-Sampling runs at g1 record each
  reflection's gain; the matched plain-CFG baseline (its g_m and network rows
  from the sweep) records each step's extra guidance injection over g1,
  ``b_i (g_m - g1)(eps_c - eps_u)`` -- what stronger guidance adds on top of
  the g1 both share, to be set against what reflection adds. Both are
  decomposed on the part directions (least-squares ``component``; ``rest`` is
  the norm of what no part direction explains) and reported as
  ``injection`` = -component (:func:`with_injection`: x moves along -d_p when
  a part is added, so positive means toward the part).

``python -m zsampling.pairs_attribution --run-dir DIR --out figures`` writes
``pairs_attribution.png``/``.pdf`` and ``pairs_attribution.csv`` (the
table) and ``pairs_matched.csv`` (the comparison) from a finished
``zsampling demo --world pairs --out DIR``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
MATCHED_METRICS: tuple[str, ...] = ("exact_match", "binding_error", "missing_digit", "slot_accuracy",
                                    "pairs_nn_distance")
_RELATION = re.compile(r"^\s*(\d)\s+(left|right)\s+of\s+(\d)\s*$")


def is_relation_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is "A left of B" or "B right of A" (where binding errors are possible)."""
    return _RELATION.match(prompt) is not None


def prompt_bootstrap(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """Mean of per-prompt values and its bootstrap CI over prompts (BCa; percentile when BCa is degenerate).

    Returns (mean, low, high); a single prompt or constant values give a zero-width interval.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("prompt_bootstrap needs at least one per-prompt value")
    mean = float(x.mean())
    if x.size < 2 or np.allclose(x, x[0]):
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                    random_state=rng)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                        random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return mean, low, high


def per_prompt_difference(results: pd.DataFrame, cell_a: str, cell_b: str, metric: str) -> pd.Series:
    """Per-prompt mean of (A - B) over samples paired by (prompt, seed); binding_error: relation prompts only."""
    keys = ["prompt", "seed"]
    a = results.loc[results["cell"] == cell_a, [*keys, metric]]
    b = results.loc[results["cell"] == cell_b, [*keys, metric]]
    paired = a.merge(b, on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if paired.empty:
        raise ValueError(f"cells {cell_a} and {cell_b} share no (prompt, seed) samples")
    if metric == "binding_error":
        paired = paired[paired["prompt"].map(is_relation_prompt)]
    paired["diff"] = paired[f"{metric}_a"] - paired[f"{metric}_b"]
    return paired.groupby("prompt", sort=True)["diff"].mean()


def _prompt_mean(results: pd.DataFrame, cell: str, metric: str) -> float:
    rows = results[results["cell"] == cell]
    if metric == "binding_error":
        rows = rows[rows["prompt"].map(is_relation_prompt)]
    return float(rows.groupby("prompt")[metric].mean().mean())


def matched_prompt_comparison(results: pd.DataFrame, matched: pd.DataFrame,
                              metrics: Sequence[str] = MATCHED_METRICS) -> pd.DataFrame:
    """Z-Sampling vs each of its matched baselines, per metric, with prompt-level 95% CIs.

    Args:
        results: the sweep's results table.
        matched: its ``matched.parquet`` table (``cell``, ``method``, ``source_cell``).

    Returns:
        One row per (baseline, metric): ``baseline``, ``baseline_scale``,
        ``zigzag_nfe``, ``baseline_nfe``, ``metric``, ``zigzag``, ``baseline_mean``
        (means over prompts of per-prompt means), ``diff`` (Z minus baseline),
        ``ci_low``, ``ci_high``, ``n_prompts``, ``verdict`` ("Z-Sampling better",
        "CFG better" or "no difference": the CI excludes 0 or not; lower is
        better for binding_error, missing_digit and pairs_nn_distance).
    """
    lower_better = {"binding_error", "missing_digit", "pairs_nn_distance"}
    cells = results.drop_duplicates("cell").set_index("cell")
    nfe = results.groupby("cell")["nfe"].mean()
    rows = []
    for _, link in matched.sort_values(["source_cell", "method"]).iterrows():
        source, base = str(link["source_cell"]), str(link["cell"])
        if source not in cells.index or base not in cells.index:
            continue
        for metric in [m for m in metrics if m in results]:
            diffs = per_prompt_difference(results, source, base, metric)
            mean, low, high = prompt_bootstrap(diffs.to_numpy())
            better = (low > 0 or high < 0) and ((mean > 0) != (metric in lower_better))
            worse = (low > 0 or high < 0) and not better
            rows.append({
                "baseline": link["method"], "baseline_scale": float(cells.loc[base, "guidance_scale"]),
                "baseline_steps": int(cells.loc[base, "num_inference_steps"]),
                "zigzag_nfe": float(nfe[source]), "baseline_nfe": float(nfe[base]), "metric": metric,
                "zigzag": _prompt_mean(results, source, metric), "baseline_mean": _prompt_mean(results, base, metric),
                "diff": mean, "ci_low": low, "ci_high": high, "n_prompts": len(diffs),
                "verdict": "Z-Sampling better" if better else ("CFG better" if worse else "no difference"),
            })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ attribution
def relation_parts(prompt: str) -> list[str]:
    """The subject and relation parts of a relation prompt: "3 left of 7" -> ["3", "left of 7"]."""
    m = _RELATION.match(prompt)
    if m is None:
        raise ValueError(f"relation_parts needs a prompt 'A left of B' or 'B right of A', got {prompt!r}")
    return [m.group(1), f"{m.group(2)} of {m.group(3)}"]


def with_injection(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``injection``: how far a gain moves x *toward* each part, ``-component`` (``rest`` rows: ||r||).

    Why the sign: a DDIM step moves x by b_i eps with b_i < 0, so adding a part to the prompt (eps_c moving by
    +d_p) moves x along -d_p. A positive injection is movement toward the part, a negative one away from it.
    """
    out = frame.copy()
    out["injection"] = np.where(out["part"] == "rest", out["component"], -out["component"])
    return out


def cumulative_gain(frame: pd.DataFrame, value: str = "injection") -> pd.DataFrame:
    """Per (setting, part, step): the mean over samples of ``value`` summed over rounds, and its cumulative sum.

    ``rest`` rows carry ||r|| (a norm, so its cumulative sum is the total unexplained length). The default
    ``injection`` is computed by :func:`with_injection` when the frame lacks it.
    """
    if value == "injection" and value not in frame:
        frame = with_injection(frame)
    per_step = (frame.groupby(["setting", "method", "part", "step", "progress", "sample"], sort=True)[value].sum()
                .groupby(level=["setting", "method", "part", "step", "progress"]).mean().rename("gain").reset_index())
    per_step = per_step.sort_values(["setting", "part", "step"])
    per_step["cumulative"] = per_step.groupby(["setting", "part"])["gain"].cumsum()
    return per_step


def attribution_table(frame: pd.DataFrame, outcomes: pd.DataFrame | None = None,
                      value: str = "injection") -> pd.DataFrame:
    """Per (setting, part): total injection (sum over steps and rounds of ``value``) per sample, as the mean over
    prompts of per-prompt means with a prompt-level 95% CI; with ``outcomes``, the setting's exact match and
    binding error (relation prompts) and the attribution's extra network rows."""
    if value == "injection" and value not in frame:
        frame = with_injection(frame)
    totals = frame.groupby(["setting", "method", "part", "prompt", "sample"], sort=True)[value].sum().reset_index()
    rows = []
    for (setting, method, part), group in totals.groupby(["setting", "method", "part"], sort=False):
        per_prompt = group.groupby("prompt")[value].mean()
        mean, low, high = prompt_bootstrap(per_prompt.to_numpy())
        row: dict[str, Any] = {"setting": setting, "method": method, "part": part, "total": mean, "ci_low": low,
                               "ci_high": high, "n_prompts": len(per_prompt), "n_samples": len(group)}
        if outcomes is not None and not outcomes.empty:
            o = outcomes[outcomes["setting"] == setting]
            row["exact_match"] = float(o.groupby("prompt")["exact_match"].mean().mean())
            rel = o[o["prompt"].map(is_relation_prompt)]
            row["binding_error"] = float(rel.groupby("prompt")["binding_error"].mean().mean())
            row["network_rows"] = int(o["network_rows"].iloc[0])
            row["attribution_extra_rows"] = int(o["extra_rows"].iloc[0])
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("setting", key=lambda col: col.map(setting_order), kind="stable", ignore_index=True)


def setting_order(setting: str) -> tuple[int, int, str]:
    """Sort key of attribution settings: Z-Sampling by window lambda, then the CFG baseline."""
    m = re.search(r"lambda=(\d+)", setting)
    return (0, int(m.group(1)), setting) if m else (1, 0, setting)


def plot_attribution(curves: pd.DataFrame, *, title: str | None = None) -> Any:
    """Cumulative per-part injection vs sampling progress, one panel per setting (seaborn)."""
    import seaborn as sns

    order = sorted(dict.fromkeys(curves["setting"]), key=setting_order)
    parts = [p for p in dict.fromkeys(curves["part"]) if p != "rest"] + ["rest"]
    grid = sns.relplot(data=curves, x="progress", y="cumulative", hue="part", hue_order=parts, col="setting",
                       col_order=order,
                       kind="line", marker="o", markersize=3, height=2.8, aspect=1.0,
                       facet_kws={"sharey": True})
    grid.set_axis_labels("sampling progress (step / T)", "cumulative injection toward part")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.axhline(0.0, color="0.6", lw=0.8)
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid.figure
