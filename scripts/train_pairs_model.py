"""Train the shipped offline "pairs" model and fit its metric arrays.

    python scripts/train_pairs_model.py --out zsampling/pairs_model

writes, into ``--out``:

- ``weights.safetensors``: the UNet (keys ``unet.*``) and the text encoder
  (``text_encoder.*``), EMA weights, float32;
- ``config.json``: UNet, text-encoder and DDIMScheduler configs, the
  vocabulary and a training summary;
- ``metrics.safetensors``: plain arrays of the pairs metrics (per-slot MLP
  digit/blank classifier, the digits as uint8 for nearest-neighbour
  distances, the held-out indices);
- ``training_log.csv``: the loss curve;
- ``TRAINING.md``: the exact commands, seed, wall time and final loss.

Training data are synthesised on the fly from scikit-learn's digits: each
example draws a prompt form ("A left of B" 28%, "B right of A" 28%, "A and B"
16%, "A" 12%, "left of B" 8%, "right of A" 8%), digits uniformly, and for
each slot a random real image of that digit (blank: every pixel -1);
``--prompt-dropout`` of the prompts are replaced by "" (the unconditional
branch). Everything is deterministic for a given seed, torch build and
thread count. ``--metrics-only`` refits the metric arrays (and rewrites
TRAINING.md) without retraining.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# the package, and the shared _training module also when this file is loaded by its path (as the tests do)
sys.path[:0] = [str(p) for p in (REPO, SCRIPTS) if str(p) not in sys.path]

import _training as training  # noqa: E402

from zsampling.denoisers.pairs import PairsTextEncoder, add_position_channel  # noqa: E402
from zsampling.denoisers.small_unet import build_scheduler, build_unet  # noqa: E402
from zsampling.pairs_model import (  # noqa: E402
    BLANK,
    CONFIG_FILE,
    HEIGHT,
    METRICS_FILE,
    SLOT_SIZE,
    VOCABULARY,
    WEIGHTS_FILE,
    WIDTH,
    tokenize,
)

FORMS: tuple[tuple[str, float], ...] = (
    ("left", 0.28),
    ("right", 0.28),
    ("and", 0.16),
    ("single", 0.12),
    ("left_of", 0.08),
    ("right_of", 0.08),
)
"""Prompt forms of the training distribution and their probabilities."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults are the shipped model's)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "zsampling" / "pairs_model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2600, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay to 0")
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--prompt-dropout", type=float, default=0.12, help="probability of the empty prompt")
    p.add_argument("--channels", type=str, default="32,64", help="UNet block_out_channels")
    p.add_argument("--dim", type=int, default=32, help="text-encoder width = cross_attention_dim")
    p.add_argument("--layers", type=int, default=2, help="text-encoder transformer layers")
    p.add_argument("--no-position-channel", dest="position_channel", action="store_false",
                   help="train without the horizontal-coordinate input channel (binds left/right at chance)")
    p.add_argument("--full-res-attention", action="store_true", help="cross-attention at 8x16 too")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--metrics-only", action="store_true", help="refit the metric arrays only")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Digits as float32 (N, 8, 8) in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images.astype(np.float32) / 16.0) * 2.0 - 1.0, digits.target.astype(np.int64)


def form_prompt(form: str, a: int, b: int) -> str:
    """The prompt text of a form with digits a (first) and b (second)."""
    return {
        "left": f"{a} left of {b}",
        "right": f"{b} right of {a}",
        "and": f"{a} and {b}",
        "single": f"{a}",
        "left_of": f"left of {b}",
        "right_of": f"right of {a}",
    }[form]


class PairSampler:
    """Draws (image pair, prompt) training examples from the digits data."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.images = np.concatenate([images, -np.ones((1, SLOT_SIZE, SLOT_SIZE), np.float32)])
        self.blank_index = len(images)
        self.by_class = [np.flatnonzero(labels == d) for d in range(10)]
        self.rng = np.random.default_rng(seed)
        self.forms = [f for f, _ in FORMS]
        self.form_p = np.array([p for _, p in FORMS])
        self.form_p /= self.form_p.sum()

    def slot_image(self, label: int) -> int:
        if label == BLANK:
            return self.blank_index
        pool = self.by_class[label]
        return int(pool[self.rng.integers(len(pool))])

    def draw(self, n: int, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (n, 1, 8, 16) and their token ids (n, 4)."""
        forms = self.rng.choice(len(self.forms), size=n, p=self.form_p)
        digits = self.rng.integers(0, 10, size=(n, 3))
        drop = self.rng.random(n) < dropout
        swap = self.rng.random(n) < 0.5
        x = np.empty((n, 1, HEIGHT, WIDTH), np.float32)
        ids = np.empty((n, 4), np.int64)
        for i in range(n):
            form, (a, b, c) = self.forms[forms[i]], digits[i]
            left, right = {
                "left": (a, b),
                "right": (a, b),
                "and": (b, a) if swap[i] else (a, b),
                "single": (BLANK, a) if swap[i] else (a, BLANK),
                "left_of": (c, b),
                "right_of": (a, c),
            }[form]
            x[i, 0, :, :SLOT_SIZE] = self.images[self.slot_image(int(left))]
            x[i, 0, :, SLOT_SIZE:] = self.images[self.slot_image(int(right))]
            ids[i] = tokenize("" if drop[i] else form_prompt(form, int(a), int(b)))
        return torch.from_numpy(x), torch.from_numpy(ids)


# --------------------------------------------------------------------------- model


def unet_config(channels: tuple[int, ...], cross_dim: int, position_channel: bool = True,
                full_res_attention: bool = False) -> dict[str, Any]:
    """UNet2DConditionModel config: 8x16, 1 channel (+ the coordinate channel), cross-attention at 4x8
    (as the digits model) and optionally at 8x16."""
    first_down = "CrossAttnDownBlock2D" if full_res_attention else "DownBlock2D"
    last_up = "CrossAttnUpBlock2D" if full_res_attention else "UpBlock2D"
    return training.unet_config([HEIGHT, WIDTH], 2 if position_channel else 1, [first_down, "CrossAttnDownBlock2D"],
                                ["CrossAttnUpBlock2D", last_up], channels, cross_dim)


@torch.no_grad()
def eval_loss(unet: torch.nn.Module, enc: torch.nn.Module, x0: torch.Tensor, ids: torch.Tensor,
              ab: torch.Tensor, seed: int, pos: Any) -> float:
    """DDPM loss on a fixed evaluation set with fixed (t, noise): a comparable final loss."""
    gen = torch.Generator().manual_seed(seed + 12345)
    t = torch.randint(0, ab.shape[0], (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return training.fixed_set_loss(unet, enc, pos(x_t), t, ids, noise)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train UNet + text encoder jointly; write weights, config and the loss log."""
    torch.manual_seed(args.seed)
    images, labels = load_digits_data()
    sampler = PairSampler(images, labels, args.seed)
    eval_x, eval_ids = PairSampler(images, labels, args.seed + 1).draw(2048, args.prompt_dropout)
    channels = tuple(int(c) for c in args.channels.split(","))
    ucfg = unet_config(channels, args.dim, args.position_channel, args.full_res_attention)
    pos = add_position_channel if args.position_channel else (lambda x: x)
    unet = build_unet(ucfg)
    enc = PairsTextEncoder(dim=args.dim, layers=args.layers)
    ab = build_scheduler(training.SCHEDULER_CONFIG).alphas_cumprod.float()
    gen = torch.Generator().manual_seed(args.seed)

    def draw() -> training.Batch:
        x0, ids = sampler.draw(args.batch_size, args.prompt_dropout)
        t = torch.randint(0, ab.shape[0], (args.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        return pos(a.sqrt() * x0 + (1 - a).sqrt() * noise), t, ids, noise

    run = training.train_with_ema(unet, enc, draw, args)
    final_eval = eval_loss(unet, enc, eval_x, eval_ids, ab, args.seed, pos)
    out = args.out
    training.save_weights(out / WEIGHTS_FILE, unet, enc, "text_encoder", "zsampling-pairs-v1")
    summary = {
        **training.settings(args, "seed", "steps", "batch_size", "lr", "warmup", "ema_decay", "prompt_dropout",
                            "position_channel", "full_res_attention"),
        "forms": dict(FORMS),
        "threads": args.threads,
        **run.summary(final_eval),
    }
    config = {
        "format": "zsampling-pairs-v1",
        "description": "text-conditioned UNet2DConditionModel on pairs of scikit-learn digits (8x16, [-1, 1])",
        "image_size": [HEIGHT, WIDTH],
        "data_range": [-1.0, 1.0],
        "vocabulary": list(VOCABULARY),
        "position_channel": args.position_channel,
        "unet": ucfg,
        "text_encoder": enc.config(),
        "scheduler": training.SCHEDULER_CONFIG,
        "training": summary,
    }
    training.write_json(out / CONFIG_FILE, config)
    training.write_loss_log(out / "training_log.csv", run.log)
    return summary


# --------------------------------------------------------------------------- metrics


def fit_metrics(out: Path, seed: int, hidden: int = 128, blanks: int = 300) -> dict[str, Any]:
    """Fit the per-slot classifier (StandardScaler + one-hidden-layer MLP over 10 digits + blank) and
    save it, the digits (uint8, for nearest-neighbour distances) and the held-out indices as plain arrays."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    # Blank slots: every pixel 0 in [0, 1] units, plus the faint noise a sampler leaves behind.
    blank_x = np.clip(np.abs(rng.normal(0.0, 0.08, size=(blanks, 64))), 0.0, 1.0)
    blank_x[: blanks // 4] = 0.0
    train_x = np.concatenate([x[train_idx], blank_x])
    train_y = np.concatenate([y[train_idx], np.full(blanks, BLANK)])
    scaler = StandardScaler().fit(train_x)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-2, max_iter=2000, tol=1e-6, random_state=seed)
    clf.fit(scaler.transform(train_x), train_y)
    digit_acc = float(clf.score(scaler.transform(x[test_idx]), y[test_idx]))
    # Held-out real pairs: every held-out digit in the left slot with a random held-out digit (or a blank,
    # one pair in ten) on the right; the per-slot accuracy counts both slots.
    partner = rng.permutation(test_idx)
    right_x = x[partner].copy()
    right_y = y[partner].copy()
    blank_rows = rng.random(len(test_idx)) < 0.1
    right_x[blank_rows], right_y[blank_rows] = 0.0, BLANK
    slots_x = np.concatenate([x[test_idx], right_x])
    slots_y = np.concatenate([y[test_idx], right_y])
    pred = clf.predict(scaler.transform(slots_x))
    slot_acc = float((pred == slots_y).mean())
    n = len(test_idx)
    pair_exact = float(((pred[:n] == slots_y[:n]) & (pred[n:] == slots_y[n:])).mean())
    arrays = {
        "scaler_mean": scaler.mean_.astype(np.float64),
        "scaler_scale": scaler.scale_.astype(np.float64),
        "hidden_weight": clf.coefs_[0].astype(np.float64),
        "hidden_bias": clf.intercepts_[0].astype(np.float64),
        "output_weight": clf.coefs_[1].astype(np.float64),
        "output_bias": clf.intercepts_[1].astype(np.float64),
        "data_pixels_u8": digits.data.astype(np.uint8),
        "data_labels": y,
        "classifier_test_indices": np.sort(test_idx).astype(np.int64),
    }
    training.save_metric_arrays(out / METRICS_FILE, arrays, "zsampling-pairs-metrics-v1")
    return {
        "classifier": f"StandardScaler + MLPClassifier(({hidden},), relu, alpha=1e-2) over 10 digits + blank, fit on "
        f"a 75% stratified split (random_state={seed}) of pixels/16 plus {blanks} noisy blank slots",
        "classifier_heldout_digit_accuracy": round(digit_acc, 4),
        "classifier_heldout_pair_slot_accuracy": round(slot_acc, 4),
        "classifier_heldout_pair_exact": round(pair_exact, 4),
    }


def write_training_md(args: argparse.Namespace, command: str, train_summary: dict[str, Any],
                      metrics: dict[str, Any], total_seconds: float, metrics_command: str | None) -> None:
    """TRAINING.md: how the shipped files were made (``metrics_command``: a later metrics-only refit)."""
    out = args.out
    lines = [
        "# Pairs model: how it was trained",
        "",
        "Generated by `scripts/train_pairs_model.py`; do not edit by hand (re-run the command instead).",
        "",
        *training.command_block(command, metrics_command, "fit"),
        f"- seed: {train_summary.get('seed', args.seed)}",
        f"- wall time: {total_seconds:.1f} s in total ({train_summary.get('train_seconds', 0.0):.1f} s of "
        f"training), {training.machine(train_summary.get('threads', args.threads))}",
        f"- final loss: {train_summary.get('final_eval_loss_ema', float('nan')):.4f} (EMA weights, DDPM epsilon MSE "
        f"on 2048 fixed synthetic pairs, fixed t and noise); last-200-step training loss "
        f"{train_summary.get('final_train_loss_last200', float('nan')):.4f}",
        f"- parameters: {train_summary.get('parameters', 0):,} (UNet + text encoder); `{WEIGHTS_FILE}` "
        f"{training.file_size(out / WEIGHTS_FILE) / 1e6:.2f} MB, `{METRICS_FILE}` "
        f"{training.file_size(out / METRICS_FILE) / 1e6:.2f} MB",
        training.versions(),
        "",
        "## Model and training",
        "",
        "- data: pairs of `sklearn.datasets.load_digits` images side by side (8x16, [-1, 1]; a blank slot is all -1), "
        "drawn on the fly; prompt forms and probabilities in `forms` below",
        "- text encoder: word tokenizer over the fixed vocabulary (`config.json` -> `vocabulary`), token + position "
        "embeddings, pre-norm transformer layers, final LayerNorm (`config.json` -> `text_encoder`)",
        "- network: diffusers `UNet2DConditionModel` (`config.json` -> `unet`), cross-attention on the text "
        "encoder's 4 token states; trained jointly with the encoder",
        "- objective: epsilon prediction, DDPM MSE loss, t uniform in [0, 999], prompt dropout to the empty prompt",
        "- schedule: `DDIMScheduler` config in `config.json` -> `scheduler` (the digits model's; clip_sample False)",
        "- optimiser: AdamW, linear warm-up then cosine decay, grad-norm clip 1.0; EMA weights are shipped",
        "",
        *training.json_block(train_summary),
        "## Metric arrays",
        "",
        *training.json_block(metrics),
    ]
    (out / "TRAINING.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = training.command_line(argv)
    start = time.perf_counter()
    if args.metrics_only:
        train_summary = json.loads((args.out / CONFIG_FILE).read_text())["training"]
    else:
        train_summary = train(args)
        train_summary["command"] = command
        train_summary["total_seconds"] = round(time.perf_counter() - start, 1)
        training.record_summary(args.out / CONFIG_FILE, train_summary)
    metrics_summary = fit_metrics(args.out, args.seed)
    write_training_md(args, train_summary["command"], train_summary, metrics_summary,
                      float(train_summary["total_seconds"]), command if args.metrics_only else None)
    print(json.dumps({"training": train_summary, "metrics": metrics_summary}, indent=2))


if __name__ == "__main__":
    main()
