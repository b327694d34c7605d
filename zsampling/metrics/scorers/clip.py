"""CLIP-based image-text scorers on ``transformers``' ``CLIPModel``: CLIPScore, PickScore.

Both embed each image and its prompt, L2-normalise the two embeddings in
float32 and combine their cosine ``cos = <e_img, e_txt>``:

* :class:`CLIPScore` -- CLIP-S of Hessel et al. (2021), "CLIPScore: A
  Reference-free Evaluation Metric for Image Captioning", exactly as their
  reference code computes it: ``2.5 * max(cos, 0)`` with the text prefixed by
  ``"A photo depicts "``, OpenAI CLIP preprocessing (bicubic shortest-edge
  resize, center crop rounding like torchvision), ViT-B/32 by default. Range
  [0, 2.5]. For torchmetrics-style numbers use
  ``CLIPScore.from_pretrained("openai/clip-vit-large-patch14", weight=100.0,
  text_prefix="")``: per-sample ``max(100 cos, 0)`` (torchmetrics clamps the
  batch mean instead of each value; the two agree whenever the cosines are
  positive, as they are for matched image-prompt pairs in practice).
* :class:`PickScore` -- Kirstain et al. (2023): ``logit_scale.exp() * cos``
  with the fine-tuned CLIP-H ``yuvalkirstain/PickScore_v1`` and the processor
  of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``transformers``'
  ``CLIPImageProcessor``: shortest edge 224, center crop 224 with a floor
  offset), as the PickScore reference code computes before its softmax over
  images (typically ~20-23).

Text: padded to the full context (77 tokens) and truncated like CLIP's
``tokenize(truncate=True)``; padding cannot change the result (causal
attention, end-of-text pooling) and fixed-length batches make results
independent of how prompts are batched. Each distinct prompt is encoded once
per call.

Device and dtype: ``from_pretrained`` puts the model on CUDA when available
in float16, else on the CPU in float32; a scorer built from a model keeps the
model's device and dtype unless ``device`` / ``dtype`` are given. Images are
preprocessed in float32 on their own device, then moved and cast to the
model's; embeddings are normalised and combined in float32; ``score``
returns float32 on the CPU. ``batch_size`` bounds the images (and prompts)
per forward pass and does not change the results beyond float rounding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from zsampling.devices import resolve_device
from zsampling.metrics.scorers._loading import load_or_explain, load_tokenizer
from zsampling.metrics.scorers.images import (
    ImagePreprocess,
    check_prompts,
    count_images,
    default_dtype,
    to_image_batches,
)

__all__ = ["CLIPImageTextScorer", "CLIPScore", "PickScore", "embedding_tensor", "place_model"]


def embedding_tensor(output: Any, *names: str) -> torch.Tensor:
    """The embedding tensor of a ``get_*_features`` / model output.

    ``transformers`` 4.x returns a tensor; 5.x returns a model output whose
    ``pooler_output`` holds the projected embedding; ``*WithProjection``
    models return ``image_embeds`` / ``text_embeds``.
    """
    if isinstance(output, torch.Tensor):
        return output
    for name in (*names, "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding tensor in {type(output).__name__}")


def place_model(
    model: torch.nn.Module, device: str | torch.device | None, dtype: torch.dtype | None
) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
    """Move ``model`` to ``device`` / ``dtype`` (defaults: where it is now) and
    switch it to eval mode (dropout off). Returns (model, device, dtype).

    Raises:
        ValueError: ``dtype`` is not a floating dtype, or the model has no parameters.
    """
    try:
        first = next(model.parameters())
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters") from None
    target_device = torch.device(device) if device is not None else first.device
    target_dtype = dtype if dtype is not None else first.dtype
    if not (isinstance(target_dtype, torch.dtype) and target_dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {target_dtype!r}")
    model = model.to(device=target_device, dtype=target_dtype)
    model.eval()
    return model, target_device, target_dtype


def _check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (all at once) or an integer >= 1, got {batch_size!r}")
    return batch_size


def _vision_image_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", config)
    size = getattr(vision, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ImageBatcher:
    """Preprocess accepted image inputs into chunks of at most ``batch_size``
    pixel batches on ``device`` in ``dtype`` (shared by every image scorer)."""

    def __init__(self, preprocess: ImagePreprocess, batch_size: int | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    def chunks(self, images: Any) -> Iterator[torch.Tensor]:
        """Yield (b, 3, h, w) model inputs, in order, b <= batch_size."""
        size = self.batch_size or sys.maxsize
        buffer: list[torch.Tensor] = []
        count = 0
        for batch in to_image_batches(images):
            for start in range(0, batch.shape[0], size):
                piece = self.preprocess(batch[start : start + size])
                buffer.append(piece)
                count += piece.shape[0]
                while count >= size:
                    merged = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
                    yield merged[:size].to(self.device, self.dtype)
                    rest = merged[size:]
                    buffer, count = ([rest] if rest.shape[0] else []), rest.shape[0]
        if count:
            merged = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
            yield merged.to(self.device, self.dtype)


class CLIPImageTextScorer:
    """Shared machinery of the CLIP image-text scorers (see the module docstring).

    Subclasses set ``name``, the hub ids and :meth:`combine` (cosine -> score).

    Args:
        model: a ``transformers`` ``CLIPModel`` (anything with
            ``get_image_features`` / ``get_text_features``), already loaded
            or built from a config (tests use tiny random ones).
        processor: a ``CLIPProcessor`` (its ``tokenizer`` and, where the
            reference uses it, its ``image_processor``), or a tokenizer.
        tokenizer: the tokenizer, when ``processor`` is not given.
        preprocess: overrides the reference image preprocessing.
        device / dtype: where to run the model (default: where it is).
        batch_size: images (and prompts) per forward pass; None = all at once.
        max_length: text context (default: the tokenizer's, capped by the
            model's position embeddings, i.e. 77 for CLIP).
        name: the scorer's name (trace column); default per class.
    """

    name: str = "clip"
    higher_is_better: bool = True
    default_model: ClassVar[str] = ""
    default_processor: ClassVar[str | None] = None

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any = None,
        *,
        tokenizer: Any = None,
        preprocess: ImagePreprocess | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
        max_length: int | None = None,
        name: str | None = None,
    ) -> None:
        if tokenizer is None:
            tokenizer = getattr(processor, "tokenizer", processor)
        if tokenizer is None or not callable(tokenizer):
            raise ValueError(
                f"{type(self).__name__} needs a tokenizer: pass processor= (a CLIPProcessor) or tokenizer="
            )
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(f"model must be a CLIPModel (get_image_features/get_text_features), got {type(model)}")
        self.model, self.device, self.dtype = place_model(model, device, dtype)
        self.tokenizer = tokenizer
        self.preprocess = preprocess if preprocess is not None else self.reference_preprocess(model, processor)
        self.batch_size = _check_batch_size(batch_size)
        if max_length is None:
            limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 77)
            max_length = min(int(getattr(tokenizer, "model_max_length", limit) or limit), int(limit))
        self.max_length = max_length
        if name is not None:
            self.name = name
        self._batcher = ImageBatcher(self.preprocess, self.batch_size, self.device, self.dtype)

    # ---------------------------------------------------------------- hooks
    def reference_preprocess(self, model: torch.nn.Module, processor: Any) -> ImagePreprocess:
        """The reference implementation's image preprocessing for ``model``."""
        return ImagePreprocess.openai_clip(_vision_image_size(model))

    def text(self, prompt: str) -> str:
        """The text actually encoded for ``prompt`` (e.g. with a prefix)."""
        return prompt

    def combine(self, cosine: torch.Tensor) -> torch.Tensor:
        """Score from the float32 cosine similarities (B,)."""
        return cosine

    # ----------------------------------------------------------- embeddings
    @torch.no_grad()
    def image_embeddings(self, images: Any) -> torch.Tensor:
        """L2-normalised float32 image embeddings (B, D) on the model's device."""
        parts = [
            embedding_tensor(self.model.get_image_features(pixel_values=pixels), "image_embeds")
            for pixels in self._batcher.chunks(images)
        ]
        features = torch.cat(parts).float()
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings (N, D) of ``prompts`` (as given,
        before :meth:`text`'s prefix is added) on the model's device."""
        texts = [self.text(p) for p in prompts]
        size = self.batch_size or max(len(texts), 1)
        parts = []
        for start in range(0, len(texts), size):
            tokens = self.tokenizer(
                texts[start : start + size],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            parts.append(embedding_tensor(output, "text_embeds"))
        features = torch.cat(parts).float()
        return features / features.norm(dim=-1, keepdim=True)

    def cosine(self, images: Any, prompts: Sequence[str] | str) -> torch.Tensor:
        """Cosine similarity (B,) of each image and its prompt, float32 on the model's device.

        Inputs are validated before any model call.
        """
        checked = check_prompts(prompts, count_images(images))
        assert checked is not None
        image_emb = self.image_embeddings(images)
        unique = list(dict.fromkeys(checked))
        text_emb = self.text_embeddings(unique)
        index = torch.tensor([unique.index(p) for p in checked], device=text_emb.device)
        return (image_emb * text_emb[index]).sum(dim=-1)

    def score(self, images: Any, prompts: Sequence[str] | str) -> torch.Tensor:
        """One score per image (float32, CPU, shape (B,)); ``images`` is a float
        tensor (B, C, H, W) in [0, 1], an array or PIL image(s); one prompt per image."""
        if count_images(images) == 0:
            return torch.zeros(0, dtype=torch.float32)
        return self.combine(self.cosine(images, prompts)).float().cpu()

    __call__ = score

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, model={type(self.model).__name__}, "
                f"device={self.device}, dtype={self.dtype}, batch_size={self.batch_size})")

    # -------------------------------------------------------------- loading
    @classmethod
    def _load_clip(
        cls,
        model: str,
        processor: str | None,
        *,
        local_files_only: bool,
        argument: str = "model",
    ) -> tuple[torch.nn.Module, Any, Any]:
        """(CLIPModel, tokenizer, image-processor config or None), with
        :class:`MissingWeightsError` naming the hub id when unavailable."""
        from transformers import CLIPModel

        processor = processor or model
        clip = load_or_explain(
            lambda: CLIPModel.from_pretrained(model, local_files_only=local_files_only),
            scorer=cls.__name__, what="CLIP weights", source=model, hub_id=cls.default_model or model,
            argument=argument,
        )
        tokenizer = load_tokenizer(processor, scorer=cls.__name__, what="tokenizer",
                                   hub_id=cls.default_processor or cls.default_model or processor,
                                   argument="processor", local_files_only=local_files_only)
        image_config = _image_processor_config(processor, local_files_only)
        return clip, tokenizer, image_config


def _image_processor_config(source: str, local_files_only: bool) -> dict[str, Any] | None:
    """The ``preprocessor_config.json`` of ``source`` as a dict, or None when absent.

    Read directly (no image-processor class), so it needs neither torchvision
    nor PIL-backend classes of a particular ``transformers`` version.
    """
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json", local_files_only=local_files_only,
                           _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class _ConfigView:
    """Attribute access to an image-processor config dict (for ImagePreprocess.from_image_processor)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.__dict__.update(config)


class CLIPScore(CLIPImageTextScorer):
    """CLIP-S (Hessel et al., 2021): ``weight * max(cos(image, "A photo depicts " + prompt), 0)``.

    ``weight`` defaults to 2.5 and ``text_prefix`` to ``"A photo depicts "``
    as in the reference code (``clipscore.py``), whose default model is
    OpenAI's ViT-B/32. Preprocessing: OpenAI CLIP's (bicubic shortest-edge
    resize to the model's image size, center crop rounding like torchvision,
    CLIP mean/std). Higher is better; range [0, weight]. See the module
    docstring for the torchmetrics convention.

    Args:
        model, processor, ...: see :class:`CLIPImageTextScorer`.
        weight: w in ``w * max(cos, 0)``.
        text_prefix: prepended to every prompt ("" for none).
    """

    name = "clip_score"
    default_model = "openai/clip-vit-base-patch32"

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, weight: float = 2.5,
                 text_prefix: str = "A photo depicts ", **kwargs: Any) -> None:
        super().__init__(model, processor, **kwargs)
        self.weight = float(weight)
        self.text_prefix = text_prefix

    def text(self, prompt: str) -> str:
        """``text_prefix + prompt``."""
        return self.text_prefix + prompt

    def combine(self, cosine: torch.Tensor) -> torch.Tensor:
        """``weight * max(cos, 0)``."""
        return self.weight * cosine.clamp(min=0.0)

    @classmethod
    def from_pretrained(
        cls,
        model: str = "openai/clip-vit-base-patch32",
        processor: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> CLIPScore:
        """Load a ``CLIPModel`` and its tokenizer from a local directory or the hub.

        ``device`` defaults to CUDA when available, ``dtype`` to float16 on
        CUDA and float32 otherwise; ``kwargs`` go to the constructor
        (``weight``, ``text_prefix``, ``batch_size``, ``name``, ...).

        Raises:
            MissingWeightsError: not found locally and not downloadable; the
                message names the hub id and how to use a local copy.
        """
        clip, tokenizer, _ = cls._load_clip(model, processor, local_files_only=local_files_only)
        device = resolve_device(device)
        return cls(clip, tokenizer=tokenizer, device=device, dtype=dtype or default_dtype(device), **kwargs)


class PickScore(CLIPImageTextScorer):
    """PickScore (Kirstain et al., 2023): ``logit_scale.exp() * cos(image, prompt)``.

    The reference computes these logits with ``yuvalkirstain/PickScore_v1``
    (a fine-tuned CLIP-H/14) and the processor of
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, then a softmax over candidate
    images; this scorer returns the per-image logits (the softmax of a set of
    them reproduces the reference's probabilities). Preprocessing follows the
    processor's config (shortest edge, center crop with a floor offset,
    mean/std). Higher is better.
    """

    name = "pick_score"
    default_model = "yuvalkirstain/PickScore_v1"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def reference_preprocess(self, model: torch.nn.Module, processor: Any) -> ImagePreprocess:
        """The processor's preprocessing (``transformers`` convention), or its
        defaults (shortest edge and crop = the model's image size, CLIP mean/std)."""
        if isinstance(processor, dict):
            return ImagePreprocess.from_image_processor(_ConfigView(processor))
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None and hasattr(processor, "crop_size"):
            image_processor = processor
        if image_processor is not None:
            return ImagePreprocess.from_image_processor(image_processor)
        size = _vision_image_size(model)
        return ImagePreprocess(size=size, crop=(size, size), crop_rounding="floor", emulate_pil=True)

    def combine(self, cosine: torch.Tensor) -> torch.Tensor:
        """``logit_scale.exp() * cos`` (the model's learned temperature)."""
        return self.model.logit_scale.detach().float().exp().to(cosine.device) * cosine

    @classmethod
    def from_pretrained(
        cls,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> PickScore:
        """Load PickScore's CLIP-H and the LAION processor (tokenizer +
        ``preprocessor_config.json``) from local directories or the hub.

        Raises:
            MissingWeightsError: not found locally and not downloadable; the
                message names the hub id and how to use a local copy.
        """
        clip, tokenizer, image_config = cls._load_clip(model, processor, local_files_only=local_files_only)
        device = resolve_device(device)
        preprocess = kwargs.pop("preprocess", None)
        if preprocess is None and image_config is not None:
            preprocess = ImagePreprocess.from_image_processor(_ConfigView(image_config))
        return cls(clip, tokenizer=tokenizer, preprocess=preprocess, device=device,
                   dtype=dtype or default_dtype(device), **kwargs)
