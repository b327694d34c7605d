"""Tiny, randomly initialised, fully offline diffusers pipelines.

Tests, benchmarks and notebooks need real ``diffusers`` pipeline objects (the
same classes, ``encode_prompt`` methods, schedulers and latent shapes as the
production models) without downloading gigabytes of weights, and without any
network access at all. The builders here assemble such pipelines from configs
alone:

* the networks use the sizes of diffusers' own fast tests, so a 3-step
  call takes a fraction of a second on a couple of CPU cores;
* every network is initialised under ``torch.manual_seed(seed)`` inside a
  forked RNG, so the weights depend only on ``seed`` and building a pipeline
  leaves the caller's global RNG state untouched;
* the tokenizers are built in memory (a byte-level CLIP BPE vocabulary with
  no merges, and a character-level T5 unigram vocabulary), so nothing is read
  from the Hugging Face hub or the local cache.

The outputs are noise-like: the weights are random. What is faithful is the
plumbing -- classes, shapes, dtypes, prompt encoding, classifier-free
guidance batching and the DDIM scheduler -- which is what sampler code
interacts with.

Sizes (pixels / latents, batch of one):

* :func:`tiny_sd_pipeline`: 64x64 pixels, latents ``(1, 4, 32, 32)``.
* :func:`tiny_sdxl_pipeline`: 64x64 pixels, latents ``(1, 4, 32, 32)``.
* :func:`tiny_sd3_pipeline`: 32x32 pixels, latents ``(1, 4, 32, 32)``
  (flow matching, three text encoders).
* :func:`tiny_flux_pipeline`: 32x32 pixels, packed latents ``(1, 256, 16)``
  (flow matching; ``guidance_embeds`` True for FLUX.1-dev, False for schnell).
* :func:`tiny_pixart_pipeline`: 64x64 pixels, latents ``(1, 4, 32, 32)``;
  call it with ``use_resolution_binning=False`` (otherwise the pipeline snaps
  the request to its 256x256 aspect-ratio bins) and ``clean_caption=False``
  (its default ``True`` needs ``bs4``/``ftfy`` and only warns without them).
* :func:`tiny_hunyuan_pipeline`: 64x64 pixels, latents ``(1, 4, 8, 8)``
  (an 8x VAE, as the rotary grid assumes); call it with
  ``use_resolution_binning=False`` (otherwise the pipeline snaps the request
  to its 1024-pixel bins).
"""

from __future__ import annotations

import json
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    HunyuanDiT2DModel,
    HunyuanDiTPipeline,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

__all__ = [
    "tiny_flux_pipeline",
    "tiny_hunyuan_pipeline",
    "tiny_pixart_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]

# Vocabulary size of every tiny text encoder; all tokenizer ids stay below it.
_TEXT_VOCAB_SIZE = 1000
# CLIP's context length, used as the tokenizers' ``model_max_length``.
_CLIP_MAX_LENGTH = 77
# PixArt-alpha's default ``max_sequence_length``.
_T5_MAX_LENGTH = 120

# SD3's and Flux's CLIP encoders: the fast-test CLIP cut to two layers, with
# a 32-wide projection (overrides for :func:`_clip_text_config`).
_FLOW_CLIP_SIZES: dict[str, object] = {"num_hidden_layers": 2, "projection_dim": 32}

_Pipe = TypeVar("_Pipe", bound=DiffusionPipeline)

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block, restoring the caller's RNG after.

    Weight initialisation draws from the global generator, so seeding it is
    the only way to make the weights deterministic; forking keeps building a
    pipeline from silently changing the random stream of the caller.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _ddim_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's training schedule (epsilon prediction)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def _tiny_vae(seed: int) -> AutoencoderKL:
    """Two-block KL autoencoder (downsampling factor 2, 4 latent channels)."""
    with _seeded(seed):
        return AutoencoderKL(
            block_out_channels=(4, 8),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=2,
            sample_size=64,
        )


def _tiny_unet(seed: int, **sizes: object) -> UNet2DConditionModel:
    """The SD-family UNet of :func:`tiny_sd_pipeline` and :func:`tiny_sdxl_pipeline`.

    Both are the same two-level network over 32x32, 4-channel latents (a plain
    down/up block around a cross-attention pair); ``sizes`` sets what differs
    between the families (widths, layers, cross-attention width, SDXL's
    ``text_time`` conditioning).
    """
    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            **sizes,
        )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable chars.

    Byte-level BPE pre-tokenisation rewrites every input byte to one of these
    characters, so a vocabulary holding all of them can encode any string
    without unknown tokens.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over a byte-level vocabulary with no merges.

    Ids: 0-255 are the byte characters, 256-511 the same characters with the
    end-of-word marker ``</w>``, 512 is ``<|startoftext|>`` and 513
    ``<|endoftext|>`` (also the padding token, as in CLIP). With no merges
    every byte of the prompt becomes one token, so distinct prompts give
    distinct ids, and the end-of-text token has the largest id, as in the real
    vocabulary (CLIP's pooling historically relied on that).

    The files are written to a temporary directory (deleted on return) and
    loaded with ``local_files_only=True``: ``vocab.json`` plus a
    ``merges.txt`` holding only its version header is CLIP's classic on-disk
    layout, which ``CLIPTokenizer.from_pretrained`` reads in transformers 4.x
    (slow tokenizer) and 5.x (tokenizers backend) alike.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    assert len(vocab) <= _TEXT_VOCAB_SIZE
    with tempfile.TemporaryDirectory(prefix="zsampling-tiny-clip-") as tmp:
        root = Path(tmp)
        (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (root / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(
            tmp,
            local_files_only=True,
            bos_token=_CLIP_BOS,
            eos_token=_CLIP_EOS,
            unk_token=_CLIP_EOS,
            pad_token=_CLIP_EOS,
            model_max_length=_CLIP_MAX_LENGTH,
        )


def _clip_text_config(tokenizer: CLIPTokenizer, **overrides: object) -> CLIPTextConfig:
    """diffusers' fast-test CLIP text config, with ids matching ``tokenizer``."""
    kwargs: dict[str, object] = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=_TEXT_VOCAB_SIZE,
        max_position_embeddings=_CLIP_MAX_LENGTH,
    )
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


def _tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-style (SentencePiece unigram) tokenizer over a character vocabulary.

    Ids: 0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``, 3 the word-boundary ``▁``, then
    every printable ASCII character both with and without a leading ``▁``.
    Any ASCII prompt is therefore encoded losslessly (one piece per
    character); other characters map to ``<unk>``. ``</s>`` is appended to
    every sequence, as T5 does. Built in memory as a ``tokenizers`` object, so
    it needs neither ``sentencepiece`` nor a ``spiece.model`` file.
    """
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -1.0) for c in chars]
    pieces += [(c, -1.0) for c in chars]
    assert len(pieces) <= _TEXT_VOCAB_SIZE
    backend = Tokenizer(Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=_T5_MAX_LENGTH,
    )


def _tiny_t5_encoder(seed: int, num_layers: int = 2, **overrides: object) -> T5EncoderModel:
    """T5 encoder (width 32, 4 heads) over the vocabulary of :func:`_tiny_t5_tokenizer`.

    ``num_layers`` deep: 2 for the SD3, Flux and Hunyuan-DiT pipelines, 5 for
    PixArt's; ``overrides`` are further ``T5Config`` fields. The special ids
    (``<pad>`` 0, also the decoder start, ``</s>`` 1) are the tokenizer's.
    """
    config = T5Config(
        vocab_size=_TEXT_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=37, num_layers=num_layers, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **overrides,
    )
    with _seeded(seed):
        return T5EncoderModel(config)


def _finish(pipe: _Pipe) -> _Pipe:
    """float32 (even under another default dtype), eval mode, no progress bars.

    Each network is cast with ``.float()`` rather than ``pipe.to(dtype=...)``,
    which logs a spurious keep-in-float32 warning per diffusers model.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.float().eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build a tiny random Stable-Diffusion-1.x-style pipeline, offline.

    UNet with channels (4, 8), one layer per block and cross-attention width
    32; a (4, 8) KL autoencoder; a 5-layer, 32-wide CLIP text encoder; the
    in-memory byte-level CLIP tokenizer; DDIM with SD's schedule; no safety
    checker. Default output is 64x64 pixels from ``(B, 4, 32, 32)`` latents.

    Args:
        seed: seeds the weight initialisation; the same seed gives identical
            weights, different seeds give different weights.

    Returns:
        A float32 pipeline on CPU, all networks in eval mode, progress bar off.
    """
    tokenizer = _tiny_clip_tokenizer()
    unet = _tiny_unet(seed, block_out_channels=(4, 8), layers_per_block=1, cross_attention_dim=32, norm_num_groups=2)
    vae = _tiny_vae(seed)
    with _seeded(seed):
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """Build a tiny random SDXL pipeline, offline.

    Two CLIP text encoders (a ``CLIPTextModel`` and a
    ``CLIPTextModelWithProjection`` with projection dim 32, both 32 wide, so
    the concatenated context is 64 wide) sharing the in-memory byte-level
    tokenizer; a UNet with channels (2, 4), ``addition_embed_type="text_time"``
    with 8-dim time embeddings (6 * 8 + 32 = 80 projection inputs) and
    cross-attention width 64; a (4, 8) KL autoencoder; DDIM with SD's
    schedule. Default output is 64x64 pixels from ``(B, 4, 32, 32)`` latents.

    Args:
        seed: seeds the weight initialisation; the same seed gives identical
            weights, different seeds give different weights.

    Returns:
        A float32 pipeline on CPU, all networks in eval mode, progress bar off.
    """
    tokenizer = _tiny_clip_tokenizer()
    tokenizer_2 = _tiny_clip_tokenizer()
    unet = _tiny_unet(
        seed,
        block_out_channels=(2, 4),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = _tiny_vae(seed)
    text_config = _clip_text_config(tokenizer, hidden_act="gelu", projection_dim=32)
    with _seeded(seed):
        # One stream for both encoders, so they get different weights.
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_ddim_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        # Never watermark, even where invisible-watermark is installed: the
        # decoded images must depend on the weights and latents alone.
        add_watermarker=False,
    )
    return _finish(pipe)


def tiny_pixart_pipeline(seed: int = 0) -> PixArtAlphaPipeline:
    """Build a tiny random PixArt-alpha (DiT) pipeline, offline.

    A 2-layer ``PixArtTransformer2DModel`` (3 heads of 8, patch size 2,
    ``ada_norm_single``) over 32x32 latents; a 5-layer, 32-wide T5 encoder
    with the in-memory character-level T5 tokenizer; a (4, 8) KL autoencoder;
    DDIM with SD's schedule. Default output is 64x64 pixels from
    ``(B, 4, 32, 32)`` latents.

    Call the pipeline with ``use_resolution_binning=False`` (with binning it
    renders at the 256x256 bin and resizes back) and ``clean_caption=False``.

    Args:
        seed: seeds the weight initialisation; the same seed gives identical
            weights, different seeds give different weights.

    Returns:
        A float32 pipeline on CPU, all networks in eval mode, progress bar off.
    """
    tokenizer = _tiny_t5_tokenizer()
    with _seeded(seed):
        transformer = PixArtTransformer2DModel(
            sample_size=32,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,  # learned sigma: the pipeline keeps the first 4
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
    vae = _tiny_vae(seed)
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_t5_encoder(seed, num_layers=5, dropout_rate=0.0),
        vae=vae,
        transformer=transformer,
        scheduler=_ddim_scheduler(),
    )
    return _finish(pipe)


def _tiny_flow_vae(seed: int) -> AutoencoderKL:
    """One-block KL autoencoder (no downsampling, 4 latent channels) with SD3/Flux's
    scaling and shift factors and no quant convs, as their VAEs."""
    with _seeded(seed):
        return AutoencoderKL(
            block_out_channels=(4,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=1, sample_size=32,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """Build a tiny random Stable-Diffusion-3-style pipeline, offline.

    One-layer ``SD3Transformer2DModel`` (patch 1, 4 heads of 8), two CLIP
    text encoders with projection and a T5 encoder (the three SD3 encoders),
    a one-block VAE and ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (SD3's
    config). Default size 32x32 pixels, latents ``(B, 4, 32, 32)``.
    """
    tokenizer = _tiny_clip_tokenizer()
    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
        )
        text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer, **_FLOW_CLIP_SIZES))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer, **_FLOW_CLIP_SIZES))
    return _finish(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_flow_vae(seed),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=_tiny_clip_tokenizer(), text_encoder_3=_tiny_t5_encoder(seed), tokenizer_3=_tiny_t5_tokenizer(),
    ))


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """Build a tiny random Flux-style pipeline, offline.

    ``FluxTransformer2DModel`` with one double and one single block (2 heads
    of 16, RoPE axes (4, 4, 8)); ``guidance_embeds=True`` is FLUX.1-dev's
    guidance-distilled form, False FLUX.1-schnell's. CLIP + T5 text encoders,
    a one-block VAE, and Flux's scheduler config (dynamic shifting, base /
    max shift 0.5 / 1.15 over 256..4096 tokens). Default size 32x32 pixels:
    packed latents ``(B, 256, 16)``.
    """
    tokenizer = _tiny_clip_tokenizer()
    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=guidance_embeds,
        )
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer, **_FLOW_CLIP_SIZES))
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        shift=3.0,
    )
    return _finish(FluxPipeline(
        scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=_tiny_t5_encoder(seed),
        tokenizer_2=_tiny_t5_tokenizer(), transformer=transformer, vae=_tiny_flow_vae(seed),
    ))


def _tiny_bert_tokenizer() -> BertTokenizer:
    """A BERT WordPiece tokenizer over a lower-case character vocabulary.

    Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``, 3 ``[SEP]``, 4 ``[MASK]``,
    then every lower-case letter, digit and ASCII punctuation character, on
    its own (a word's first piece) and as a ``##`` continuation. Any ASCII
    prompt is therefore encoded losslessly up to case (BERT lower-cases),
    one piece per character, wrapped in ``[CLS] ... [SEP]``; other
    characters map to ``[UNK]``. ``vocab.txt`` is written to a temporary
    directory (deleted on return) and loaded with ``local_files_only=True``,
    which transformers 4.x and 5.x read alike.
    """
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    assert len(vocab) <= _TEXT_VOCAB_SIZE
    with tempfile.TemporaryDirectory(prefix="zsampling-tiny-bert-") as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return BertTokenizer.from_pretrained(tmp, local_files_only=True, model_max_length=_CLIP_MAX_LENGTH)


def _tiny_8x_vae(seed: int) -> AutoencoderKL:
    """Four-block KL autoencoder: downsampling factor 8, as Hunyuan-DiT's rotary grid
    (``height // 8 // patch_size``) assumes, with 4 channels per block."""
    with _seeded(seed):
        return AutoencoderKL(
            block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, norm_num_groups=2, sample_size=64,
        )


def _hunyuan_ddim_scheduler(prediction_type: str) -> DDIMScheduler:
    """DDIM with Hunyuan-DiT's training schedule.

    The checkpoints (Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers and later)
    ship a ``DDPMScheduler`` with scaled-linear betas 0.00085 .. 0.03,
    ``v_prediction``, ``steps_offset`` 1 and "leading" spacing;
    ``DDIMScheduler.from_config`` of that config gives these values.
    """
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.03, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
        prediction_type=prediction_type,
    )


def tiny_hunyuan_pipeline(seed: int = 0, prediction_type: str = "v_prediction") -> HunyuanDiTPipeline:
    """Build a tiny random Hunyuan-DiT pipeline, offline.

    ``HunyuanDiT2DModel`` with diffusers' fast-test sizes (2 layers, 3 heads
    of 8, patch 2, learned sigma: 8 output channels of which the pipeline
    keeps the first 4) over 8x8 latents; a 2-layer, 32-wide ``BertModel``
    with the in-memory character-level BERT tokenizer (the real model's
    bilingual CLIP-like BERT, 77 tokens) and a 2-layer T5 encoder with the
    in-memory T5 tokenizer (the real model's mT5, 256 tokens); a four-block
    VAE (factor 8); DDIM with Hunyuan-DiT's schedule (``prediction_type``
    "v_prediction", as the checkpoints, or "epsilon"). Default output is
    64x64 pixels from ``(B, 4, 8, 8)`` latents.

    Call the pipeline with ``use_resolution_binning=False`` (with binning it
    renders at 1024x1024).

    Args:
        seed: seeds the weight initialisation; the same seed gives identical
            weights, different seeds give different weights.
        prediction_type: the scheduler's (and so the network's) parameterisation.

    Returns:
        A float32 pipeline on CPU, all networks in eval mode, progress bar off.
    """
    tokenizer = _tiny_bert_tokenizer()
    with _seeded(seed):
        transformer = HunyuanDiT2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
            cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, hidden_size=24,
            activation_fn="gelu-approximate",
        )
        text_encoder = BertModel(BertConfig(
            vocab_size=_TEXT_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=_CLIP_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id,
        ), add_pooling_layer=False)
    return _finish(HunyuanDiTPipeline(
        vae=_tiny_8x_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        scheduler=_hunyuan_ddim_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=_tiny_t5_encoder(seed), tokenizer_2=_tiny_t5_tokenizer(),
    ))
