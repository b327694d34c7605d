"""The ``zsampling`` command line (typer).

Each command is a thin shell over a library function, so everything the CLI
does is also available from Python and Jupyter.
"""

from __future__ import annotations

import platform

import typer

app = typer.Typer(
    name="zsampling",
    help="Run, instrument and analyse Zigzag Diffusion Sampling (Z-Sampling, ICLR 2025).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Run, instrument and analyse Zigzag Diffusion Sampling (Z-Sampling, ICLR 2025)."""


@app.command()
def info() -> None:
    """Print the versions and devices zsampling runs with."""
    import diffusers
    import torch

    import zsampling

    typer.echo(f"zsampling {zsampling.__version__}")
    typer.echo(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    typer.echo(f"cuda available: {torch.cuda.is_available()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
