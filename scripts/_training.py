"""Training plumbing shared by ``train_demo_model.py`` and ``train_pairs_model.py``.

Both scripts train a small ``UNet2DConditionModel`` jointly with its encoder
(class embedding or text encoder) the same way: the same DDPM schedule and
UNet layout, AdamW with linear warm-up and cosine decay, grad-norm clip 1.0,
EMA weights shipped, a loss log every ``--log-every`` steps, the same
TRAINING.md skeleton. Only the data, the objective and the files' contents
differ, so the loop, the EMA, the loss over a fixed set and the writers live
here once. Imported by the scripts (this folder is put on ``sys.path`` by them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
"""DDIMScheduler config of both worlds' epsilon models (the DDPM forward process they train under)."""

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(UNet input, timesteps, encoder input, regression target) of one training batch."""


def unet_config(
    sample_size: int | list[int], in_channels: int, down_block_types: list[str], up_block_types: list[str],
    channels: tuple[int, ...], cross_dim: int,
) -> dict[str, Any]:
    """UNet2DConditionModel config of a small world: one output channel, one layer per block, a
    cross-attention mid block, attention heads of width 8, GroupNorm with 8 groups."""
    return {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 1,
        "down_block_types": down_block_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": up_block_types,
        "block_out_channels": list(channels),
        "layers_per_block": 1,
        "cross_attention_dim": cross_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }


def settings(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named command-line options, in that order (for the training summary)."""
    return {name: getattr(args, name) for name in names}


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up over ``args.warmup`` steps, then cosine decay to 0 at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """In-place exponential moving average of parameters and buffers."""
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
        else:
            ema[name].copy_(value)


@dataclass
class TrainingRun:
    """What ``train_with_ema`` measured: parameter count, per-step losses, the logged rows, wall time."""

    parameters: int
    losses: list[float]
    log: list[tuple[int, float, float, float]]
    seconds: float

    def summary(self, final_eval: float) -> dict[str, Any]:
        """The training-summary fields both scripts record (after their own settings)."""
        tail = self.losses[-200:]
        return {
            "parameters": self.parameters,
            "train_seconds": round(self.seconds, 1),
            "final_train_loss_last200": round(sum(tail) / len(tail), 5),
            "final_eval_loss_ema": round(final_eval, 5),
        }


def train_with_ema(
    unet: torch.nn.Module,
    encoder: torch.nn.Module,
    draw: Callable[[], Batch],
    args: argparse.Namespace,
    weight_decay: float = 0.0,
) -> TrainingRun:
    """Train ``unet`` and ``encoder`` jointly on ``args.steps`` batches from ``draw``; leave their EMA weights
    loaded and both in eval mode.

    MSE between the UNet's output and the batch's target; AdamW (``args.lr`` peak, see ``lr_at``), grad-norm
    clip 1.0, EMA decay ``args.ema_decay``; prints a loss line every ``args.log_every`` steps and at the end.
    """
    params = list(unet.parameters()) + list(encoder.parameters())
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=weight_decay)
    ema_u = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_e = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    log: list[tuple[int, float, float, float]] = []
    running: list[float] = []
    print(f"training {n_params:,} parameters for {args.steps} steps (batch {args.batch_size})", flush=True)
    start = time.perf_counter()
    for step in range(args.steps):
        x_in, t, cond_in, target = draw()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = torch.nn.functional.mse_loss(unet(x_in, t, encoder_hidden_states=encoder(cond_in)).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema_u, unet, args.ema_decay)
        ema_update(ema_e, encoder, args.ema_decay)
        running.append(float(loss.detach()))
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = sum(running[-args.log_every :]) / len(running[-args.log_every :])
            elapsed = time.perf_counter() - start
            log.append((step + 1, mean, lr_at(step, args), elapsed))
            print(f"step {step + 1:5d}  loss {mean:.4f}  lr {lr_at(step, args):.2e}  {elapsed:6.1f}s", flush=True)
    seconds = time.perf_counter() - start
    unet.load_state_dict(ema_u)
    encoder.load_state_dict(ema_e)
    unet.eval()
    encoder.eval()
    return TrainingRun(parameters=n_params, losses=running, log=log, seconds=seconds)


@torch.no_grad()
def fixed_set_loss(
    unet: torch.nn.Module, encoder: torch.nn.Module, x_in: torch.Tensor, t: torch.Tensor, cond_in: torch.Tensor,
    target: torch.Tensor, chunk: int = 512,
) -> float:
    """Mean squared error of the UNet's output against ``target`` over a fixed set, ``chunk`` rows at a time."""
    total = 0.0
    for s in range(0, x_in.shape[0], chunk):
        out = unet(x_in[s : s + chunk], t[s : s + chunk], encoder_hidden_states=encoder(cond_in[s : s + chunk]))
        total += float(((out.sample - target[s : s + chunk]) ** 2).sum())
    return total / target.numel()


def save_weights(path: Path, unet: torch.nn.Module, encoder: torch.nn.Module, encoder_key: str, fmt: str) -> None:
    """Write the UNet (``unet.*``) and the encoder (``<encoder_key>.*``) as one float32 safetensors file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"unet.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"{encoder_key}.{k}": v.contiguous() for k, v in encoder.state_dict().items()})
    save_file(tensors, str(path), metadata={"format": fmt})


def save_metric_arrays(path: Path, arrays: dict[str, Any], fmt: str) -> None:
    """The metric arrays (classifier, PCA, data) as safetensors. safetensors writes raw buffers, so
    Fortran-ordered arrays (scikit-learn's ``coef_``, ``components_``) are made C-contiguous first."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata={"format": fmt})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON with a final newline (config.json)."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def record_summary(path: Path, summary: dict[str, Any]) -> None:
    """Store ``summary`` as the ``training`` entry of the config.json at ``path``."""
    config = json.loads(path.read_text())
    config["training"] = summary
    write_json(path, config)


def write_loss_log(path: Path, log: list[tuple[int, float, float, float]]) -> None:
    """The loss curve as CSV: step, mean loss since the last row, learning rate, seconds."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "lr", "seconds"])
        w.writerows([(s, f"{m:.5f}", f"{lr:.3e}", f"{e:.1f}") for s, m, lr, e in log])


def command_line(argv: list[str] | None) -> str:
    """The command that ran the script (recorded in TRAINING.md), shell-quoted."""
    return "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])


def file_size(path: Path) -> int:
    """Size in bytes, 0 for a missing file."""
    return path.stat().st_size if path.exists() else 0


# TRAINING.md pieces both scripts write


def command_block(command: str, metrics_command: str | None, verb: str) -> list[str]:
    """The "Command" section: the command in a code block, then the metrics-only command (``verb``: how it
    made the metric arrays, e.g. "refit") if there was a later one."""
    return [
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        *([f"Metric arrays {verb} afterwards with `{metrics_command}`.", ""] if metrics_command else []),
    ]


def machine(threads: int) -> str:
    """Where it ran: thread count, processor and core count."""
    return (f"{threads} CPU thread(s) on `{platform.processor() or platform.machine()}` "
            f"({os.cpu_count()} cores, shared with other jobs)")


def versions() -> str:
    """The "versions" line: python, torch, diffusers and scikit-learn."""
    import diffusers
    import sklearn

    return (f"- versions: python {platform.python_version()}, torch {torch.__version__}, diffusers "
            f"{diffusers.__version__}, scikit-learn {sklearn.__version__}")


def json_block(data: dict[str, Any]) -> list[str]:
    """``data`` as an indented JSON code block, then a blank line."""
    return ["```json", json.dumps(data, indent=2), "```", ""]
