"""The ``zsampling sweep`` command (registered on the typer app in ``zsampling.cli``).

Kept here so ``zsampling/cli.py`` only registers it; this module imports
nothing heavy at import time (the sweep machinery loads inside the command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_ASSIGN_HELP = ("KEY=VALUE knob values selecting the cells to run (any knob of the grid; what `wandb agent` "
                "passes with ${args_no_hyphens}; timesteps by its table label: scheduler, a name or t0,t1,...). "
                "Same as --cell.")


def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec file (YAML, TOML or JSON).", show_default=False)],
    assignments: Annotated[list[str] | None, typer.Argument(help=_ASSIGN_HELP, metavar="KEY=VALUE",
                                                            show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (created; re-running resumes).",
                                             show_default=False)] = None,
    extend: Annotated[bool, typer.Option("--extend", help="Accept a changed spec: run its new cells, keep the old.")
                      ] = False,
    cell: Annotated[list[str] | None, typer.Option(
        "--cell", help="KEY=VALUE: run only matching cells (repeat; timesteps=scheduler|NAME|t0,t1,...).",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Samples per network call (overrides spec).",
                                                   show_default=False)] = None,
    device: Annotated[str | None, typer.Option("--device", help="Device (overrides model.device).",
                                               show_default=False)] = None,
    no_share: Annotated[bool, typer.Option("--no-share", help="Run every cell alone (no prefix sharing).")] = False,
    matched_baselines: Annotated[bool, typer.Option(
        "--matched-baselines", help="After each Z-Sampling cell, run plain CFG at its measured effective guidance, "
        "at g1 and at 2*g1-g2, with steps raised to the same network rows (spec key matched_baselines).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar with ETA.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; run nothing.")] = False,
    wandb: Annotated[bool, typer.Option("--wandb", help="Log the sweep to one W&B run (WANDB_MODE is respected).")
                     ] = False,
    wandb_project: Annotated[str, typer.Option("--wandb-project", help="W&B project.")] = "zsampling",
    wandb_name: Annotated[str | None, typer.Option("--wandb-name", help="W&B run name (default: the spec's name).",
                                                   show_default=False)] = None,
    wandb_entity: Annotated[str | None, typer.Option("--wandb-entity", help="W&B entity.", show_default=False)] = None,
    wandb_mode: Annotated[str | None, typer.Option("--wandb-mode", help="online, offline or disabled.",
                                                   show_default=False)] = None,
    wandb_sweep: Annotated[Path | None, typer.Option(
        "--wandb-sweep", help="Write a W&B sweep config (grid over the spec's knobs) to this file and exit.",
        show_default=False)] = None,
) -> None:
    """Run a grid sweep of Z-Sampling: one results row per cell x sample, resumable.

    Re-running the same command resumes (finished cells are skipped). Under
    `accelerate launch -m zsampling sweep ...` cells are split across processes.
    """
    from zsampling.sweep.cells import expand_cells, parse_assignments, plan_groups, select_cells
    from zsampling.sweep.spec import SpecError
    from zsampling.sweep.validate import load_spec

    try:
        overrides: dict[str, object] = {}
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        if matched_baselines:
            overrides["matched_baselines"] = True
        spec_obj = load_spec(spec, overrides or None)
        selection = parse_assignments([*(assignments or []), *(cell or [])])
        cells = select_cells(spec_obj, expand_cells(spec_obj), selection) if selection else expand_cells(spec_obj)
        if wandb_sweep is not None:
            from zsampling.sweep.wandb_log import write_wandb_sweep_config

            if out is None:
                raise SpecError("--wandb-sweep needs --out: the directory every agent run writes its cell to")
            path = write_wandb_sweep_config(spec_obj, spec, out, wandb_sweep)
            typer.echo(f"wrote W&B sweep config {path} ({len(expand_cells(spec_obj))} cells); start it with "
                       f"`wandb sweep {path}` and `wandb agent SWEEP_ID`")
            return
        if dry_run:
            from zsampling.trace import expected_network_rows

            groups = plan_groups(cells, share_prefix=not no_share)
            alone = sum(expected_network_rows(c.config(), spec_obj.num_samples, spec_obj.branches) for c in cells)
            seeds = "paired seeds" if spec_obj.paired else f"{len(spec_obj.seeds)} seeds"
            typer.echo(f"spec {spec} (hash {spec_obj.hash}): {len(cells)} cells in {len(groups)} lambda-sharing "
                       f"groups, {spec_obj.num_samples} samples per cell ({len(spec_obj.prompts)} prompts x "
                       f"{seeds}), {alone} network rows if run one by one")
            if spec_obj.matched_baselines:
                from zsampling.sweep.matched import MATCHED_METHODS

                zig = sum(1 for c in cells if c.method == "zigzag")
                typer.echo(f"matched baselines: {len(MATCHED_METHODS) * zig} more cells ({', '.join(MATCHED_METHODS)}"
                           f" for each of {zig} Z-Sampling cells), derived from their traces after they run")
            return
        if out is None:
            raise SpecError("--out DIR is required (the sweep's output directory)")
        if wandb_mode is not None and wandb_mode not in ("online", "offline", "disabled"):
            raise SpecError(f"--wandb-mode must be online, offline or disabled, got {wandb_mode!r}")
        options = None
        if wandb:
            from zsampling.sweep.wandb_log import WandbOptions

            options = WandbOptions(project=wandb_project, name=wandb_name, entity=wandb_entity, mode=wandb_mode)
        from zsampling.sweep.runner import run_sweep

        result = run_sweep(spec_obj, out, extend=extend, select=selection or None, share_prefix=not no_share,
                           progress=progress, device=device, wandb=options)
    except SpecError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if result.manifest is not None:
        rows = result.manifest.get("network_rows") or {}
        typer.echo(
            f"sweep {result.manifest.get('status')}: {result.cells_run} cells run, {result.cells_skipped} already done "
            f"(of {result.cells_total}); network rows this run {result.network_rows_spent} "
            f"(one by one: {result.network_rows_alone}); all finished cells {rows.get('spent')} / {rows.get('alone')}; "
            f"{result.wall_time_s:.1f} s"
        )
        typer.echo(f"results: {Path(out) / 'results.parquet'} ({len(result.results)} rows), "
                   f"{Path(out) / 'cells.parquet'}, {Path(out) / 'manifest.json'}")
