"""Train the shipped offline demo model and fit the demo metrics.

    python scripts/train_demo_model.py --out zsampling/demo_model
    python scripts/train_demo_model.py --family flow --out zsampling/demo_model_flow
    python scripts/train_demo_model.py --lora thickness --out zsampling/demo_model

``--family ddim`` (the default) trains epsilon prediction under the DDPM
forward process (``DDIMScheduler``); ``--family flow`` trains the same UNet
on the same data with the rectified-flow loss: ``x_sigma = (1 - sigma) x0 +
sigma eps`` with sigma ~ U(0, 1), target velocity ``v = eps - x0``, network
timestep input ``1000 * sigma`` as a float (the SD3 convention), sampled
with a ``FlowMatchEulerDiscreteScheduler``. Both families use the same
conditioner and condition dropout. A flow model shares the metric arrays of
the DDIM model (same data), so ``--family flow`` does not write them.

writes, into ``--out``:

- ``weights.safetensors``: the UNet (keys ``unet.*``, EMA weights) and the
  class embedding (``conditioner.*``), float32;
- ``config.json``: family, UNet, conditioner and scheduler configs plus a
  training summary;
- ``metrics.safetensors`` (``--family ddim`` only): plain arrays of the demo metrics (standardiser and
  logistic-regression classifier, PCA, PCA statistics of the data, the data
  itself as uint8 for nearest-neighbour distances, held-out indices);
- ``training_log.csv``: loss curve;
- ``TRAINING.md``: the exact command, seed, wall time and final loss.

``--lora thickness`` instead fine-tunes a rank-4 peft LoRA (attention
projections and resnet convolutions of the UNet in ``--out``, base weights
frozen) on the digits thickened by half a grey-scale dilation step (see
``thicken``) and writes ``lora_thickness.safetensors`` (diffusers LoRA keys
``unet.*``, loadable by ``UNet2DConditionModel.load_lora_adapter``) plus a
section of TRAINING.md.

Everything is deterministic for a given seed, torch build and thread count
(``--threads``, default 1). ``--metrics-only`` refits the metric arrays
without retraining the UNet. ``--evaluate`` measures the Z-Sampling effect
(standard vs zigzag alignment) of the model in ``--out`` with
``zsampling.sample`` (or, with ``--eval-sampler reference``, a self-contained
reference loop that follows docs/design.md's "official" operator for DDIM and its
"euler" operator, evaluated at the next sigma, for flow matching), prints a
JSON summary and records it in TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# the package, and the shared _training module also when this file is loaded by its path (as the tests do)
sys.path[:0] = [str(p) for p in (REPO, SCRIPTS) if str(p) not in sys.path]

import _training as training  # noqa: E402

from zsampling.demo_model import (  # noqa: E402
    CONFIG_FILE,
    DEMO_LORAS,
    DEMO_MODEL_DIR,
    FLOW_DEMO_MODEL_DIR,
    LORA_ADAPTER_NAME,
    METRICS_FILE,
    NULL_CLASS,
    WEIGHTS_FILE,
    lora_file,
)
from zsampling.denoisers.base import Branches  # noqa: E402
from zsampling.denoisers.demo import ClassConditioner  # noqa: E402
from zsampling.denoisers.small_unet import build_scheduler, build_unet  # noqa: E402

FLOW_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "stochastic_sampling": False,
}
"""FlowMatchEulerDiscreteScheduler of the flow family: no shift (8x8 images need none), no dynamic shifting."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults are the shipped model's)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: zsampling/demo_model, or zsampling/demo_model_flow with --family flow)",
    )
    p.add_argument(
        "--family",
        choices=("ddim", "flow"),
        default="ddim",
        help="ddim: epsilon prediction, DDPM loss; flow: rectified-flow velocity, sigma ~ U(0, 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay to 0")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cond-dropout", type=float, default=0.15, help="probability of the null class")
    p.add_argument("--shift-prob", type=float, default=0.0, help="probability of a random 1-pixel shift")
    p.add_argument("--channels", type=str, default="32,64", help="UNet block_out_channels")
    p.add_argument("--tokens", type=int, default=4, help="class-embedding tokens")
    p.add_argument("--cross-dim", type=int, default=32, help="cross_attention_dim / token width")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared machine)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--metrics-only", action="store_true", help="refit the metric arrays only")
    p.add_argument("--evaluate", action="store_true", help="only measure the Z-Sampling effect of --out")
    p.add_argument("--eval-g1", type=float, default=0.75, help="g1 of the effect check")
    p.add_argument(
        "--eval-sampler",
        choices=("zsampling", "reference"),
        default="zsampling",
        help="zsampling.sample, or this script's self-contained reference loop",
    )
    p.add_argument("--lora", choices=DEMO_LORAS, default=None, help="train this LoRA on the model in --out")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-steps", type=int, default=1000, help="optimiser steps of --lora")
    p.add_argument("--lora-lr", type=float, default=2e-3, help="constant AdamW learning rate of --lora")
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--eval-per-class", type=int, default=20)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = DEMO_MODEL_DIR if args.family == "ddim" else FLOW_DEMO_MODEL_DIR
    return args


# --------------------------------------------------------------------------- data


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Digits as float32 (N, 1, 8, 8) in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    return images[:, None], digits.target.astype(np.int64)


def thicken(images: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Thicker strokes: ``max(x, strength * dilate(x))`` with a plus-shaped grey-scale dilation.

    ``images`` (N, 1, 8, 8) in [-1, 1]; ink (``(x + 1) / 2``) is dilated, so each
    stroke gains a half-intensity rim of one pixel (mean ink 0.31 -> 0.41 on the
    digits data at the default strength), and the result maps back to [-1, 1].
    """
    from scipy.ndimage import grey_dilation

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    ink = (images[:, 0] + 1.0) / 2.0
    dilated = np.stack([grey_dilation(img, footprint=cross) for img in ink])
    return (np.maximum(ink, strength * dilated) * 2.0 - 1.0)[:, None].astype(np.float32)


def random_shift(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel (background -1 fills) with probability ``prob``."""
    if prob <= 0.0:
        return x
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    out = x.clone()
    apply = torch.rand(x.shape[0], generator=gen) < prob
    dy = torch.randint(0, 3, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 3, (x.shape[0],), generator=gen)
    for i in torch.nonzero(apply).flatten().tolist():
        out[i] = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    return out


# --------------------------------------------------------------------------- model


def unet_config(channels: tuple[int, ...], cross_dim: int) -> dict[str, Any]:
    """UNet2DConditionModel config: 8x8, 1 channel, cross-attention at 4x4."""
    return training.unet_config(8, 1, ["DownBlock2D", "CrossAttnDownBlock2D"], ["CrossAttnUpBlock2D", "UpBlock2D"],
                                channels, cross_dim)


def noisy_batch(
    family: str, x0: torch.Tensor, ab: torch.Tensor | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, network timestep, regression target) of one training batch.

    ddim: t ~ U{0..999} (long), ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``, target eps.
    flow: sigma ~ U(0, 1), ``x_t = (1 - sigma) x0 + sigma eps``, timestep ``1000 sigma``
    (float), target ``v = eps - x0``.
    """
    n = x0.shape[0]
    if family == "ddim":
        assert ab is not None
        t = torch.randint(0, ab.shape[0], (n,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise
    sigma = torch.rand(n, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * x0 + s * noise, sigma * FLOW_SCHEDULER_CONFIG["num_train_timesteps"], noise - x0


@torch.no_grad()
def eval_loss(
    unet: torch.nn.Module,
    cond: ClassConditioner,
    data: torch.Tensor,
    labels: torch.Tensor,
    ab: torch.Tensor | None,
    seed: int,
    family: str = "ddim",
) -> float:
    """Training loss (see ``noisy_batch``) on every image once with fixed (t, noise): a comparable final loss."""
    x_t, t, target = noisy_batch(family, data, ab, torch.Generator().manual_seed(seed + 12345))
    return training.fixed_set_loss(unet, cond, x_t, t, labels, target)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train the UNet + class embedding; write weights, config and the loss log."""
    torch.manual_seed(args.seed)
    images, labels = load_data()
    data, targets = torch.from_numpy(images), torch.from_numpy(labels)
    channels = tuple(int(c) for c in args.channels.split(","))
    ucfg = unet_config(channels, args.cross_dim)
    unet = build_unet(ucfg)
    cond = ClassConditioner(num_embeddings=NULL_CLASS + 1, num_tokens=args.tokens, dim=args.cross_dim)
    scheduler_config = training.SCHEDULER_CONFIG if args.family == "ddim" else FLOW_SCHEDULER_CONFIG
    scheduler = build_scheduler(scheduler_config, family=args.family)
    ab = scheduler.alphas_cumprod.float() if args.family == "ddim" else None
    gen = torch.Generator().manual_seed(args.seed)

    def draw() -> training.Batch:
        idx = torch.randint(0, data.shape[0], (args.batch_size,), generator=gen)
        x0 = random_shift(data[idx], args.shift_prob, gen)
        c = targets[idx].clone()
        c[torch.rand(args.batch_size, generator=gen) < args.cond_dropout] = NULL_CLASS
        x_t, t, target = noisy_batch(args.family, x0, ab, gen)
        return x_t, t, c, target

    run = training.train_with_ema(unet, cond, draw, args, weight_decay=args.weight_decay)
    final_eval = eval_loss(unet, cond, data, targets, ab, args.seed, args.family)
    out = args.out
    training.save_weights(out / WEIGHTS_FILE, unet, cond, "conditioner", "zsampling-demo-v1")
    summary = {
        **training.settings(args, "family", "seed", "steps", "batch_size", "lr", "warmup", "weight_decay",
                            "ema_decay", "cond_dropout", "shift_prob", "threads"),
        **run.summary(final_eval),
    }
    config: dict[str, Any] = {
        "format": "zsampling-demo-v1",
        "description": "class-conditional UNet2DConditionModel on scikit-learn digits (8x8, [-1, 1])",
        "image_size": 8,
        "data_range": [-1.0, 1.0],
        "null_class": NULL_CLASS,
    }
    if args.family == "flow":
        config["family"] = "flow"
        config["parameterisation"] = "velocity v = eps - x0 under x_sigma = (1 - sigma) x0 + sigma eps"
        config["timestep_input"] = "1000 * sigma (float)"
    config.update({"unet": ucfg, "conditioner": cond.config(), "scheduler": scheduler_config, "training": summary})
    training.write_json(out / CONFIG_FILE, config)
    training.write_loss_log(out / "training_log.csv", run.log)
    return summary


# --------------------------------------------------------------------------- LoRA

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
"""peft target modules of the demo LoRAs: attention projections (4x4 level) and resnet convolutions
(thickness is an 8x8-pixel property, which the attention layers alone do not reach)."""


def train_lora(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune a LoRA (``args.lora``) on the frozen model in ``args.out``; write ``lora_<name>.safetensors``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from zsampling.denoisers.demo import load_demo_pipeline

    torch.manual_seed(args.seed)
    pipe = load_demo_pipeline(model_dir=args.out, family="ddim")
    unet, cond = pipe.unet, pipe.conditioner
    images, labels = load_data()
    data, targets = torch.from_numpy(thicken(images)), torch.from_numpy(labels)
    ab = pipe.scheduler.alphas_cumprod.float()
    before = eval_loss(unet, cond, data, targets, ab, args.seed)
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=LORA_TARGETS,
                        init_lora_weights=True)
    unet.add_adapter(config, adapter_name=LORA_ADAPTER_NAME)
    unet.train()
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lora_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    running: list[float] = []
    print(f"LoRA {args.lora!r}: training {n_params:,} parameters for {args.lora_steps} steps", flush=True)
    start = time.perf_counter()
    for step in range(args.lora_steps):
        idx = torch.randint(0, data.shape[0], (args.batch_size,), generator=gen)
        c = targets[idx].clone()
        c[torch.rand(args.batch_size, generator=gen) < args.cond_dropout] = NULL_CLASS
        x_t, t, target = noisy_batch("ddim", data[idx], ab, gen)
        with torch.no_grad():
            states = cond(c)
        loss = torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=states).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if (step + 1) % args.log_every == 0 or step + 1 == args.lora_steps:
            mean = sum(running[-args.log_every :]) / len(running[-args.log_every :])
            print(f"step {step + 1:5d}  loss {mean:.4f}  {time.perf_counter() - start:6.1f}s", flush=True)
    train_seconds = time.perf_counter() - start
    unet.eval()
    after = eval_loss(unet, cond, data, targets, ab, args.seed)
    state = get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER_NAME)
    tensors = {f"unet.{k}": v.detach().contiguous() for k, v in state.items()}
    path = args.out / lora_file(args.lora)
    save_file(tensors, str(path), metadata={"format": "zsampling-demo-lora-v1", "rank": str(args.lora_rank)})
    tail = running[-100:]
    return {
        "lora": args.lora,
        "file": path.name,
        "data": "digits thickened: max(x, 0.5 * grey_dilation(x, plus footprint)) in ink space",
        "rank": args.lora_rank,
        "lora_alpha": args.lora_rank,
        "target_modules": LORA_TARGETS,
        "parameters": n_params,
        "bytes": path.stat().st_size,
        "seed": args.seed,
        "steps": args.lora_steps,
        "batch_size": args.batch_size,
        "lr": args.lora_lr,
        "cond_dropout": args.cond_dropout,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss_last100": round(sum(tail) / len(tail), 5),
        "eval_loss_thick_data_base": round(before, 5),
        "eval_loss_thick_data_lora": round(after, 5),
    }


def lora_header(name: str) -> str:
    return f"## LoRA `{name}`"


def record_lora(out: Path, summary: dict[str, Any], command: str) -> None:
    """Replace (or add) the LoRA's section of TRAINING.md (placed before the effect section)."""
    path = out / "TRAINING.md"
    text = path.read_text() if path.exists() else ""
    header = lora_header(summary["lora"])
    effect = ""
    if EFFECT_HEADER in text:
        text, effect = text[: text.index(EFFECT_HEADER)], text[text.index(EFFECT_HEADER) :]
    if header in text:
        start = text.index(header)
        nxt = text.find("\n## ", start + len(header))
        text = text[:start] + (text[nxt + 1 :] if nxt >= 0 else "")
    section = "\n".join([
        header,
        "",
        "```",
        command,
        "```",
        "",
        f"- seed: {summary['seed']}; wall time: {summary['train_seconds']:.1f} s of LoRA training, "
        f"{summary['threads']} CPU thread(s) on a shared 2-core machine",
        f"- final loss: {summary['final_train_loss_last100']:.4f} (last 100 steps); DDPM eps MSE on the thickened "
        f"data with fixed t and noise: {summary['eval_loss_thick_data_base']:.4f} without the LoRA, "
        f"{summary['eval_loss_thick_data_lora']:.4f} with it",
        f"- rank {summary['rank']} (alpha = rank, scale 1), {summary['parameters']:,} parameters, "
        f"`{summary['file']}` {summary['bytes'] / 1e6:.2f} MB; base weights frozen, the conditioner frozen",
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
        "",
    ])
    parts = [text.rstrip("\n"), section] + ([effect] if effect else [])
    path.write_text("\n\n".join(parts))


# --------------------------------------------------------------------------- metrics


def fit_metrics(out: Path, seed: int, n_components: int = 16, c_reg: float = 0.1) -> dict[str, Any]:
    """Fit classifier (standardiser + logistic regression) and PCA; save plain arrays."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=0.25, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x[train_idx])
    clf = LogisticRegression(C=c_reg, max_iter=5000, tol=1e-8).fit(scaler.transform(x[train_idx]), y[train_idx])
    test_acc = float(clf.score(scaler.transform(x[test_idx]), y[test_idx]))
    prob = clf.predict_proba(scaler.transform(x[test_idx]))
    test_align = float(prob[np.arange(len(test_idx)), y[test_idx]].mean())
    pca = PCA(n_components=n_components, svd_solver="full").fit(x)
    feats = pca.transform(x)
    arrays = {
        "scaler_mean": scaler.mean_.astype(np.float64),
        "scaler_scale": scaler.scale_.astype(np.float64),
        "coef": clf.coef_.astype(np.float64),
        "intercept": clf.intercept_.astype(np.float64),
        "pca_mean": pca.mean_.astype(np.float64),
        "pca_components": pca.components_.astype(np.float64),
        "pca_explained_variance": pca.explained_variance_.astype(np.float64),
        "data_feature_mean": feats.mean(axis=0),
        "data_feature_cov": np.cov(feats, rowvar=False),
        "data_pixels_u8": digits.data.astype(np.uint8),
        "data_labels": y,
        "classifier_test_indices": np.sort(test_idx).astype(np.int64),
    }
    training.save_metric_arrays(out / METRICS_FILE, arrays, "zsampling-demo-metrics-v1")
    return {
        "classifier": f"StandardScaler + LogisticRegression(C={c_reg}, lbfgs), fit on 75% stratified split "
        f"(random_state={seed}) of pixels/16",
        "classifier_heldout_accuracy": round(test_acc, 4),
        "classifier_heldout_alignment": round(test_align, 4),
        "pca_components": n_components,
        "pca_explained_variance_ratio": round(float(pca.explained_variance_ratio_.sum()), 4),
    }


# --------------------------------------------------------------------------- effect check


Guided = Callable[[torch.Tensor, float, float], torch.Tensor]
"""Guided network output ``f(z, t, g)`` of one prompt batch (eps, or v for a flow model)."""


def _ddim(x: torch.Tensor, e: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    return math.sqrt(a_to) * (x - math.sqrt(1 - a_from) * e) / math.sqrt(a_from) + math.sqrt(1 - a_to) * e


def reference_sample(
    pipe: Any,
    classes: list[int],
    seed: int,
    steps: int,
    g1: float,
    g2: float = 0.0,
    window: int = 0,
) -> torch.Tensor:
    """Standard (window 0) or Z-Sampling, one round, by a self-contained reference loop; images in [0, 1].

    Follows docs/design.md, to check the shipped models independently of the
    toolkit's sampler (``zsampling.sample``): the "official" zag for a DDIM
    model (``_ddim_loop``), the "euler" zag evaluated at the next sigma for a
    flow-matching one (``_flow_loop``).
    """
    target = pipe.prepare_zsampling([str(c) for c in classes], None, None, None)
    target.scheduler.set_timesteps(steps)
    x = torch.randn((len(classes), *target.latent_shape), generator=torch.Generator().manual_seed(seed))

    def guided(z: torch.Tensor, t: float, g: float) -> torch.Tensor:
        return target.denoiser(z, t, Branches.for_guidance(g)).guided(g)

    loop = _flow_loop if pipe.family == "flow" else _ddim_loop
    return target.decode(loop(target.scheduler, x, guided, g1, g2, window), "pt")


def _ddim_loop(sch: Any, x: torch.Tensor, eps: Guided, g1: float, g2: float, window: int) -> torch.Tensor:
    """DDIM (eta 0) steps with the "official" zag in the first ``window`` steps."""
    ts = [int(t) for t in sch.timesteps]
    ab = sch.alphas_cumprod.double()
    final = float(sch.final_alpha_cumprod)
    k = sch.config.num_train_timesteps // sch.num_inference_steps
    for i, t in enumerate(ts):
        a_t = float(ab[t])
        a_next = float(ab[ts[i + 1]]) if i + 1 < len(ts) else final
        if i < window:
            y = _ddim(x, eps(x, t, g1), a_t, a_next)
            t_next = ts[i + 1] if i + 1 < len(ts) else 0
            j = t_next - k
            a_from = float(ab[j]) if j >= 0 else (1.0 if sch.config.set_alpha_to_one else float(ab[0]))
            x = _ddim(y, eps(y, t, g2), a_from, a_next)
        x = _ddim(x, eps(x, t, g1), a_t, a_next)
    return x


def _flow_loop(sch: Any, x: torch.Tensor, vel: Guided, g1: float, g2: float, window: int) -> torch.Tensor:
    """Euler steps of a flow-matching model with the "euler" zag in the first ``window`` steps.

    Zig ``y = x + (s_{i+1} - s_i) v_g1(x, s_i)``, zag ``x' = y - (s_{i+1} - s_i)
    v_g2(y, s_{i+1})`` (docs/design.md, "Moves"), then the ordinary Euler step;
    sigmas and timesteps from the scheduler.
    """
    sigmas = [float(s) for s in sch.sigmas]
    ts = [float(t) for t in sch.timesteps]
    scale = float(sch.config.num_train_timesteps)
    for i, t in enumerate(ts):
        h = sigmas[i + 1] - sigmas[i]
        if i < window:
            y = x + h * vel(x, t, g1)
            x = y - h * vel(y, sigmas[i + 1] * scale, g2)
        x = x + h * vel(x, t, g1)
    return x


def bootstrap_ci(wins: np.ndarray, seed: int = 0, n: int = 10000) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean of ``wins``."""
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, len(wins), (n, len(wins)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def sample_images(
    pipe: Any,
    classes: list[int],
    args: argparse.Namespace,
    g2: float,
    window: int,
) -> torch.Tensor:
    """Images in [0, 1] from ``zsampling.sample`` or, with ``--eval-sampler reference``, the reference loop."""
    if args.eval_sampler == "reference":
        return reference_sample(pipe, classes, args.seed, args.eval_steps, args.eval_g1, g2, window)
    import zsampling

    out = zsampling.sample(
        pipe,
        [str(c) for c in classes],
        num_inference_steps=args.eval_steps,
        guidance_scale=args.eval_g1,
        inversion_guidance_scale=g2,
        zigzag_steps=window,
        zag="euler" if pipe.family == "flow" else "official",
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
        progress=False,
    )
    return out.images


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Alignment of standard vs Z-Sampling (g2 = 0, full window, one round, "official" zag;
    "euler" for a flow model),
    and its trends in the window lambda and in g2; ``eval_per_class`` fixed-seed samples per digit."""
    from zsampling.denoisers.demo import load_demo_pipeline
    from zsampling.metrics.demo import DigitAlignment, digit_accuracy, frechet_distance, nearest_neighbour_distance

    pipe = load_demo_pipeline(model_dir=args.out)
    # A flow model shares the DDIM model's metric arrays (same data).
    metrics_dir = args.out if (args.out / METRICS_FILE).exists() else DEMO_MODEL_DIR
    align = DigitAlignment(model_dir=metrics_dir)
    classes = [c for c in range(10) for _ in range(args.eval_per_class)]
    prompts = [str(c) for c in classes]
    T, g1 = args.eval_steps, args.eval_g1
    cache: dict[tuple[float, int], dict[str, Any]] = {}

    def run(g2: float, window: int) -> dict[str, Any]:
        if (g2, window) not in cache:
            imgs = sample_images(pipe, classes, args, g2, window)
            scores = align.score(imgs, prompts)
            cache[(g2, window)] = {
                "scores": scores,
                "alignment": round(float(scores.mean()), 4),
                "accuracy": round(float(digit_accuracy(imgs, prompts, model_dir=metrics_dir).mean()), 4),
                "frechet_pca": round(frechet_distance(imgs, model_dir=metrics_dir), 4),
                "nn_distance": round(float(nearest_neighbour_distance(imgs, model_dir=metrics_dir).mean()), 4),
            }
        return cache[(g2, window)]

    def row(g2: float, window: int) -> dict[str, Any]:
        r = run(g2, window)
        wins = (r["scores"] > run(0.0, 0)["scores"]).double().numpy()
        lo, hi = bootstrap_ci(wins, seed=args.seed)
        out = {k: v for k, v in r.items() if k != "scores"}
        out["win_rate_vs_standard"] = round(float(wins.mean()), 4)
        out["win_rate_ci95"] = [round(lo, 4), round(hi, 4)]
        return out

    return {
        "sampler": "zsampling.sample" if args.eval_sampler == "zsampling" else "reference loop (this script)",
        "g1": g1,
        "steps": T,
        "family": pipe.family,
        "eta": 0.0,
        "zag": "euler" if pipe.family == "flow" else "official",
        "rounds": 1,
        "samples": len(classes),
        "seed": args.seed,
        "standard": row(0.0, 0),
        "zigzag_g2_0_full_window": row(0.0, T - 1),
        "vs_window_g2_0": {str(lam): row(0.0, lam) for lam in sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})},
        "vs_g2_full_window": {str(g2): row(g2, T - 1) for g2 in (0.0, g1 / 2, g1, 1.5 * g1)},
    }


def effect_markdown(result: dict[str, Any], command: str) -> str:
    """TRAINING.md section with the measured Z-Sampling effect."""
    flow = result.get("family") == "flow"
    setting = (
        f'T = {result["steps"]} Euler steps (flow matching), g1 = {result["g1"]}, one round, "euler" zag '
        "evaluated at the next sigma"
        if flow
        else f'T = {result["steps"]} DDIM steps, eta 0, g1 = {result["g1"]}, one round, "official" zag'
    )
    lines = [
        EFFECT_HEADER,
        "",
        f"Measured with `{command}` ({result['sampler']}): {result['samples']} samples "
        f"({result['samples'] // 10} per digit, generator seed {result['seed']}), {setting}. "
        "Alignment = classifier probability of the "
        "prompted digit; win rate = fraction of paired samples (same initial noise) where alignment beats "
        "standard sampling, with a 95% bootstrap CI.",
        "",
        "| setting | alignment | accuracy | Frechet (PCA) | NN distance | win rate vs standard [95% CI] |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(name: str, r: dict[str, Any], paired: bool = True) -> str:
        lo, hi = r["win_rate_ci95"]
        win = f"{r['win_rate_vs_standard']:.3f} [{lo:.3f}, {hi:.3f}]" if paired else "(baseline)"
        return (
            f"| {name} | {r['alignment']:.3f} | {r['accuracy']:.3f} | {r['frechet_pca']:.3f} | "
            f"{r['nn_distance']:.3f} | {win} |"
        )

    lines.append(fmt("standard (lambda = 0)", result["standard"], paired=False))
    for lam, r in result["vs_window_g2_0"].items():
        if lam != "0":
            lines.append(fmt(f"Z-Sampling g2 = 0, lambda = {lam}", r))
    for g2, r in result["vs_g2_full_window"].items():
        if float(g2) != 0.0:
            lines.append(fmt(f"Z-Sampling g2 = {g2}, lambda = {result['steps'] - 1}", r))
    lines += ["", "```json", json.dumps(result, indent=2), "```", ""]
    return "\n".join(lines)


EFFECT_HEADER = "## Measured Z-Sampling effect"


def record_effect(out: Path, result: dict[str, Any], command: str) -> None:
    """Replace (or add) the effect section of TRAINING.md."""
    path = out / "TRAINING.md"
    text = path.read_text() if path.exists() else ""
    if EFFECT_HEADER in text:
        text = text[: text.index(EFFECT_HEADER)]
    path.write_text(text.rstrip("\n") + "\n\n" + effect_markdown(result, command))


# --------------------------------------------------------------------------- report


def write_training_md(
    args: argparse.Namespace,
    command: str,
    train: dict[str, Any],
    metrics: dict[str, Any],
    total_seconds: float,
    metrics_command: str | None = None,
) -> None:
    """TRAINING.md: how the shipped files were made (``metrics_command``: a later metrics-only refit)."""
    out = args.out
    flow = args.family == "flow"
    if flow:
        loss_text = "rectified-flow velocity MSE"
        objective = (
            "- objective: velocity prediction `v = eps - x0` under `x_sigma = (1 - sigma) x0 + sigma eps`, "
            "sigma uniform in [0, 1), network timestep input `1000 * sigma` (float), MSE loss, condition dropout "
            "to the null class"
        )
        schedule = (
            "- schedule: `FlowMatchEulerDiscreteScheduler` config in `config.json` -> `scheduler` (shift 1.0, "
            "no dynamic shifting); sample with Euler moves `x_to = x + (sigma_to - sigma_from) v` from N(0, I)"
        )
        metrics_file = DEMO_MODEL_DIR / METRICS_FILE
    else:
        loss_text = "DDPM epsilon MSE"
        objective = (
            "- objective: epsilon prediction, DDPM MSE loss, t uniform in [0, 999], condition dropout to the null class"
        )
        schedule = "- schedule: `DDIMScheduler` config in `config.json` -> `scheduler` (clip_sample False)"
        metrics_file = out / METRICS_FILE
    lines = [
        "# Demo model: how it was trained" + (" (flow matching)" if flow else ""),
        "",
        "Generated by `scripts/train_demo_model.py`; do not edit by hand (re-run the command instead). The last "
        "section is added by `--evaluate`, which must be re-run after retraining.",
        "",
        *training.command_block(command, metrics_command, "refit"),
        f"- seed: {train.get('seed', args.seed)}",
        f"- wall time: {total_seconds:.1f} s in total ({train.get('train_seconds', 0.0):.1f} s of UNet training), "
        f"{training.machine(train.get('threads', args.threads))}",
        f"- final loss: {train.get('final_eval_loss_ema', float('nan')):.4f} (EMA weights, {loss_text} over all "
        f"1797 images, fixed t and noise); last-200-step training loss "
        f"{train.get('final_train_loss_last200', float('nan')):.4f}",
        f"- parameters: {train.get('parameters', 0):,} (UNet + class embedding); "
        f"`{WEIGHTS_FILE}` {training.file_size(out / WEIGHTS_FILE) / 1e6:.2f} MB, `{METRICS_FILE}` "
        f"{training.file_size(metrics_file) / 1e6:.2f} MB" + (" (shared: `zsampling/demo_model`)" if flow else ""),
        training.versions(),
        "",
        "## Model and training",
        "",
        "- data: `sklearn.datasets.load_digits` (1797 images, 8x8, values 0..16) scaled to [-1, 1]",
        "- network: diffusers `UNet2DConditionModel` (see `config.json` -> `unet`), cross-attention on a "
        "learned class embedding (`nn.Embedding(11, tokens * dim)`: 10 digits + null class 10)",
        objective,
        schedule,
        "- optimiser: AdamW, linear warm-up then cosine decay, grad-norm clip 1.0; EMA weights are shipped",
        "",
        *training.json_block(train),
        "## Metrics arrays",
        "",
        *(
            ["The flow model is trained on the same data and uses the metric arrays of `zsampling/demo_model`:", ""]
            if flow
            else []
        ),
        *training.json_block(metrics),
    ]
    (out / "TRAINING.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = training.command_line(argv)
    if args.lora is not None:
        if args.family != "ddim":
            raise SystemExit("--lora trains a LoRA of the DDIM digits model: use it with --family ddim")
        summary = train_lora(args)
        record_lora(args.out, summary, command)
        print(json.dumps(summary, indent=2))
        return
    if args.evaluate:
        result = evaluate(args)
        record_effect(args.out, result, command)
        print(json.dumps(result, indent=2))
        return
    if args.family == "flow" and args.metrics_only:
        raise SystemExit("--metrics-only applies to --family ddim: the flow model shares zsampling/demo_model's arrays")
    start = time.perf_counter()
    train_summary: dict[str, Any] = {}
    if args.metrics_only:
        cfg_path = args.out / CONFIG_FILE
        train_summary = json.loads(cfg_path.read_text())["training"] if cfg_path.exists() else {}
    else:
        train_summary = train(args)
        train_summary["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    if args.family == "flow":
        metrics_summary = {"arrays": f"{DEMO_MODEL_DIR.name}/{METRICS_FILE} (shared with the DDIM model: same data)"}
    else:
        metrics_summary = fit_metrics(args.out, args.seed)
    total = time.perf_counter() - start
    if args.metrics_only and train_summary:
        total = float(train_summary.get("total_seconds", total))
    else:
        train_summary["total_seconds"] = round(total, 1)
        training.record_summary(args.out / CONFIG_FILE, train_summary)
    metrics_command = command if args.metrics_only else None
    write_training_md(
        args, train_summary.get("command", command), train_summary, metrics_summary, total, metrics_command
    )
    print(json.dumps({"training": train_summary, "metrics": metrics_summary}, indent=2))


if __name__ == "__main__":
    main()
