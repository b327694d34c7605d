"""The LAION aesthetic predictor ("improved-aesthetic-predictor", v2).

Reference (``simple_inference.py`` of christophschuhmann/improved-aesthetic-predictor)::

    emb = clip_vit_l14.encode_image(preprocess(image))        # OpenAI CLIP ViT-L/14
    emb = emb / ||emb||_2   (a zero norm is left as 1)
    score = MLP(emb)        # sac+logos+ava1-l14-linearMSE.pth

``encode_image`` is ``transformers``' ``get_image_features`` (the projected
image embedding, 768-d for ViT-L/14); the MLP is :class:`RewardMLP`
(Linear 768->1024, Dropout, 1024->128, Dropout, 128->64, Dropout, 64->16,
16->1), kept in float32 as in the reference. Preprocessing is OpenAI CLIP's
(bicubic shortest-edge resize to 224, center crop, CLIP mean/std). The score
is roughly on the AVA 1-10 scale; higher is better; prompts are ignored.

The head's weights are a plain ``torch.save`` state dict, read with
``torch.load(weights_only=True)`` (or a ``.safetensors`` conversion of it).
The original lives in the GitHub repo; ``from_pretrained`` downloads the
hub mirror ``camenduru/improved-aesthetic-predictor`` unless given a local
file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsampling.devices import resolve_device
from zsampling.metrics.scorers._loading import load_or_explain, load_state_dict_file, resolve_file
from zsampling.metrics.scorers.clip import (
    ImageBatcher,
    _check_batch_size,
    _vision_image_size,
    embedding_tensor,
    place_model,
)
from zsampling.metrics.scorers.heads import RewardMLP
from zsampling.metrics.scorers.images import (
    ImagePreprocess,
    check_prompts,
    count_images,
    default_dtype,
)

__all__ = ["AESTHETIC_CLIP", "AESTHETIC_FILE", "AESTHETIC_HUB_ID", "LaionAesthetic"]

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HUB_ID = "camenduru/improved-aesthetic-predictor"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac+logos+ava1-l14-linearMSE.pth")


class LaionAesthetic:
    """LAION aesthetic score: ``MLP(e / ||e||)`` of the CLIP image embedding e.

    Args:
        model: a ``CLIPModel`` or ``CLIPVisionModelWithProjection`` (ViT-L/14
            for the released head).
        head: the MLP (:class:`RewardMLP` or any module (B, D) -> (B, 1)); its
            input size must equal the model's projection size. Always run
            in float32.
        preprocess: overrides OpenAI CLIP's preprocessing at the model's image size.
        device / dtype: where to run the CLIP model (default: where it is).
        batch_size: images per forward pass; None = all at once.
        name: the scorer's name (default "aesthetic").
    """

    name: str = "aesthetic"
    higher_is_better: bool = True

    def __init__(
        self,
        model: torch.nn.Module,
        head: torch.nn.Module,
        *,
        preprocess: ImagePreprocess | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
        name: str | None = None,
    ) -> None:
        if not (hasattr(model, "get_image_features") or hasattr(model, "visual_projection")):
            raise ValueError(f"model must be a CLIPModel or CLIPVisionModelWithProjection, got {type(model)}")
        self.model, self.device, self.dtype = place_model(model, device, dtype)
        self.head = head.to(self.device, torch.float32).eval()
        self.preprocess = preprocess or ImagePreprocess.openai_clip(_vision_image_size(model))
        self.batch_size = _check_batch_size(batch_size)
        if name is not None:
            self.name = name
        self._batcher = ImageBatcher(self.preprocess, self.batch_size, self.device, self.dtype)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            return embedding_tensor(self.model.get_image_features(pixel_values=pixels), "image_embeds")
        return embedding_tensor(self.model(pixel_values=pixels), "image_embeds")

    @torch.no_grad()
    def image_embeddings(self, images: Any) -> torch.Tensor:
        """L2-normalised float32 CLIP image embeddings (B, D); a zero vector stays zero."""
        features = torch.cat([self._embed(pixels) for pixels in self._batcher.chunks(images)]).float()
        norm = features.norm(dim=-1, keepdim=True)
        return features / torch.where(norm == 0, torch.ones_like(norm), norm)

    @torch.no_grad()
    def score(self, images: Any, prompts: Any = None) -> torch.Tensor:
        """Aesthetic score per image (float32, CPU, shape (B,)); ``prompts`` is
        accepted for the scorer interface (checked for length if given) and ignored."""
        n = count_images(images)
        check_prompts(prompts, n, required=False)
        if n == 0:
            return torch.zeros(0, dtype=torch.float32)
        return self.head(self.image_embeddings(images)).reshape(-1).float().cpu()

    __call__ = score

    def __repr__(self) -> str:
        return (f"LaionAesthetic(name={self.name!r}, device={self.device}, dtype={self.dtype}, "
                f"batch_size={self.batch_size})")

    @classmethod
    def from_pretrained(
        cls,
        clip: str = AESTHETIC_CLIP,
        head: str | Path = AESTHETIC_HUB_ID,
        *,
        head_filename: str = AESTHETIC_FILE,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> LaionAesthetic:
        """Load CLIP ViT-L/14's vision tower and the MLP head.

        Args:
            clip: local directory or hub id of the CLIP model.
            head: a local ``.pth`` / ``.safetensors`` file, a directory holding
                ``head_filename``, or a hub repo id (default: the mirror
                ``camenduru/improved-aesthetic-predictor``; the original is at
                ``AESTHETIC_URL``).
            device / dtype: default CUDA + float16 when available, else CPU + float32.
            kwargs: constructor arguments (``batch_size``, ``name``, ``preprocess``).

        Raises:
            MissingWeightsError: CLIP or head weights neither local nor
                downloadable (the message names the hub id and file).
        """
        from transformers import CLIPVisionModelWithProjection

        path = resolve_file(head, head_filename, scorer=cls.__name__, what="aesthetic MLP head",
                            hub_id=AESTHETIC_HUB_ID, argument="head", local_files_only=local_files_only)
        mlp = RewardMLP.from_state_dict(load_state_dict_file(path))
        model = load_or_explain(
            lambda: CLIPVisionModelWithProjection.from_pretrained(clip, local_files_only=local_files_only),
            scorer=cls.__name__, what="CLIP ViT-L/14 weights", source=clip, hub_id=AESTHETIC_CLIP, argument="clip",
        )
        device = resolve_device(device)
        return cls(model, mlp, device=device, dtype=dtype or default_dtype(device), **kwargs)
