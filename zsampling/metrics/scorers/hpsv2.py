"""HPSv2 / HPSv2.1 (Wu et al., 2023) on ``transformers``' ``CLIPModel``.

The reference (``hpsv2.score``) fine-tunes open_clip's ViT-H-14 and scores an
image-prompt pair by ``image_features @ text_features.T`` of the normalised
open_clip features: the plain cosine, no logit scale (typical values
0.2-0.35). ``open_clip_torch`` and ``hpsv2`` import torchvision at import
time, so this module runs the same network as a ``transformers``
``CLIPModel`` instead, converting the released checkpoint
(``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` from the hub repo
``xswu/HPSv2``: ``{"state_dict": open_clip weights}``) with
:func:`convert_open_clip_state_dict`:

==========================================  =====================================================
open_clip key                               ``CLIPModel`` key
==========================================  =====================================================
``token_embedding.weight``                  ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                    ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.{i}.ln_1``          ``text_model.encoder.layers.{i}.layer_norm1``
``...attn.in_proj_weight`` (3D x D)         ``...self_attn.{q,k,v}_proj.weight`` (split in 3, q k v)
``...attn.in_proj_bias`` (3D)               ``...self_attn.{q,k,v}_proj.bias``
``...attn.out_proj``                        ``...self_attn.out_proj``
``...ln_2`` / ``mlp.c_fc`` / ``mlp.c_proj``   ``...layer_norm2`` / ``mlp.fc1`` / ``mlp.fc2``
``ln_final``                                ``text_model.final_layer_norm``
``text_projection`` (D x E)                 ``text_projection.weight`` (transposed)
``logit_scale``                             ``logit_scale``
``visual.class_embedding`` (D)              ``vision_model.embeddings.class_embedding``
``visual.conv1.weight``                     ``vision_model.embeddings.patch_embedding.weight``
``visual.positional_embedding``             ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre`` / ``visual.ln_post``      ``vision_model.pre_layrnorm`` / ``vision_model.post_layernorm``
``visual.transformer.resblocks.{i}.*``      ``vision_model.encoder.layers.{i}.*`` (as for text)
``visual.proj`` (D x E)                     ``visual_projection.weight`` (transposed)
==========================================  =====================================================

The architecture is :func:`vit_h14_config` (open_clip's ``ViT-H-14.json``:
exact GELU, LayerNorm eps 1e-5, 224 px, patch 14, vision 1280 wide x 32
layers x 16 heads, text 1024 x 24 x 16, embedding 1024); the tokenizer is
any CLIP BPE tokenizer (the LAION ViT-H-14 repo's by default). open_clip's
tokenizer additionally runs ``ftfy.fix_text`` and HTML unescaping, which
only matters for mojibake or HTML entities in prompts.

Preprocessing is HPSv2's ``ResizeMaxSize`` (longest edge to 224, bicubic on
the float tensor, zero padding), exact in torch (see
:mod:`~zsampling.metrics.scorers.images`).

What is tested offline: the conversion, against an independent
re-implementation of open_clip's forward pass on random tiny weights (the
real checkpoint is not available offline), the score formula, the
preprocessing and the error naming the hub file when the checkpoint is
missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zsampling.devices import resolve_device
from zsampling.metrics.scorers._loading import (
    build_with_state_dict,
    load_state_dict_file,
    load_tokenizer,
    resolve_file,
)
from zsampling.metrics.scorers.clip import CLIPImageTextScorer, _vision_image_size
from zsampling.metrics.scorers.images import ImagePreprocess, default_dtype

__all__ = ["HPSV2_FILES", "HPSV2_HUB_ID", "HPSv2", "convert_open_clip_state_dict", "vit_h14_config"]

HPSV2_HUB_ID = "xswu/HPSv2"
HPSV2_FILES: dict[str, str] = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPSV2_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_BLOCK_RENAMES = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an open_clip ViT ``CLIP`` state dict to ``transformers``' ``CLIPModel`` keys.

    See the module docstring for the mapping. A ``module.`` prefix is
    stripped; every key must be consumed.

    Raises:
        ValueError: keys that the mapping does not know (e.g. a custom text
            tower or attention pooling) or missing required keys.
    """
    source = dict(state_dict)
    if source and all(key.startswith("module.") for key in source):
        source = {key[len("module."):]: value for key, value in source.items()}
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in source:
            raise ValueError(f"open_clip state dict lacks {key!r} (is it a ViT CLIP with the standard text tower?)")
        return source.pop(key)

    def blocks(src: str, dst: str) -> None:
        i = 0
        while f"{src}.{i}.ln_1.weight" in source:
            s, d = f"{src}.{i}.", f"{dst}.{i}."
            for old, new in _BLOCK_RENAMES.items():
                out[d + new] = take(s + old)
            for kind in ("weight", "bias"):
                q, k, v = take(s + f"attn.in_proj_{kind}").chunk(3, dim=0)
                out[d + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[d + f"self_attn.k_proj.{kind}"] = k.contiguous()
                out[d + f"self_attn.v_proj.{kind}"] = v.contiguous()
            i += 1
        if i == 0:
            raise ValueError(f"open_clip state dict has no transformer blocks under {src!r}")

    out["text_model.embeddings.token_embedding.weight"] = take("token_embedding.weight")
    out["text_model.embeddings.position_embedding.weight"] = take("positional_embedding")
    blocks("transformer.resblocks", "text_model.encoder.layers")
    out["text_model.final_layer_norm.weight"] = take("ln_final.weight")
    out["text_model.final_layer_norm.bias"] = take("ln_final.bias")
    out["text_projection.weight"] = take("text_projection").t().contiguous()
    out["logit_scale"] = take("logit_scale")

    out["vision_model.embeddings.class_embedding"] = take("visual.class_embedding")
    out["vision_model.embeddings.patch_embedding.weight"] = take("visual.conv1.weight")
    out["vision_model.embeddings.position_embedding.weight"] = take("visual.positional_embedding")
    out["vision_model.pre_layrnorm.weight"] = take("visual.ln_pre.weight")
    out["vision_model.pre_layrnorm.bias"] = take("visual.ln_pre.bias")
    blocks("visual.transformer.resblocks", "vision_model.encoder.layers")
    out["vision_model.post_layernorm.weight"] = take("visual.ln_post.weight")
    out["vision_model.post_layernorm.bias"] = take("visual.ln_post.bias")
    out["visual_projection.weight"] = take("visual.proj").t().contiguous()
    source.pop("attn_mask", None)  # a buffer (causal mask) in some open_clip versions
    if source:
        raise ValueError(f"unconverted open_clip keys: {sorted(source)[:20]}")
    return out


def vit_h14_config() -> Any:
    """``CLIPConfig`` of open_clip's ViT-H-14 (HPSv2's architecture).

    Token ids are CLIP's BPE vocabulary's (start 49406, end 49407); pooling
    takes the first end-of-text token, as open_clip's ``argmax`` of the ids.
    """
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=1024,
        num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=77,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32,
        num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=1024)


def clip_from_open_clip(state_dict: Mapping[str, torch.Tensor], config: Any) -> torch.nn.Module:
    """A ``CLIPModel(config)`` holding the converted open_clip ``state_dict``
    (built without random initialisation)."""
    from transformers import CLIPModel

    converted = convert_open_clip_state_dict(state_dict)
    return build_with_state_dict(lambda: CLIPModel(config), converted)


class HPSv2(CLIPImageTextScorer):
    """HPSv2 / HPSv2.1 human preference score: ``cos(image, prompt)`` of the
    fine-tuned ViT-H-14 (higher is better). See the module docstring.

    Build it from a converted ``CLIPModel`` and a CLIP tokenizer
    (``HPSv2(model, tokenizer=...)``), or with :meth:`from_pretrained` from
    the released checkpoint.

    Args:
        model, processor, ...: see :class:`CLIPImageTextScorer`.
        antialias: antialias the bicubic downscaling (torchvision >= 0.17,
            the default); False reproduces numbers computed with torchvision
            0.15-0.16.
    """

    name = "hpsv2"
    default_model = HPSV2_HUB_ID
    default_processor = HPSV2_TOKENIZER

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, antialias: bool = True,
                 **kwargs: Any) -> None:
        self.antialias = antialias
        super().__init__(model, processor, **kwargs)

    def reference_preprocess(self, model: torch.nn.Module, processor: Any) -> ImagePreprocess:
        """HPSv2's ``ResizeMaxSize`` + CLIP normalisation."""
        return ImagePreprocess.hpsv2(_vision_image_size(model), antialias=self.antialias)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path | None = None,
        *,
        version: str = "v2.0",
        tokenizer: Any = HPSV2_TOKENIZER,
        config: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> HPSv2:
        """Load the released checkpoint into a ``CLIPModel``.

        Args:
            checkpoint: a local ``.pt`` / ``.safetensors`` file, a directory
                holding ``HPSV2_FILES[version]``, or a hub repo id; default
                the hub repo ``xswu/HPSv2``.
            version: "v2.0" (``HPS_v2_compressed.pt``) or "v2.1"
                (``HPS_v2.1_compressed.pt``); names the scorer "hpsv2" or
                "hpsv2.1" unless ``name`` is given.
            tokenizer: a CLIP tokenizer or where to load one (local
                directory or hub id).
            config: the ``CLIPConfig`` (default :func:`vit_h14_config`).
            device / dtype: default CUDA + float16 when available, else CPU + float32.
            kwargs: constructor arguments (``batch_size``, ``antialias``, ``name``).

        Raises:
            ValueError: unknown ``version``.
            MissingWeightsError: checkpoint or tokenizer neither local nor
                downloadable (the message names ``xswu/HPSv2`` and the file).
        """
        if version not in HPSV2_FILES:
            raise ValueError(f"version must be one of {sorted(HPSV2_FILES)}, got {version!r}")
        filename = HPSV2_FILES[version]
        path = resolve_file(checkpoint if checkpoint is not None else HPSV2_HUB_ID, filename, scorer=cls.__name__,
                            what=f"HPSv2 {version} checkpoint", hub_id=HPSV2_HUB_ID, argument="checkpoint",
                            local_files_only=local_files_only)
        tokenizer = load_tokenizer(tokenizer, scorer=cls.__name__, what="CLIP tokenizer", hub_id=HPSV2_TOKENIZER,
                                   argument="tokenizer", local_files_only=local_files_only)
        model = clip_from_open_clip(load_state_dict_file(path), config if config is not None else vit_h14_config())
        device = resolve_device(device)
        kwargs.setdefault("name", "hpsv2" if version == "v2.0" else "hpsv2.1")
        return cls(model, tokenizer=tokenizer, device=device, dtype=dtype or default_dtype(device), **kwargs)
