"""Wall-time overhead of trace recording against sampling with no recorder.

For each model (the tiny random SDXL pipeline, the offline demo model and
its flow-matching twin ``demo-flow``) this runs ``zsampling.sample`` with

* no recorder (baseline),
* ``TraceRecorder(keep="scalars")`` (the default),
* ``TraceRecorder(keep="all")`` (latents, eps_u / eps_c and predicted x0 of
  every operation, fp16),

interleaving the three in a rotating order within each repeat so that load
drift on the machine hits all of them alike. Reported per mode: the median
wall time and process CPU time over the repeats, the overhead of the
medians, and the median of the per-repeat paired ratios. A second,
instrumented pass measures the recorder's own time (inside ``record`` plus
building the Trace), a noise-free view of the same cost. The final latents
of every mode are checked to be bitwise equal to the baseline's, and the
network rows to be the same. Last, the recorder's self-time per event is
measured on latents of several shapes (SDXL's 4x128x128 included) with a
zero-cost denoiser, so the overhead on any model is that time divided by the
model's time per network call.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/trace_overhead.py --steps 50 --repeats 7

Results and the command that produced them: benchmarks/trace_overhead.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import zsampling
from zsampling.sampler import Event
from zsampling.trace import TraceRecorder, estimate_trace_bytes

MODES = ("none", "scalars", "all")


def load_models(names: list[str], demo_dir: str | None = None) -> dict[str, tuple[Any, list[str]]]:
    """name -> (pipeline, prompts); models that are not available are reported and skipped."""
    models: dict[str, tuple[Any, list[str]]] = {}
    if "tiny-sdxl" in names:
        try:
            from zsampling.tiny_pipelines import tiny_sdxl_pipeline

            models["tiny-sdxl"] = (tiny_sdxl_pipeline(), ["a photo of a cat"])
        except ImportError as error:
            print(f"skipping tiny-sdxl: {error}")
    if "demo" in names:
        try:
            from zsampling.denoisers.demo import load_demo_pipeline

            models["demo"] = (load_demo_pipeline(model_dir=demo_dir), ["3", "digit 7", "0", "9"])
        except (ImportError, FileNotFoundError, OSError) as error:
            print(f"skipping demo: {type(error).__name__}: {error}")
    if "demo-flow" in names:
        from zsampling.denoisers.demo import load_demo_pipeline

        models["demo-flow"] = (load_demo_pipeline(family="flow"), ["3", "digit 7", "0", "9"])
    return models


class TimedRecorder:
    """Wraps a recorder and accumulates the time spent inside it."""

    def __init__(self, recorder: TraceRecorder) -> None:
        self.recorder = recorder
        self.seconds = 0.0

    def record(self, event: Event) -> None:
        start = time.perf_counter()
        self.recorder.record(event)
        self.seconds += time.perf_counter() - start

    def finish(self) -> Any:
        start = time.perf_counter()
        trace = self.recorder.trace
        self.seconds += time.perf_counter() - start
        return trace


def make_recorder(mode: str) -> TraceRecorder | None:
    if mode == "none":
        return None
    return TraceRecorder(keep=mode, latent_dtype=torch.float16)


def run_once(pipe: Any, prompts: list[str], mode: str, steps: int,
             wrap: Callable[[TraceRecorder], Any] | None = None) -> tuple[float, float, Any, Any]:
    """(wall s, cpu s, output, recorder) of one sampling run, trace finalisation included."""
    recorder = make_recorder(mode)
    hook = wrap(recorder) if (wrap is not None and recorder is not None) else recorder
    wall, cpu = time.perf_counter(), time.process_time()
    out = zsampling.sample(pipe, prompts, num_inference_steps=steps, guidance_scale=5.5,
                           generator=torch.Generator().manual_seed(0), output_type="latent", progress=False,
                           recorder=hook)
    if isinstance(hook, TimedRecorder):
        hook.finish()
    elif recorder is not None:
        _ = recorder.trace  # building the Trace (the host transfer) is part of the cost
    return time.perf_counter() - wall, time.process_time() - cpu, out, hook


def bench(name: str, pipe: Any, prompts: list[str], steps: int, repeats: int) -> list[dict[str, Any]]:
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    reference = None
    for mode in MODES:  # warm-up, and the bitwise check
        _, _, out, _ = run_once(pipe, prompts, mode, steps)
        if reference is None:
            reference = out
        assert torch.equal(out.latents, reference.latents), f"{mode} changed the output"
        assert out.network_rows == reference.network_rows, f"{mode} changed the network rows"
    for repeat in range(repeats):
        order = MODES[repeat % 3:] + MODES[:repeat % 3]
        for mode in order:
            w, c, _, _ = run_once(pipe, prompts, mode, steps)
            wall[mode].append(w)
            cpu[mode].append(c)
    self_time = {}
    for mode in MODES[1:]:
        samples = []
        for _ in range(max(3, repeats // 2)):
            _, _, _, hook = run_once(pipe, prompts, mode, steps, wrap=TimedRecorder)
            samples.append(hook.seconds)
        self_time[mode] = statistics.median(samples)
    base_wall, base_cpu = statistics.median(wall["none"]), statistics.median(cpu["none"])
    latent_shape = tuple(reference.latents.shape[1:])
    config = reference.config
    rows = []
    for mode in MODES:
        paired = [w / b for w, b in zip(wall[mode], wall["none"], strict=True)]
        rows.append({
            "model": name,
            "mode": mode,
            "wall_s": statistics.median(wall[mode]),
            "cpu_s": statistics.median(cpu[mode]),
            "overhead_wall": statistics.median(wall[mode]) / base_wall - 1,
            "overhead_cpu": statistics.median(cpu[mode]) / base_cpu - 1,
            "overhead_paired": statistics.median(paired) - 1,
            "recorder_share": self_time.get(mode, 0.0) / base_wall,
            "bytes_per_sample": 0 if mode == "none" else estimate_trace_bytes(
                latent_shape, config.num_inference_steps, config.reflections, keep=mode),
            "batch": len(prompts),
            "latent_shape": latent_shape,
            "nfe": reference.nfe,
        })
    return rows


class _ConstantDenoiser:
    """Returns fixed eps tensors: isolates the recorder's cost from any network."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        generator = torch.Generator().manual_seed(0)
        self.uncond = torch.randn(shape, generator=generator)
        self.cond = torch.randn(shape, generator=generator)
        self.network_rows = 0

    def __call__(self, x: torch.Tensor, t: int, branches: Any) -> Any:
        from zsampling.denoisers.base import EpsPair

        return EpsPair(self.uncond.clone() if branches.uncond else None, self.cond.clone() if branches.cond else None)


def recorder_cost_per_event(shape: tuple[int, ...], steps: int, repeats: int) -> dict[str, float]:
    """Median recorder self-time per event (microseconds) on latents of ``shape``,
    with a zero-cost denoiser: what recording adds to each network call."""
    from diffusers import DDIMScheduler

    from zsampling import DDIMSchedule, ZigzagConfig, zigzag_sample

    schedule = DDIMSchedule.from_scheduler(
        DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1), steps)
    config = ZigzagConfig(num_inference_steps=steps)
    denoiser = _ConstantDenoiser(shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    events = steps + 2 * config.reflections
    costs = {}
    for mode in MODES[1:]:
        samples = []
        for _ in range(repeats):
            hook = TimedRecorder(TraceRecorder(keep=mode, latent_dtype=torch.float16))
            zigzag_sample(denoiser, x, schedule, config, recorder=hook)
            hook.finish()
            samples.append(hook.seconds / events * 1e6)
        costs[mode] = statistics.median(samples)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 limits noise on shared boxes)")
    parser.add_argument("--models", nargs="+", default=["tiny-sdxl", "demo"])
    parser.add_argument("--demo-dir", default=None, help="demo model directory (default: the shipped weights)")
    parser.add_argument("--event-shapes", nargs="*", default=["1x1x8x8", "1x4x32x32", "1x4x128x128", "4x4x128x128"],
                        help="latent shapes BxCxHxW for the per-event recorder cost (zero-cost denoiser)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models(args.models, args.demo_dir)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"steps={args.steps}, repeats={args.repeats}")
    print()
    print("| model | batch x latent | mode | median wall (s) | overhead (medians) | overhead (paired) "
          "| median CPU (s) | CPU overhead | recorder self-time | trace bytes / sample |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (pipe, prompts) in models.items():
        for row in bench(name, pipe, prompts, args.steps, args.repeats):
            pct = "" if row["mode"] == "none" else "{:+.1%}"
            print(
                f"| {row['model']} | {row['batch']} x {row['latent_shape']} | {row['mode']} | {row['wall_s']:.3f} "
                f"| {pct.format(row['overhead_wall'])} | {pct.format(row['overhead_paired'])} "
                f"| {row['cpu_s']:.3f} | {pct.format(row['overhead_cpu'])} "
                f"| {'' if row['mode'] == 'none' else format(row['recorder_share'], '.1%')} "
                f"| {row['bytes_per_sample']:,} |",
                flush=True,
            )
    if args.event_shapes:
        print()
        print("| latents (B, C, H, W) | recorder self-time per event, scalars (us) | keep='all' (us) |")
        print("|---|---|---|")
        for spec in args.event_shapes:
            shape = tuple(int(n) for n in spec.split("x"))
            costs = recorder_cost_per_event(shape, args.steps, max(3, args.repeats // 2))
            print(f"| {shape} | {costs['scalars']:.0f} | {costs['all']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
