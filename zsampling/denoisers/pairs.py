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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsampling.denoisers.base import Branches, EpsPair
from zsampling.denoisers.demo import build_scheduler, build_unet
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

LATENT_SHAPE: tuple[int, int, int] = (1, HEIGHT, WIDTH)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PIL_SCALE = 8
"""Nearest-neighbour upscale factor of "pil" outputs (8x16 content, 64x128 pixels)."""


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


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Map model-space latents in [-1, 1] to images in [0, 1] (clamped)."""
    return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def decode_latents(latents: torch.Tensor, output_type: str) -> Any:
    """Turn final latents (B, 1, 8, 16) into ``output_type``.

    "pt": float tensor (B, 1, 8, 16) in [0, 1]; "np": float32 array (B, 8, 16, 1)
    in [0, 1]; "pil": greyscale PIL images upscaled ``PIL_SCALE`` times
    (nearest neighbour); "latent": the latents unchanged.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "latent":
        return latents
    images = latents_to_images(latents)
    if output_type == "pt":
        return images
    array = images.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float32)
    if output_type == "np":
        return array
    from PIL import Image

    pixels = np.round(array[..., 0] * 255.0).astype(np.uint8)
    return [Image.fromarray(p).resize((WIDTH * PIL_SCALE, HEIGHT * PIL_SCALE), Image.NEAREST) for p in pixels]


class PairsDenoiser:
    """``Denoiser`` over the pairs UNet with the text states of one prompt batch.

    Each call runs the requested branches as ONE batched UNet call (uncond rows
    first, then cond rows) and adds the rows it ran to ``network_rows``.
    """

    def __init__(self, unet: nn.Module, uncond_states: torch.Tensor, cond_states: torch.Tensor,
                 position_channel: bool = False) -> None:
        self.unet = unet
        self.uncond_states = uncond_states
        self.cond_states = cond_states
        self.position_channel = position_channel
        self.network_rows = 0

    @property
    def batch_size(self) -> int:
        return int(self.cond_states.shape[0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: int, branches: Branches) -> EpsPair:
        """eps_u and/or eps_c of ``x`` (B, 1, 8, 16) at training timestep ``t``."""
        if x.shape[0] != self.batch_size or tuple(x.shape[1:]) != LATENT_SHAPE:
            raise ValueError(
                f"x must have shape ({self.batch_size}, {', '.join(map(str, LATENT_SHAPE))}), got {tuple(x.shape)}"
            )
        wanted = [s for s, on in ((self.uncond_states, branches.uncond), (self.cond_states, branches.cond)) if on]
        if not wanted:
            return EpsPair(uncond=None, cond=None)
        x_in = torch.cat([x] * len(wanted)).to(self.cond_states.dtype)
        states = torch.cat(wanted)
        timestep = torch.full((x_in.shape[0],), int(t), device=x_in.device, dtype=torch.long)
        if self.position_channel:
            x_in = add_position_channel(x_in)
        eps = self.unet(x_in, timestep, encoder_hidden_states=states).sample.to(x.dtype)
        self.network_rows += x_in.shape[0]
        chunks = list(eps.chunk(len(wanted)))
        uncond = chunks.pop(0) if branches.uncond else None
        cond = chunks.pop(0) if branches.cond else None
        return EpsPair(uncond=uncond, cond=cond)


@dataclass
class PairsTarget:
    """``SamplingTarget`` of the pairs model: prompts encoded, fresh scheduler."""

    denoiser: PairsDenoiser
    scheduler: Any
    batch_size: int
    dtype: torch.dtype
    device: torch.device
    prompts: list[str]
    negative_prompts: list[str]
    latent_shape: tuple[int, ...] = field(default=LATENT_SHAPE)
    output_types: tuple[str, ...] = field(default=OUTPUT_TYPES)

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """See ``decode_latents``."""
        return decode_latents(latents, output_type)


def _check_size(name: str, value: int | None, allowed: int) -> None:
    if value is not None and value != allowed:
        raise ValueError(f"{name} must be None or {allowed} for the pairs model (8x16 images), got {value!r}")


class PairsPipeline:
    """Pipeline-like wrapper of the pairs model that ``zsampling.sample`` accepts.

    Attributes mirror a diffusers text-to-image pipeline: ``unet``,
    ``text_encoder``, ``tokenizer``, ``scheduler`` (a ``DDIMScheduler``),
    ``device``, ``dtype``, plus ``config`` (config.json).
    """

    def __init__(self, unet: nn.Module, text_encoder: PairsTextEncoder, scheduler: Any,
                 config: dict[str, Any]) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = PairsTokenizer()
        self.scheduler = scheduler
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PairsPipeline:
        """Move (and optionally cast) the UNet and the text encoder; returns self."""
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None and dtype != self.dtype:
            kwargs["dtype"] = dtype
        if kwargs:
            nn.Module.to(self.unet, **kwargs)
            self.text_encoder.to(**kwargs)
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Cross-attention states (B, 4, dim) of prompts (ValueError for a prompt outside the grammar)."""
        ids = self.tokenizer(prompts)["input_ids"].to(self.device)
        return self.text_encoder(ids).to(self.dtype)

    def prepare_zsampling(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> PairsTarget:
        """Encode prompts (and negative prompts; None means "") into a ``SamplingTarget``.

        Raises:
            ValueError: a prompt outside the grammar (the message lists the
                vocabulary and the grammar), a mismatched negative prompt
                count, or height/width other than None or 8/16.
        """
        _check_size("height", height, HEIGHT)
        _check_size("width", width, WIDTH)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts must be a non-empty list of pairs prompts")
        if negative_prompts is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompts] * len(prompts) if isinstance(negative_prompts, str) else list(
                negative_prompts)
            if len(negatives) != len(prompts):
                raise ValueError(f"negative_prompts must be None or have one entry per prompt ({len(prompts)}), "
                                 f"got {len(negatives)}")
        cond = self.encode_prompts(prompts)
        denoiser = PairsDenoiser(self.unet, self.encode_prompts(negatives), cond,
                                 position_channel=bool(self.config.get("position_channel", False)))
        return PairsTarget(
            denoiser=denoiser,
            scheduler=type(self.scheduler).from_config(self.scheduler.config),
            batch_size=len(prompts),
            dtype=self.dtype,
            device=self.device,
            prompts=prompts,
            negative_prompts=negatives,
        )


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a weights file into the UNet's and the text encoder's state dicts."""
    unet = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    enc = {k[len("text_encoder.") :]: v for k, v in state.items() if k.startswith("text_encoder.")}
    unknown = sorted(k for k in state if not k.startswith(("unet.", "text_encoder.")))
    if unknown:
        raise ValueError(f"unexpected keys in pairs weights: {unknown[:5]}")
    return unet, enc


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
    from safetensors.torch import load_file

    directory = Path(model_dir) if model_dir is not None else PAIRS_MODEL_DIR
    config = json.loads((directory / CONFIG_FILE).read_text())
    if tuple(config.get("vocabulary", VOCABULARY)) != VOCABULARY:
        raise ValueError(f"{directory / CONFIG_FILE}: vocabulary {config.get('vocabulary')} differs from this "
                         f"version's {list(VOCABULARY)}")
    unet_state, enc_state = split_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    unet = build_unet(config["unet"])
    unet.load_state_dict(unet_state, strict=True)
    text_encoder = PairsTextEncoder(**config["text_encoder"])
    text_encoder.load_state_dict(enc_state, strict=True)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    pipe = PairsPipeline(unet, text_encoder, build_scheduler(config["scheduler"]), config)
    return pipe.to(device=device, dtype=dtype)
