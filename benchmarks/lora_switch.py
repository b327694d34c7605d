"""Cost of switching the LoRA scale per leg (W2SD) vs the same run at one fixed scale.

Usage: python benchmarks/lora_switch.py [--steps 50] [--repeats 5] [--batch 2] [--threads 1]

Tiny offline SDXL with a rank-4 LoRA on every attention projection (the layers
W2SD's LoRA touches). "switching": zig +1.5, zag -1.5, step 0.8 (three scale
changes per reflecting step, through peft's per-layer set_scale); "fixed": the
same legs with scale 1.5 everywhere (the scale is set once, then every switch is
a no-op). Both runs make the same network calls and rows (g2 = 1: the zag runs
the conditional branch only), so the difference is the switching overhead.
Variants are interleaved; each time is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig

from zsampling import sample
from zsampling.legs import Legs
from zsampling.tiny_pipelines import tiny_sdxl_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_sdxl_pipeline()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="w2sd")
    layers = sum(1 for m in pipe.unet.modules() if type(m).__name__ == "Linear" and hasattr(m, "scaling"))
    variants = {"switching (W2SD: +1.5 / -1.5 / 0.8)": Legs.w2sd(),
                "fixed scale (1.5 on every leg)": Legs.w2sd(1.5, 1.5, 1.5)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    nfe: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, legs in variants.items():
            start = time.perf_counter()
            out = sample(pipe, ["a photo of a cat"] * args.batch, num_inference_steps=args.steps, guidance_scale=5.5,
                         inversion_guidance_scale=1.0, legs=legs, generator=torch.Generator().manual_seed(0),
                         output_type="latent", progress=False)
            if repeat:
                times[name].append(time.perf_counter() - start)
            nfe[name] = out.nfe
    fixed = statistics.median(times["fixed scale (1.5 on every leg)"])
    print(f"T={args.steps}, lambda={args.steps - 1}, batch={args.batch}, LoRA layers={layers}, "
          f"threads={args.threads}, median of {args.repeats}\n")
    print("| variant | NFE rows / sample | wall time (s) | time / fixed |")
    print("|---|---|---|---|")
    for name in variants:
        median = statistics.median(times[name])
        print(f"| {name} | {nfe[name]} | {median:.3f} | {median / fixed:.3f} |")


if __name__ == "__main__":
    main()
