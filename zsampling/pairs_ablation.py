"""``zsampling demo --world pairs``: the Z-Sampling ablation on the shipped pairs world.

The pairs world (:mod:`zsampling.denoisers.pairs`) has compositional prompts,
so besides "how much of the prompt" it can fail GenEval-style: a missing
digit, or both digits in the wrong slots (a binding error). The ablation
runs on ``PROMPTS`` -- relation prompts ("3 left of 7", "7 right of 3") and
order-free ones ("3 and 7") over fixed digit pairs -- each with
``seeds_per_prompt`` initial noises, and varies one knob at a time around the
paper's setting (g2 = 0, full window lambda = T-1, one round, "official" zag)
at g1 = ``GUIDANCE``, T = ``STEPS``:

* window: lambda in {0, 6, 12, 18, 24};
* inversion guidance: g2 in {0, g1/2, g1} at the full window;
* steps: T in {10, 25, 50}, standard and Z-Sampling;
* matched guidance: plain CFG at Z-Sampling's measured effective guidance,
  at 2 g1 - g2 and at g1, each with the same network rows
  (:mod:`zsampling.sweep.matched`).

Each part is a sweep spec run into one output directory (``extend``), so a
re-run resumes. :func:`summarize_pairs` gives mean metrics per setting; the
prompt-level (cluster) comparison with the matched baselines is
:func:`analysis.attribution.matched_prompt_comparison`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from zsampling.atomic import atomic_write_csv

GUIDANCE = 2.0
"""g1 of the ablation: a guidance where plain CFG still makes binding errors."""
STEPS = 25
METRICS = ("exact_match", "slot_accuracy", "binding_error", "missing_digit", "pairs_nn_distance",
           "clipping_fraction")

PROMPTS: tuple[str, ...] = (
    "3 left of 7", "7 right of 3", "3 and 7",
    "1 left of 8", "8 right of 1", "1 and 8",
    "5 left of 2", "2 right of 5", "5 and 2",
    "0 left of 6", "6 right of 0", "0 and 6",
    "9 left of 4", "4 right of 9", "9 and 4",
    "2 left of 3", "3 right of 2", "2 and 3",
    "6 left of 1", "1 right of 6", "6 and 1",
    "4 left of 5", "5 right of 4", "4 and 5",
)
"""The ablation's prompts (clusters): 8 digit pairs, each as "A left of B", "B right of A" and "A and B"."""
QUICK_PROMPTS: tuple[str, ...] = ("3 left of 7", "7 right of 3", "3 and 7", "5 left of 2")


def pairs_specs(seeds_per_prompt: int = 10, *, quick: bool = False) -> dict[str, dict[str, Any]]:
    """The pairs ablation's sweep specs (plain dicts for :func:`zsampling.sweep.parse_spec`), by part.

    ``quick`` keeps every part with fewer prompts, values and steps (tests, a first look).
    """
    if seeds_per_prompt < 1:
        raise ValueError(f"seeds_per_prompt must be >= 1, got {seeds_per_prompt}")
    prompts = list(QUICK_PROMPTS if quick else PROMPTS)
    steps = 8 if quick else STEPS
    full = steps - 1
    base: dict[str, Any] = {
        "model": {"name": "pairs"},
        "prompts": prompts,
        "seeds": {"start": 0, "count": seeds_per_prompt},
        "metrics": list(METRICS),
        "trace": {"keep": ["scalars"]},
        "batch_size": len(prompts) * seeds_per_prompt,
    }
    knobs = {"guidance_scale": [GUIDANCE], "rounds": [1], "zag": ["official"], "zag_eval_timestep": ["next"]}
    windows = [0, full] if quick else [0, 6, 12, 18, 24]
    gaps = [0.0, GUIDANCE] if quick else [0.0, GUIDANCE / 2, GUIDANCE]
    step_values = [4, 8] if quick else [10, 25, 50]
    parts = {
        "window": {"num_inference_steps": [steps], "inversion_guidance_scale": [0.0], "zigzag_steps": windows},
        "inversion_guidance": {"num_inference_steps": [steps], "inversion_guidance_scale": gaps,
                               "zigzag_steps": ["full"]},
        "steps": {"num_inference_steps": step_values, "inversion_guidance_scale": [0.0], "zigzag_steps": [0, "full"]},
    }
    specs = {name: {**base, "name": f"pairs-{name}", "grid": {**knobs, **grid}} for name, grid in parts.items()}
    specs["matched_guidance"] = {
        **base, "name": "pairs-matched-guidance", "matched_baselines": True,
        "grid": {**knobs, "num_inference_steps": [steps], "inversion_guidance_scale": [0.0], "zigzag_steps": ["full"]},
    }
    return specs


def run_pairs_demo(
    out: str | Path,
    *,
    seeds_per_prompt: int = 10,
    quick: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the pairs ablation into ``out`` (resumable) and return the summary table.

    Writes the sweep outputs to ``out``, the summary to ``out/summary.csv`` and
    the prompt-level matched-guidance comparison to ``out/matched_prompts.csv``.
    """
    from analysis.attribution import matched_prompt_comparison
    from zsampling.sweep import parse_spec, run_sweep

    out = Path(out)
    specs = pairs_specs(seeds_per_prompt, quick=quick)
    parsed = [parse_spec(spec) for spec in specs.values()]  # validate every part before running any
    result = None
    for spec in parsed:
        result = run_sweep(spec, out, extend=True, progress=progress)
    assert result is not None and result.results is not None
    summary = summarize_pairs(result.results)
    atomic_write_csv(out / "summary.csv", summary, index=False, float_format="%.4f")
    matched = pd.read_parquet(out / "matched.parquet")
    atomic_write_csv(out / "matched_prompts.csv", matched_prompt_comparison(result.results, matched), index=False,
                     float_format="%.4f")
    return summary


def summarize_pairs(results: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (method, T, g, lambda, g2): network rows per sample, sample count and mean metrics."""
    settings = ["method", "num_inference_steps", "guidance_scale", "zigzag_steps", "inversion_guidance_scale"]
    metrics = [m for m in METRICS if m in results]
    rows = []
    for key, group in results.groupby(settings, sort=True):
        row: dict[str, Any] = dict(zip(settings, key, strict=True))
        row.update(nfe=int(group["nfe"].iloc[0]), n=len(group), prompts=group["prompt"].nunique())
        row.update({metric: float(group[metric].mean()) for metric in metrics})
        rows.append(row)
    return pd.DataFrame(rows)
