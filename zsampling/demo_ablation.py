"""``zsampling demo``: the Z-Sampling ablation on the shipped digits model.

The demo model sits in a low-guidance regime (g1 = 0.75, T = 25) where
standard sampling's alignment is clearly imperfect, so self-reflection has
room to help. The ablation varies one knob at a time around the paper's
setting (g2 = 0, full window lambda = T-1, one round):

* window: lambda in {0, 6, 12, 18, 24}, for both zag operators;
* inversion guidance: g2 in {0, g1/2, g1, 1.5 g1} at the full window;
* rounds: 1, 2 (and 3) reflections per window step;
* steps: T in {10, 25, 50} for Z-Sampling and standard, plus standard at
  T = 61, which spends the same network rows as Z-Sampling at T = 25
  (2*61 = 122 = 2T + 3*lambda), the fairness check at equal compute;
* matched guidance: plain CFG at Z-Sampling's measured effective guidance
  and at 2 g1 - g2, with the same network rows (DESIGN.md, "Evaluation
  honesty"), for both zag operators.

Each part is a sweep spec run into one output directory (``extend``), so the
demo resumes after an interruption and every sample pairs across cells by
(prompt, seed). Figures come from :mod:`analysis` and a summary table of
win rates against standard sampling (prompt-level Wilson intervals) and
Frechet distances (bootstrap interval, real-data noise floor) is returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

GUIDANCE = 0.75
STEPS = 25
METRICS = ("alignment", "accuracy", "nn_distance", "clipping_fraction", "frechet_pca")
SUMMARY_METRICS = ("alignment", "accuracy", "nn_distance", "clipping_fraction")


def demo_specs(seeds_per_digit: int = 20, *, quick: bool = False) -> dict[str, dict[str, Any]]:
    """The demo's sweep specs (plain dicts for :func:`zsampling.sweep.parse_spec`), by part.

    ``quick`` keeps every part but fewer values, for tests and a first look.
    """
    if seeds_per_digit < 1:
        raise ValueError(f"seeds_per_digit must be >= 1, got {seeds_per_digit}")
    base: dict[str, Any] = {
        "model": {"name": "demo"},
        "prompts": [str(digit) for digit in range(10)],
        "seeds": {"start": 0, "count": seeds_per_digit},
        "metrics": list(METRICS),
        "trace": {"keep": ["scalars", "latents"], "decode_every": 4},
        "batch_size": 10 * seeds_per_digit,
    }
    knobs = {"guidance_scale": [GUIDANCE], "rounds": [1], "zag_eval_timestep": ["next"]}
    windows = [0, 12, 24] if quick else [0, 6, 12, 18, 24]
    gaps = [0.0, GUIDANCE, 1.5 * GUIDANCE] if quick else [0.0, GUIDANCE / 2, GUIDANCE, 1.5 * GUIDANCE]
    steps = [10, 25] if quick else [10, 25, 50]
    rounds = [1, 2] if quick else [1, 2, 3]
    parts = {
        "window": {"num_inference_steps": [STEPS], "inversion_guidance_scale": [0.0], "zigzag_steps": windows,
                   "zag": ["official", "ddim"]},
        "inversion_guidance": {"num_inference_steps": [STEPS], "inversion_guidance_scale": gaps,
                               "zigzag_steps": ["full"], "zag": ["official"]},
        "rounds": {"num_inference_steps": [STEPS], "inversion_guidance_scale": [0.0], "zigzag_steps": ["full"],
                   "zag": ["official"], "rounds": rounds},
        "steps": {"num_inference_steps": steps, "inversion_guidance_scale": [0.0], "zigzag_steps": [0, "full"],
                  "zag": ["official"]},
        "equal_compute": {"num_inference_steps": [STEPS + (3 * (STEPS - 1) + 1) // 2],
                          "inversion_guidance_scale": [0.0], "zigzag_steps": [0], "zag": ["official"]},
    }
    specs = {name: {**base, "name": f"demo-{name}", "grid": {**knobs, **grid}} for name, grid in parts.items()}
    specs["matched_guidance"] = {
        **base, "name": "demo-matched-guidance", "matched_baselines": True,
        "grid": {**knobs, "num_inference_steps": [STEPS], "inversion_guidance_scale": [0.0],
                 "zigzag_steps": ["full"], "zag": ["official", "ddim"]},
    }
    return specs


def run_demo(
    out: str | Path,
    *,
    seeds_per_digit: int = 20,
    quick: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> pd.DataFrame:
    """Run the demo ablation into ``out`` (resumable) and return the summary table.

    Writes the sweep outputs (results / cells tables, traces, images,
    manifest) to ``out`` and, with ``figures``, every figure with its CSV and
    an index to ``out/figures``. The summary is also saved as
    ``out/summary.csv``.
    """
    from zsampling.sweep import parse_spec, run_sweep

    out = Path(out)
    specs = demo_specs(seeds_per_digit, quick=quick)
    parsed = [parse_spec(spec) for spec in specs.values()]  # validate every part before running any
    result = None
    for spec in parsed:
        result = run_sweep(spec, out, extend=True, progress=progress)
    assert result is not None and result.results is not None
    from analysis import load_run
    from analysis.references import frechet_table

    summary = summarize_demo(result.results, result.cells, fidelity=frechet_table(load_run(out)))
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    if figures:
        from analysis import write_figures

        write_figures(out, out / "figures")
    return summary


def summarize_demo(results: pd.DataFrame, cells: pd.DataFrame | None = None,
                   fidelity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per demo setting: mean metrics, the Frechet distance and the paired win rate on alignment
    against standard sampling at T = 25.

    The win rate's 95% interval is the Wilson interval with the prompts'
    effective sample size (10 digits x the seeds: the prompt is the unit,
    ``unit`` / ``n_clusters`` / ``ci_method`` say so); ``p_value`` is the
    Wilcoxon test on the per-prompt mean differences. With ``fidelity``
    (:func:`analysis.references.frechet_table`) the Frechet distance gets its
    bootstrap interval (``frechet_ci_low`` / ``frechet_ci_high``) and the
    real-data noise floor at the same n (``frechet_floor``, the median of real
    subsets scored like a generated set, and its 95% range ``frechet_floor_high``).
    """
    from analysis import compare

    baseline = {"method": "standard", "num_inference_steps": STEPS, "inversion_guidance_scale": 0.0, "rounds": 1,
                "zag": "official"}
    settings = ["method", "num_inference_steps", "guidance_scale", "zigzag_steps", "inversion_guidance_scale", "rounds",
                "zag"]
    rows = []
    for key, group in results.groupby(settings, sort=True):
        setting = dict(zip(settings, key, strict=True))
        if setting["method"] == "standard" and setting["zag"] != "official":
            continue  # the same standard samples are listed under every operator
        row: dict[str, Any] = {**setting, "nfe": int(group["nfe"].iloc[0]), "n": len(group)}
        for metric in SUMMARY_METRICS:
            row[metric] = group[metric].mean()
        row["frechet_pca"] = _cell_metric(cells, group, "frechet_pca")
        if fidelity is not None and not fidelity.empty:
            match = fidelity[fidelity["cell"].isin(group["cell"].unique())]
            if len(match):
                first = match.iloc[0]
                row.update(frechet_ci_low=first["ci_low"], frechet_ci_high=first["ci_high"],
                           frechet_floor=first["floor_vs_data"], frechet_floor_high=first["floor_vs_data_high"])
        if any(setting[name] != value for name, value in baseline.items()):
            win = compare(results, setting, baseline, ["alignment"]).iloc[0]
            row.update(win_rate=win["win_rate"], ci_low=win["ci_low"], ci_high=win["ci_high"],
                       p_value=win["p_value"], unit=win["unit"], n_clusters=win["n_clusters"],
                       ci_method=win["ci_method"])
        rows.append(row)
    return pd.DataFrame(rows)


def _cell_metric(cells: pd.DataFrame | None, group: pd.DataFrame, metric: str) -> float:
    if cells is None or metric not in cells:
        return float("nan")
    values = cells.loc[cells["cell"].isin(group["cell"].unique()), metric]
    return float(values.iloc[0]) if len(values) else float("nan")
