"""Wall time and network rows of standard vs Z-Sampling, and branch-aware vs both-branch zags.

Usage: python benchmarks/sampler_cost.py [--steps 50] [--repeats 5] [--threads 1]

Runs on the tiny offline SDXL (zsampling.tiny_pipelines) on the CPU, or on CUDA
with --device cuda --dtype float16 for a real GPU check. Variants are interleaved
and each reported time is the median of --repeats runs, so background load
affects all variants alike. Writes a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zsampling import sample
from zsampling.tiny_pipelines import tiny_sdxl_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_sdxl_pipeline().to(args.device, getattr(torch, args.dtype))
    prompts = ["a photo of a cat"] * args.batch
    window = args.steps - 1
    variants = {
        "standard (lambda=0)": dict(zigzag_steps=0),
        "Z-Sampling, branch-aware zag": dict(zigzag_steps=window),
        "Z-Sampling, both branches in zag": dict(zigzag_steps=window, branches="both"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    nfe: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is discarded
        for name, kwargs in variants.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = sample(pipe, prompts, num_inference_steps=args.steps, guidance_scale=5.5,
                         inversion_guidance_scale=0.0, generator=torch.Generator().manual_seed(0),
                         output_type="latent", progress=False, **kwargs)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if repeat:
                times[name].append(time.perf_counter() - start)
            nfe[name] = out.nfe
    both = statistics.median(times["Z-Sampling, both branches in zag"])
    print(f"T={args.steps}, lambda={window}, batch={args.batch}, device={args.device}, dtype={args.dtype}, "
          f"threads={args.threads}, median of {args.repeats}\n")
    print("| variant | NFE rows / sample | wall time (s) | time / both-branch Z |")
    print("|---|---|---|---|")
    for name in variants:
        median = statistics.median(times[name])
        print(f"| {name} | {nfe[name]} | {median:.3f} | {median / both:.3f} |")


if __name__ == "__main__":
    main()
