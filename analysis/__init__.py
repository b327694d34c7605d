"""Analysis of Z-Sampling runs: records in, numbers and figures out (pandas, scipy, seaborn).

Data flows one way (docs/design.md): trace / results on disk -> analysis ->
figures. Nothing here imports a model or a denoiser; only
:mod:`analysis.run` reads files.

Public API:

* statistics: :func:`bootstrap_ci`, :func:`cluster_bootstrap_ci` (prompt-level),
  :func:`mean_ci`, :func:`summarize`, :func:`wilson_interval`, :func:`holm`,
  :func:`higher_is_better` (metric direction) and :func:`is_guard` (quality
  guards, judged by the distance from the data's value);
* references: :func:`guard_references` (the data's guard values),
  :func:`frechet_table` (Frechet distance with its CI and the real-data noise floor);
* paired comparison: :func:`win_rate`, :func:`compare` (a win-rate table
  across metrics), :func:`pair_samples`, :func:`select`;
* cost-aware comparison: :func:`cost_curve`, :func:`cost_matched_pairs`,
  :func:`cost_matched_comparison`;
* ablations: :func:`ablation_curve` (vs lambda, g2 / gap, T, rounds; hue =
  zag operator), :func:`reference_settings`;
* semantic gain: :func:`semantic_gain`, :func:`gain_profile`,
  :func:`injection_schedule`, :func:`summed_gap`, :func:`injection_comparison`;
* guidance-matched evaluation: :func:`matched_pairs`,
  :func:`matched_comparison` (win rates of Z-Sampling over standard and the
  matched CFG baselines), :func:`verdict_markdown` (the result in words),
  :func:`matched_cost_curve`, :func:`guidance_frame` (per-step effective
  guidance), :func:`guidance_profile`, :func:`decomposition_profile`;
* trajectories: :func:`trajectory_frame`, :func:`pca_project`,
  :func:`trajectory_segments`, :func:`x0_frame`;
* runs and figures: :func:`load_run`, :func:`build_figures`,
  :func:`write_figures` (what ``zsampling figures`` runs) and the plotting
  functions of :mod:`analysis.plots`.
"""

from analysis.ablation import ablation_curve
from analysis.compare import (
    WinRate,
    add_holm,
    compare,
    cost_curve,
    cost_matched_comparison,
    cost_matched_pairs,
    pair_samples,
    select,
    wilcoxon_p,
    win_rate,
)
from analysis.gain import gain_profile, injection_comparison, injection_schedule, semantic_gain, summed_gap
from analysis.guidance import (
    decomposition_profile,
    guidance_frame,
    guidance_profile,
    matched_comparison,
    matched_cost_curve,
    matched_pairs,
    verdict_markdown,
)
from analysis.references import frechet_table, guard_references
from analysis.report import FIGURES, build_figures, write_figures
from analysis.run import RunData, load_run, sample_frame, trace_frame, trajectory_frame, x0_frame
from analysis.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    higher_is_better,
    holm,
    is_guard,
    mean_ci,
    summarize,
    wilson_interval,
)
from analysis.tables import method_label, metric_columns, operator_label, reference_settings
from analysis.trajectory import pca_project, trajectory_segments

__all__ = [
    "FIGURES",
    "RunData",
    "WinRate",
    "ablation_curve",
    "add_holm",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "build_figures",
    "compare",
    "cost_curve",
    "cost_matched_comparison",
    "cost_matched_pairs",
    "decomposition_profile",
    "frechet_table",
    "gain_profile",
    "guidance_frame",
    "guidance_profile",
    "guard_references",
    "higher_is_better",
    "holm",
    "injection_comparison",
    "injection_schedule",
    "is_guard",
    "load_run",
    "matched_comparison",
    "matched_cost_curve",
    "matched_pairs",
    "mean_ci",
    "method_label",
    "metric_columns",
    "operator_label",
    "pair_samples",
    "pca_project",
    "reference_settings",
    "sample_frame",
    "select",
    "semantic_gain",
    "summarize",
    "summed_gap",
    "trace_frame",
    "trajectory_frame",
    "trajectory_segments",
    "verdict_markdown",
    "wilson_interval",
    "win_rate",
    "wilcoxon_p",
    "write_figures",
    "x0_frame",
]
