"""The ``zsampling`` command line (typer).

Each command is a thin shell over a library function, so everything the CLI
does is also available from Python and Jupyter.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer

from zsampling.reproduce import command as reproduce
from zsampling.sweep.command import sweep

app = typer.Typer(name="zsampling", no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Run, instrument and analyse Zigzag Diffusion Sampling (Z-Sampling, ICLR 2025)."""


def info() -> None:
    """Print the versions and devices zsampling runs with."""
    import diffusers
    import torch

    import zsampling

    typer.echo(f"zsampling {zsampling.__version__}")
    typer.echo(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    typer.echo(f"cuda available: {torch.cuda.is_available()}")


def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory (re-running resumes).")] = Path("demo-output"),
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per digit (digits world, default 20: samples per "
                                                             "cell = 10 x seeds) or per prompt (pairs world, "
                                                             "default 10).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer values per knob (for tests and a first look).")
                     ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write figures to OUT/figures.")] = True,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (the 8x8 model gains little from more; "
                                                           "oversubscribed cores slow it down badly).")] = 1,
    family: Annotated[str, typer.Option("--family", help="ddim (the digits model) or flow (its rectified-flow "
                                                         "twin, with the euler zag).")] = "ddim",
    gap: Annotated[str, typer.Option("--gap", help="guidance (the Z-Sampling ablation) or lora (weight-gap "
                                                   "reflection with the digits model's thickness LoRA).")
                   ] = "guidance",
    world: Annotated[str, typer.Option("--world", help="digits: the 8x8 class-conditional model; pairs: the 8x16 "
                                                       "two-digit text-conditioned model (--seeds = seeds per prompt)."
                                       )] = "digits",
) -> None:
    """Run the Z-Sampling ablation on a shipped model (digits or pairs) and print the summary."""
    import pandas as pd
    import torch

    torch.set_num_threads(threads)
    if world not in ("digits", "pairs"):
        raise typer.BadParameter(f"must be 'digits' or 'pairs', got {world!r}", param_hint="--world")
    if world == "pairs":
        from zsampling.pairs_ablation import run_pairs_demo

        table = run_pairs_demo(out, seeds_per_prompt=10 if seeds is None else seeds, quick=quick, progress=progress)
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
        typer.echo(f"results: {out / 'results.parquet'}, summary: {out / 'summary.csv'}, "
                   f"matched guidance by prompt: {out / 'matched_prompts.csv'}")
        return
    from zsampling.demo_ablation import closing_table, run_demo

    summary = run_demo(out, seeds_per_digit=20 if seeds is None else seeds, quick=quick, progress=progress,
                       figures=figures, family=family, gap=gap)
    table = summary if "verdict" in summary.attrs else closing_table(summary)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 60):
        typer.echo(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    if "verdict" in summary.attrs:
        typer.echo(summary.attrs["verdict"])
    typer.echo(f"every column: {out / 'summary.csv'}; results: {out / 'results.parquet'}"
               + (f"; figures: {out / 'figures' / 'index.md'}" if figures else ""))


RUN_MARKERS: tuple[str, ...] = ("results.parquet", "results.csv", "cells.parquet", "traces")
"""What a run directory holds at least one of (figures need results or traces)."""


def figures(
    run_dir: Annotated[Path, typer.Argument(help="A sweep's RUN_DIR (results, cells, traces/, images/).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the PNG, PDF, CSV files and index.md.")] = Path(
        "figures"),
    seed: Annotated[int, typer.Option(help="Seed of every bootstrap interval.")] = 0,
    n_resamples: Annotated[int, typer.Option("--n-resamples", help="Bootstrap resamples per interval.")] = 9999,
) -> None:
    """Write every figure RUN_DIR supports (PNG + PDF + the CSV of the numbers drawn) and index.md."""
    from analysis.report import write_figures

    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a directory", param_hint="RUN_DIR")
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        typer.echo(f"error: {run_dir} is not a run directory. A run (what `zsampling sweep`, `zsampling demo` and "
                   "`zsampling reproduce` write) holds results.parquet / results.csv (one row per sample), "
                   "cells.parquet, manifest.json, traces/ and images/; point RUN_DIR at one.", err=True)
        raise typer.Exit(code=2)
    outputs = write_figures(run_dir, out, seed=seed, n_resamples=n_resamples)
    for output in outputs:
        typer.echo(f"{output.name}: " + (f"skipped ({output.skipped})" if output.skipped else "written"))
    typer.echo(f"index: {out / 'index.md'}")


COMMANDS = {"info": info, "demo": demo, "sweep": sweep, "figures": figures, "reproduce": reproduce}
"""Every command, registered here once; each one's help is its docstring."""
for _name, _command in COMMANDS.items():
    app.command(name=_name)(_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
