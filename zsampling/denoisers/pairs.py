"""The shipped offline "pairs" world: a text-conditioned UNet on 8x16 digit pairs.

Prompts such as ``"3 left of 7"``, ``"7 right of 3"``, ``"3 and 7"`` or ``"3"``
(grammar in ``zsampling.pairs_model``) go through a word-level tokenizer
(``PairsTokenizer``) and a small learned text encoder (``PairsTextEncoder``:
token + position embeddings and two pre-norm transformer layers) whose token
states feed a diffusers ``UNet2DConditionModel``'s cross-attention, exactly
as CLIP feeds Stable Diffusion. Encoder and UNet were trained jointly
(epsilon prediction, 12% prompt dropout to the empty prompt ``""``, which is
the unconditional branch). There is no VAE: the latent is the image, shape
(1, 8, 16), in [-1, 1]; the UNet also sees a fixed horizontal-coordinate
channel (``add_position_channel``), so that "left" and "right" are visible
to it.

Usage::

    import zsampling
    from zsampling.denoisers.pairs import load_pairs_pipeline
    out = zsampling.sample(load_pairs_pipeline(), "3 left of 7", num_inference_steps=25,
                           guidance_scale=2.0, zigzag_steps=12, output_type="pt")

``scripts/train_pairs_model.py`` rebuilds the weights; ``TRAINING.md`` in
``zsampling/pairs_model`` records how the shipped ones were made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsampling.denoisers.small_unet import (
    SmallUNetPipeline,
    SmallUNetTarget,
    build_scheduler,
    latents_to_images,
    load_frozen,
)
from zsampling.pairs_model import (
    CONFIG_FILE,
    HEIGHT,
    MAX_WORDS,
    PAIRS_MODEL_DIR,
    VOCABULARY,
    WEIGHTS_FILE,
    WIDTH,
    tokenize,
)

__all__ = [
    "LATENT_SHAPE",
    "PairsPipeline",
    "PairsTarget",
    "PairsTextEncoder",
    "PairsTokenizer",
    "add_position_channel",
    "latents_to_images",
    "load_pairs_pipeline",
]

LATENT_SHAPE: tuple[int, int, int] = (1, HEIGHT, WIDTH)


class PairsTokenizer:
    """Word-level tokenizer over the fixed pairs vocabulary (like a CLIP tokenizer).

    Calling it on a list of prompts returns ``{"input_ids": LongTensor (B, 4)}``;
    a prompt outside the grammar raises ``ValueError`` listing the vocabulary
    and the grammar.
    """

    vocabulary: tuple[str, ...] = VOCABULARY
    model_max_length: int = MAX_WORDS

    def __call__(self, prompts: str | list[str]) -> dict[str, torch.Tensor]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return {"input_ids": torch.tensor([tokenize(p) for p in prompts], dtype=torch.long)}


class PairsTextEncoder(nn.Module):
    """Token + position embeddings, ``layers`` pre-norm transformer layers, final LayerNorm.

    Maps token ids (B, 4) to cross-attention states (B, 4, dim).
    """

    def __init__(self, vocab_size: int = len(VOCABULARY), dim: int = 32, layers: int = 2, heads: int = 4,
                 ff: int = 64, max_words: int = MAX_WORDS) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.layers, self.heads, self.ff = vocab_size, dim, layers, heads, ff
        self.max_words = max_words
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_words, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token states (B, max_words, dim)."""
        h = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        return self.final_norm(self.encoder(h))

    def config(self) -> dict[str, int]:
        """Constructor arguments, as stored in config.json."""
        return {"vocab_size": self.vocab_size, "dim": self.dim, "layers": self.layers, "heads": self.heads,
                "ff": self.ff, "max_words": self.max_words}


def add_position_channel(x: torch.Tensor) -> torch.Tensor:
    """Append a fixed horizontal-coordinate channel (-1 at the left edge, +1 at the right) to ``x`` (B, 1, H, W).

    Why: convolutions and attention over the latent are translation-equivariant, so without it the UNet can tell
    left from right only through the zero padding at the borders, and "3 left of 7" binds no better than chance.
    The UNet of a model with ``position_channel`` in its config sees (B, 2, H, W); the latent stays (B, 1, H, W).
    """
    coord = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype)
    return torch.cat([x, coord.expand(x.shape[0], 1, x.shape[-2], x.shape[-1])], dim=1)


@dataclass(kw_only=True)
class PairsTarget(SmallUNetTarget):
    """``SamplingTarget`` of the pairs model, with its prompts and negative prompts."""

    prompts: list[str]
    negative_prompts: list[str]


class PairsPipeline(SmallUNetPipeline):
    """Pipeline-like wrapper of the pairs model that ``zsampling.sample`` accepts.

    Attributes mirror a diffusers text-to-image pipeline: ``unet``,
    ``text_encoder``, ``tokenizer``, ``scheduler`` (a ``DDIMScheduler``),
    ``device``, ``dtype``, plus ``config`` (config.json) and ``family``
    (always "ddim").
    """

    latent_shape = LATENT_SHAPE
    size_note = "pairs model (8x16 images)"
    prompt_kind = "pairs"

    def __init__(self, unet: nn.Module, text_encoder: PairsTextEncoder, scheduler: Any,
                 config: dict[str, Any]) -> None:
        super().__init__(unet, text_encoder, scheduler, config)
        self.text_encoder = text_encoder
        self.tokenizer = PairsTokenizer()

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Cross-attention states (B, 4, dim) of prompts (ValueError for a prompt outside the grammar)."""
        return self.encode(self.tokenizer(prompts)["input_ids"])

    def encode_batch(self, prompts: list[str], negative_prompts: list[str | None]) -> PairsTarget:
        """Target of pairs prompts (ValueError for one outside the grammar, listing the vocabulary and the
        grammar)."""
        cond = self.encode_prompts(prompts)
        position = add_position_channel if self.config.get("position_channel", False) else None
        fields = self.target_fields(self.encode_prompts(negative_prompts), cond, prepare_input=position)
        return PairsTarget(**fields, prompts=prompts, negative_prompts=negative_prompts)


def load_pairs_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model_dir: str | Path | None = None,
) -> PairsPipeline:
    """Load the shipped pairs model offline (well under a second on a CPU).

    Args:
        device: where to put the UNet and the text encoder.
        dtype: parameter dtype (weights are stored in float32).
        model_dir: directory with ``weights.safetensors`` and ``config.json``;
            defaults to the copy shipped in ``zsampling/pairs_model``.
    """
    directory = Path(model_dir) if model_dir is not None else PAIRS_MODEL_DIR
    config = json.loads((directory / CONFIG_FILE).read_text())
    if tuple(config.get("vocabulary", VOCABULARY)) != VOCABULARY:
        raise ValueError(f"{directory / CONFIG_FILE}: vocabulary {config.get('vocabulary')} differs from this "
                         f"version's {list(VOCABULARY)}")
    unet, text_encoder = load_frozen(directory / WEIGHTS_FILE, config, PairsTextEncoder, "text_encoder", "pairs")
    pipe = PairsPipeline(unet, text_encoder, build_scheduler(config["scheduler"]), config)
    return pipe.to(device=device, dtype=dtype)
