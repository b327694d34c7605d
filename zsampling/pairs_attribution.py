"""Prompt-part attribution runs on the pairs world (the model side of :mod:`analysis.attribution`).

:func:`attribution_runs` samples Z-Sampling at each window and the matched
plain CFG with a :class:`~zsampling.trace.attribution.PartAttributionRecorder`
and returns the long tables that :mod:`analysis.attribution` turns into the
per-part figure and table (analysis itself never runs a model).

``python -m zsampling.pairs_attribution --run-dir DIR --out figures/pairs``
writes ``pairs_attribution.png``/``.pdf``, ``pairs_attribution.csv`` and
``pairs_matched.csv`` from a finished ``zsampling demo --world pairs --out DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import zsampling
from analysis.attribution import (
    attribution_table,
    cumulative_gain,
    is_relation_prompt,
    matched_prompt_comparison,
    plot_attribution,
    relation_parts,
)
from zsampling.atomic import atomic_save_figure, atomic_write_csv
from zsampling.schedule import DDIMSchedule
from zsampling.trace.attribution import PartAttributionRecorder


def attribution_runs(
    pipe: Any,
    prompts: Sequence[str],
    *,
    guidance: float,
    steps: int,
    windows: Sequence[int],
    matched_scale: float,
    matched_steps: int,
    seeds: int = 4,
    parts: Callable[[str], list[str]] = relation_parts,
    part_names: Sequence[str] = ("subject", "relation"),
    scorer: Callable[[Any, list[str]], dict[str, np.ndarray]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run Z-Sampling (g2 = 0, each window lambda) and the matched plain CFG with attribution recorders.

    Every run samples the same ``len(prompts) * seeds`` initial noises (one
    generator per sample, seed = its index within its prompt). Returns
    ``(frame, outcomes)``: the recorders' long tables with a ``setting``,
    ``method``, ``progress`` (= (step + 1) / T, to line up runs of different
    T) and ``seed`` column, and per-sample outcome metrics from ``scorer``
    (``pair_scores(images, prompts)`` of the decoded images) with the
    setting, the recorder's ``extra_rows`` and the run's ``network_rows``.
    """
    batch = [p for p in prompts for _ in range(seeds)]
    seed_of = [s for _ in prompts for s in range(seeds)]
    parts_per = [parts(p) for p in batch]
    runs: list[tuple[str, str, int, float, int]] = [(f"Z-Sampling lambda={w}", "zigzag", steps, guidance, w)
                                                     for w in windows]
    runs.append((f"CFG g={matched_scale:g} (matched)", "cfg_matched", matched_steps, matched_scale, 0))
    frames, outcomes = [], []
    for setting, method, T, g, window in runs:
        schedule = DDIMSchedule.from_scheduler(pipe.scheduler, T)
        rec = PartAttributionRecorder(pipe, batch, parts_per, part_names=list(part_names),
                                      reference_guidance=guidance if method == "cfg_matched" else None,
                                      schedule=schedule)
        out = zsampling.sample(pipe, batch, num_inference_steps=T, guidance_scale=g, inversion_guidance_scale=0.0,
                               zigzag_steps=window, generator=[torch.Generator().manual_seed(s) for s in seed_of],
                               output_type="pt", recorder=rec, progress=False)
        frame = rec.to_frame()
        frame.insert(0, "setting", setting)
        frame.insert(1, "method", method)
        frame["progress"] = (frame["step"] + 1) / T
        frame["seed"] = [seed_of[b] for b in frame["sample"]]
        frames.append(frame)
        if scorer is not None:
            scores = pd.DataFrame(scorer(out.images, batch))
            scores.insert(0, "setting", setting)
            scores.insert(1, "method", method)
            scores.insert(2, "prompt", batch)
            scores.insert(3, "seed", seed_of)
            scores["extra_rows"] = rec.extra_rows
            scores["network_rows"] = out.network_rows
            outcomes.append(scores)
    return pd.concat(frames, ignore_index=True), (pd.concat(outcomes, ignore_index=True) if outcomes
                                                   else pd.DataFrame())


def main(argv: list[str] | None = None) -> None:
    """Figure + tables from a finished ``zsampling demo --world pairs --out RUN_DIR``."""
    from zsampling.denoisers.pairs import load_pairs_pipeline
    from zsampling.metrics.pairs import pair_scores
    from zsampling.pairs_ablation import GUIDANCE, PROMPTS, STEPS

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt of the attribution runs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = pd.read_parquet(args.run_dir / "results.parquet")
    matched = pd.read_parquet(args.run_dir / "matched.parquet")
    args.out.mkdir(parents=True, exist_ok=True)
    comparison = matched_prompt_comparison(results, matched)
    atomic_write_csv(args.out / "pairs_matched.csv", comparison, index=False, float_format="%.4f")
    measured = results[results["method"] == "cfg_matched_measured"].iloc[0]
    prompts = [q for q in PROMPTS if is_relation_prompt(q)]
    frame, outcomes = attribution_runs(
        load_pairs_pipeline(), prompts, guidance=GUIDANCE, steps=STEPS, windows=(6, 12, STEPS - 1),
        matched_scale=float(measured["guidance_scale"]), matched_steps=int(measured["num_inference_steps"]),
        seeds=args.seeds, scorer=pair_scores)
    table = attribution_table(frame, outcomes)
    atomic_write_csv(args.out / "pairs_attribution.csv", table, index=False, float_format="%.4f")
    fig = plot_attribution(cumulative_gain(frame), title="Pairs world: what each reflection (or the matched CFG's "
                           f"extra guidance over g1 = {GUIDANCE:g}) injects, per prompt part")
    atomic_save_figure(args.out / "pairs_attribution.png", fig, dpi=150, bbox_inches="tight")
    atomic_save_figure(args.out / "pairs_attribution.pdf", fig, bbox_inches="tight")


if __name__ == "__main__":
    main()
