"""Image inputs and reference-exact preprocessing, in torch, on the images' device.

Every image scorer accepts

* a tensor (B, C, H, W) -- float in [0, 1] (what ``decode(output_type="pt")``
  returns) or uint8 in [0, 255]; C = 1 is repeated to RGB, C = 3 is used as
  is (C = 4 is refused: composite RGBA first);
* a numpy array (B, H, W, C), float in [0, 1] or uint8 (``output_type="np"``);
* a PIL image or a list of PIL images (``output_type="pil"``), converted to
  RGB like every reference does; sizes may differ within the list.

Float values outside [0, 1] by more than 1e-3 raise ``ValueError`` (map
[-1, 1] model outputs with ``(x + 1) / 2``); values within the tolerance
are clamped.

:class:`ImagePreprocess` then resizes, crops or pads and normalises with
``torch.nn.functional.interpolate`` on whatever device the images are on, so
a per-step metric on GPU never goes through PIL. What each reference does,
and how exact the torch version is:

* OpenAI CLIP / open_clip ``Resize(n) + CenterCrop(n)`` on PIL images (Hessel
  et al.'s CLIPScore, the LAION aesthetic predictor, ImageReward) and
  ``transformers``' ``CLIPImageProcessor`` (PickScore): resize the shortest
  edge to n with bicubic interpolation (the long edge becomes
  ``int(n * long / short)``), center-crop, scale to [0, 1], normalise.
  These references resize a uint8 PIL image with Pillow, whose bicubic
  filter (a = -0.5, antialiased) is the one ``interpolate(mode="bicubic",
  antialias=True)`` implements; ``emulate_pil=True`` (the default for these
  references) also reproduces Pillow's uint8 rounding of the input and of
  each of its two passes (horizontal, then vertical) and its clamping of
  bicubic overshoot. Measured against Pillow / ``CLIPImageProcessor``: equal
  except for a few values in ten thousand, which differ by one uint8 level
  (Pillow's fixed-point weights; when upscaling small images about 0.5% of
  the values, by up to two levels); exact when no resize is needed. The crop offset rounds like the
  reference: torchvision's ``CenterCrop`` uses ``int(round((h - n) / 2))``,
  ``transformers`` uses ``(h - n) // 2`` (they differ for odd margins).
* HPSv2 (its open_clip fork, ``light_augmentation=True``): ``ToTensor`` first,
  then ``ResizeMaxSize``: the longest edge goes to n (each side
  ``round(side * n / longest)``), bicubic on the float tensor, then zero
  padding (black, before normalisation) to n x n, left/top getting the
  floor half. This runs on tensors in the reference too, so it is exact; the
  reference's antialiasing follows torchvision's default (``True`` since
  torchvision 0.17; 0.15-0.16 did not antialias tensors: ``antialias=False``
  reproduces those).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImagePreprocess",
    "default_dtype",
    "to_image_batches",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

RANGE_TOLERANCE = 1e-3
"""How far float pixels may stray outside [0, 1] (then clamped) before it is an error."""


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The scorers' model dtype: float16 on CUDA, float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _check_range(x: torch.Tensor) -> torch.Tensor:
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain NaN or inf")
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise ValueError(
                f"float images must be in [0, 1] (decode with output_type='pt'; map [-1, 1] outputs by "
                f"(x + 1) / 2), got range [{lo:.4f}, {hi:.4f}]"
            )
    return x.clamp(0.0, 1.0)


def _tensor_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 or float in [0, 1] -> float32 (B, 3, H, W) in [0, 1], same device."""
    if images.ndim != 4:
        raise ValueError(
            f"image tensors must have shape (B, C, H, W), got {tuple(images.shape)}; "
            "add a batch dimension with images[None] for a single image"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (B, C, H, W), got C = {images.shape[1]}")
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        x = _check_range(images.float())
    else:
        raise ValueError(f"image tensors must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _pil_to_tensor(image: Any) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div_(255.0)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with diffusers
        return False
    return isinstance(obj, Image.Image)


def to_image_batches(images: Any) -> list[torch.Tensor]:
    """Validate ``images`` and return float32 RGB batches (B_k, 3, H_k, W_k) in [0, 1].

    One batch for a tensor or array (on the tensor's device); one (1, 3, H, W)
    tensor per PIL image, so images of different sizes can be preprocessed
    separately. See the module docstring for the accepted inputs.

    Raises:
        ValueError: wrong shape, channel count, dtype or value range.
    """
    if isinstance(images, torch.Tensor):
        return [_tensor_batch(images)]
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"image arrays must have shape (B, H, W, C), got {images.shape}")
        return [_tensor_batch(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))]
    if _is_pil(images):
        return [_pil_to_tensor(images)]
    if isinstance(images, (list, tuple)):
        if images and all(_is_pil(image) for image in images):
            return [_pil_to_tensor(image) for image in images]
        if images and all(isinstance(image, torch.Tensor) and image.ndim == 3 for image in images):
            return [_tensor_batch(image[None]) for image in images]
    raise ValueError(
        "images must be a tensor (B, C, H, W) in [0, 1], an array (B, H, W, C), a PIL image or a list of PIL "
        f"images, got {type(images).__name__}"
    )


def _size_value(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize, crop or pad, and normalise a float batch (B, 3, H, W) in [0, 1].

    Attributes:
        size: an int n (``mode="shortest_edge"``: the shortest edge becomes n,
            the other ``int(n * long / short)``; ``mode="longest_edge_pad"``:
            the longest edge becomes n, the other ``round(side * n / long)``)
            or (height, width) for a plain resize (``mode="shortest_edge"``
            only). ``None`` skips resizing.
        crop: (height, width) of the center crop after resizing, or None.
        mean / std: per-channel normalisation (``(x - mean) / std``).
        mode: "shortest_edge" (CLIP: resize + center crop) or
            "longest_edge_pad" (HPSv2: resize + zero padding to n x n).
        crop_rounding: "round" (torchvision's ``CenterCrop``) or "floor"
            (``transformers``' image processors).
        interpolation: "bicubic" or "bilinear".
        antialias: antialias when downscaling (PIL and torchvision >= 0.17 do).
        emulate_pil: reproduce a PIL resize of a uint8 image (the references
            that preprocess PIL images): pixels are rounded to uint8 levels
            first (as saving or ``numpy_to_pil`` does), then resized in two
            passes, horizontal then vertical, each rounded and clamped to
            [0, 255] like Pillow's fixed-point resampler. Without it the
            resize is one float pass (no rounding, no clamping of bicubic
            overshoot), which is what HPSv2's tensor pipeline does.
    """

    size: int | tuple[int, int] | None = 224
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    mode: Literal["shortest_edge", "longest_edge_pad"] = "shortest_edge"
    crop_rounding: Literal["round", "floor"] = "round"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = True
    emulate_pil: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("shortest_edge", "longest_edge_pad"):
            raise ValueError(f"mode must be 'shortest_edge' or 'longest_edge_pad', got {self.mode!r}")
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.mode == "longest_edge_pad" and not isinstance(self.size, int):
            raise ValueError(f"mode='longest_edge_pad' needs an int size, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean!r} and {self.std!r}")

    # ------------------------------------------------------------ builders
    @classmethod
    def openai_clip(cls, size: int = 224) -> ImagePreprocess:
        """OpenAI CLIP's ``Resize(size, BICUBIC) + CenterCrop(size)`` on a PIL
        image, with CLIP's mean/std (PIL emulated, torchvision crop rounding)."""
        return cls(size=size, crop=(size, size), crop_rounding="round", emulate_pil=True)

    @classmethod
    def hpsv2(cls, size: int = 224, antialias: bool = True) -> ImagePreprocess:
        """HPSv2's ``ResizeMaxSize(size)`` (longest edge, zero padding) with CLIP's mean/std."""
        return cls(size=size, crop=None, mode="longest_edge_pad", antialias=antialias)

    @classmethod
    def from_image_processor(cls, processor: Any) -> ImagePreprocess:
        """The preprocessing a ``transformers`` CLIP image processor (or a
        processor holding one as ``.image_processor``) describes: its size,
        crop size, mean, std and resampling, with its floor crop offset."""
        ip = getattr(processor, "image_processor", processor)
        size: int | tuple[int, int] | None = None
        if getattr(ip, "do_resize", True):
            raw = getattr(ip, "size", None)
            shortest = _size_value(raw, "shortest_edge")
            if isinstance(raw, int):
                shortest = raw
            if shortest:
                size = int(shortest)
            elif _size_value(raw, "height") and _size_value(raw, "width"):
                size = (int(_size_value(raw, "height")), int(_size_value(raw, "width")))
            else:
                raise ValueError(f"unsupported image processor size {raw!r}: need shortest_edge or height/width")
        crop = None
        if getattr(ip, "do_center_crop", False):
            raw = getattr(ip, "crop_size", None)
            if isinstance(raw, int):
                crop = (raw, raw)
            else:
                crop = (int(_size_value(raw, "height")), int(_size_value(raw, "width")))
        if getattr(ip, "do_normalize", True):
            mean = tuple(float(v) for v in ip.image_mean)
            std = tuple(float(v) for v in ip.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
        resample = int(getattr(ip, "resample", 3) or 3)
        interpolation: Literal["bicubic", "bilinear"] = {2: "bilinear", 3: "bicubic"}.get(resample)  # type: ignore[assignment]
        if interpolation is None:
            raise ValueError(f"unsupported resample {resample} (PIL code): only bilinear (2) and bicubic (3)")
        return cls(size=size, crop=crop, mean=mean, std=std, crop_rounding="floor", interpolation=interpolation,
                   emulate_pil=True)

    # ------------------------------------------------------------ geometry
    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step (no crop / pad)."""
        if self.size is None:
            return height, width
        if isinstance(self.size, tuple):
            return self.size
        n = self.size
        if self.mode == "longest_edge_pad":
            scale = n / float(max(height, width))
            if scale == 1.0:
                return height, width
            return round(height * scale), round(width * scale)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = n, int(n * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _interpolate(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=self.antialias)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        new_height, new_width = self.resized_shape(height, width)
        if self.emulate_pil:
            x = torch.round(x * 255.0)  # to uint8 levels, as numpy_to_pil / a saved PNG
            if new_width != width:  # Pillow: horizontal pass first, rounded half up and clamped to uint8
                x = torch.floor(self._interpolate(x, (height, new_width)) + 0.5).clamp_(0.0, 255.0)
            if new_height != height:
                x = torch.floor(self._interpolate(x, (new_height, new_width)) + 0.5).clamp_(0.0, 255.0)
            return x / 255.0
        if (new_height, new_width) == (height, width):
            return x
        return self._interpolate(x, (new_height, new_width))

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        assert self.crop is not None
        ch, cw = self.crop
        height, width = x.shape[-2:]
        if ch > height or cw > width:  # pad like torchvision's CenterCrop, then crop
            pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
            x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            height, width = x.shape[-2:]
        if self.crop_rounding == "round":
            top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
        else:
            top, left = (height - ch) // 2, (width - cw) // 2
        return x[..., top : top + ch, left : left + cw]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 pixel values (B, 3, h, w), normalised, on the images' device."""
        x = images.float()
        if self.mode == "longest_edge_pad":
            assert isinstance(self.size, int)
            if self.size / float(max(x.shape[-2:])) != 1.0:  # ResizeMaxSize leaves such images untouched
                x = self._resize(x)
                pad_h, pad_w = self.size - x.shape[-2], self.size - x.shape[-1]
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        else:
            x = self._resize(x)
            if self.crop is not None:
                x = self._crop(x)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def pixel_values(self, images: Any) -> torch.Tensor:
        """Validate any accepted input (see :func:`to_image_batches`) and
        preprocess it to one float32 batch (B, 3, h, w)."""
        batches = [self(batch) for batch in to_image_batches(images)]
        if len(batches) == 1:
            return batches[0]
        shapes = {tuple(b.shape[1:]) for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"preprocessed images differ in size {sorted(shapes)}; give a crop size")
        return torch.cat(batches)


def check_prompts(prompts: Sequence[str] | str | None, batch: int, *, required: bool = True) -> list[str] | None:
    """Validate one prompt per image (a single string counts as one prompt).

    Raises:
        ValueError: missing prompts (when required), non-strings, or a
            count different from the number of images.
    """
    if prompts is None:
        if required:
            raise ValueError(f"this scorer needs one prompt per image ({batch} images), got prompts=None")
        return None
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be strings, got {prompts!r}")
    if len(prompts) != batch:
        raise ValueError(f"need one prompt per image: {batch} images, {len(prompts)} prompts")
    return prompts


def count_images(images: Any) -> int:
    """Number of images in an accepted input, without converting it.

    Raises:
        ValueError: not an accepted input (see :func:`to_image_batches`).
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return int(images.shape[0])
    if _is_pil(images):
        return 1
    if isinstance(images, (list, tuple)) and images:
        if all(_is_pil(image) for image in images) or all(
            isinstance(image, torch.Tensor) and image.ndim == 3 for image in images
        ):
            return len(images)
    if isinstance(images, (list, tuple)) and not images:
        return 0
    to_image_batches(images)  # raises the descriptive error
    raise ValueError(f"unsupported images {type(images).__name__}")  # pragma: no cover
