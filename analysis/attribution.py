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
* :func:`attribution_runs` / :func:`cumulative_gain` /
  :func:`attribution_table` / :func:`plot_attribution`: which prompt part each
  reflection injects (:class:`zsampling.trace.attribution.PartAttributionRecorder`).
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

``python -m analysis.attribution --run-dir DIR --out figures`` writes
``pairs_attribution.png``/``.pdf`` and ``pairs_attribution.csv`` (the
table) and ``pairs_matched.csv`` (the comparison) from a finished
``zsampling demo --world pairs --out DIR``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
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


def attribution_runs(
    pipe: Any,
    prompts: Sequence[str],
    *,
    guidance: float,
    steps: int,
    windows: Sequence[int],
    matched_scale: float,
    matched_steps: int,
    seeds: int = 4,
    parts: Callable[[str], list[str]] = relation_parts,
    part_names: Sequence[str] = ("subject", "relation"),
    scorer: Callable[[Any, list[str]], dict[str, np.ndarray]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run Z-Sampling (g2 = 0, each window lambda) and the matched plain CFG with attribution recorders.

    Every run samples the same ``len(prompts) * seeds`` initial noises (one
    generator per sample, seed = its index within its prompt). Returns
    ``(frame, outcomes)``: the recorders' long tables with a ``setting``,
    ``method``, ``progress`` (= (step + 1) / T, to line up runs of different
    T) and ``seed`` column, and per-sample outcome metrics from ``scorer``
    (``pair_scores(images, prompts)`` of the decoded images) with the
    setting, the recorder's ``extra_rows`` and the run's ``network_rows``.
    """
    import torch

    import zsampling
    from zsampling.schedule import DDIMSchedule
    from zsampling.trace.attribution import PartAttributionRecorder

    batch = [p for p in prompts for _ in range(seeds)]
    seed_of = [s for _ in prompts for s in range(seeds)]
    parts_per = [parts(p) for p in batch]
    runs: list[tuple[str, str, int, float, int]] = [(f"Z-Sampling lambda={w}", "zigzag", steps, guidance, w)
                                                     for w in windows]
    runs.append((f"CFG g={matched_scale:g} (matched)", "cfg_matched", matched_steps, matched_scale, 0))
    frames, outcomes = [], []
    for setting, method, T, g, window in runs:
        schedule = DDIMSchedule.from_scheduler(pipe.scheduler, T)
        rec = PartAttributionRecorder(pipe, batch, parts_per, part_names=list(part_names),
                                      reference_guidance=guidance if method == "cfg_matched" else None,
                                      schedule=schedule)
        out = zsampling.sample(pipe, batch, num_inference_steps=T, guidance_scale=g, inversion_guidance_scale=0.0,
                               zigzag_steps=window, generator=[torch.Generator().manual_seed(s) for s in seed_of],
                               output_type="pt", recorder=rec, progress=False)
        frame = rec.to_frame()
        frame.insert(0, "setting", setting)
        frame.insert(1, "method", method)
        frame["progress"] = (frame["step"] + 1) / T
        frame["seed"] = [seed_of[b] for b in frame["sample"]]
        frames.append(frame)
        if scorer is not None:
            scores = pd.DataFrame(scorer(out.images, batch))
            scores.insert(0, "setting", setting)
            scores.insert(1, "method", method)
            scores.insert(2, "prompt", batch)
            scores.insert(3, "seed", seed_of)
            scores["extra_rows"] = rec.extra_rows
            scores["network_rows"] = out.network_rows
            outcomes.append(scores)
    return pd.concat(frames, ignore_index=True), (pd.concat(outcomes, ignore_index=True) if outcomes
                                                   else pd.DataFrame())


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


def main(argv: list[str] | None = None) -> None:
    """Figure + tables from a finished ``zsampling demo --world pairs --out RUN_DIR``."""
    import torch

    from zsampling.denoisers.pairs import load_pairs_pipeline
    from zsampling.metrics.pairs import pair_scores
    from zsampling.pairs_ablation import GUIDANCE, PROMPTS, STEPS

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt of the attribution runs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = pd.read_parquet(args.run_dir / "results.parquet")
    matched = pd.read_parquet(args.run_dir / "matched.parquet")
    args.out.mkdir(parents=True, exist_ok=True)
    comparison = matched_prompt_comparison(results, matched)
    comparison.to_csv(args.out / "pairs_matched.csv", index=False, float_format="%.4f")
    measured = results[results["method"] == "cfg_matched_measured"].iloc[0]
    prompts = [q for q in PROMPTS if is_relation_prompt(q)]
    frame, outcomes = attribution_runs(
        load_pairs_pipeline(), prompts, guidance=GUIDANCE, steps=STEPS, windows=(6, 12, STEPS - 1),
        matched_scale=float(measured["guidance_scale"]), matched_steps=int(measured["num_inference_steps"]),
        seeds=args.seeds, scorer=pair_scores)
    table = attribution_table(frame, outcomes)
    table.to_csv(args.out / "pairs_attribution.csv", index=False, float_format="%.4f")
    fig = plot_attribution(cumulative_gain(frame), title="Pairs world: what each reflection (or the matched CFG's "
                           f"extra guidance over g1 = {GUIDANCE:g}) injects, per prompt part")
    fig.savefig(args.out / "pairs_attribution.png", dpi=150, bbox_inches="tight")
    fig.savefig(args.out / "pairs_attribution.pdf", bbox_inches="tight")


if __name__ == "__main__":
    main()
