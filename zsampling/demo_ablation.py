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
  and at 2 g1 - g2, with the same network rows (docs/design.md, "Evaluation
  honesty"), for both zag operators.

Each part is a sweep spec run into one output directory (``extend``), so the
demo resumes after an interruption and every sample pairs across cells by
(prompt, seed). Figures come from :mod:`analysis` and a summary table of
win rates against standard sampling (prompt-level Wilson intervals) and
Frechet distances (bootstrap interval, real-data noise floor) is returned.

``family="flow"`` runs the same ablation on the rectified-flow twin of the
digits model (same data, same metrics) with the exact "euler" zag, evaluated
at sigma_{i+1} or sigma_i in the window part where DDIM compares its two
operators.

``gap="lora"`` runs the weight-gap demo instead (:func:`lora_gap_specs`):
on the DDIM digits model with its shipped "thickness" LoRA (adapter "w2sd"),
it compares guidance-gap reflection (plain Z-Sampling), weight-gap
reflection (W2SD legs: zig LoRA +s, zag LoRA -s with g2 = 1, step LoRA c),
the LoRA applied plainly (standard sampling at c and at s) and standard
sampling, all paired by (prompt, seed), on alignment, the LoRA's property
(``stroke_thickness``), fidelity (``frechet_pca``) and NFE;
:func:`summarize_lora_gap` says whether the weight gap moves the property
beyond the LoRA applied plainly, with a bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from zsampling.atomic import atomic_write_csv, atomic_write_text

GUIDANCE = 0.75
STEPS = 25
METRICS = ("alignment", "accuracy", "nn_distance", "clipping_fraction", "frechet_pca")
SUMMARY_METRICS = ("alignment", "accuracy", "nn_distance", "clipping_fraction")


FAMILIES: tuple[str, ...] = ("ddim", "flow")
OPERATORS: dict[str, dict[str, Any]] = {
    "ddim": {"reference": "official", "compared": {"zag": ["official", "ddim"], "zag_eval_timestep": ["next"]}},
    "flow": {"reference": "euler", "compared": {"zag": ["euler"], "zag_eval_timestep": ["next", "current"]}},
}
"""Per family: the zag of every part, and the operators the window and matched parts compare."""


def demo_specs(seeds_per_digit: int = 20, *, quick: bool = False, family: str = "ddim") -> dict[str, dict[str, Any]]:
    """The demo's sweep specs (plain dicts for :func:`zsampling.sweep.parse_spec`), by part.

    ``quick`` keeps every part but fewer values, for tests and a first look;
    ``family`` picks the DDIM digits model or its flow-matching twin.
    """
    if seeds_per_digit < 1:
        raise ValueError(f"seeds_per_digit must be >= 1, got {seeds_per_digit}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    zag, compared = OPERATORS[family]["reference"], OPERATORS[family]["compared"]
    base: dict[str, Any] = {
        "model": {"name": "demo", "options": {"family": family}} if family != "ddim" else {"name": "demo"},
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
                   **compared},
        "inversion_guidance": {"num_inference_steps": [STEPS], "inversion_guidance_scale": gaps,
                               "zigzag_steps": ["full"], "zag": [zag]},
        "rounds": {"num_inference_steps": [STEPS], "inversion_guidance_scale": [0.0], "zigzag_steps": ["full"],
                   "zag": [zag], "rounds": rounds},
        "steps": {"num_inference_steps": steps, "inversion_guidance_scale": [0.0], "zigzag_steps": [0, "full"],
                  "zag": [zag]},
        "equal_compute": {"num_inference_steps": [STEPS + (3 * (STEPS - 1) + 1) // 2],
                          "inversion_guidance_scale": [0.0], "zigzag_steps": [0], "zag": [zag]},
    }
    prefix = "demo" if family == "ddim" else f"demo-{family}"
    specs = {name: {**base, "name": f"{prefix}-{name}", "grid": {**knobs, **grid}} for name, grid in parts.items()}
    specs["matched_guidance"] = {
        **base, "name": f"{prefix}-matched-guidance", "matched_baselines": True,
        "grid": {**knobs, "num_inference_steps": [STEPS], "inversion_guidance_scale": [0.0],
                 "zigzag_steps": ["full"], **compared},
    }
    return specs


GAPS: tuple[str, ...] = ("guidance", "lora")
"""What the demo ablates: the guidance gap (the Z-Sampling ablation) or the weight gap (a LoRA)."""

LORA = "thickness"
LORA_ZIG = 1.0
"""Weight-gap half-width s: zig +s, zag -s. The LoRA was trained at scale 1, so +1 is the thick-stroke model it
learned and -1 the same step extrapolated the other way (W2SD's +-1.5 is for an SDXL LoRA of another strength)."""
LORA_STEP = 0.5
"""Step-leg scale c: between 0 and s like W2SD's 0.8 of 1.5, so the ordinary steps carry part of the LoRA and any
extra thickness must come from the reflections."""
LORA_METRICS = ("alignment", "accuracy", "stroke_thickness", "nn_distance", "frechet_pca")
LORA_KNOBS = ("zig.lora_scale", "zag.lora_scale", "step.lora_scale")


def _lora_setting(zig: float, zag: float, step: float) -> dict[str, list[float]]:
    return {"zig.lora_scale": [zig], "zag.lora_scale": [zag], "step.lora_scale": [step]}


def lora_gap_specs(seeds_per_digit: int = 20, *, quick: bool = False, s: float = LORA_ZIG, c: float = LORA_STEP
                   ) -> dict[str, dict[str, Any]]:
    """The weight-gap demo's sweep specs, by part (see the module docstring).

    Every cell sets all three leg LoRA scales (the adapter is loaded at scale 1, so an unset scale would
    mean the LoRA at 1). ``quick`` uses 4 seeds per digit at most.
    """
    if seeds_per_digit < 1:
        raise ValueError(f"seeds_per_digit must be >= 1, got {seeds_per_digit}")
    seeds = min(seeds_per_digit, 4) if quick else seeds_per_digit
    base: dict[str, Any] = {
        "model": {"name": "demo", "options": {"lora": LORA}},
        "prompts": [str(digit) for digit in range(10)],
        "seeds": {"start": 0, "count": seeds},
        "metrics": list(LORA_METRICS),
        "batch_size": 10 * seeds,
        "images": True,
    }
    knobs = {"num_inference_steps": [STEPS], "guidance_scale": [GUIDANCE], "rounds": [1], "zag": ["official"],
             "zag_eval_timestep": ["next"]}
    parts = {
        "plain": {"zigzag_steps": [0, "full"], "inversion_guidance_scale": [0.0], **_lora_setting(0.0, 0.0, 0.0)},
        "guidance_gap_at_c": {"zigzag_steps": ["full"], "inversion_guidance_scale": [0.0], **_lora_setting(c, c, c)},
        "weight_gap": {"zigzag_steps": ["full"], "inversion_guidance_scale": [1.0], **_lora_setting(s, -s, c)},
        "lora_plainly": {"zigzag_steps": [0], "inversion_guidance_scale": [0.0], "zig.lora_scale": [0.0],
                         "zag.lora_scale": [0.0], "step.lora_scale": sorted({c, s})},
    }
    return {name: {**base, "name": f"demo-lora-{name}", "grid": {**knobs, **grid}} for name, grid in parts.items()}


def run_demo(
    out: str | Path,
    *,
    seeds_per_digit: int = 20,
    quick: bool = False,
    progress: bool = True,
    figures: bool = True,
    family: str = "ddim",
    gap: str = "guidance",
) -> pd.DataFrame:
    """Run the demo ablation into ``out`` (resumable) and return the summary table.

    ``gap="lora"``: the weight-gap demo (:func:`lora_gap_specs`, DDIM family only); its summary's
    ``attrs["verdict"]`` (also ``out/verdict.txt``) says whether weight-gap reflection moves stroke
    thickness beyond the LoRA applied plainly.

    Writes the sweep outputs (results / cells tables, traces, images,
    manifest) to ``out`` and, with ``figures``, every figure with its CSV and
    an index to ``out/figures``. The summary is also saved as
    ``out/summary.csv``.
    """
    from zsampling.sweep import parse_spec, run_sweep

    out = Path(out)
    if gap not in GAPS:
        raise ValueError(f"gap must be one of {GAPS}, got {gap!r}")
    if gap == "lora" and family != "ddim":
        raise ValueError(f"gap='lora' runs on the DDIM digits model (its LoRA), not family={family!r}")
    specs = (lora_gap_specs(seeds_per_digit, quick=quick) if gap == "lora"
             else demo_specs(seeds_per_digit, quick=quick, family=family))
    parsed = [parse_spec(spec) for spec in specs.values()]  # validate every part before running any
    from tqdm.auto import tqdm

    from zsampling.sweep import expand_cells
    from zsampling.sweep.matched import MATCHED_METHODS

    result, done = None, 0
    # a part's grid cells plus the matched baselines each of its Z-Sampling cells derives
    sizes = [sum(1 + (len(MATCHED_METHODS) if spec.matched_baselines and cell.method == "zigzag" else 0)
                 for cell in expand_cells(spec)) for spec in parsed]
    with tqdm(total=sum(sizes), desc="demo (all parts)", unit="cell", disable=not progress, position=1,
              leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}]") as overall:
        for spec, size in zip(parsed, sizes, strict=True):
            # its bar is labelled with the part; the outer bar advances with each batch
            result = run_sweep(spec, out, extend=True, progress=progress, on_progress=overall.update)
            done += result.cells_total  # run now, or found done (an earlier run, an earlier part)
            overall.total += result.cells_total - size  # the exact count, once the matched cells are known
            overall.n = done
            overall.refresh()
    assert result is not None and result.results is not None
    if gap == "lora":
        summary = summarize_lora_gap(result.results, result.cells)
        atomic_write_text(out / "verdict.txt", summary.attrs["verdict"] + "\n")
    else:
        from analysis import load_run
        from analysis.references import frechet_table

        summary = summarize_demo(result.results, result.cells, fidelity=frechet_table(load_run(out)), family=family)
    atomic_write_csv(out / "summary.csv", summary, index=False, float_format="%.4f")
    if figures:
        from analysis import write_figures

        write_figures(out, out / "figures")
    return summary


CLOSING_COLUMNS: tuple[str, ...] = ("setting", "nfe", "alignment", "frechet_pca", "win rate [95% CI]")
"""What ``zsampling demo`` prints at the end; summary.csv holds every column."""


def closing_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's few columns a reader needs: one readable setting, NFE, alignment,
    Frechet distance and the win rate on alignment with its interval."""
    def setting(row: pd.Series) -> str:
        if row["method"] == "standard":
            return f"{row['method']}, T={int(row['num_inference_steps'])}, g={row['guidance_scale']:g}"
        if str(row["method"]).startswith("cfg_matched"):  # one per Z cell it matches: name that cell's operator
            return (f"{row['method']}, T={int(row['num_inference_steps'])}, g={row['guidance_scale']:.3g} "
                    f"(vs Z {row['zag']})")
        extra = f", {row['zag']}" + (" (eval t_i)" if row.get("zag_eval_timestep") == "current" else "")
        return (f"Z, T={int(row['num_inference_steps'])}, lambda={int(row['zigzag_steps'])}, "
                f"g2={row['inversion_guidance_scale']:g}, rounds={int(row['rounds'])}{extra}")

    def win(row: pd.Series) -> str:
        if pd.isna(row.get("win_rate")):
            return "-"
        return f"{row['win_rate']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"

    rank = summary["method"].map(lambda method: {"standard": 0, "zigzag": 1}.get(method, 2))
    summary = summary.iloc[rank.argsort(kind="stable")]  # standard, Z-Sampling, then the matched baselines
    return pd.DataFrame({
        "setting": summary.apply(setting, axis=1), "nfe": summary["nfe"], "alignment": summary["alignment"],
        "frechet_pca": summary["frechet_pca"], "win rate [95% CI]": summary.apply(win, axis=1),
    }, columns=list(CLOSING_COLUMNS))


def summarize_demo(results: pd.DataFrame, cells: pd.DataFrame | None = None,
                   fidelity: pd.DataFrame | None = None, *, family: str = "ddim") -> pd.DataFrame:
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

    reference = OPERATORS[family]["reference"]
    baseline = {"method": "standard", "num_inference_steps": STEPS, "inversion_guidance_scale": 0.0, "rounds": 1,
                "zag": reference, "zag_eval_timestep": "next"}
    settings = ["method", "num_inference_steps", "guidance_scale", "zigzag_steps", "inversion_guidance_scale", "rounds",
                "zag", "zag_eval_timestep"]
    rows = []
    for key, group in results.groupby(settings, sort=True):
        setting = dict(zip(settings, key, strict=True))
        if setting["method"] == "standard" and (setting["zag"], setting["zag_eval_timestep"]) != (reference, "next"):
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


def lora_gap_settings(s: float = LORA_ZIG, c: float = LORA_STEP) -> dict[str, dict[str, Any]]:
    """The weight-gap demo's settings as results-table selectors, by label."""
    def lora(zig: float, zag: float, step: float) -> dict[str, float]:
        return dict(zip(LORA_KNOBS, (zig, zag, step), strict=True))

    return {
        "standard": {"method": "standard", **lora(0.0, 0.0, 0.0)},
        "guidance gap (Z-Sampling)": {"method": "zigzag", "inversion_guidance_scale": 0.0, **lora(0.0, 0.0, 0.0)},
        f"guidance gap, LoRA {c:g} on every leg": {"method": "zigzag", "inversion_guidance_scale": 0.0,
                                                   **lora(c, c, c)},
        f"weight gap (W2SD: zig {s:+g}, zag {-s:+g}, step {c:g}, g2 = 1)": {
            "method": "zigzag", "inversion_guidance_scale": 1.0, **lora(s, -s, c)},
        f"LoRA {c:g} plainly (step leg)": {"method": "standard", **lora(0.0, 0.0, c)},
        f"LoRA {s:g} plainly (zig leg)": {"method": "standard", **lora(0.0, 0.0, s)},
    }


def summarize_lora_gap(results: pd.DataFrame, cells: pd.DataFrame | None = None, *, s: float = LORA_ZIG,
                       c: float = LORA_STEP) -> pd.DataFrame:
    """One row per weight-gap demo setting, and the verdict in ``attrs["verdict"]``.

    Columns: mean metrics, ``frechet_pca`` (set level), ``nfe``, the paired win rate on alignment against
    standard sampling (prompt-level interval), and the paired mean difference of ``stroke_thickness`` against
    standard sampling and against the LoRA at the step leg's scale c applied plainly (95% prompt-level
    bootstrap interval: whole prompts are resampled).
    """
    from analysis import compare, mean_ci, pair_samples, select

    settings = lora_gap_settings(s, c)
    labels = list(settings)
    standard, plain_c, plain_s = settings[labels[0]], settings[labels[4]], settings[labels[5]]
    weight_gap, guidance_at_c = settings[labels[3]], settings[labels[2]]

    def thickness_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float]:
        pairs = pair_samples(select(results, a), select(results, b), "stroke_thickness")
        ci = mean_ci(pairs["a"] - pairs["b"], pairs["prompt_index"])  # the prompt is the unit
        return ci.mean, ci.ci_low, ci.ci_high

    rows = []
    for label, setting in settings.items():
        group = select(results, setting)
        if group.empty:
            raise ValueError(f"the results hold no cell for {label!r} ({setting})")
        row: dict[str, Any] = {"setting": label, **{k: group[k].iloc[0] for k in LORA_KNOBS},
                               "inversion_guidance_scale": group["inversion_guidance_scale"].iloc[0],
                               "nfe": int(group["nfe"].iloc[0]), "n": len(group)}
        for metric in ("alignment", "accuracy", "stroke_thickness", "nn_distance"):
            row[metric] = group[metric].mean()
        row["frechet_pca"] = _cell_metric(cells, group, "frechet_pca")
        if label != labels[0]:
            win = compare(results, setting, standard, ["alignment"]).iloc[0]
            row.update(win_rate=win["win_rate"], ci_low=win["ci_low"], ci_high=win["ci_high"])
            d, lo, hi = thickness_diff(setting, standard)
            row.update(thickness_vs_standard=d, thickness_vs_standard_low=lo, thickness_vs_standard_high=hi)
        if label != labels[4]:
            d, lo, hi = thickness_diff(setting, plain_c)
            row.update(thickness_vs_plain_c=d, thickness_vs_plain_c_low=lo, thickness_vs_plain_c_high=hi)
        rows.append(row)
    paired = [f"{name}{end}" for name in ("thickness_vs_standard", "thickness_vs_plain_c") for end in ("", "_low",
                                                                                                       "_high")]
    settings_columns = [k for k in rows[0] if k not in paired]
    summary = pd.DataFrame(rows, columns=[*settings_columns, "win_rate", "ci_low", "ci_high", *paired])
    summary.attrs["verdict"] = _lora_verdict(thickness_diff(weight_gap, plain_c), thickness_diff(weight_gap, plain_s),
                                             thickness_diff(weight_gap, guidance_at_c), s, c)
    return summary


def _lora_verdict(vs_c: tuple[float, float, float], vs_s: tuple[float, float, float],
                  vs_guidance: tuple[float, float, float], s: float, c: float) -> str:
    def says(diff: tuple[float, float, float]) -> str:
        d, lo, hi = diff
        word = "more" if lo > 0 else "less" if hi < 0 else "no clear difference in"
        return f"{word} stroke thickness ({d:+.4f} mean ink, 95% CI [{lo:+.4f}, {hi:+.4f}])"

    return (f"Weight-gap reflection (zig {s:+g} / zag {-s:+g}, step {c:g}) gives {says(vs_c)} than the LoRA at "
            f"{c:g} applied plainly, {says(vs_s)} than the LoRA at {s:g} applied plainly, and "
            f"{says(vs_guidance)} than guidance-gap reflection with the LoRA at {c:g} on every leg "
            "(paired by prompt and seed).")


def _cell_metric(cells: pd.DataFrame | None, group: pd.DataFrame, metric: str) -> float:
    if cells is None or metric not in cells:
        return float("nan")
    values = cells.loc[cells["cell"].isin(group["cell"].unique()), metric]
    return float(values.iloc[0]) if len(values) else float("nan")
