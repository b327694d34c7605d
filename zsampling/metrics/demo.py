"""Metrics of the offline demo model (8x8 digits): alignment, accuracy, fidelity.

All image inputs are tensors (B, 1, 8, 8) with values in [0, 1], i.e. what the
demo target's ``decode(latents, "pt")`` returns (model-space latents in
[-1, 1] map to it by ``(x + 1) / 2``). Values outside [0, 1] raise ValueError.

- ``DigitAlignment`` (``name = "alignment"``): probability of the prompted
  class under a logistic-regression classifier fit on the digits data;
- ``DigitAccuracy`` (``name = "accuracy"``): 1 where the classifier's argmax
  is the prompted class, else 0;
- ``frechet_distance``: set-level Frechet distance between two image sets (or
  an image set and the whole digits data set) in a 16-component PCA space fit
  on the data (same formula as FID, with ``scipy.linalg.sqrtm``);
- ``NearestNeighbourDistance`` (``name = "nn_distance"``): per-sample
  Euclidean distance, in [0, 1] pixel units, to the closest real digit
  (memorisation / off-manifold guard);
- ``StrokeThickness`` (``name = "stroke_thickness"``): per-sample mean ink
  (mean pixel value in [0, 1]); the property the shipped "thickness" LoRA
  strengthens (the digits data: 0.305; the thickened data it is tuned on: 0.410).

The arrays (standardiser, classifier weights, PCA, data statistics, the data
as uint8) are plain safetensors in ``zsampling/demo_model/metrics.safetensors``,
fit by ``scripts/train_demo_model.py`` (no pickle, no scikit-learn at run time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zsampling.demo_model import DEMO_MODEL_DIR, METRICS_FILE, NUM_CLASSES, prompts_to_classes
from zsampling.metrics.offline import load_arrays, unit_images


def load_metric_arrays(model_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The stored metric arrays (cached per directory); see the module docstring."""
    return load_arrays((Path(model_dir) if model_dir is not None else DEMO_MODEL_DIR) / METRICS_FILE)


def images_to_pixels(images: torch.Tensor) -> np.ndarray:
    """Validate images (B, 1, 8, 8) in [0, 1] and flatten them to float64 (B, 64).

    Raises:
        ValueError: wrong shape or values outside [0, 1].
    """
    x = unit_images(images, (1, 8, 8), "decode with output_type='pt'; map [-1, 1] latents by (x + 1) / 2")
    return x.reshape(x.shape[0], 64)


def _check_prompts(images: torch.Tensor, prompts: list[str] | None) -> np.ndarray:
    if prompts is None:
        raise ValueError("the demo alignment/accuracy metrics need prompts: one digit prompt per image")
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) != images.shape[0]:
        raise ValueError(f"need one prompt per image: {images.shape[0]} images, {len(prompts)} prompts")
    return np.asarray(prompts_to_classes(list(prompts)), dtype=np.int64)


def class_probabilities(images: torch.Tensor, model_dir: str | Path | None = None) -> torch.Tensor:
    """Classifier probabilities (B, 10) of images (B, 1, 8, 8) in [0, 1]."""
    arr = load_metric_arrays(model_dir)
    x = (images_to_pixels(images) - arr["scaler_mean"]) / arr["scaler_scale"]
    logits = x @ arr["coef"].T + arr["intercept"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    return torch.from_numpy(prob).float()


def digit_alignment(
    images: torch.Tensor, prompts: list[str] | None, model_dir: str | Path | None = None
) -> torch.Tensor:
    """Per-sample probability (B,) of the prompted digit."""
    classes = _check_prompts(images, prompts)
    prob = class_probabilities(images, model_dir)
    return prob[torch.arange(len(classes)), torch.from_numpy(classes)]


def digit_accuracy(
    images: torch.Tensor, prompts: list[str] | None, model_dir: str | Path | None = None
) -> torch.Tensor:
    """Per-sample 1.0 where the classifier's argmax is the prompted digit, else 0.0."""
    classes = _check_prompts(images, prompts)
    pred = class_probabilities(images, model_dir).argmax(dim=1)
    return (pred == torch.from_numpy(classes)).float()


class DigitAlignment:
    """Prompt alignment: classifier probability of the prompted digit (higher is better)."""

    name = "alignment"
    higher_is_better = True

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """(B,) float32 probabilities in [0, 1] on the CPU; images (B, 1, 8, 8) in [0, 1]; prompts required."""
        return digit_alignment(images, prompts, self.model_dir)


class DigitAccuracy:
    """Per-sample 0/1: the classifier's argmax is the prompted digit (higher is better)."""

    name = "accuracy"
    higher_is_better = True

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """(B,) float32 values in {0, 1} on the CPU; images (B, 1, 8, 8) in [0, 1]; prompts required."""
        return digit_accuracy(images, prompts, self.model_dir)


def pca_features(images: torch.Tensor, model_dir: str | Path | None = None) -> np.ndarray:
    """PCA features (B, 16) of images (B, 1, 8, 8) in [0, 1]."""
    arr = load_metric_arrays(model_dir)
    return (images_to_pixels(images) - arr["pca_mean"]) @ arr["pca_components"].T


def data_images(model_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits data set as images (N, 1, 8, 8) in [0, 1] and labels (N,)."""
    arr = load_metric_arrays(model_dir)
    images = torch.from_numpy(arr["data_pixels_u8"].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, torch.from_numpy(arr["data_labels"].astype(np.int64))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of a (N, D) feature set; N >= 2."""
    if features.shape[0] < 2:
        raise ValueError(f"the Frechet distance needs at least 2 images per set, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` (the FID formula)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        eps = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance(
    images: torch.Tensor,
    reference: torch.Tensor | None = None,
    model_dir: str | Path | None = None,
) -> float:
    """Frechet distance in PCA space between ``images`` and ``reference``.

    Both are (N, 1, 8, 8) in [0, 1]; with ``reference=None`` the stored
    statistics of the whole digits data set (1797 images) are used. Set-level
    and biased by set size like FID: compare sets of equal size only.
    """
    mu1, s1 = feature_statistics(pca_features(images, model_dir))
    if reference is None:
        arr = load_metric_arrays(model_dir)
        mu2, s2 = arr["data_feature_mean"], arr["data_feature_cov"]
    else:
        mu2, s2 = feature_statistics(pca_features(reference, model_dir))
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


def nearest_neighbour_distance(images: torch.Tensor, model_dir: str | Path | None = None) -> torch.Tensor:
    """Per-sample Euclidean distance (B,), in [0, 1] pixel units, to the closest real digit."""
    x = images_to_pixels(images)
    data = load_metric_arrays(model_dir)["data_pixels_u8"].astype(np.float64) / 16.0
    d2 = (x * x).sum(1)[:, None] + (data * data).sum(1)[None, :] - 2.0 * x @ data.T
    return torch.from_numpy(np.sqrt(np.maximum(d2.min(axis=1), 0.0))).float()


class NearestNeighbourDistance:
    """Fidelity guard: distance to the nearest real digit (lower is closer to the data)."""

    name = "nn_distance"
    higher_is_better = False

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """(B,) distances; ``prompts`` is accepted for the scorer interface and ignored."""
        return nearest_neighbour_distance(images, self.model_dir)


def stroke_thickness(images: torch.Tensor) -> torch.Tensor:
    """Per-sample mean ink (B,) of images (B, 1, 8, 8) in [0, 1]: thicker strokes cover more of the 8x8 grid.

    On images this small a skeleton-based width is not defined reliably; mean
    ink is the quantity the thickness LoRA's training data changes (each stroke
    gains a half-intensity rim of one pixel), and it needs no fitted arrays.
    """
    return torch.from_numpy(images_to_pixels(images).mean(axis=1)).float()


class StrokeThickness:
    """Stroke thickness as mean ink per image (the thickness LoRA's property; higher means bolder strokes)."""

    name = "stroke_thickness"
    higher_is_better = True

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = model_dir

    def score(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """(B,) float32 mean ink in [0, 1]; ``prompts`` is accepted for the scorer interface and ignored."""
        return stroke_thickness(images)


__all__ = [
    "NUM_CLASSES",
    "DigitAccuracy",
    "DigitAlignment",
    "NearestNeighbourDistance",
    "StrokeThickness",
    "class_probabilities",
    "data_images",
    "digit_accuracy",
    "digit_alignment",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "load_metric_arrays",
    "nearest_neighbour_distance",
    "pca_features",
    "stroke_thickness",
]
