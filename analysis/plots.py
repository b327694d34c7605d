"""One plotting function per figure: a DataFrame in, a matplotlib Figure out.

Rules: every function draws exactly the numbers of the frame it is given
(so the frame is the figure's CSV), reads no files, and builds its figure
with the Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``): no pyplot state, no global backend switch, nothing
left open; in Jupyter the returned Figure displays inline as usual. All
figures share one seaborn style (:func:`styled`) and the colour-blind-safe
``"colorblind"`` palette, with fixed colours per method, operator and op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.gain import GAIN_QUANTITIES, SCHEDULES
from analysis.guidance import BASELINE_LABELS, REFERENCE_LINES
from analysis.stats import direction_label, higher_is_better, is_guard
from analysis.tables import AXIS_LABELS, ordered

PALETTE: list[tuple[float, float, float]] = list(sns.color_palette("colorblind", 10))
"""The colour-blind-safe palette all figures use."""

COLORS: dict[str, tuple[float, float, float]] = {
    "standard": PALETTE[7],
    "official": PALETTE[0],
    "zigzag (official)": PALETTE[0],
    "ddim": PALETTE[1],
    "zigzag (ddim)": PALETTE[1],
    "ddim (eval t_i)": PALETTE[2],
    "zigzag (ddim (eval t_i))": PALETTE[2],
    "zig": PALETTE[0],
    "zag": PALETTE[3],
    "step": PALETTE[2],
    "cfg_matched_nfe": PALETTE[4],
    "cfg_matched_measured": PALETTE[5],
    "cfg_matched_first_order": PALETTE[8],
}
COLORS.update({label: COLORS[name] for name, label in BASELINE_LABELS.items()})
"""Fixed colours: methods and operators keep theirs across figures (the
matched CFG baselines included); zig / zag / step moves in trajectories."""

_EXTRA = [PALETTE[k] for k in (4, 5, 6, 8, 9, 2, 3)]

P = ParamSpec("P")
R = TypeVar("R")


def color_for(label: str, others: Sequence[str] = ()) -> tuple[float, float, float]:
    """The colour of a method / operator / quantity label (fixed when known)."""
    if label in COLORS:
        return COLORS[label]
    unknown = [o for o in others if o not in COLORS] or [label]
    index = unknown.index(label) if label in unknown else len(unknown)
    return _EXTRA[index % len(_EXTRA)]


@contextmanager
def style() -> Iterator[None]:
    """The shared figure style: seaborn "whitegrid", "paper" context, readable sizes."""
    rc = {"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "legend.title_fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "font.family": "DejaVu Sans",
          "pdf.fonttype": 42}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"), mpl.rc_context(rc):
        yield


def styled(function: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function inside :func:`style`."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with style():
            return function(*args, **kwargs)
    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (3.4, 2.7),
               sharex: bool | str = False, sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    """An Agg-backed Figure with a (nrows, ncols) array of axes (constrained layout)."""
    fig = Figure(figsize=(panel[0] * ncols + 0.4, panel[1] * nrows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    return fig, axes


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} needs columns {missing}")
    if frame.empty:
        raise ValueError(f"{what}: the frame is empty, nothing to draw")


def _facet_values(frame: pd.DataFrame, column: str | None) -> list[Any]:
    if column is None or column not in frame.columns:
        return [None]
    return list(pd.unique(frame[column]))


def _model_label(model: Any, models: Sequence[Any]) -> str | None:
    """A facet title part for the model, only when several models are drawn."""
    return str(model) if model is not None and len(models) > 1 else None


def _subset(frame: pd.DataFrame, column: str | None, value: Any) -> pd.DataFrame:
    if column is None or column not in frame.columns:
        return frame
    return frame[frame[column] == value]


def _figure_legend(fig: Figure, title: str | None = None, loc: str = "outside lower center",
                   ncols: int = 4) -> None:
    """One legend for the whole figure, outside the panels, from every axes' labelled artists (deduplicated)."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc=loc, title=title, ncols=min(len(handles), ncols))


def _heading(*parts: Any) -> str:
    return " | ".join(str(p) for p in parts if p is not None and str(p) != "")


def _short_metric(metric: str) -> str:
    """The metric with its better direction: an arrow, or "-> ref" for a quality guard (closer to the reference)."""
    if is_guard(metric):
        return f"{metric}\n(closer to ref.)"
    arrow = "\N{UPWARDS ARROW}" if higher_is_better(metric) else "\N{DOWNWARDS ARROW}"
    return f"{metric} {arrow}"


def significance_stars(p_value: float) -> str:
    """"***" (p < 0.001), "**" (< 0.01), "*" (< 0.05), "ns" otherwise, "" for NaN: compact bar labels."""
    if not np.isfinite(p_value):
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*" if p_value < 0.05 else "ns"


def unit_caption(table: pd.DataFrame) -> str:
    """One line on what the intervals and tests resampled / ranked, from a win-rate table's columns."""
    parts = []
    if "unit" in table and "n_clusters" in table:
        units = table[["unit", "n_clusters"]].drop_duplicates()
        parts.append("unit: " + ", ".join(f"{int(n)} {u}s" for u, n in units.itertuples(index=False)))
    if "ci_method" in table:
        parts.append("CI: " + "; ".join(str(m) for m in pd.unique(table["ci_method"]) if str(m)))
    return "; ".join(parts)


# --------------------------------------------------------------------- win rate
@styled
def plot_win_rate(table: pd.DataFrame, *, title: str | None = None, hue: str = "operator",
                  hue_title: str = "zag operator") -> Figure:
    """Win-rate bars of Z-Sampling over a baseline, per metric, with 95 % CIs.

    Args:
        table: one row per (``comparison``, ``model``, ``operator``,
            ``metric``) with ``win_rate``, ``ci_low``, ``ci_high``,
            ``p_value`` (``comparison`` and ``model`` are optional facets:
            columns and rows).
        hue: the column that colours the bars (default the zag operator;
            e.g. ``"baseline"`` for the guidance-matched comparison).
        hue_title: its legend title.

    Bars are grouped by metric (arrow = the metric's better direction;
    guards: closer to the reference value) and coloured by ``hue``; the
    dashed line is 0.5 (no difference). Each bar carries significance stars
    (:func:`significance_stars`) of ``p_holm`` when the table has it, else
    of ``p_value`` (the exact p-values stay in the CSV); the subtitle says
    which, and the resampled unit and interval method (:func:`unit_caption`).
    """
    _require(table, [hue, "metric", "win_rate", "ci_low", "ci_high", "p_value"], "plot_win_rate")
    p_column = "p_holm" if "p_holm" in table.columns else "p_value"
    comparisons, models = _facet_values(table, "comparison"), _facet_values(table, "model")
    fig, axes = new_figure(len(models), len(comparisons), panel=(max(3.0, 1.1 * table["metric"].nunique() + 1.2),
                                                                 2.8), sharey=True)
    operators = ordered(table[hue]) if hue == "operator" else list(pd.unique(table[hue]))
    metrics = list(pd.unique(table["metric"]))
    width = 0.8 / max(len(operators), 1)
    for r, model in enumerate(models):
        for c, comparison in enumerate(comparisons):
            ax = axes[r, c]
            part = _subset(_subset(table, "model", model), "comparison", comparison)
            for k, operator in enumerate(operators):
                rows = part[part[hue] == operator].set_index("metric").reindex(metrics).dropna(
                    subset=["win_rate"])
                if rows.empty:
                    continue
                x = np.array([metrics.index(m) for m in rows.index]) + (k - (len(operators) - 1) / 2) * width
                y = rows["win_rate"].to_numpy(dtype=float)
                err = np.vstack([y - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - y])
                ax.bar(x, y, width=width * 0.95, color=color_for(str(operator), operators), label=operator,
                       yerr=np.clip(err, 0, None), capsize=2.5, error_kw={"elinewidth": 0.9})
                for xi, hi, p in zip(x, rows["ci_high"], rows[p_column], strict=True):
                    ax.text(xi, min(float(hi), 1.0) + 0.015, significance_stars(float(p)), ha="center",
                            va="bottom", fontsize=7)
            ax.axhline(0.5, color="0.3", linestyle="--", linewidth=0.9)
            ax.set_xticks(range(len(metrics)), [_short_metric(m) for m in metrics])
            ax.set_ylim(0, 1.12)
            ax.set_ylabel("win rate (95% CI)" if c == 0 else "")
            ax.set_xlabel("metric")
            heading = _heading(_model_label(model, models), comparison)
            if heading:
                ax.set_title(heading)
    _figure_legend(fig, hue_title, ncols=max(2, min(4, int(fig.get_figwidth() // 2.2))))
    test = "Holm-adjusted Wilcoxon p" if p_column == "p_holm" else "Wilcoxon p"
    note = f"{test}: * < 0.05, ** < 0.01, *** < 0.001, ns otherwise"
    caption = unit_caption(table)
    fig.suptitle((title or "Win rate of Z-Sampling over standard sampling (paired by prompt and seed)")
                 + f"\n{note}" + (f"\n{caption}" if caption else ""), fontsize=9)
    return fig


# ---------------------------------------------------------------- ablation curves
@styled
def plot_ablation(curve: pd.DataFrame, x: str, *, title: str | None = None) -> Figure:
    """A metric against one ablation axis: mean with 95 % bootstrap band, per operator.

    Args:
        curve: :func:`analysis.ablation.ablation_curve`'s output (``metric``,
            ``operator``, ``method``, ``level``, ``mean``, ``ci_low``,
            ``ci_high`` and column ``x``; optional ``model`` facet rows).
        x: the axis column (``zigzag_steps``, ``inversion_guidance_scale``,
            ``guidance_gap``, ``num_inference_steps``, ``rounds``).

    Rows with x = NaN (standard sampling as a reference level) are drawn as
    a dashed horizontal line with its CI band. On the g2 axis with one g1, a
    top axis shows the guidance gap g1 - g2.
    """
    _require(curve, ["metric", "operator", "mean", "ci_low", "ci_high", x], "plot_ablation")
    metrics, models = list(pd.unique(curve["metric"])), _facet_values(curve, "model")
    fig, axes = new_figure(len(models), len(metrics))
    operators = ordered(curve["operator"])
    for r, model in enumerate(models):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            part = _subset(curve, "model", model)
            part = part[part["metric"] == metric]
            set_level = "level" in part and (part["level"] == "set").all()
            for operator in operators:
                rows = part[part["operator"] == operator]
                color = color_for(operator, operators)
                ref = rows[rows[x].isna()]
                line = rows[rows[x].notna()].sort_values(x)
                if not line.empty:
                    xs = line[x].to_numpy(dtype=float)
                    ax.plot(xs, line["mean"].to_numpy(dtype=float), marker="o", markersize=4, color=color,
                            label=operator)
                    low, high = line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float)
                    if np.isfinite(low).any():
                        ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
                for _, row in ref.iterrows():
                    ax.axhline(row["mean"], color=color, linestyle="--", linewidth=1.1,
                               label=f"{operator} (reference)")
                    if np.isfinite(row["ci_low"]):
                        ax.axhspan(row["ci_low"], row["ci_high"], color=color, alpha=0.12, linewidth=0)
            ax.set_xlabel(AXIS_LABELS.get(x, x))
            ax.set_ylabel(direction_label(metric))
            ax.set_title(_heading(_model_label(model, models), metric + (" (set-level, no CI)" if set_level else "")))
            if x == "inversion_guidance_scale" and "guidance_scale" in part and part["guidance_scale"].nunique() == 1:
                g1 = float(part["guidance_scale"].iloc[0])
                top = ax.secondary_xaxis("top", functions=(lambda v, g1=g1: g1 - v, lambda v, g1=g1: g1 - v))
                top.set_xlabel(AXIS_LABELS["guidance_gap"] + f" (g1 = {g1:g})")
    _figure_legend(fig, "zag operator / method")
    fig.suptitle(title or f"Metric vs {AXIS_LABELS.get(x, x)} (mean, 95% bootstrap CI)", fontsize=10)
    return fig


@styled
def plot_cost(curve: pd.DataFrame, *, title: str | None = None, row: str = "model",
              label: str | None = None, panel: tuple[float, float] = (3.4, 2.7)) -> Figure:
    """A metric against network rows per sample (NFE), one line per method, points labelled with T.

    Args:
        curve: :func:`analysis.compare.cost_curve`'s output (``metric``,
            ``method``, ``num_inference_steps``, ``nfe``, ``mean``,
            ``ci_low``, ``ci_high``; optional ``model`` facet rows).
        row: the column whose values facet the rows (default ``model``).
        label: a column appended to each point's "T=..." label (e.g.
            ``"guidance_scale"`` shows g).
        panel: size (width, height) of one panel in inches.

    The equal-compute check: a Z-Sampling point is compared with the
    standard line at the same x (standard sampling given more steps).
    """
    _require(curve, ["metric", "method", "num_inference_steps", "nfe", "mean", "ci_low", "ci_high"], "plot_cost")
    metrics, models = list(pd.unique(curve["metric"])), _facet_values(curve, row)
    methods = ordered(curve["method"])
    fig, axes = new_figure(len(models), len(metrics), panel=panel)
    for r, model in enumerate(models):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            part = _subset(curve, row, model)
            part = part[part["metric"] == metric]
            for method in methods:
                rows = part[part["method"] == method].sort_values("nfe")
                if rows.empty:
                    continue
                xs, ys = rows["nfe"].to_numpy(dtype=float), rows["mean"].to_numpy(dtype=float)
                err = np.vstack([ys - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - ys])
                ax.errorbar(xs, ys, yerr=np.clip(np.nan_to_num(err), 0, None), marker="o", markersize=4, capsize=2.5,
                            color=color_for(method, methods), label=method)
                extra = rows[label].to_numpy() if label is not None else [None] * len(rows)
                for xi, yi, steps, value in zip(xs, ys, rows["num_inference_steps"], extra, strict=True):
                    text = f"T={int(steps)}" + (f", g={float(value):.3g}" if value is not None else "")
                    ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=6)
            ax.set_xlabel(AXIS_LABELS["nfe"])
            ax.set_ylabel(direction_label(metric))
            ax.set_title(_heading(_model_label(model, models), metric))
    _figure_legend(fig, "method", ncols=max(2, min(4, int(fig.get_figwidth() // 2.2))))
    fig.suptitle(title or "Metric vs compute: Z-Sampling against standard sampling with more steps", fontsize=10)
    return fig


# ----------------------------------------------------------------- semantic gain
_GAIN_STYLE: dict[str, tuple[tuple[float, float, float], str]] = {
    GAIN_QUANTITIES["gain_norm"]: (PALETTE[0], "-"),
    GAIN_QUANTITIES["gap_norm"]: (PALETTE[1], "-"),
    GAIN_QUANTITIES["residual_norm"]: (PALETTE[2], "-"),
    GAIN_QUANTITIES["gain_along_gap"]: (PALETTE[4], ":"),
    GAIN_QUANTITIES["gain_orthogonal"]: (PALETTE[5], ":"),
    SCHEDULES[0]: (PALETTE[0], "-"),
    SCHEDULES[1]: (PALETTE[3], "--"),
    SCHEDULES[2]: (PALETTE[2], "-"),
}


@styled
def plot_semantic_gain(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Semantic gain per step (decomposed) and cumulative (stepwise vs end-to-end injection).

    Args:
        frame: long format with ``panel`` ("per step" | "cumulative"),
            ``quantity`` (the curve), ``step``, ``mean``, ``ci_low``,
            ``ci_high`` and optional ``operator`` (facet rows). Built by
            :func:`analysis.report.semantic_gain_data` from
            :func:`analysis.gain.gain_profile` and
            :func:`analysis.gain.injection_schedule`.

    Left: per reflection step, ||delta_i|| with its gap term and residual
    (norms) and delta's signed projection on the gap direction and its
    orthogonal part (dotted). Right: the cumulative gap budget injected
    step by step, the same budget injected once after the window (dashed
    step), and the realised ||sum of delta||.
    """
    _require(frame, ["panel", "quantity", "step", "mean", "ci_low", "ci_high"], "plot_semantic_gain")
    operators = _facet_values(frame, "operator")
    panels = [p for p in ("per step", "cumulative") if p in set(frame["panel"])]
    known = list(_GAIN_STYLE)
    fig, axes = new_figure(len(operators), len(panels), panel=(3.9, 2.7))
    for r, operator in enumerate(operators):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            part = _subset(frame, "operator", operator)
            part = part[part["panel"] == panel]
            quantities = sorted(pd.unique(part["quantity"]),
                                key=lambda q: (known.index(q) if q in known else len(known), str(q)))
            for k, quantity in enumerate(quantities):
                rows = part[part["quantity"] == quantity].sort_values("step")
                color, linestyle = _GAIN_STYLE.get(quantity, (_EXTRA[k % len(_EXTRA)], "-"))
                stepped = quantity == SCHEDULES[1]
                xs = rows["step"].to_numpy(dtype=float)
                ax.plot(xs, rows["mean"].to_numpy(dtype=float), linestyle=linestyle, color=color, label=str(quantity),
                        drawstyle="steps-post" if stepped else "default",
                        marker="o" if panel == "per step" else None, markersize=2.5)
                low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
                if np.isfinite(low).any():
                    ax.fill_between(xs, low, high, color=color, alpha=0.18, linewidth=0,
                                    step="post" if stepped else None)
            if panel == "per step":
                ax.axhline(0.0, color="0.4", linewidth=0.7)
            ax.set_xlabel("step i")
            ax.set_ylabel("latent units")
            heading = "per-step gain \N{GREEK SMALL LETTER DELTA}_i" if panel == "per step" else "cumulative gain"
            ax.set_title(_heading(heading, f"zag: {operator}" if operator is not None else None))
    for c, loc in zip(range(len(panels)), ("outside lower left", "outside lower right"), strict=False):
        handles: dict[str, Any] = {}
        for ax in axes[:, c]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(list(handles.values()), list(handles), loc=loc, ncols=2 if c == 0 else 1)
    fig.suptitle(title or "Semantic gain of Z-Sampling's reflections (mean over samples, 95% CI)", fontsize=10)
    return fig


# ------------------------------------------------------- guidance-matched evaluation
_REFERENCE_COLORS: dict[str, tuple[float, float, float]] = {
    REFERENCE_LINES["g1"]: COLORS["standard"],
    REFERENCE_LINES["first_order"]: COLORS["cfg_matched_first_order"],
    REFERENCE_LINES["measured"]: COLORS["cfg_matched_measured"],
    REFERENCE_LINES["measured_norm"]: PALETTE[9],
}
"""Reference lines of the effective-guidance figure share the colours of the matching baselines."""


@styled
def plot_effective_guidance(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Per-step effective guidance of Z-Sampling, with g1, the first-order value and the measured mean.

    Args:
        frame: :func:`analysis.guidance.guidance_profile`'s output
            (``quantity``, ``step``, ``mean``, ``ci_low``, ``ci_high``;
            optional ``operator`` facet rows). Rows with ``step`` NaN are
            reference values, drawn as horizontal lines.

    Solid: the norm form ||g1 d + sum v|| / ||d|| (the critique's
    definition); dashed: the signed parallel form; the band is the 95 %
    bootstrap CI (prompts resampled when they repeat). Dotted reference
    lines carry their values at the right edge. The y axis is clipped to the central range
    of the curves (the last steps, where ||d|| -> 0, can be far off).
    """
    _require(frame, ["quantity", "step", "mean", "ci_low", "ci_high"], "plot_effective_guidance")
    operators = _facet_values(frame, "operator")
    fig, axes = new_figure(len(operators), 1, panel=(5.2, 2.9))
    styles = ["-", "--"]
    for r, operator in enumerate(operators):
        ax = axes[r, 0]
        part = _subset(frame, "operator", operator)
        curves = part[part["step"].notna()]
        lines = part[part["step"].isna()]
        for k, quantity in enumerate(pd.unique(curves["quantity"])):
            rows = curves[curves["quantity"] == quantity].sort_values("step")
            xs = rows["step"].to_numpy(dtype=float)
            color = PALETTE[k]
            ax.plot(xs, rows["mean"].to_numpy(dtype=float), linestyle=styles[k % 2], color=color, marker="o",
                    markersize=2.5, label=str(quantity))
            low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
            if np.isfinite(low).any():
                ax.fill_between(xs, low, high, color=color, alpha=0.18, linewidth=0)
        for k, (_, line) in enumerate(lines.iterrows()):
            color = _REFERENCE_COLORS.get(str(line["quantity"]), _EXTRA[k % len(_EXTRA)])
            value = float(line["mean"])
            ax.axhline(value, color=color, linestyle=":", linewidth=1.4, label=str(line["quantity"]))
            ax.text(1.005, value, f"{value:.2f}", transform=ax.get_yaxis_transform(), color=color, fontsize=7,
                    va="center", ha="left", clip_on=False)
        values = curves["mean"].to_numpy(dtype=float)
        values = np.concatenate([values[np.isfinite(values)], lines["mean"].to_numpy(dtype=float)])
        if values.size:
            low, high = np.percentile(values, [5, 95])
            pad = 0.15 * max(high - low, 1.0)
            ax.set_ylim(min(low, lines["mean"].min()) - pad, max(high, lines["mean"].max()) + pad)
        ax.set_xlabel("step i")
        ax.set_ylabel("effective guidance scale")
        ax.set_title(_heading("effective guidance per step", f"zag: {operator}" if operator is not None else None))
    _figure_legend(fig, ncols=2)
    fig.suptitle(title or "Effective guidance of Z-Sampling per step (mean over samples, 95% CI)", fontsize=10)
    return fig


@styled
def plot_guidance_decomposition(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The reflections' gain along the guidance direction vs orthogonal to it, per step and cumulative.

    Args:
        frame: :func:`analysis.guidance.decomposition_profile`'s output
            (``panel``, ``quantity``, ``step``, ``mean``, ``ci_low``,
            ``ci_high``; optional ``operator`` facet rows).

    The part along eps_c - eps_u is what a larger CFG scale also gives; the
    orthogonal part is what stronger guidance cannot give.
    """
    _require(frame, ["panel", "quantity", "step", "mean", "ci_low", "ci_high"], "plot_guidance_decomposition")
    operators = _facet_values(frame, "operator")
    panels = [p for p in ("per step", "cumulative") if p in set(frame["panel"])]
    fig, axes = new_figure(len(operators), len(panels), panel=(3.9, 2.7))
    colors = {"along": PALETTE[4], "orthogonal": PALETTE[5]}
    for r, operator in enumerate(operators):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            part = _subset(frame, "operator", operator)
            part = part[part["panel"] == panel]
            for quantity in pd.unique(part["quantity"]):
                rows = part[part["quantity"] == quantity].sort_values("step")
                color = colors["along" if str(quantity).startswith("along") else "orthogonal"]
                xs = rows["step"].to_numpy(dtype=float)
                ax.plot(xs, rows["mean"].to_numpy(dtype=float), color=color,
                        marker="o" if panel == "per step" else None, markersize=2.5, label=str(quantity))
                low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
                if np.isfinite(low).any():
                    ax.fill_between(xs, low, high, color=color, alpha=0.18, linewidth=0)
            ax.axhline(0.0, color="0.4", linewidth=0.7)
            ax.set_xlabel("step i")
            ax.set_ylabel("latent units")
            heading = "gain per reflecting step" if panel == "per step" else "cumulative gain"
            ax.set_title(_heading(heading, f"zag: {operator}" if operator is not None else None))
    _figure_legend(fig)
    fig.suptitle(title or "Reflection gain along vs orthogonal to eps_c \N{MINUS SIGN} eps_u (mean, 95% CI)",
                 fontsize=10)
    return fig


# -------------------------------------------------------------------- trajectory
@styled
def plot_trajectory(segments: pd.DataFrame, *, axis_labels: tuple[str, str] = ("PC1", "PC2"),
                    title: str | None = None) -> Figure:
    """Latent paths in 2-D: the zig, zag and ordinary-step moves, beside the standard path.

    Args:
        segments: :func:`analysis.trajectory.trajectory_segments`'s output
            with a ``run`` column ("standard" drawn grey and dashed, any
            other run coloured by move: zig / zag / step); one panel per
            ``sample``.
        axis_labels: labels of the two coordinates.
    """
    _require(segments, ["run", "sample", "op", "x_start", "y_start", "x_end", "y_end"], "plot_trajectory")
    samples = list(pd.unique(segments["sample"]))
    fig, axes = new_figure(1, len(samples), panel=(3.4, 3.2))
    for c, sample in enumerate(samples):
        ax = axes[0, c]
        part = segments[segments["sample"] == sample]
        for run in pd.unique(part["run"]):
            path = part[part["run"] == run]
            ops = ["path"] if run == "standard" else [o for o in ("zig", "zag", "step") if o in set(path["op"])]
            for op in ops:
                rows = path if op == "path" else path[path["op"] == op]
                xs = np.column_stack([rows["x_start"], rows["x_end"], np.full(len(rows), np.nan)]).ravel()
                ys = np.column_stack([rows["y_start"], rows["y_end"], np.full(len(rows), np.nan)]).ravel()
                if run == "standard":
                    ax.plot(xs, ys, color=COLORS["standard"], linestyle="--", linewidth=1.2, label="standard path")
                else:
                    label = {"zig": "zig (denoise, g1)", "zag": "zag (invert, g2)", "step": "step (denoise, g1)"}[op]
                    ax.plot(xs, ys, color=COLORS[op], linewidth=1.0 if op != "step" else 1.4,
                            label=f"{label}" + (f" [{run}]" if len(pd.unique(part['run'])) > 2 else ""))
            ordered = path.sort_values("event")
            ax.scatter([ordered["x_end"].iloc[-1]], [ordered["y_end"].iloc[-1]], marker="*", s=60,
                       color=COLORS["standard"] if run == "standard" else PALETTE[4], zorder=3,
                       label=f"x_0 ({run})")
        first = part.sort_values("event").iloc[0]
        ax.scatter([first["x_start"]], [first["y_start"]], marker="s", s=25, color="black", zorder=3, label="x_T")
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.set_title(f"sample {sample}")
    _figure_legend(fig, "move")
    fig.suptitle(title or "Latent trajectories: Z-Sampling's zig and zag moves vs the standard path", fontsize=10)
    return fig


# ------------------------------------------------------------------------ grids
def _image(rows: pd.DataFrame) -> np.ndarray:
    """Rebuild an (H, W, C) array from a pixel frame's rows."""
    h, w, c = int(rows["y"].max()) + 1, int(rows["x"].max()) + 1, int(rows["channel"].max()) + 1
    image = np.zeros((h, w, c))
    image[rows["y"].to_numpy(int), rows["x"].to_numpy(int), rows["channel"].to_numpy(int)] = rows["value"]
    return image[..., 0] if c == 1 else image


def _show(ax: Axes, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


@styled
def plot_x0_grid(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Predicted x0 per step: an image grid (rows = run x sample, columns = step) or point clouds per step.

    Args:
        frame: :func:`analysis.run.x0_frame`'s output: pixels (``run``,
            ``sample``, ``step``, ``y``, ``x``, ``channel``, ``value``) or
            points (``run``, ``sample``, ``step``, ``z0``, ``z1``).
    """
    steps = sorted(pd.unique(frame["step"]))
    if "value" in frame.columns:
        _require(frame, ["run", "sample", "step", "y", "x", "channel", "value"], "plot_x0_grid")
        keys = frame[["run", "sample"]].drop_duplicates().to_records(index=False).tolist()
        fig, axes = new_figure(len(keys), len(steps), panel=(1.25, 1.3))
        for r, (run, sample) in enumerate(keys):
            for c, step in enumerate(steps):
                rows = frame[(frame["run"] == run) & (frame["sample"] == sample) & (frame["step"] == step)]
                _show(axes[r, c], _image(rows))
                if r == 0:
                    axes[r, c].set_title(f"step {step}")
                if c == 0:
                    axes[r, c].set_ylabel(f"{run}\nsample {sample}", fontsize=7)
    else:
        _require(frame, ["run", "sample", "step", "z0", "z1"], "plot_x0_grid")
        runs = list(pd.unique(frame["run"]))
        fig, axes = new_figure(1, len(steps), panel=(2.2, 2.3), sharex=True, sharey=True)
        for c, step in enumerate(steps):
            ax = axes[0, c]
            for run in runs:
                rows = frame[(frame["run"] == run) & (frame["step"] == step)]
                ax.scatter(rows["z0"], rows["z1"], s=10, alpha=0.8, label=run,
                           color=color_for("standard" if run == "standard" else run, runs))
            ax.set_title(f"step {step}")
            ax.set_xlabel("x0[0]")
            if c == 0:
                ax.set_ylabel("x0[1]")
        _figure_legend(fig, "run")
    fig.suptitle(title or "Predicted x0 per step", fontsize=10)
    return fig


@styled
def plot_sample_grid(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Final samples of standard sampling and Z-Sampling for the same prompts and seeds.

    Args:
        frame: :func:`analysis.run.sample_frame`'s output: pixels (``run``,
            ``row``, ``prompt_index``, ``seed``, ``y``, ``x``, ``channel``,
            ``value``: columns = runs, rows = shared seeds) or points
            (``run``, ``row``, ``z0``, ``z1``: one scatter, grey segments
            joining each seed's standard and Z-Sampling samples).
    """
    runs = list(pd.unique(frame["run"]))
    if "value" in frame.columns:
        _require(frame, ["run", "row", "y", "x", "channel", "value"], "plot_sample_grid")
        rows_ = sorted(pd.unique(frame["row"]))
        fig, axes = new_figure(len(rows_), len(runs), panel=(1.5, 1.5))
        for r, row in enumerate(rows_):
            for c, run in enumerate(runs):
                part = frame[(frame["run"] == run) & (frame["row"] == row)]
                _show(axes[r, c], _image(part))
                if r == 0:
                    axes[r, c].set_title(run, fontsize=8)
                if c == 0:
                    first = part.iloc[0]
                    axes[r, c].set_ylabel(f"prompt {first['prompt_index']}\nseed {first['seed']}", fontsize=7)
    else:
        _require(frame, ["run", "row", "z0", "z1"], "plot_sample_grid")
        fig, axes = new_figure(1, 1, panel=(4.4, 4.0))
        ax = axes[0, 0]
        base = runs[0]
        first = frame[frame["run"] == base].set_index("row")
        for run in runs[1:]:
            other = frame[frame["run"] == run].set_index("row").reindex(first.index)
            xs = np.column_stack([first["z0"], other["z0"], np.full(len(first), np.nan)]).ravel()
            ys = np.column_stack([first["z1"], other["z1"], np.full(len(first), np.nan)]).ravel()
            ax.plot(xs, ys, color="0.6", linewidth=0.6, alpha=0.8)
        for run in runs:
            rows = frame[frame["run"] == run]
            ax.scatter(rows["z0"], rows["z1"], s=14, label=run, color=color_for(run, runs), zorder=3)
        ax.set_xlabel("sample[0]")
        ax.set_ylabel("sample[1]")
        _figure_legend(fig, "run (grey lines join\nthe same prompt and seed)")
    fig.suptitle(title or "Final samples for the same prompts and seeds", fontsize=10)
    return fig


# ------------------------------------------------------------------- operators
@styled
def plot_zag_operator(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Win rate of the paper's DDIM zag over the released code's operator, per matched setting.

    Args:
        table: one row per (``metric``, ``setting``, ``operator``) with
            ``win_rate``, ``ci_low``, ``ci_high`` (``operator`` = the DDIM
            variant compared with "official"; optional ``model`` facet rows).

    Points left of 0.5 favour "official", right of it "ddim"; a CI that
    covers 0.5 means the operator made no detectable difference there.
    """
    _require(table, ["metric", "setting", "operator", "win_rate", "ci_low", "ci_high"], "plot_zag_operator")
    metrics, models = list(pd.unique(table["metric"])), _facet_values(table, "model")
    settings = list(pd.unique(table["setting"]))
    operators = ordered(table["operator"])
    fig, axes = new_figure(len(models), len(metrics), panel=(3.0, 0.32 * len(settings) + 1.0), sharey=True)
    for r, model in enumerate(models):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            part = _subset(table, "model", model)
            part = part[part["metric"] == metric]
            for k, operator in enumerate(operators):
                rows = part[part["operator"] == operator]
                y = np.array([settings.index(s) for s in rows["setting"]]) + (k - (len(operators) - 1) / 2) * 0.2
                xs = rows["win_rate"].to_numpy(dtype=float)
                err = np.vstack([xs - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - xs])
                ax.errorbar(xs, y, xerr=np.clip(err, 0, None), fmt="o", markersize=4, capsize=2.5,
                            color=color_for(operator, operators), label=f"{operator} over official")
            ax.axvline(0.5, color="0.3", linestyle="--", linewidth=0.9)
            ax.set_xlim(-0.02, 1.02)
            ax.set_yticks(range(len(settings)), settings)
            ax.set_xlabel(f"win rate, {_short_metric(metric)}")
            ax.set_ylim(-0.6, len(settings) - 0.4)
            if c == 0:
                ax.set_ylabel("matched setting (other settings equal)")
            ax.set_title(_heading(_model_label(model, models), metric))
    _figure_legend(fig, "comparison")
    fig.suptitle(title or "Does the zag operator matter? ddim vs official (paired, 95% CI)", fontsize=10)
    return fig


def figure_is_empty(fig: Figure) -> bool:
    """True when no axes of ``fig`` has any drawn data (lines, patches, collections, images)."""
    for ax in fig.axes:
        if ax.lines or ax.patches or ax.collections or ax.images:
            return False
    return True


# ----------------------------------------------------------------- set-level fidelity
@styled
def plot_fidelity(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Frechet distance per cell with its CI, against the real data's noise floor at the same n.

    Args:
        frame: :func:`analysis.report.fidelity_data` (``label``, ``method``,
            ``zag``, ``frechet_pca``, ``ci_low``, ``ci_high``,
            ``floor_vs_data`` (+ ``_low`` / ``_high``), ``floor_two_subsets``
            (+ ``_low`` / ``_high``), ``n``).

    One row per cell (colour: method / zag operator). The grey band is the
    central 95 % range of real subsets of the same size and class mix scored
    like a generated set (against the full data statistics); the hatched band
    the same for two disjoint real subsets. Lower is closer to the data.
    """
    _require(frame, ["label", "method", "frechet_pca", "ci_low", "ci_high", "floor_vs_data_low",
                     "floor_vs_data_high"], "plot_fidelity")
    rows = frame.reset_index(drop=True)
    fig, axes = new_figure(1, 1, panel=(7.0, 0.26 * len(rows) + 1.2))
    ax = axes[0, 0]
    floor = rows.iloc[0]
    ax.axvspan(float(floor["floor_vs_data_low"]), float(floor["floor_vs_data_high"]), color="0.6", alpha=0.35,
               linewidth=0, label=f"real data, same n (vs data stats): {float(floor['floor_vs_data']):.3f}")
    if "floor_two_subsets_low" in rows:
        ax.axvspan(float(floor["floor_two_subsets_low"]), float(floor["floor_two_subsets_high"]), facecolor="none",
                   edgecolor="0.4", hatch="///", linewidth=0.6,
                   label=f"two disjoint real subsets, same n: {float(floor['floor_two_subsets']):.3f}")
    ys = np.arange(len(rows))
    for y, (_, row) in zip(ys, rows.iterrows(), strict=True):
        method = str(row["method"])
        key = f"zigzag ({row['zag']})" if method == "zigzag" else method
        color = color_for(key)
        value = float(row["frechet_pca"])
        ax.errorbar([value], [y], xerr=[[value - float(row["ci_low"])], [float(row["ci_high"]) - value]], fmt="o",
                    color=color, markersize=3.5, capsize=2, elinewidth=0.9)
    ax.set_yticks(ys, rows["label"].tolist())
    ax.invert_yaxis()
    ax.set_xlabel("Frechet distance (PCA) to the data, 95% CI; lower is closer")
    ax.set_xlim(left=0)
    n = int(rows["n"].iloc[0]) if "n" in rows else 0
    _figure_legend(fig, "noise floor (central 95% of 200 random real subsets)", ncols=1)
    fig.suptitle(title or f"Set-level fidelity per cell (n = {n} images each; seeds resampled within prompts)",
                 fontsize=10)
    return fig
