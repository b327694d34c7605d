"""Small real runs in the sweep's RUN_DIR schema, built without the sweep engine.

The analytic Gaussian mixture (2-D points, exact eps) gives a grid of
standard and Z-Sampling cells in a few seconds: lambda in {3, 6, 9}, g2 in
{0, 1.5}, rounds in {1, 2}, both zag operators, and standard sampling at
T = 10, 16, 24 for the equal-NFE check. Every cell samples the same 3
prompts x 4 seeds with one generator per sample, so samples pair across
cells by (prompt_index, seed). Per-sample metrics: ``posterior`` (P(prompted
component | x0), higher is better) and ``mean_distance`` (distance to the
prompted component's mean, lower is better); set-level ``frechet_pca``
(Frechet distance to data, lower is better).

This module holds no tests; the analysis tests import its builders.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from scipy import linalg

from zsampling.denoisers.analytic import GaussianMixtureModel
from zsampling.trace import sample_with_trace

PROMPTS = ["0", "1", "2"]
SEEDS = [0, 1, 2, 3]
G1 = 3.0
RESULT_COLUMNS = ["cell", "model", "method", "prompt", "prompt_index", "seed", "sample_index", "num_inference_steps",
                  "guidance_scale", "inversion_guidance_scale", "zigzag_steps", "rounds", "zag", "zag_eval_timestep",
                  "nfe", "wall_time_s"]
CELL_COLUMNS = ["cell", "model", "method", "num_inference_steps", "guidance_scale", "inversion_guidance_scale",
                "zigzag_steps", "rounds", "zag", "zag_eval_timestep", "n_samples", "nfe", "wall_time_s"]


def analytic_grid() -> list[dict[str, Any]]:
    """The cells of the analytic test run (settings besides g1 and zag_eval_timestep)."""
    grid = [dict(num_inference_steps=t, zigzag_steps=0, inversion_guidance_scale=0.0, rounds=1, zag="official")
            for t in (10, 16, 24)]
    for zag in ("official", "ddim"):
        for lam in (3, 6, 9):
            grid.append(dict(num_inference_steps=10, zigzag_steps=lam, inversion_guidance_scale=0.0, rounds=1,
                             zag=zag))
        grid.append(dict(num_inference_steps=10, zigzag_steps=9, inversion_guidance_scale=1.5, rounds=1, zag=zag))
        grid.append(dict(num_inference_steps=10, zigzag_steps=9, inversion_guidance_scale=0.0, rounds=2, zag=zag))
    grid.append(dict(num_inference_steps=6, zigzag_steps=5, inversion_guidance_scale=0.0, rounds=1, zag="official"))
    return grid


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two point sets (the FID formula)."""
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def cell_id(settings: dict[str, Any], model: str) -> str:
    return hashlib.sha1(json.dumps({"model": model, **settings}, sort_keys=True).encode()).hexdigest()[:12]


def write_run(
    root: Path,
    pipe: Any,
    grid: Sequence[dict[str, Any]],
    *,
    model_name: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    per_sample: Callable[[torch.Tensor, list[str]], dict[str, np.ndarray]],
    per_set: Callable[[torch.Tensor], dict[str, float]] | None = None,
    guidance_scale: float = G1,
    keep: str = "all",
    decode_every: int | None = None,
    traces: bool = True,
    images: bool = True,
) -> Path:
    """Sample every cell of ``grid`` with ``pipe`` and write RUN_DIR files in the sweep's schema."""
    (root / "traces").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    batch_prompts = [p for p in prompts for _ in seeds]
    batch_seeds = [s for _ in prompts for s in seeds]
    prompt_index = [i for i, _ in enumerate(prompts) for _ in seeds]
    rows, cells = [], []
    for spec in grid:
        settings = {"guidance_scale": guidance_scale, "zag_eval_timestep": "next", **spec}
        cell = cell_id(settings, model_name)
        start = time.perf_counter()
        out, trace = sample_with_trace(pipe, batch_prompts, keep=keep, latent_dtype=torch.float32, seed=batch_seeds,
                                       output_type="pt", progress=False, decode_every=decode_every, **settings)
        wall = time.perf_counter() - start
        if traces:
            trace.save(root / "traces" / f"{cell}.safetensors")
        final = out.images.detach().float().contiguous()
        if images:
            save_file({"images": final}, str(root / "images" / f"{cell}.safetensors"))
        metrics = per_sample(final, batch_prompts)
        method = "standard" if settings["zigzag_steps"] == 0 else "zigzag"
        for k in range(len(batch_prompts)):
            rows.append({"cell": cell, "model": model_name, "method": method, "prompt": batch_prompts[k],
                         "prompt_index": prompt_index[k], "seed": batch_seeds[k], "sample_index": k, **settings,
                         "nfe": out.nfe, "wall_time_s": wall / len(batch_prompts),
                         **{name: float(values[k]) for name, values in metrics.items()}})
        cells.append({"cell": cell, "model": model_name, "method": method, **settings,
                      "n_samples": len(batch_prompts), "nfe": out.nfe, "wall_time_s": wall,
                      **(per_set(final) if per_set else {})})
    results = pd.DataFrame(rows)
    results = results[RESULT_COLUMNS + [c for c in results.columns if c not in RESULT_COLUMNS]]
    cell_table = pd.DataFrame(cells)
    cell_table = cell_table[CELL_COLUMNS + [c for c in cell_table.columns if c not in CELL_COLUMNS]]
    for name, frame in (("results", results), ("cells", cell_table)):
        frame.to_parquet(root / f"{name}.parquet", index=False)
        frame.to_csv(root / f"{name}.csv", index=False)
    (root / "manifest.json").write_text(json.dumps({"model": model_name, "prompts": list(prompts),
                                                    "seeds": list(seeds), "cells": len(grid)}))
    return root


def build_analytic_run(root: Path, grid: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> Path:
    """The analytic-model test run (see the module docstring)."""
    model = GaussianMixtureModel.default()
    data = model.sample_data(2000, generator=torch.Generator().manual_seed(123)).double().numpy()

    def per_sample(points: torch.Tensor, prompts: list[str]) -> dict[str, np.ndarray]:
        x = points.double()
        posterior = np.array([float(model.posterior(x[k:k + 1], p)[0]) for k, p in enumerate(prompts)])
        distance = np.array([float(torch.linalg.norm(x[k] - model.means[int(p)])) for k, p in enumerate(prompts)])
        return {"posterior": posterior, "mean_distance": distance}

    def per_set(points: torch.Tensor) -> dict[str, float]:
        return {"frechet_pca": frechet(points.double().numpy(), data)}

    return write_run(root, model, grid if grid is not None else analytic_grid(), model_name="analytic-gmm",
                     prompts=PROMPTS, seeds=SEEDS, per_sample=per_sample, per_set=per_set, **kwargs)
