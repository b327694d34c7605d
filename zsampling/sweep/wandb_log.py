"""Weights & Biases for sweeps: one run per sweep, and sweep configs for ``wandb agent``.

Why: researchers compare sweeps in W&B, and some distribute cells with
``wandb agent`` instead of ``accelerate``. W&B must never cost a result:
``log_sweep`` catches every W&B failure (not installed, not logged in,
offline, a W&B bug), warns once and returns; ``WANDB_MODE=offline`` and
``disabled`` work as usual. ``wandb`` is imported only inside these
functions, so importing zsampling never imports it.

What:

* :func:`log_sweep` starts one run (``job_type="zsampling-sweep"``, files
  under ``DIR/wandb``) with the spec as config, logs the results and cells
  tables (``wandb.Table``), one line plot per metric against lambda (one line
  per setting of the other knobs) and a summary (cells, network rows spent
  vs alone).
* :func:`wandb_sweep_config` / :func:`write_wandb_sweep_config` write a W&B
  grid sweep over the spec's knobs whose command runs ``zsampling sweep SPEC
  --out DIR --wandb KEY=VALUE...`` (W&B's ``${args_no_hyphens}``), i.e. one
  cell per agent run. Leave ``zigzag_steps`` out of ``parameters`` to let
  each agent run a whole lambda group with prefix sharing instead.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsampling.atomic import atomic_write_text
from zsampling.config import SCHEDULE_KNOB, timesteps_label
from zsampling.schedule import resolve_timesteps
from zsampling.sweep.spec import SpecError, SweepSpec

WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbOptions:
    """Where the sweep's W&B run goes (None fields use W&B's defaults / environment)."""

    project: str | None = "zsampling"
    name: str | None = None
    entity: str | None = None
    mode: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES} or None, got {self.mode!r}")


def log_sweep(options: WandbOptions, out: Path, results: Any, cells: Any, manifest: dict[str, Any]) -> bool:
    """Log a finished (or partial) sweep to one W&B run. Never raises; returns success."""
    run = None
    try:
        import wandb

        kwargs = {"project": options.project, "name": options.name or (manifest.get("spec") or {}).get("name"),
                  "entity": options.entity, "mode": options.mode, "tags": list(options.tags) or None}
        (Path(out) / "wandb").mkdir(parents=True, exist_ok=True)
        config = {"spec": manifest.get("spec"), "spec_hash": manifest.get("spec_hash"),
                  "versions": manifest.get("versions")}
        run = wandb.init(dir=str(out), job_type="zsampling-sweep", config={"zsampling_sweep": config},
                         **{k: v for k, v in kwargs.items() if v is not None})
        run.log({"sweep/results": wandb.Table(dataframe=results), "sweep/cells": wandb.Table(dataframe=cells)})
        for name, chart in _plots(wandb, results, cells).items():
            run.log({name: chart})
        rows = manifest.get("network_rows") or {}
        run.summary.update({
            "sweep/cells_finished": int(len(cells)),
            "sweep/samples": int(len(results)),
            "sweep/network_rows_spent": rows.get("spent"),
            "sweep/network_rows_alone": rows.get("alone"),
            "sweep/network_rows_ratio": rows.get("ratio"),
            "sweep/status": manifest.get("status"),
        })
        run.finish()
        return True
    except Exception as error:  # W&B must never kill a sweep
        warnings.warn(f"W&B logging of the sweep failed ({type(error).__name__}: {error}); the results are on disk "
                      f"in {out}", RuntimeWarning, stacklevel=2)
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # already broken: nothing more to do
                pass
        return False


def _plots(wandb: Any, results: Any, cells: Any) -> dict[str, Any]:
    """One line plot per metric (per-sample means per cell, and set-level) against lambda."""
    from zsampling.sweep.results import CELL_COLUMNS, RESULT_COLUMNS

    sample_metrics = [c for c in results.columns if c not in RESULT_COLUMNS]
    set_metrics = [c for c in cells.columns if c not in CELL_COLUMNS]
    table = cells.copy()
    if sample_metrics and len(results):
        means = results.groupby("cell", sort=False)[sample_metrics].mean()
        table = table.join(means, on="cell")
    table["series"] = [
        f"T={r.num_inference_steps} g1={r.guidance_scale:g} g2={r.inversion_guidance_scale:g} rounds={r.rounds} "
        f"{r.zag}" + (f"/{r.zag_eval_timestep}" if r.zag != "official" else "")
        + (f" timesteps={getattr(r, SCHEDULE_KNOB)}" if SCHEDULE_KNOB in table.columns else "")
        for r in table.itertuples()
    ]
    charts = {}
    for metric in [*sample_metrics, *set_metrics, "nfe"]:
        data = table[["zigzag_steps", metric, "series"]].sort_values("zigzag_steps")
        data = data[[not (isinstance(v, float) and math.isnan(v)) for v in data[metric]]]
        if len(data):
            charts[f"sweep/plots/{metric}_vs_lambda"] = wandb.plot.line(
                wandb.Table(dataframe=data), "zigzag_steps", metric, stroke="series", title=f"{metric} vs lambda")
    return charts


def wandb_sweep_config(spec: SweepSpec, spec_path: str | Path, out: str | Path,
                       python: str | None = None) -> dict[str, Any]:
    """A W&B grid sweep over the spec's knobs (leg knobs and the timestep schedule included, the schedule
    by its table label); each agent run executes one cell into ``out``."""
    lists = [v for v in spec.grid.get(SCHEDULE_KNOB, ()) if v is not None]
    steps = spec.grid["num_inference_steps"]
    if any(len(resolve_timesteps(v)) != t for v in lists for t in steps):
        raise SpecError("--wandb-sweep: W&B runs every combination of the knobs, but a grid.timesteps list fixes T to "
                        f"its length, so num_inference_steps {list(steps)} would pair lists with a T they do not "
                        "have; give num_inference_steps the lists' one length, or run the sweep without W&B's grid")
    parameters = {knob: {"values": [timesteps_label(v) if knob == SCHEDULE_KNOB else v for v in spec.grid[knob]]}
                  for knob in spec.knobs}
    return {
        "name": spec.name or f"zsampling-{spec.hash}",
        "description": "Z-Sampling sweep cells; every run writes its cell into the shared output directory",
        "program": "zsampling",
        "method": "grid",
        "metric": {"name": "sweep/cells_finished", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", python or sys.executable, "-m", "zsampling", "sweep", str(Path(spec_path).resolve()),
                    "--out", str(Path(out).resolve()), "--wandb", "--no-progress", "${args_no_hyphens}"],
    }


def write_wandb_sweep_config(spec: SweepSpec, spec_path: str | Path, out: str | Path, file: str | Path) -> Path:
    """Write :func:`wandb_sweep_config` as YAML (for ``wandb sweep FILE``)."""
    import yaml

    return atomic_write_text(file, yaml.safe_dump(wandb_sweep_config(spec, spec_path, out), sort_keys=False))
