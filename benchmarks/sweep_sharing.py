"""Benchmark: a lambda sweep (lambda = 0..T-1) with prefix sharing vs running the cells one by one.

Runs the same spec twice through ``zsampling.sweep.run_sweep`` -- once with
``share_prefix=True`` (the default: one reflecting trunk per group, branches
at each lambda) and once with ``share_prefix=False`` (every cell alone) --
and reports network rows actually computed, the compute time of the cells
(model loading excluded), and the largest difference between the two
runs' images and metrics (they must agree to 1e-5).

    python benchmarks/sweep_sharing.py                          # demo model if its weights exist,
                                                                # else analytic + tiny-sd
    python benchmarks/sweep_sharing.py --models analytic,tiny-sd --steps 20 --repeats 2

Results and the command that produced them: benchmarks/sweep_sharing.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zsampling.atomic import atomic_write_text
from zsampling.demo_model import DEMO_MODEL_DIR, METRICS_FILE, WEIGHTS_FILE
from zsampling.sweep import parse_spec, run_sweep
from zsampling.sweep.results import load_images

SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {"prompts": [str(d) for d in range(10)], "seeds": [0, 1], "guidance_scale": 3.0,
             "metrics": ["alignment", "accuracy", "nn_distance", "frechet_pca"]},
    "analytic": {"prompts": ["0", "1", "2"], "seeds": [0, 1, 2, 3], "guidance_scale": 3.0, "metrics": ["posterior"]},
    "tiny-sd": {"prompts": ["a red cube", "a blue sphere"], "seeds": [0], "guidance_scale": 5.5, "metrics": []},
}


def demo_available() -> bool:
    return (DEMO_MODEL_DIR / WEIGHTS_FILE).is_file() and (DEMO_MODEL_DIR / METRICS_FILE).is_file()


def spec_for(model: str, steps: int, trace: bool) -> Any:
    settings = SETTINGS[model]
    return parse_spec({
        "name": f"bench-{model}",
        "model": model,
        "prompts": settings["prompts"],
        "seeds": settings["seeds"],
        "grid": {"num_inference_steps": steps, "guidance_scale": [settings["guidance_scale"]],
                 "inversion_guidance_scale": [0.0], "zigzag_steps": {"range": [0, steps]}},
        "metrics": settings["metrics"],
        "trace": trace,
        "images": True,
        "batch_size": len(settings["prompts"]) * len(settings["seeds"]),
    })


def max_difference(a: Path, b: Path, shared: Any, alone: Any) -> float:
    """Largest |difference| of images and metric columns between the two runs."""
    worst = 0.0
    for cell in shared.cells["cell"]:
        x = load_images(a / "images" / f"{cell}.safetensors")  # uint8 on disk, float in [0, 1] here
        y = load_images(b / "images" / f"{cell}.safetensors")
        worst = max(worst, float((x - y).abs().max()))
    fixed = set(shared.results.columns[:16])
    for column in shared.results.columns:
        if column not in fixed:
            worst = max(worst, float((shared.results[column] - alone.results[column]).abs().max()))
    return worst


def bench(model: str, steps: int, repeats: int, trace: bool) -> dict[str, Any]:
    spec = spec_for(model, steps, trace)
    best: dict[bool, Any] = {}
    times: dict[bool, float] = {True: float("inf"), False: float("inf")}
    dirs: dict[bool, Path] = {}
    root = Path(tempfile.mkdtemp(prefix=f"sweep-bench-{model}-"))
    for repeat in range(repeats):
        for share in (False, True) if repeat % 2 == 0 else (True, False):
            out = root / f"{'shared' if share else 'alone'}-{repeat}"
            result = run_sweep(spec, out, share_prefix=share, progress=False, device="cpu")
            if result.compute_s < times[share]:
                times[share], best[share], dirs[share] = result.compute_s, result, out
    shared, alone = best[True], best[False]
    return {
        "model": model,
        "T": steps,
        "cells": len(shared.cells),
        "samples_per_cell": spec.num_samples,
        "rows_shared": shared.network_rows_spent,
        "rows_alone": alone.network_rows_spent,
        "rows_ratio": shared.network_rows_spent / alone.network_rows_spent,
        "rows_alone_formula": shared.network_rows_alone,
        "time_shared_s": times[True],
        "time_alone_s": times[False],
        "time_ratio": times[True] / times[False],
        "max_abs_difference": max_difference(dirs[True], dirs[False], shared, alone),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="auto", help="comma list of demo, analytic, tiny-sd; auto: demo if its "
                                                         "weights exist, else analytic,tiny-sd")
    parser.add_argument("--steps", type=int, default=20, help="T (lambda runs over 0..T-1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-trace", action="store_true", help="record no traces (default: scalar traces)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.models == "auto":
        models = ["demo"] if demo_available() else ["analytic", "tiny-sd"]
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "demo" in models and not demo_available():
        raise SystemExit("the demo model's weights are missing (scripts/train_demo_model.py)")
    started = time.perf_counter()
    rows = [bench(model, args.steps, args.repeats, not args.no_trace) for model in models]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"traces={'off' if args.no_trace else 'scalars'}, total {time.perf_counter() - started:.0f} s")
    print("| model | T | cells | samples/cell | rows shared | rows one by one | rows ratio | compute shared (s) "
          "| compute one by one (s) | time ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['T']} | {r['cells']} | {r['samples_per_cell']} | {r['rows_shared']} | "
              f"{r['rows_alone']} | {r['rows_ratio']:.3f} | {r['time_shared_s']:.2f} | {r['time_alone_s']:.2f} | "
              f"{r['time_ratio']:.3f} | {r['max_abs_difference']:.1e} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
