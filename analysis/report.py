"""``zsampling figures RUN_DIR --out DIR``: every figure a run supports, with its data.

For each figure of :data:`FIGURES` the builder selects the cells it needs
from the run (reference settings as in :func:`analysis.tables.reference_settings`),
computes the frame of numbers with the analysis functions, and draws it with
the matching function of :mod:`analysis.plots`. :func:`write_figures` saves
``<name>.png``, ``<name>.pdf`` and ``<name>.csv`` (exactly the frame drawn)
per figure and an ``index.md`` listing each with one line on what it shows,
and the skipped ones with the reason (inputs missing from RUN_DIR). File
names are stable: they are the keys of :data:`FIGURES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.ablation import ablation_curve
from analysis.compare import compare, cost_curve, cost_matched_pairs, select
from analysis.gain import GAIN_QUANTITIES, gain_profile, injection_schedule, semantic_gain
from analysis.guidance import (
    decomposition_profile,
    guidance_frame,
    guidance_profile,
    matched_comparison,
    matched_cost_curve,
    short_setting,
)
from analysis.references import DEMO_MODEL, frechet_table, guard_references
from analysis.run import RunData, load_run, sample_frame, trajectory_frame, x0_frame
from analysis.stats import N_RESAMPLES, SEED
from analysis.tables import (
    PAIR_KEYS,
    at_reference_schedule,
    fixed_except,
    metric_columns,
    operator_label,
    ordered,
    reference_settings,
    unique_standard,
)
from analysis.trajectory import pca_project, trajectory_segments
from zsampling.atomic import atomic_save_figure, atomic_write_csv, atomic_write_text


class SkipFigure(Exception):
    """A figure's inputs are missing from the run (the message says which)."""


@dataclass
class FigureOutput:
    """One figure's outcome: its data and Figure, or the reason it was skipped."""

    name: str
    description: str
    data: pd.DataFrame | None = None
    figure: Figure | None = None
    skipped: str | None = None
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: stable file name, one-line description, builder."""

    name: str
    description: str
    build: Callable[[RunData, dict[str, Any]], tuple[pd.DataFrame, Figure]]


# ----------------------------------------------------------------- selection
def _results(run: RunData) -> pd.DataFrame:
    """The run's results; a run that varies the timestep schedule is drawn at each model's reference
    schedule (:func:`analysis.tables.reference_settings`), so no curve pools two schedules."""
    if run.results is None or run.results.empty:
        raise SkipFigure("RUN_DIR has no results.parquet / results.csv")
    return at_reference_schedule(run.results)


def _zigzag(results: pd.DataFrame) -> pd.DataFrame:
    zig = results[results["method"] == "zigzag"]
    if zig.empty:
        raise SkipFigure("the run has no Z-Sampling cells (method == 'zigzag')")
    return zig


def _standard(results: pd.DataFrame) -> pd.DataFrame:
    std = results[results["method"] == "standard"]
    if std.empty:
        raise SkipFigure("the run has no standard-sampling cells (method == 'standard')")
    return std


def _per_sample_metrics(results: pd.DataFrame) -> list[str]:
    metrics = [m for m in metric_columns(results) if results[m].notna().any()]
    if not metrics:
        raise SkipFigure("results have no per-sample metric columns")
    return metrics


def _paired_rows(data: pd.DataFrame, none_paired: str) -> pd.DataFrame:
    """The comparison rows that paired at least one sample (``n > 0``); SkipFigure(none_paired) if none did."""
    data = data[data["n"] > 0].reset_index(drop=True)
    if data.empty:
        raise SkipFigure(none_paired)
    return data


def reference_cells(results: pd.DataFrame) -> pd.DataFrame:
    """The cells the single-setting figures use, per model and zag operator.

    For each model, each operator's Z-Sampling cell at the reference settings
    (:func:`analysis.tables.reference_settings` of the model; if the operator
    was not run there, its own reference) and the standard cell with the same
    T and g1. Returns ``model``, ``operator``, ``zigzag_cell``,
    ``standard_cell`` (None when there is no matching standard cell) and the
    settings.
    """
    rows = []
    for model, by_model in results.groupby("model", sort=True):
        ref = reference_settings(by_model)
        zig = by_model[by_model["method"] == "zigzag"].assign(operator=lambda f: operator_label(f))
        std = by_model[by_model["method"] == "standard"]
        for operator in ordered(zig["operator"]):
            by_op = zig[zig["operator"] == operator]
            cells = select(by_op, **fixed_except(ref))
            own = ref
            if cells.empty:
                own = reference_settings(pd.concat([by_op, std]))
                cells = select(by_op, **fixed_except(own))
            if cells.empty:
                continue
            cell = sorted(cells["cell"].unique())[0]
            settings = cells[cells["cell"] == cell].iloc[0]
            base = select(std, num_inference_steps=int(settings["num_inference_steps"]),
                          guidance_scale=float(settings["guidance_scale"]))
            rows.append({
                "model": model, "operator": operator, "zigzag_cell": cell,
                "standard_cell": sorted(base["cell"].unique())[0] if not base.empty else None,
                "num_inference_steps": int(settings["num_inference_steps"]),
                "guidance_scale": float(settings["guidance_scale"]),
                "inversion_guidance_scale": float(settings["inversion_guidance_scale"]),
                "zigzag_steps": int(settings["zigzag_steps"]), "rounds": int(settings["rounds"]),
            })
    return pd.DataFrame(rows, columns=["model", "operator", "zigzag_cell", "standard_cell", "num_inference_steps",
                                       "guidance_scale", "inversion_guidance_scale", "zigzag_steps", "rounds"])


def _setting_text(row: pd.Series) -> str:
    return (f"T={row['num_inference_steps']}, g1={row['guidance_scale']:g}, g2={row['inversion_guidance_scale']:g}, "
            f"\N{GREEK SMALL LETTER LAMDA}={row['zigzag_steps']}, rounds={row['rounds']}")


# ------------------------------------------------------------------ builders
def win_rate_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Win rates of each operator's reference Z-Sampling cell over standard sampling.

    Two comparisons: "same T" (the standard cell with the same T and g1) and,
    when the run has one, "equal NFE" (the standard cell with the fewest
    steps whose NFE is >= Z-Sampling's; see
    :func:`analysis.compare.cost_matched_pairs`). Rows that paired no sample
    are dropped; :class:`SkipFigure` when none is left.
    """
    results = _results(run)
    _zigzag(results)
    _standard(results)
    metrics = _per_sample_metrics(results)
    refs = reference_cells(results)
    matched = cost_matched_pairs(results).set_index("cell")
    frames = []
    for _, ref in refs.iterrows():
        pairs = []
        if ref["standard_cell"] is not None:
            pairs.append(("same T", ref["standard_cell"]))
        if ref["zigzag_cell"] in matched.index:
            m = matched.loc[ref["zigzag_cell"]]
            if m["nfe_ratio"] >= 1.0 and m["baseline_cell"] != ref["standard_cell"]:
                pairs.append(("equal NFE", m["baseline_cell"]))
        for comparison, baseline in pairs:
            table = compare(results, {"cell": ref["zigzag_cell"]}, {"cell": baseline}, metrics, seed=seed,
                            n_resamples=n_resamples, references=guard_references(ref["model"], metrics))
            base_rows = results[results["cell"] == baseline]
            table.insert(0, "comparison", comparison)
            table.insert(1, "model", ref["model"])
            table.insert(2, "operator", ref["operator"])
            table["zigzag_cell"] = ref["zigzag_cell"]
            table["baseline_cell"] = baseline
            table["zigzag_setting"] = _setting_text(ref)
            table["baseline_steps"] = int(base_rows["num_inference_steps"].iloc[0])
            table["zigzag_nfe"] = float(results.loc[results["cell"] == ref["zigzag_cell"], "nfe"].mean())
            table["baseline_nfe"] = float(base_rows["nfe"].mean())
            frames.append(table)
    if not frames:
        raise SkipFigure("no Z-Sampling cell has a standard cell with the same T and g1 to pair with")
    return _paired_rows(pd.concat(frames, ignore_index=True),
                        "no paired samples (same prompt_index and seed) between Z-Sampling and standard cells")


def _build_win_rate(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = win_rate_data(run, **opts)
    return data, plots.plot_win_rate(data)


def ablation_data(run: RunData, x: str, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                  min_values: int = 2) -> pd.DataFrame:
    """:func:`analysis.ablation.ablation_curve` over the run, per model, with set-level metrics from cells."""
    results = _results(run)
    zig = _zigzag(results)
    metrics = _per_sample_metrics(results)
    frames = []
    for model, by_model in results.groupby("model", sort=True):
        fixed = fixed_except(reference_settings(by_model), x)
        cells = run.cells[run.cells["model"] == model] if run.cells is not None and "model" in run.cells else None
        curve = ablation_curve(by_model, x, metrics, fixed=fixed, cells=cells, seed=seed, n_resamples=n_resamples)
        if x == "inversion_guidance_scale":
            curve.insert(curve.columns.get_loc(x) + 1, "guidance_gap", curve["guidance_scale"] - curve[x])
        frames.append(curve)
    data = pd.concat(frames, ignore_index=True)
    varied = data[(data["method"] == "zigzag")][x].nunique()
    if varied + (x == "zigzag_steps" and (data["method"] == "standard").any()) < min_values:
        values = sorted(zig[x].unique().tolist()) if x in zig else []
        raise SkipFigure(f"the run varies {x} over fewer than {min_values} values at the reference settings "
                         f"(Z-Sampling cells have {x} in {values})")
    return data


def _ablation_builder(x: str) -> Callable[[RunData, dict[str, Any]], tuple[pd.DataFrame, Figure]]:
    def build(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
        data = ablation_data(run, x, **opts)
        return data, plots.plot_ablation(data, x)
    return build


def cost_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Metric vs NFE: standard cells at the reference g1 (every T) and, per operator and T,
    the Z-Sampling cell with the widest window at the reference g2 and rounds."""
    results = _results(run)
    _zigzag(results)
    _standard(results)
    metrics = _per_sample_metrics(results)
    frames = []
    for _, by_model in results.groupby("model", sort=True):
        ref = reference_settings(by_model)
        std = select(by_model[by_model["method"] == "standard"], guidance_scale=ref["guidance_scale"])
        zig = select(by_model[by_model["method"] == "zigzag"], guidance_scale=ref["guidance_scale"],
                     inversion_guidance_scale=ref["inversion_guidance_scale"], rounds=ref["rounds"])
        zig = zig.assign(operator=operator_label(zig))
        widest = zig.groupby(["operator", "num_inference_steps"])["zigzag_steps"].transform("max")
        zig = zig[zig["zigzag_steps"] == widest].drop(columns="operator")
        frames.append(cost_curve(pd.concat([std, zig]), metrics, seed=seed, n_resamples=n_resamples))
    data = pd.concat(frames, ignore_index=True)
    if data["nfe"].nunique() < 2 or data["method"].nunique() < 2:
        raise SkipFigure("needs standard and Z-Sampling cells at two or more NFE values at the reference g1")
    return data


def _build_cost(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = cost_data(run, **opts)
    return data, plots.plot_cost(data)


def _reference_traces(run: RunData) -> tuple[pd.DataFrame, dict[str, str]]:
    """Reference cells whose Z-Sampling trace exists, and operator -> cell."""
    results = _results(run)
    _zigzag(results)
    if not run.trace_files:
        raise SkipFigure("RUN_DIR has no traces/ (record traces in the sweep)")
    refs = reference_cells(results)
    refs = refs[refs["zigzag_cell"].isin(run.trace_files)]
    if refs.empty:
        raise SkipFigure("no trace of a reference Z-Sampling cell in traces/")
    model = refs["model"].iloc[0]
    refs = refs[refs["model"] == model]
    return refs, dict(zip(refs["operator"], refs["zigzag_cell"], strict=True))


def _reference_pair(run: RunData) -> tuple[pd.Series, dict[str, Any]]:
    """The first reference Z-Sampling cell and its traces: "zigzag (operator)", and "standard" (same T and
    g1, same x_T) first when that cell was traced too."""
    ref = _reference_traces(run)[0].iloc[0]
    traces = {}
    if ref["standard_cell"] is not None and ref["standard_cell"] in run.trace_files:
        traces["standard"] = run.trace(ref["standard_cell"])
    traces[f"zigzag ({ref['operator']})"] = run.trace(ref["zigzag_cell"])
    return ref, traces


def semantic_gain_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Per-step gain decomposition and cumulative schedules of each operator's reference cell."""
    refs, cells = _reference_traces(run)
    frames = []
    for operator, cell in cells.items():
        trace = run.trace(cell)
        gain = semantic_gain(trace.to_frame())
        if gain.empty:
            continue
        if gain["gap_norm"].isna().all():
            raise SkipFigure(f"the trace of {cell} has no gap term (g1 in {{0, 1}} computes one branch; record "
                             "with branches='both')")
        profile = gain_profile(gain, seed=seed, n_resamples=n_resamples)
        profile["quantity"] = profile["quantity"].map(GAIN_QUANTITIES)
        profile.insert(0, "panel", "per step")
        schedule = injection_schedule(gain, num_steps=trace.num_steps, seed=seed, n_resamples=n_resamples)
        schedule = schedule.rename(columns={"schedule": "quantity"})
        schedule.insert(0, "panel", "cumulative")
        both = pd.concat([profile, schedule], ignore_index=True)
        both.insert(0, "operator", operator)
        both.insert(1, "cell", cell)
        frames.append(both)
    if not frames:
        raise SkipFigure("the reference traces have no reflections")
    return pd.concat(frames, ignore_index=True)[["operator", "cell", "panel", "quantity", "step", "mean", "ci_low",
                                                  "ci_high", "n"]]


def _build_semantic_gain(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = semantic_gain_data(run, **opts)
    return data, plots.plot_semantic_gain(data)


def trajectory_data(run: RunData, max_samples: int = 3) -> tuple[pd.DataFrame, tuple[str, str]]:
    """Segments of the reference Z-Sampling path (and the standard path, same x_T) in 2-D."""
    ref, traces = _reference_pair(run)
    if any("latents" not in t.tensor_names for t in traces.values()):
        traces = {k: v for k, v in traces.items() if "latents" in v.tensor_names}
        if not any(k != "standard" for k in traces):
            raise SkipFigure(f"the trace of {ref['zigzag_cell']} has no latents (record with keep='all')")
    zig_trace = traces[f"zigzag ({ref['operator']})"]
    ids = set(zig_trace.sample_ids)
    for trace in traces.values():
        ids &= set(trace.sample_ids)
    samples = sorted(ids)[:max_samples]
    projected = pca_project(trajectory_frame(traces, samples))
    segments = trajectory_segments(projected)
    if projected.attrs["projection"] == "pca":
        ratio = projected.attrs["explained_variance_ratio"]
        labels = (f"PC1 ({100 * ratio[0]:.0f}% of variance)", f"PC2 ({100 * ratio[1]:.0f}% of variance)")
    else:
        labels = ("latent[0]", "latent[1]")
    return segments, labels


def _build_trajectory(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    segments, labels = trajectory_data(run)
    return segments, plots.plot_trajectory(segments, axis_labels=labels)


def x0_grid_data(run: RunData, max_samples: int = 2, max_points: int = 64) -> pd.DataFrame:
    """Predicted x0 per step of the reference Z-Sampling cell (and standard, when traced)."""
    ref, traces = _reference_pair(run)
    usable = {k: t for k, t in traces.items() if t.decoded_steps}
    if not usable:
        usable = {k: t for k, t in traces.items() if "x0" in t.tensor_names}
    if not usable:
        raise SkipFigure("the reference traces have neither decoded x0 images (decode_every) nor kept x0")
    ids = set.intersection(*(set(t.sample_ids) for t in usable.values()))
    images = all(t.decoded_steps for t in usable.values())
    samples = sorted(ids)[: max_samples if images else max_points]
    try:
        return x0_frame(usable, samples=samples)
    except ValueError as error:
        raise SkipFigure(str(error)) from error


def _build_x0_grid(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = x0_grid_data(run)
    return data, plots.plot_x0_grid(data)


def sample_grid_data(run: RunData, max_rows: int = 6, max_points: int = 256) -> pd.DataFrame:
    """Final samples of the standard and the reference Z-Sampling cells for shared (prompt, seed)."""
    results = _results(run)
    _zigzag(results)
    _standard(results)
    if not run.image_files:
        raise SkipFigure("RUN_DIR has no images/ (final images are written by the sweep)")
    refs = reference_cells(results)
    refs = refs[refs["standard_cell"].notna()]
    if refs.empty:
        raise SkipFigure("no Z-Sampling cell has a standard cell with the same T and g1")
    model = refs["model"].iloc[0]
    refs = refs[refs["model"] == model]
    cells = {"standard": refs["standard_cell"].iloc[0]}
    cells.update({f"zigzag ({op})": cell for op, cell in zip(refs["operator"], refs["zigzag_cell"], strict=True)})
    missing = [cell for cell in cells.values() if cell not in run.image_files]
    if missing:
        raise SkipFigure(f"images of cells {missing} are missing from images/")
    images = {label: run.images(cell) for label, cell in cells.items()}
    rows = {label: results[results["cell"] == cell] for label, cell in cells.items()}
    keys = None
    for part in rows.values():
        k = set(map(tuple, part[list(PAIR_KEYS)].to_numpy().tolist()))
        keys = k if keys is None else keys & k
    if not keys:
        raise SkipFigure("the standard and Z-Sampling cells share no (prompt_index, seed)")
    limit = max_rows if all(a.ndim == 4 for a in images.values()) else max_points
    chosen = sorted(keys, key=lambda k: (k[1], k[0]))[:limit]
    shown = {label: part.set_index(list(PAIR_KEYS)).loc[chosen].reset_index() for label, part in rows.items()}
    return sample_frame(images, shown)


def _build_sample_grid(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = sample_grid_data(run)
    return data, plots.plot_sample_grid(data)


def zag_operator_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Win rate of each DDIM zag variant over "official" for every pair of cells that differ only in the operator.

    Rows that paired no sample are dropped; :class:`SkipFigure` when none is left.
    """
    results = _results(run)
    zig = _zigzag(results).assign(operator=lambda f: operator_label(f))
    if zig["operator"].nunique() < 2 or "official" not in set(zig["operator"]):
        raise SkipFigure(f"needs Z-Sampling cells with the 'official' and a 'ddim' zag; the run has "
                         f"{sorted(zig['operator'].unique().tolist())}")
    metrics = _per_sample_metrics(results)
    keys = ["model", "num_inference_steps", "guidance_scale", "inversion_guidance_scale", "zigzag_steps", "rounds"]
    cells = zig.drop_duplicates("cell")[["cell", "operator", *keys]]
    official = cells[cells["operator"] == "official"]
    others = cells[cells["operator"] != "official"]
    pairs = others.merge(official, on=keys, suffixes=("", "_official"))
    if pairs.empty:
        raise SkipFigure("no 'ddim' cell has an 'official' cell with otherwise identical settings")
    varying = [k for k in keys[1:] if pairs[k].nunique() > 1]
    pairs = pairs.sort_values(["model", *varying, "operator"]).reset_index(drop=True)
    short = {"num_inference_steps": "T", "guidance_scale": "g1", "inversion_guidance_scale": "g2",
             "zigzag_steps": "\N{GREEK SMALL LETTER LAMDA}", "rounds": "rounds"}
    frames = []
    for _, pair in pairs.iterrows():
        table = compare(results, {"cell": pair["cell"]}, {"cell": pair["cell_official"]}, metrics, seed=seed,
                        n_resamples=n_resamples, references=guard_references(pair["model"], metrics))
        setting = ", ".join(f"{short[k]}={pair[k]:g}" for k in varying) or _setting_text(pair)
        table.insert(0, "model", pair["model"])
        table.insert(1, "operator", pair["operator"])
        table.insert(2, "setting", setting)
        for k in keys[1:]:
            table[k] = pair[k]
        table["ddim_cell"] = pair["cell"]
        table["official_cell"] = pair["cell_official"]
        frames.append(table)
    return _paired_rows(pd.concat(frames, ignore_index=True),
                        "the matched ddim / official cells share no (prompt_index, seed)")


def _build_zag_operator(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = zag_operator_data(run, **opts)
    return data, plots.plot_zag_operator(data)


def _matched(run: RunData) -> pd.DataFrame:
    """The run's matched-baseline table (or the links inferred from ``method``)."""
    results = _results(run)
    _zigzag(results)
    if not results["method"].isin(("cfg_matched_nfe", "cfg_matched_measured", "cfg_matched_first_order")).any():
        raise SkipFigure("the run has no matched baselines (sweep with matched_baselines: true, or "
                         "zsampling sweep --matched-baselines)")
    return run.matched if run.matched is not None else pd.DataFrame(columns=["cell", "method", "source_cell"])


def matched_win_rate_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Win rates of each Z-Sampling cell over standard sampling (same T, g1) and its matched CFG baselines."""
    results = _results(run)
    matched = _matched(run)
    try:
        data = matched_comparison(results, matched, _per_sample_metrics(results), seed=seed, n_resamples=n_resamples)
    except ValueError as error:
        raise SkipFigure(str(error)) from error
    data = _paired_rows(data, "Z-Sampling and its matched baselines share no (prompt_index, seed)")
    data.insert(0, "comparison", data.apply(short_setting, axis=1))
    return data


def _build_matched_win_rate(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = matched_win_rate_data(run, **opts)
    figure = plots.plot_win_rate(data, hue="baseline_label", hue_title="baseline",
                                 title="Win rate of Z-Sampling over plain CFG baselines (paired by prompt and seed)")
    return data, figure


def matched_cost_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Metric vs NFE: Z-Sampling, standard sampling at g1 and the matched CFG baselines, per Z-Sampling cell."""
    results = _results(run)
    matched = _matched(run)
    try:
        return matched_cost_curve(results, matched, _per_sample_metrics(results), seed=seed, n_resamples=n_resamples)
    except ValueError as error:
        raise SkipFigure(str(error)) from error


def _build_matched_cost(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = matched_cost_data(run, **opts)
    figure = plots.plot_cost(data, row="panel", label="guidance_scale", panel=(4.6, 3.0),
                             title="Metric vs NFE: Z-Sampling, standard and "
                                   "matched CFG")
    return data, figure


def _guidance_cells(run: RunData) -> pd.DataFrame:
    refs, cells = _reference_traces(run)
    frame = guidance_frame(run, list(cells.values()))
    if not frame["reflects"].any():
        raise SkipFigure("the reference traces have no reflections")
    if frame.loc[frame["reflects"], "eff_guidance"].isna().all():
        raise SkipFigure("the reference traces have no guidance direction (g1 in {0, 1} computes one branch; record "
                         "with branches: both)")
    return frame


def effective_guidance_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Per-step effective guidance of each operator's reference Z-Sampling cell, with reference lines."""
    return guidance_profile(_guidance_cells(run), seed=seed, n_resamples=n_resamples)


def _build_effective_guidance(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = effective_guidance_data(run, **opts)
    return data, plots.plot_effective_guidance(data)


def guidance_decomposition_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """The reference cells' reflection gain along / orthogonal to eps_c - eps_u, per step and cumulative."""
    return decomposition_profile(_guidance_cells(run), seed=seed, n_resamples=n_resamples)


def _build_guidance_decomposition(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = guidance_decomposition_data(run, **opts)
    return data, plots.plot_guidance_decomposition(data)


def fidelity_data(run: RunData, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Frechet distance (PCA) of every demo cell with its bootstrap CI and the real-data noise floor at its n
    (:func:`analysis.references.frechet_table`; at most 999 resamples, each needs a matrix square root)."""
    results = _results(run)
    if DEMO_MODEL not in set(results["model"]):
        raise SkipFigure("the Frechet noise floor needs the model's data; the toolkit ships it for the demo model only")
    if not run.image_files:
        raise SkipFigure("RUN_DIR has no images/ to compute the Frechet distance from")
    data = frechet_table(run, n_resamples=min(n_resamples, 999), seed=seed)
    if data.empty:
        raise SkipFigure("no demo cell with stored images")
    data = unique_standard(data).reset_index(drop=True)
    data.insert(1, "label", [_fidelity_label(row) for _, row in data.iterrows()])
    return data


def _fidelity_label(row: pd.Series) -> str:
    method = str(row["method"])
    if method == "zigzag":
        zag = "ddim" if row["zag"] == "ddim" else "official"
        text = (f"Z {zag}, T={int(row['num_inference_steps'])}, \N{GREEK SMALL LETTER LAMDA}={int(row['zigzag_steps'])}"
                f", g2={float(row['inversion_guidance_scale']):g}")
        return text + (f", R={int(row['rounds'])}" if int(row["rounds"]) != 1 else "")
    text = f"{method}, T={int(row['num_inference_steps'])}, g={float(row['guidance_scale']):.3g}"
    if method.startswith("cfg_matched"):
        text += f" (for Z {row['zag']})"
    return text


def _build_fidelity(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    data = fidelity_data(run, **opts)
    return data, plots.plot_fidelity(data)


def _no_stats(build: Callable[[RunData, dict[str, Any]], tuple[pd.DataFrame, Figure]]) -> Callable[
        [RunData, dict[str, Any]], tuple[pd.DataFrame, Figure]]:
    def wrapper(run: RunData, opts: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
        return build(run, {})
    return wrapper


FIGURES: dict[str, FigureSpec] = {spec.name: spec for spec in (
    FigureSpec("win_rate", "Win rate (95% Wilson CI; prompt-level effective n when prompts repeat) of Z-Sampling "
               "over standard sampling per metric, paired by (prompt, seed), stars = Wilcoxon p (on per-prompt mean "
               "differences when prompts repeat; exact p in the CSV): same T and, where the run has it, a standard "
               "run with at least the same NFE. Guards (clipping, saturation) win when closer to the data's value.",
               _build_win_rate),
    FigureSpec("metric_vs_lambda", "Each metric vs the zigzag window lambda (lambda = 0 is standard sampling), "
               "per zag operator, other settings at the reference.", _ablation_builder("zigzag_steps")),
    FigureSpec("metric_vs_g2", "Each metric vs the inversion guidance g2 (top axis: guidance gap g1 - g2), per zag "
               "operator; dashed: standard sampling.", _ablation_builder("inversion_guidance_scale")),
    FigureSpec("metric_vs_nfe", "Each metric vs network rows per sample (NFE), points labelled with T: "
               "Z-Sampling against standard sampling given more steps (equal-compute check).", _build_cost),
    FigureSpec("metric_vs_rounds", "Each metric vs reflection rounds per window step, per zag operator; dashed: "
               "standard sampling.", _ablation_builder("rounds")),
    FigureSpec("semantic_gain", "Semantic gain per reflection step split into the guidance-gap term and the "
               "inversion residual (with its projection on the gap direction), and the cumulative gain: stepwise "
               "accumulation vs injecting the same gap budget once at the end.", _build_semantic_gain),
    FigureSpec("trajectory", "Latent trajectories in 2-D (PCA, or the latent plane of a 2-D model): zig, zag and "
               "step moves of Z-Sampling beside the standard path from the same x_T.", _no_stats(_build_trajectory)),
    FigureSpec("x0_grid", "Predicted x0 per step (decoded images, or points for a 2-D model) for standard and "
               "Z-Sampling from the same seeds.", _no_stats(_build_x0_grid)),
    FigureSpec("sample_grid", "Final samples of standard sampling and Z-Sampling (each zag operator) for the same "
               "prompts and seeds.", _no_stats(_build_sample_grid)),
    FigureSpec("zag_operator", "Win rate of the paper's DDIM zag over the released code's 'official' operator for "
               "every pair of cells that differ only in the operator.", _build_zag_operator),
    FigureSpec("matched_win_rate", "Win rate (95% Wilson CI, prompt-level when prompts repeat; stars = Wilcoxon p, "
               "exact p in the CSV) of Z-Sampling over standard sampling (same T, g1) and over plain CFG with the "
               "network rows matched: at g1, at the measured effective guidance (signed parallel form; the norm form "
               "is in matched.parquet) and at the first-order g1 + R(g1 - g2). Guards win when closer to the "
               "data's value; the CSV has the set-level distances with intervals.", _build_matched_win_rate),
    FigureSpec("matched_metric_vs_nfe", "Each metric vs network rows per sample for Z-Sampling, standard sampling "
               "at g1 and the matched CFG baselines (points labelled with T and g).", _build_matched_cost),
    FigureSpec("effective_guidance", "Effective guidance per step, ||g1 d + sum v|| / ||d|| and its signed parallel "
               "form (v = reflection gain / c_i, d = eps_c - eps_u), against g1, the first-order value and the "
               "measured ||d||-weighted means (the parallel one is the matched baseline's scale).",
               _build_effective_guidance),
    FigureSpec("guidance_decomposition", "Reflection gain split into the part along eps_c - eps_u (what stronger "
               "guidance also gives) and the orthogonal remainder, per step and cumulative.",
               _build_guidance_decomposition),
    FigureSpec("fidelity", "Frechet distance in PCA space per demo cell with its 95% bootstrap CI (seeds resampled "
               "within each prompt, bias-shifted), against the real data's noise floor at the same n and class mix "
               "(real subsets scored like generated sets, and two disjoint real subsets).", _build_fidelity),
)}
"""The report's figures, in order; the keys are the stable file names."""


def build_figures(run: RunData | str | Path, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                  names: list[str] | None = None) -> list[FigureOutput]:
    """Build every figure the run supports (skipped ones carry the reason).

    Args:
        run: a loaded run or a RUN_DIR path.
        seed, n_resamples: bootstrap settings of every interval.
        names: a subset of :data:`FIGURES` (default all).
    """
    run = run if isinstance(run, RunData) else load_run(run)
    unknown = sorted(set(names or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figures {unknown}; choose from {list(FIGURES)}")
    outputs = []
    for name, spec in FIGURES.items():
        if names is not None and name not in names:
            continue
        output = FigureOutput(name=name, description=spec.description)
        try:
            output.data, output.figure = spec.build(run, {"seed": seed, "n_resamples": n_resamples})
        except SkipFigure as reason:
            output.skipped = str(reason)
        outputs.append(output)
    return outputs


def write_figures(run_dir: str | Path, out: str | Path, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                  names: list[str] | None = None) -> list[FigureOutput]:
    """Write ``<name>.png``, ``.pdf``, ``.csv`` per figure and ``index.md`` into ``out``.

    Figures whose inputs are missing are listed in index.md as skipped, with
    the reason; stale files of a skipped figure from an earlier call are removed
    so the directory always matches its index.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = load_run(run_dir)
    outputs = build_figures(run, seed=seed, n_resamples=n_resamples, names=names)
    for output in outputs:
        paths = [out / f"{output.name}.{ext}" for ext in ("png", "pdf", "csv")]
        if output.figure is None:
            for path in paths:
                path.unlink(missing_ok=True)
            continue
        # each file atomically (zsampling.atomic): a run killed mid-write keeps the previous figure and table
        atomic_save_figure(paths[0], output.figure, dpi=150)
        atomic_save_figure(paths[1], output.figure)
        atomic_write_csv(paths[2], output.data, index=False, float_format="%.10g")
        output.files = paths
    atomic_write_text(out / "index.md", index_markdown(outputs, run_dir=run_dir, seed=seed, n_resamples=n_resamples))
    return outputs


def index_markdown(outputs: list[FigureOutput], *, run_dir: str | Path, seed: int, n_resamples: int) -> str:
    """The index.md text: one line per figure written, then the skipped ones with their reasons."""
    made = [o for o in outputs if o.figure is not None]
    skipped = [o for o in outputs if o.figure is None]
    lines = [
        "# Figures",
        "",
        f"Regenerate with `zsampling figures {run_dir} --out <DIR>`. Each figure comes as PNG and PDF with the CSV "
        f"of exactly the numbers drawn. Prompts are the statistical unit: when a prompt has several seeds, "
        f"means are bootstrapped by resampling whole prompts and tests rank per-prompt means (the CSVs' `unit` and "
        f"`n_clusters` columns say which and how many). Mean intervals: 95% percentile bootstrap "
        f"(scipy.stats.bootstrap, seed {seed}, {n_resamples} resamples); win-rate intervals: Wilson score interval "
        f"(with the prompts' effective n when prompts repeat); win rates pair samples by (prompt_index, seed), "
        f"ties count half; quality guards (clipping_fraction, saturation) are judged by the distance from the "
        f"data's value (or the standard baseline's when there are no data).",
        "",
    ]
    for o in made:
        lines.append(f"- **{o.name}** ([png]({o.name}.png), [pdf]({o.name}.pdf), [csv]({o.name}.csv)): "
                     f"{o.description}")
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- **{o.name}**: skipped: {o.skipped}" for o in skipped]
    return "\n".join(lines) + "\n"


__all__ = [
    "FIGURES", "FigureOutput", "FigureSpec", "SkipFigure", "ablation_data", "build_figures", "cost_data",
    "effective_guidance_data", "fidelity_data", "guidance_decomposition_data", "index_markdown", "matched_cost_data",
    "matched_win_rate_data", "reference_cells", "sample_grid_data", "semantic_gain_data", "trajectory_data",
    "win_rate_data", "write_figures", "x0_grid_data", "zag_operator_data",
]
