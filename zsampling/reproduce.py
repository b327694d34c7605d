"""Reproduce the paper's headline comparison: Z-Sampling vs standard sampling on a benchmark.

Why: the paper's main claim is a winning rate of Z-Sampling over standard
sampling (same prompt, same initial noise) under human-preference scorers.
One command should run both methods with a preset's settings, score the
images, and put the numbers beside the released ones.

What :func:`reproduce` does (``zsampling reproduce PRESET --prompts FILE --out DIR``):

1. loads the prompt set (:func:`zsampling.prompts.load_prompts`, any
   benchmark format) and writes ``DIR/prompts.csv``;
2. runs a sweep (:func:`zsampling.sweep.run_sweep`) into ``DIR/sweep`` with
   two cells, standard (lambda = 0) and Z-Sampling (the preset's lambda), the
   preset's T, g1, g2, rounds, zag, resolution and dtype; killed and re-run,
   it resumes;
3. scores each cell's images with the chosen scorers
   (:func:`zsampling.metrics.get_scorer`), one file per scorer under
   ``DIR/scores/`` (resumable: finished cells are not re-scored);
4. writes ``DIR/results.csv`` (one row per sample and method with the
   prompt's category and the scores), ``DIR/win_rates.csv`` (per category and
   overall: win rate of Z-Sampling over standard with a Wilson CI, a
   Wilcoxon p-value and, beside it, ``p_holm`` adjusted over the categories
   (Holm, per metric), both methods' means, and the released win rate where
   there is one) and ``DIR/winning_rate.png`` (:func:`analysis.plots.plot_win_rate`,
   with the released numbers marked).

Seeds: the paper's protocol, prompt i <-> seed i. The sweep uses paired
seeds (``seeds: {paired: true, offset: seed_offset}``): prompt i is sampled
once with seed ``seed_offset + i`` (the ``seed`` column of ``prompts.csv``),
its initial noise drawn from its own generator seeded with exactly that seed
(``noise: seed``), so both cells start prompt i from the same x_T (the
pairing the win rate needs). The noise is drawn in float32 on the CPU; the
released code's float16 draw is
:func:`zsampling.prompts.release_initial_latents`, for direct ``sample`` calls.

Model: the preset itself (``model.name`` = the preset's name, loaded by
:func:`zsampling.presets.load_preset_pipeline`), so presets with replaced
components (``sdxl-dpo``'s DPO UNet) run directly; ``model_path`` is the
preset's ``local_path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from zsampling.atomic import atomic_save_figure, atomic_write_csv
from zsampling.presets import ModelPreset, available_hub_id, get_preset

__all__ = ["PAPER_WIN_RATES", "ReproduceResult", "paper_spec", "reproduce", "score_sweep"]

PAPER_WIN_RATES: dict[str, dict[str, float]] = {
    "pickapic": {"image_reward": 0.70, "pick_score": 0.76, "aesthetic": 0.71, "hpsv2": 0.88},
    "drawbench": {"image_reward": 0.755, "pick_score": 0.76, "aesthetic": 0.815, "hpsv2": 0.94},
}
"""Released winning rates of Z-Sampling over standard sampling (the released winning-rate figure,
quoted in the paper's abstract and the authors' blog) by prompt-set format and scorer name. They
are DreamShaper-XL-v2-turbo's, not SDXL's: ``zsampling reproduce dreamshaper-xl`` compares
against them."""

PAPER_WIN_RATE_PRESET = "dreamshaper-xl"
"""The preset whose runs are compared against :data:`PAPER_WIN_RATES`."""

SWEEP_DIR = "sweep"
SCORES_DIR = "scores"
_PROMPT_TABLE_COLUMNS = ("index", "prompt", "category", "seed")


@dataclass
class ReproduceResult:
    """What :func:`reproduce` wrote.

    Attributes:
        out: the output directory.
        prompts: the prompt set (``load_prompts``' shape).
        results: one row per sample and method: the sweep's results columns,
            ``category`` and one column per scorer.
        win_rates: one row per (category, metric); ``category`` "all" first.
        figure: the winning-rate figure (None without scorers).
        sweep: the sweep's :class:`~zsampling.sweep.SweepResult`.
    """

    out: Path
    prompts: pd.DataFrame
    results: pd.DataFrame
    win_rates: pd.DataFrame
    figure: Path | None
    sweep: Any


def paper_spec(
    preset: ModelPreset | str,
    prompts: Sequence[str],
    *,
    model_path: str | Path | None = None,
    seed: int = 0,
    num_inference_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    batch_size: int = 4,
    lora_path: str | Path | None = None,
) -> Any:
    """The sweep spec of the paper's comparison for ``preset`` on ``prompts``.

    Two cells: standard sampling (lambda = 0) and Z-Sampling (the preset's
    lambda; lambda = T - 1 when ``num_inference_steps`` overrides T, e.g. for
    a quick check). The model is the preset, loaded by
    :func:`~zsampling.presets.load_preset_pipeline` from ``model_path`` (its
    ``local_path``) or the preset's hub id (replaced components such as
    ``sdxl-dpo``'s UNet included); ``dtype`` defaults to the preset's on a
    GPU and float32 on the CPU. Seeds are paired: prompt i with seed
    ``seed + i``. ``lora_path`` is the LoRA of presets whose legs switch
    LoRA scales (``w2sd-sdxl``).

    Raises:
        WeightsNotFoundError: no ``model_path``, offline and the hub id is not cached.
        SpecError: an invalid setting (from the sweep's validation).
    """
    from zsampling.devices import resolve_device
    from zsampling.sweep import parse_spec

    preset = get_preset(preset) if isinstance(preset, str) else preset
    target = resolve_device(device)
    if dtype is None:
        dtype = "float32" if target.type == "cpu" else preset.dtype
    options: dict[str, Any] = {"height": height or preset.height, "width": width or preset.width}
    if model_path is not None:
        options["local_path"] = str(Path(model_path).expanduser())
    else:
        available_hub_id(preset)  # offline and not cached: fail now, before anything is loaded
    if lora_path is not None:
        options["lora_path"] = str(Path(lora_path).expanduser())
    steps = num_inference_steps or preset.num_inference_steps
    lam = preset.zigzag_steps if num_inference_steps is None else steps - 1
    grid = {**preset.sweep_grid(), "num_inference_steps": [steps], "zigzag_steps": [0, lam]}
    return parse_spec({
        "name": f"reproduce-{preset.name}",
        "model": {"name": preset.name, "dtype": dtype, "device": device, "options": options},
        "prompts": list(prompts),
        "seeds": {"paired": True, "offset": int(seed)},
        "noise": "seed",
        "grid": grid,
        "metrics": [],
        "trace": {"keep": "scalars"},
        "images": True,
        "output_type": "pt",
        "batch_size": batch_size,
    })


def score_sweep(
    sweep_dir: str | Path,
    scores_dir: str | Path,
    scorers: Mapping[str, Any],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every finished cell's images; returns ``cell``, ``sample_index`` and one column per scorer.

    Each scorer's values live in ``scores_dir/<name>.csv`` (rewritten
    atomically after each cell), so a re-run scores only the cells that are
    missing. Images are read from ``sweep_dir/images/<cell>.safetensors`` in
    batches of ``batch_size``.
    """
    import torch
    from safetensors import safe_open
    from tqdm.auto import tqdm

    from zsampling.sweep.results import images_to_float, read_records

    sweep_dir, scores_dir = Path(sweep_dir), Path(scores_dir)
    scores_dir.mkdir(parents=True, exist_ok=True)
    records = read_records(sweep_dir)
    frames: list[pd.DataFrame] = []
    for name, scorer in scorers.items():
        path = scores_dir / f"{name}.csv"
        done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["cell", "sample_index", name])
        finished = set(done["cell"].astype(str))
        todo = [cell for cell in sorted(records) if cell not in finished]
        for cell in tqdm(todo, desc=f"score {name}", unit="cell", disable=not progress or not todo):
            record = records[cell]
            rows = sorted(record["rows"], key=lambda r: r["sample_index"])
            image_file = (record.get("files") or {}).get("images")
            if image_file is None:
                raise FileNotFoundError(f"cell {cell} of {sweep_dir} saved no images; scoring needs images: true")
            values: list[float] = []
            with safe_open(str(sweep_dir / image_file), framework="pt") as handle:
                images = handle.get_slice("images")
                total = images.get_shape()[0]
                for start in range(0, total, batch_size):
                    batch = images_to_float(images[start:start + batch_size])  # stored uint8 -> [0, 1]
                    prompts = [r["prompt"] for r in rows[start:start + batch_size]]
                    with torch.no_grad():
                        values += [float(v) for v in scorer.score(batch, prompts).reshape(-1).tolist()]
            new = pd.DataFrame({"cell": cell, "sample_index": [r["sample_index"] for r in rows], name: values})
            done = pd.concat([done, new], ignore_index=True) if len(done) else new
            atomic_write_csv(path, done, index=False)
        done["cell"] = done["cell"].astype(str)
        done["sample_index"] = done["sample_index"].astype("int64")
        done[name] = done[name].astype("float64")
        frames.append(done.set_index(["cell", "sample_index"]))
    if not frames:
        return pd.DataFrame(columns=["cell", "sample_index"])
    return pd.concat(frames, axis=1).reset_index()


def _win_rates(results: pd.DataFrame, metrics: Sequence[str], fmt: str | None, preset: ModelPreset,
               seed: int, n_resamples: int) -> pd.DataFrame:
    from analysis.compare import add_holm, compare

    reference = PAPER_WIN_RATES.get(fmt or "", {}) if preset.name == PAPER_WIN_RATE_PRESET else {}
    groups: list[tuple[str, pd.DataFrame]] = [("all", results)]
    categories = [c for c in pd.unique(results["category"]) if isinstance(c, str)]
    groups += [(c, results[results["category"] == c]) for c in categories]
    tables = []
    for category, part in groups:
        table = compare(part, {"method": "zigzag"}, {"method": "standard"}, list(metrics), seed=seed,
                        n_resamples=n_resamples)
        table.insert(0, "category", category)
        table = table.rename(columns={"mean_a": "mean_zigzag", "mean_b": "mean_standard"})
        table["paper_win_rate"] = [reference.get(m, float("nan")) if category == "all" else float("nan")
                                   for m in table["metric"]]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    # Holm within each metric over the categories (one family of tests); the "all" row is its own family
    out["_family"] = out["metric"] + np.where(out["category"] == "all", " (all)", " (categories)")
    return add_holm(out, family=("_family",)).drop(columns="_family")


def _figure(win_rates: pd.DataFrame, preset: ModelPreset, path: Path) -> Path:
    from analysis.plots import plot_win_rate

    overall = win_rates[win_rates["category"] == "all"].copy()
    overall["operator"] = preset.zag
    fig = plot_win_rate(overall, title=f"Z-Sampling vs standard, {preset.name} (x: released win rate)")
    ax = fig.axes[0]
    for x, value in enumerate(overall["paper_win_rate"]):
        if pd.notna(value):
            ax.plot([x], [value], marker="x", color="black", markersize=7, linestyle="none")
    atomic_save_figure(path, fig, dpi=150)
    return path


def reproduce(
    preset: str,
    prompts: str | Path,
    out: str | Path,
    *,
    model_path: str | Path | None = None,
    lora_path: str | Path | None = None,
    scorers: Sequence[str] = (),
    scorer_options: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int | None = None,
    format: str | None = None,
    seed_offset: int = 0,
    num_inference_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    batch_size: int = 4,
    score_batch_size: int = 8,
    progress: bool = True,
    seed: int = 0,
    n_resamples: int = 9999,
) -> ReproduceResult:
    """Run standard and Z-Sampling for ``preset`` on a prompt file, score, and compare.

    Args:
        preset: a preset name (:func:`zsampling.presets.list_presets`).
        prompts: a prompt file in any :func:`~zsampling.prompts.load_prompts` format.
        out: the output directory (re-running resumes).
        lora_path: the LoRA of a preset whose legs switch LoRA scales (``w2sd-sdxl``).
        model_path: a local diffusers directory instead of the preset's hub id (the preset's
            ``local_path``; ``sdxl-dpo``'s UNet still comes from its own repository).
        scorers: scorer names (:func:`zsampling.metrics.available_scorers`:
            ``image_reward``, ``pick_score``, ``aesthetic``, ``hpsv2``, ...);
            none: images and tables only.
        scorer_options: per-scorer keywords of ``get_scorer`` (e.g. a local
            weights path, ``device``).
        limit: the first ``limit`` prompts (the paper: 100 Pick-a-Pic captions).
        format: the prompt file's format (None: detected).
        seed_offset: prompt i gets seed ``seed_offset + i`` (see the module docstring on seeds).
        num_inference_steps: override T (lambda becomes T - 1), for quick checks.
        height, width, dtype, device, batch_size: override the preset's
            resolution / dtype, the device, and samples per network call.
        score_batch_size: images per scorer call.
        progress: progress bars with ETA (sweep and scoring).
        seed, n_resamples: the bootstrap of the win-rate CIs.

    Raises:
        PromptFileError, WeightsNotFoundError, SpecError, ValueError: before
        any model is loaded, for bad inputs or unavailable weights.
    """
    from zsampling.metrics import available_scorers, get_scorer
    from zsampling.prompts import load_prompts
    from zsampling.sweep import run_sweep
    from zsampling.sweep.results import atomic_write_json

    chosen = get_preset(preset)
    unknown = [name for name in scorers if name not in available_scorers()]
    if unknown:
        raise ValueError(f"unknown scorer(s) {', '.join(map(repr, unknown))}; available: "
                         f"{', '.join(available_scorers())}")
    frame = load_prompts(prompts, format=format, limit=limit, seed_offset=seed_offset)
    spec = paper_spec(chosen, frame["prompt"].tolist(), model_path=model_path, seed=seed_offset,
                      num_inference_steps=num_inference_steps, height=height, width=width, dtype=dtype,
                      device=device, batch_size=batch_size, lora_path=lora_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompt_table = frame[list(_PROMPT_TABLE_COLUMNS)]
    atomic_write_csv(out / "prompts.csv", prompt_table, index=False)
    atomic_write_json(out / "reproduce.json", {
        "preset": chosen.to_dict(), "model": spec.model.name, "dtype": spec.model.dtype,
        "prompts": {"source": frame.attrs.get("source"), "format": frame.attrs.get("format"), "count": len(frame),
                    "limit": limit},
        "scorers": list(scorers), "seed": seed_offset, "num_inference_steps": spec.grid["num_inference_steps"][0],
        "noise": "paired seeds: prompt i with seed seed + i, its own generator seeded with exactly that seed "
                 "(the same x_T for both methods)",
    })

    sweep = run_sweep(spec, out / SWEEP_DIR, progress=progress)
    results = sweep.results.copy()
    categories = dict(zip(frame["index"], frame["category"], strict=True))
    results.insert(results.columns.get_loc("prompt_index") + 1, "category",
                   [categories.get(int(i)) for i in results["prompt_index"]])

    built = {name: get_scorer(name, **dict((scorer_options or {}).get(name, {}))) for name in scorers}
    if built:
        scores = score_sweep(out / SWEEP_DIR, out / SCORES_DIR, built, batch_size=score_batch_size,
                             progress=progress)
        results = results.merge(scores, on=["cell", "sample_index"], how="left")
    atomic_write_csv(out / "results.csv", results, index=False)

    win_rates = pd.DataFrame()
    figure = None
    if built:
        win_rates = _win_rates(results, list(built), frame.attrs.get("format"), chosen, seed, n_resamples)
        atomic_write_csv(out / "win_rates.csv", win_rates, index=False)
        figure = _figure(win_rates, chosen, out / "winning_rate.png")
    return ReproduceResult(out=out, prompts=frame, results=results, win_rates=win_rates, figure=figure,
                           sweep=sweep)


def summary_lines(result: ReproduceResult) -> list[str]:
    """Human-readable lines on what :func:`reproduce` wrote (the CLI echoes them)."""
    lines = [f"{len(result.prompts)} prompts, {len(result.results)} samples -> {result.out / 'results.csv'}"]
    if not result.win_rates.empty:
        overall = result.win_rates[result.win_rates["category"] == "all"]
        for row in overall.itertuples():
            paper = "" if pd.isna(row.paper_win_rate) else f" (released: {row.paper_win_rate:.1%})"
            lines.append(f"win rate of Z-Sampling on {row.metric}: {row.win_rate:.1%} "
                         f"[{row.ci_low:.1%}, {row.ci_high:.1%}], n={row.n}{paper}")
        lines.append(f"tables: {result.out / 'win_rates.csv'}; figure: {result.figure}")
    return lines



def command(
    preset: Annotated[str, typer.Argument(help="Model preset (sdxl, sdxl-dpo, dreamshaper-xl, sd15, sd21, "
                                               "pixart-alpha, hunyuan-dit, w2sd-sdxl, sd3-medium, sd3.5-large, "
                                               "sd3.5-medium, flux-dev).", show_default=False)],
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompt file: DrawBench CSV, Pick-a-Pic CSV/Parquet, "
                                          "HPD v2 JSON (or directory), GenEval JSONL, PartiPrompts TSV, text; or a "
                                          "shipped list: parti, geneval, with :CATEGORY (parti:Animals).",
                                          show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (re-running resumes).",
                                      show_default=False)],
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Local diffusers directory instead of "
                                                    "the preset's hub id.", show_default=False)] = None,
    lora_path: Annotated[Path | None, typer.Option("--lora-path", help="LoRA of a preset whose legs switch LoRA "
                                                   "scales (w2sd-sdxl).", show_default=False)] = None,
    scorers: Annotated[list[str] | None, typer.Option("--scorers", help="Scorers, repeated or comma-separated "
                                                      "(image_reward, pick_score, aesthetic, hpsv2, clip_score).",
                                                      show_default=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="First N prompts (the paper: 100 Pick-a-Pic).",
                                              show_default=False)] = None,
    format: Annotated[str | None, typer.Option("--format", help="Prompt file format (default: detected).",
                                               show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed offset: prompt i gets seed SEED + i.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", help="Override T (lambda = T - 1), for quick checks.",
                                              show_default=False)] = None,
    height: Annotated[int | None, typer.Option("--height", help="Override the preset's height (pixels).",
                                               show_default=False)] = None,
    width: Annotated[int | None, typer.Option("--width", help="Override the preset's width (pixels).",
                                              show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per network call.")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto, cuda, cuda:N or cpu.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars with ETA.")] = True,
) -> None:
    """Reproduce the paper's comparison: standard vs Z-Sampling with a preset, scored, with win rates."""
    from zsampling.presets import WeightsNotFoundError
    from zsampling.prompts import PromptFileError
    from zsampling.sweep import SpecError

    names = [item.strip() for value in scorers or () for item in value.split(",") if item.strip()]
    try:
        result = reproduce(preset, prompts, out, model_path=model_path, lora_path=lora_path, scorers=names,
                           limit=limit, format=format,
                           seed_offset=seed, num_inference_steps=steps, height=height, width=width,
                           batch_size=batch_size, device=device, progress=progress)
    except (PromptFileError, WeightsNotFoundError, SpecError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    for line in summary_lines(result):
        typer.echo(line)
