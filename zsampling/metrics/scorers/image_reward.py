"""ImageReward (Xu et al., 2023) on ``transformers``' BLIP components.

Reference (``ImageReward.ImageReward.score``)::

    ids, mask = bert_tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
    image_embeds = blip.visual_encoder(preprocess(image))          # ViT-L/16, 224 px
    h = blip.text_encoder(ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                          encoder_attention_mask=ones).last_hidden_state[:, 0, :].float()
    reward = (mlp(h) - 0.16717362830052426) / 1.0333394966054072

The ``image-reward`` package imports torchvision, timm and fairscale, so this
module runs the same network on ``transformers``' ``BlipVisionModel`` (BLIP's
ViT: pre-norm blocks, fused qkv, final LayerNorm) and ``BlipTextModel``
(a port of BLIP's ``med.BertModel``, with cross-attention in every layer, used
bidirectionally as in the reference's default "multimodal" mode). The
released ``ImageReward.pt`` (hub repo ``THUDM/ImageReward``) is converted
with :func:`convert_image_reward_state_dict`:

=================================================  ==========================================================
ImageReward.pt key                                 :class:`ImageRewardModel` key
=================================================  ==========================================================
``blip.visual_encoder.cls_token``                  ``vision_model.embeddings.class_embedding``
``blip.visual_encoder.pos_embed``                  ``vision_model.embeddings.position_embedding``
``blip.visual_encoder.patch_embed.proj.*``         ``vision_model.embeddings.patch_embedding.*``
``blip.visual_encoder.blocks.{i}.norm1/norm2.*``   ``vision_model.encoder.layers.{i}.layer_norm1/layer_norm2.*``
``blip.visual_encoder.blocks.{i}.attn.qkv/proj.*`` ``vision_model.encoder.layers.{i}.self_attn.qkv/projection.*``
``blip.visual_encoder.blocks.{i}.mlp.fc1/fc2.*``   ``vision_model.encoder.layers.{i}.mlp.fc1/fc2.*``
``blip.visual_encoder.norm.*``                     ``vision_model.post_layernorm.*``
``blip.text_encoder.*``                            ``text_encoder.*`` (same BERT names)
``mlp.layers.*``                                   ``mlp.layers.*``
``blip.vision_proj.*``, ``blip.text_proj.*``,      dropped (not used by the score)
``blip.text_encoder.embeddings.position_ids``
=================================================  ==========================================================

Architecture (:func:`image_reward_configs`): BLIP ViT-L/16 at 224 px
(1024 wide, 24 layers, 16 heads, LayerNorm eps 1e-6 as BLIP's ViT) and
ImageReward's ``med_config.json`` (BERT-base: 768 wide, 12 layers, 12 heads,
vocabulary 30524 = bert-base-uncased + ``[DEC]`` + ``[ENC]``, LayerNorm eps
1e-12, cross-attention width 1024). The tokenizer is ``bert-base-uncased``
(the two added tokens never occur in a scored prompt). Preprocessing is
OpenAI CLIP's (the reference uses CLIP's ``_transform(224)``, including
CLIP's mean/std).

What is tested offline: the vision conversion against an independent
re-implementation of BLIP's ViT on random tiny weights, the key coverage of
the whole conversion, the score formula (head, standardisation, the [CLS]
feature after cross-attention) by hand on tiny models, and the error naming
the hub file. The real checkpoint is not available offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsampling.devices import resolve_device
from zsampling.metrics.scorers._loading import (
    build_with_state_dict,
    load_state_dict_file,
    load_tokenizer,
    resolve_file,
)
from zsampling.metrics.scorers.clip import ImageBatcher, _check_batch_size, place_model
from zsampling.metrics.scorers.heads import RewardMLP
from zsampling.metrics.scorers.images import (
    ImagePreprocess,
    check_prompts,
    count_images,
    default_dtype,
)

__all__ = [
    "IMAGE_REWARD_FILE",
    "IMAGE_REWARD_HUB_ID",
    "IMAGE_REWARD_MEAN",
    "IMAGE_REWARD_STD",
    "ImageReward",
    "ImageRewardModel",
    "convert_image_reward_state_dict",
    "image_reward_configs",
]

IMAGE_REWARD_HUB_ID = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
IMAGE_REWARD_TOKENIZER = "bert-base-uncased"
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
IMAGE_REWARD_MAX_LENGTH = 35

_DROPPED = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^blip\.visual_encoder\.cls_token$"), "vision_model.embeddings.class_embedding"),
    (re.compile(r"^blip\.visual_encoder\.pos_embed$"), "vision_model.embeddings.position_embedding"),
    (re.compile(r"^blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)$"),
     r"vision_model.embeddings.patch_embedding.\1"),
    (re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (re.compile(r"^blip\.visual_encoder\.norm\.(weight|bias)$"), r"vision_model.post_layernorm.\1"),
    (re.compile(r"^blip\.text_encoder\.(.+)$"), r"text_encoder.\1"),
    (re.compile(r"^mlp\.layers\.(\d+)\.(weight|bias)$"), r"mlp.layers.\1.\2"),
]


def convert_image_reward_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``ImageReward.pt`` keys to :class:`ImageRewardModel` keys (see the
    module docstring); a ``module.`` prefix is stripped, unused keys dropped.

    Raises:
        ValueError: keys no rule knows.
    """
    source = dict(state_dict)
    if source and all(key.startswith("module.") for key in source):
        source = {key[len("module."):]: value for key, value in source.items()}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in source.items():
        if _DROPPED.search(key):
            continue
        for pattern, replacement in _RULES:
            if pattern.match(key):
                out[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown ImageReward keys: {sorted(unknown)[:20]}")
    return out


def image_reward_configs() -> tuple[Any, Any]:
    """(``BlipVisionConfig``, ``BlipTextConfig``) of ImageReward v1.0 (see the module docstring)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0,
    )
    text = BlipTextConfig(
        vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, hidden_act="gelu",
        layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        is_decoder=True,  # builds the cross-attention layers; the forward pass runs bidirectionally
    )
    return vision, text


class ImageRewardModel(nn.Module):
    """BLIP ViT + BLIP text encoder with cross-attention + :class:`RewardMLP`.

    ``forward(pixel_values, input_ids, attention_mask)`` returns the raw
    reward (B,) in float32 (before the standardisation by mean and std).
    The head runs in float32 whatever the backbone's dtype, as in the
    reference (``.float()`` before the MLP).
    """

    def __init__(self, vision_config: Any, text_config: Any) -> None:
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        if not getattr(text_config, "is_decoder", False):
            raise ValueError("text_config.is_decoder must be True (it creates the cross-attention layers)")
        self.vision_model = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = RewardMLP(text_config.hidden_size)

    def text_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """The [CLS] feature (B, hidden) of the prompt cross-attending to the image, float32."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        output = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return output.last_hidden_state[:, 0, :].float()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw reward (B,), float32."""
        features = self.text_features(pixel_values, input_ids, attention_mask)
        return self.mlp.float()(features).reshape(-1)

    @classmethod
    def from_image_reward_state_dict(cls, state_dict: Mapping[str, torch.Tensor],
                                     configs: tuple[Any, Any] | None = None) -> ImageRewardModel:
        """Build from ``ImageReward.pt``'s tensors without random initialisation."""
        vision, text = configs if configs is not None else image_reward_configs()
        return build_with_state_dict(lambda: cls(vision, text), convert_image_reward_state_dict(state_dict))


class ImageReward:
    """ImageReward score: ``(MLP(h_cls) - mean) / std`` (higher is better).

    Args:
        model: an :class:`ImageRewardModel` (converted weights, or a tiny
            random one in tests).
        tokenizer: a BERT tokenizer (``bert-base-uncased``) or a processor
            holding one as ``.tokenizer``.
        preprocess: overrides the reference preprocessing (OpenAI CLIP's at 224 px).
        device / dtype: where to run the backbone (default: where it is);
            the head stays float32.
        batch_size: images per forward pass; None = all at once.
        max_length: prompt tokens (35 in the reference).
        mean / std: the reference's standardisation constants.
        name: the scorer's name (default "image_reward").
    """

    name: str = "image_reward"
    higher_is_better: bool = True

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer: Any,
        *,
        preprocess: ImagePreprocess | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
        max_length: int = IMAGE_REWARD_MAX_LENGTH,
        mean: float = IMAGE_REWARD_MEAN,
        std: float = IMAGE_REWARD_STD,
        name: str | None = None,
    ) -> None:
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if tokenizer is None or not callable(tokenizer):
            raise ValueError("ImageReward needs a BERT tokenizer (bert-base-uncased)")
        if not isinstance(model, ImageRewardModel):
            raise ValueError(f"model must be an ImageRewardModel, got {type(model).__name__}")
        self.model, self.device, self.dtype = place_model(model, device, dtype)
        self.model.mlp.float()
        self.tokenizer = tokenizer
        image_size = model.vision_model.config.image_size
        self.preprocess = preprocess or ImagePreprocess.openai_clip(
            int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size))
        self.batch_size = _check_batch_size(batch_size)
        self.max_length = max_length
        self.mean, self.std = float(mean), float(std)
        if name is not None:
            self.name = name
        self._batcher = ImageBatcher(self.preprocess, self.batch_size, self.device, self.dtype)

    @torch.no_grad()
    def score(self, images: Any, prompts: Any) -> torch.Tensor:
        """ImageReward per image (float32, CPU, shape (B,)); one prompt per image."""
        checked = check_prompts(prompts, count_images(images))
        assert checked is not None
        if not checked:
            return torch.zeros(0, dtype=torch.float32)
        tokens = self.tokenizer(checked, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        rewards, start = [], 0
        for pixels in self._batcher.chunks(images):
            stop = start + pixels.shape[0]
            rewards.append(self.model(pixels, ids[start:stop], mask[start:stop]))
            start = stop
        raw = torch.cat(rewards)
        return ((raw - self.mean) / self.std).float().cpu()

    __call__ = score

    def __repr__(self) -> str:
        return (f"ImageReward(name={self.name!r}, device={self.device}, dtype={self.dtype}, "
                f"batch_size={self.batch_size})")

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path = IMAGE_REWARD_HUB_ID,
        *,
        tokenizer: Any = IMAGE_REWARD_TOKENIZER,
        configs: tuple[Any, Any] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> ImageReward:
        """Load and convert ``ImageReward.pt``.

        Args:
            checkpoint: a local ``ImageReward.pt`` (or ``.safetensors``), a
                directory holding it, or a hub repo id (default ``THUDM/ImageReward``).
            tokenizer: a BERT tokenizer or where to load one (default ``bert-base-uncased``).
            configs: (vision, text) BLIP configs (default :func:`image_reward_configs`).
            device / dtype: default CUDA + float16 when available, else CPU + float32.
            kwargs: constructor arguments (``batch_size``, ``name``, ...).

        Raises:
            MissingWeightsError: checkpoint or tokenizer neither local nor
                downloadable (the message names the hub id and file).
        """
        path = resolve_file(checkpoint, IMAGE_REWARD_FILE, scorer=cls.__name__, what="ImageReward checkpoint",
                            hub_id=IMAGE_REWARD_HUB_ID, argument="checkpoint", local_files_only=local_files_only)
        tokenizer = load_tokenizer(tokenizer, scorer=cls.__name__, what="BERT tokenizer",
                                   hub_id=IMAGE_REWARD_TOKENIZER, argument="tokenizer",
                                   local_files_only=local_files_only)
        model = ImageRewardModel.from_image_reward_state_dict(load_state_dict_file(path), configs)
        device = resolve_device(device)
        return cls(model, tokenizer, device=device, dtype=dtype or default_dtype(device), **kwargs)
