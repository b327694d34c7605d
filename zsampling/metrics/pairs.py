"""GenEval-style metrics of the "pairs" world (8x16 two-digit images).

All image inputs are tensors (B, 1, 8, 16) with values in [0, 1], i.e. what the
pairs target's ``decode(latents, "pt")`` returns. Each 8x8 half (slot) is read
by a per-slot classifier over 11 labels (digits 0-9 and ``BLANK``): a
standardiser and a one-hidden-layer ReLU MLP fit by
``scripts/train_pairs_model.py`` and stored as plain arrays in
``zsampling/pairs_model/metrics.safetensors`` (no scikit-learn at run time).

Per sample, against the parsed prompt (``zsampling.pairs_model.parse_prompt``):

- ``exact_match``: every slot right. Ordered prompts ("3 left of 7", "7 right
  of 3") need the left and right slot; order-free prompts ("3 and 7", and
  "3", which means a 3 and a blank) need the multiset of slot labels; "any"
  slots of partial prompts ("left of 7") accept any digit; the empty prompt
  always matches.
- ``slot_accuracy``: fraction of the two slots that are right (order-free
  prompts: under the better of the two assignments).
- ``binding_error``: the prompted digits are both present but in the wrong
  slots. Only ordered prompts with two different digits can have one; for
  "and" prompts order is free, so it is always 0 there.
- ``missing_digit``: some prompted digit is absent from both slots
  (multiplicity counts: "3 and 3" needs two 3s).
- ``pairs_nn_distance`` (fidelity): Euclidean distance, in [0, 1] pixel
  units, to the nearest real pair. Real pairs are all combinations of real
  digits (or a blank) in the two slots, so the squared distance splits into
  the two slots' nearest-neighbour squared distances (exact, no sampling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zsampling.metrics.offline import load_arrays, unit_images
from zsampling.pairs_model import ANY, BLANK, METRICS_FILE, PAIRS_MODEL_DIR, SLOT_SIZE, PairPrompt, parse_prompt

SLOT_LABELS = BLANK + 1
"""Digits 0-9 and ``BLANK`` (10)."""


def load_metric_arrays(model_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The stored metric arrays (cached per directory); see the module docstring."""
    return load_arrays((Path(model_dir) if model_dir is not None else PAIRS_MODEL_DIR) / METRICS_FILE)


def images_to_slots(images: torch.Tensor) -> np.ndarray:
    """Validate images (B, 1, 8, 16) in [0, 1]; return slot pixels, float64 (B, 2, 64) (left, right).

    Raises:
        ValueError: wrong type, shape or values outside [0, 1].
    """
    x = unit_images(images, (1, SLOT_SIZE, 2 * SLOT_SIZE), "decode(latents, 'pt')")[:, 0]
    left = x[:, :, :SLOT_SIZE].reshape(x.shape[0], -1)
    right = x[:, :, SLOT_SIZE:].reshape(x.shape[0], -1)
    return np.stack([left, right], axis=1)


def classify_slot_pixels(pixels: np.ndarray, model_dir: str | Path | None = None) -> np.ndarray:
    """Slot-label probabilities (N, 11) of slot pixels (N, 64) in [0, 1]."""
    a = load_metric_arrays(model_dir)
    z = (pixels - a["scaler_mean"]) / a["scaler_scale"]
    h = np.maximum(z @ a["hidden_weight"] + a["hidden_bias"], 0.0)
    logits = h @ a["output_weight"] + a["output_bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def slot_probabilities(images: torch.Tensor, model_dir: str | Path | None = None) -> np.ndarray:
    """Per-slot label probabilities (B, 2, 11) of images (B, 1, 8, 16) in [0, 1]."""
    slots = images_to_slots(images)
    return classify_slot_pixels(slots.reshape(-1, 64), model_dir).reshape(slots.shape[0], 2, SLOT_LABELS)


def slot_labels(images: torch.Tensor, model_dir: str | Path | None = None) -> np.ndarray:
    """Predicted slot labels (B, 2) (left, right): 0-9 a digit, 10 ``BLANK``."""
    return slot_probabilities(images, model_dir).argmax(axis=2)


def _slot_ok(required: int, label: int) -> bool:
    return (0 <= label <= 9) if required == ANY else label == required


def score_labels(labels: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """GenEval-style scores of predicted slot labels (B, 2) against their prompts.

    Returns float64 arrays (B,) ``exact_match``, ``slot_accuracy``,
    ``binding_error``, ``missing_digit`` (definitions in the module docstring).

    Raises:
        ValueError: a prompt outside the pairs grammar (listing the vocabulary),
            or a prompt count that differs from the batch.
    """
    if len(prompts) != labels.shape[0]:
        raise ValueError(f"need one prompt per image: {labels.shape[0]} images, {len(prompts)} prompts")
    out = {k: np.zeros(len(prompts)) for k in ("exact_match", "slot_accuracy", "binding_error", "missing_digit")}
    for b, prompt in enumerate(prompts):
        spec: PairPrompt = parse_prompt(prompt)
        left, right = int(labels[b, 0]), int(labels[b, 1])
        if spec.form == "empty":
            out["exact_match"][b] = out["slot_accuracy"][b] = 1.0
            continue
        straight = (_slot_ok(spec.left, left) + _slot_ok(spec.right, right)) / 2
        if spec.ordered:
            accuracy = straight
        else:
            accuracy = max(straight, (_slot_ok(spec.left, right) + _slot_ok(spec.right, left)) / 2)
        out["slot_accuracy"][b] = accuracy
        out["exact_match"][b] = float(accuracy == 1.0)
        present = [left, right]
        missing = False
        for d in spec.digits:
            if d in present:
                present.remove(d)
            else:
                missing = True
        out["missing_digit"][b] = float(missing)
        if spec.ordered and ANY not in (spec.left, spec.right) and spec.left != spec.right:
            out["binding_error"][b] = float((left, right) == (spec.right, spec.left))
    return out


def pair_scores(images: torch.Tensor, prompts: list[str], model_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """``score_labels`` of the classifier's slot labels of ``images`` (B, 1, 8, 16) in [0, 1]."""
    return score_labels(slot_labels(images, model_dir), list(prompts))


def pairs_nn_distance(images: torch.Tensor, model_dir: str | Path | None = None) -> torch.Tensor:
    """(B,) Euclidean distance in [0, 1] pixel units to the nearest real pair (see the module docstring)."""
    slots = images_to_slots(images)
    data = load_metric_arrays(model_dir)["data_pixels_u8"].astype(np.float64) / 16.0
    bank = np.concatenate([data, np.zeros((1, data.shape[1]))])
    flat = slots.reshape(-1, slots.shape[2])
    sq = (flat**2).sum(1)[:, None] - 2.0 * flat @ bank.T + (bank**2).sum(1)[None, :]
    nearest = np.maximum(sq.min(axis=1), 0.0).reshape(slots.shape[0], 2).sum(axis=1)
    return torch.from_numpy(np.sqrt(nearest))


class PairScore:
    """One GenEval-style pairs metric as a scorer: ``score(images, prompts) -> (B,)``.

    ``metric`` is one of ``exact_match``, ``slot_accuracy``, ``binding_error``,
    ``missing_digit`` (the first two higher-is-better).
    """

    METRICS: tuple[str, ...] = ("exact_match", "slot_accuracy", "binding_error", "missing_digit")

    def __init__(self, metric: str, model_dir: str | Path | None = None) -> None:
        if metric not in self.METRICS:
            raise ValueError(f"metric must be one of {self.METRICS}, got {metric!r}")
        self.name = metric
        self.higher_is_better = metric in ("exact_match", "slot_accuracy")
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        if prompts is None:
            raise ValueError(f"{self.name} needs the prompts")
        return torch.from_numpy(pair_scores(images, list(prompts), self.model_dir)[self.name])


class PairsNearestNeighbourDistance:
    """Fidelity scorer: ``pairs_nn_distance`` per sample (lower is better)."""

    name = "pairs_nn_distance"
    higher_is_better = False

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        return pairs_nn_distance(images, self.model_dir)
