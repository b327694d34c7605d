"""Wall time and network rows of standard vs Z-Sampling, and branch-aware vs both-branch zags.

Usage: python benchmarks/sampler_cost.py [--model sdxl|sd3|flux-cfg|flux-dev] [--steps 50] [--repeats 5]

Runs on the tiny offline pipelines (zsampling.tiny_pipelines) on the CPU, or on
CUDA with --device cuda --dtype float16 for a real GPU check: SDXL (DDIM), SD3
(flow matching, CFG), Flux with true CFG (a negative prompt) and guidance-distilled
Flux-dev (one branch: no both-branch variant). Variants are interleaved and each
reported time is the median of --repeats runs, so background load affects all
variants alike. Writes a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zsampling import sample
from zsampling.tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

MODELS = {"sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline, "flux-cfg": tiny_flux_pipeline,
          "flux-dev": tiny_flux_pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdxl", choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MODELS[args.model]().to(args.device, getattr(torch, args.dtype))
    prompts = ["a photo of a cat"] * args.batch
    window = args.steps - 1
    common = {"negative_prompt": "blurry"} if args.model == "flux-cfg" else {}
    g1 = 3.5 if args.model == "flux-dev" else 5.5
    variants = {
        "standard (lambda=0)": dict(zigzag_steps=0),
        "Z-Sampling, branch-aware zag": dict(zigzag_steps=window),
    }
    if args.model != "flux-dev":  # guidance-distilled: one branch, nothing to save
        variants["Z-Sampling, both branches in zag"] = dict(zigzag_steps=window, branches="both")
    times: dict[str, list[float]] = {name: [] for name in variants}
    nfe: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is discarded
        for name, kwargs in variants.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = sample(pipe, prompts, num_inference_steps=args.steps, guidance_scale=g1,
                         inversion_guidance_scale=0.0, generator=torch.Generator().manual_seed(0),
                         output_type="latent", progress=False, **common, **kwargs)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if repeat:
                times[name].append(time.perf_counter() - start)
            nfe[name] = out.nfe
    reference = "Z-Sampling, both branches in zag" if "Z-Sampling, both branches in zag" in variants else \
        "standard (lambda=0)"
    base = statistics.median(times[reference])
    print(f"model={args.model}, T={args.steps}, lambda={window}, batch={args.batch}, device={args.device}, "
          f"dtype={args.dtype}, threads={args.threads}, median of {args.repeats}\n")
    print(f"| variant | NFE rows / sample | wall time (s) | time / {reference} |")
    print("|---|---|---|---|")
    for name in variants:
        median = statistics.median(times[name])
        print(f"| {name} | {nfe[name]} | {median:.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
