"""Adapters from diffusers text-to-image pipelines to the denoiser protocol.

DDIM family (outputs converted to eps): ``StableDiffusionPipeline`` (SD 1.x /
2.x, epsilon or v prediction), ``StableDiffusionXLPipeline`` (pooled text
embeds and time ids) and the DiT pipelines ``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline`` and ``HunyuanDiTPipeline`` (two text encoders,
BERT and mT5, learned-sigma output).

Flow-matching family (outputs are velocities): ``StableDiffusion3Pipeline``
(SD3 / SD3.5: three text encoders, pooled projections, CFG with a negative
prompt; skip-layer guidance is not supported) and ``FluxPipeline``:
FLUX.1-schnell (one unguided branch), FLUX.1-dev (one branch with a
guidance embedding: the leg's guidance is the embedding value) and true CFG
(a negative prompt: two branches ``v_neg + s (v - v_neg)``, the embedding
held at the pipeline's default 3.5 unless a leg sets ``guidance_embed``).
Both support the prompt-embedding mix of :mod:`zsampling.legs`.

Prompts are encoded once with the pipeline's own ``encode_prompt``; each
network call then concatenates only the requested CFG branches, in the
order [uncond, cond] that diffusers uses, so both branches come from one
batched call. Timesteps, sigmas (Flux's ``mu`` and custom sigmas) and
initial latents (Flux's packing) follow the pipeline's own ``__call__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zsampling.denoisers.base import Branches, EpsPair
from zsampling.legs import DEFAULT_CONDITION, Condition
from zsampling.schedule import to_epsilon

Conditioning = dict[str, Any]
Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
Convert = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
Conditioner = Callable[[Condition], tuple[Conditioning, Conditioning]]


class ConditionedDenoiser:
    """Denoiser over a network with per-branch conditioning tensors.

    ``uncond`` and ``cond`` are keyword arguments of the network (tensors with
    batch dimension B, possibly nested one level in dicts such as SDXL's
    ``added_cond_kwargs``). The three batched variants (u, c, u+c) are built
    once per condition, so a network call does no concatenation of
    conditioning. ``convert`` maps the raw output to the family's
    parameterisation (v/x0 -> eps for DDIM models; None keeps it, as flow
    matching's velocity). ``conditioner`` builds the (uncond, cond)
    conditioning of a leg's :class:`~zsampling.legs.Condition` (a guidance
    embedding value, an embedding mix); without one only the prompt as
    encoded is available.
    """

    def __init__(
        self,
        network: Network,
        uncond: Conditioning,
        cond: Conditioning,
        convert: Convert | None = None,
        *,
        timestep_dtype: torch.dtype = torch.long,
        guidance_mode: str = "cfg",
        conditioner: Conditioner | None = None,
        has_guidance_embeds: bool = False,
        supports_mix: bool = False,
    ) -> None:
        self._network = network
        self._convert = convert
        self._conditioner = conditioner
        self._tables = {DEFAULT_CONDITION: _branch_table(uncond, cond)}
        self._timestep_dtype = timestep_dtype
        self._timesteps: dict[tuple[float, torch.device], torch.Tensor] = {}
        self.guidance_mode = guidance_mode
        self.has_guidance_embeds = has_guidance_embeds
        self.supports_mix = supports_mix
        self.network_rows = 0

    def __call__(self, x: torch.Tensor, t: float, branches: Branches,
                 condition: Condition = DEFAULT_CONDITION) -> EpsPair:
        if branches.count == 0:
            raise ValueError("a denoiser call needs at least one branch")
        batch = x.shape[0]
        model_input = torch.cat([x, x]) if branches.count == 2 else x
        output = self._network(model_input, self._timestep(t, x.device), self._table(condition)[branches])
        self.network_rows += model_input.shape[0]
        if self._convert is not None:
            output = self._convert(output, model_input, t)
        if branches.count == 2:
            return EpsPair(uncond=output[:batch], cond=output[batch:])
        return EpsPair(uncond=output, cond=None) if branches.uncond else EpsPair(uncond=None, cond=output)

    def _table(self, condition: Condition) -> dict[Branches, Conditioning]:
        if condition not in self._tables:
            if self._conditioner is None:
                raise ValueError(f"this model's adapter supports only the prompt as encoded, not {condition}")
            self._tables[condition] = _branch_table(*self._conditioner(condition))
        return self._tables[condition]

    def _timestep(self, t: float, device: torch.device) -> torch.Tensor:
        key = (t, device)
        if key not in self._timesteps:
            self._timesteps[key] = torch.tensor(t, dtype=self._timestep_dtype, device=device)
        return self._timesteps[key]


def _branch_table(uncond: Conditioning, cond: Conditioning) -> dict[Branches, Conditioning]:
    return {Branches(True, False): uncond, Branches(False, True): cond, Branches(True, True): _concat(uncond, cond)}


def epsilon_converter(alphas_cumprod: torch.Tensor, prediction_type: str) -> Convert | None:
    """v / x0 -> eps at alpha_bar of the evaluation timestep (None for eps models)."""
    if prediction_type == "epsilon":
        return None

    def convert(output: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        return to_epsilon(output, x, float(alphas_cumprod[int(t)]), prediction_type)

    return convert


def embedding_mix(embeds: torch.Tensor, empty: torch.Tensor, s: float, r: float) -> torch.Tensor:
    """``c + s ((1 - r) c + r c_empty)`` (docs/design.md, "Moves")."""
    return embeds + s * ((1.0 - r) * embeds + r * empty)


def _concat(uncond: Conditioning, cond: Conditioning) -> Conditioning:
    merged: Conditioning = {}
    for key, value in uncond.items():
        if isinstance(value, dict):
            merged[key] = _concat(value, cond[key])
        elif isinstance(value, torch.Tensor):
            merged[key] = torch.cat([value, cond[key]])
        else:
            merged[key] = value
    return merged


@dataclass
class DiffusersTarget:
    """A diffusers pipeline with its prompts encoded (a ``SamplingTarget``)."""

    pipe: Any
    denoiser: ConditionedDenoiser
    scheduler: Any
    batch_size: int
    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    output_types: tuple[str, ...] = ("pil", "np", "pt", "latent")
    default_guidance: float | None = None
    set_timesteps_kwargs: Callable[[int], dict[str, Any]] | None = None
    draw_latents: Callable[[Any], torch.Tensor] | None = None
    unpack: Callable[[torch.Tensor], torch.Tensor] | None = None

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Decode like the pipeline does (SDXL's fp16 VAE upcast, SD3/Flux's
        shift factor and Flux's unpacking included)."""
        if output_type == "latent":
            return latents
        if self.unpack is not None:
            latents = self.unpack(latents)
        vae = self.pipe.vae
        needs_upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if needs_upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(vae.dtype)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                shape = (1, -1, 1, 1)
                mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
                std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
                latents = latents * std_t / vae.config.scaling_factor + mean_t
            else:
                latents = latents / vae.config.scaling_factor
                shift = getattr(vae.config, "shift_factor", None)
                if shift is not None:
                    latents = latents + shift
            with torch.no_grad():
                image = vae.decode(latents, return_dict=False)[0]
        finally:
            if needs_upcast:
                vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(image, output_type=output_type)


def prepare_diffusers(
    pipe: Any,
    prompts: list[str],
    negative_prompts: list[str] | None,
    height: int | None,
    width: int | None,
) -> DiffusersTarget:
    """Encode prompts once and wrap ``pipe``'s network as a denoiser."""
    from diffusers import (
        FluxPipeline,
        HunyuanDiTPipeline,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    builders: list[tuple[type, Callable[..., DiffusersTarget]]] = [
        (StableDiffusionXLPipeline, _prepare_sdxl),
        (StableDiffusionPipeline, _prepare_sd),
        (PixArtAlphaPipeline, _prepare_pixart),
        (PixArtSigmaPipeline, _prepare_pixart),
        (HunyuanDiTPipeline, _prepare_hunyuan),
        (StableDiffusion3Pipeline, _prepare_sd3),
        (FluxPipeline, _prepare_flux),
    ]
    for cls, build in builders:
        if isinstance(pipe, cls):
            return build(pipe, prompts, negative_prompts, height, width)
    supported = ", ".join(cls.__name__ for cls, _ in builders)
    raise TypeError(
        f"unsupported pipeline {type(pipe).__name__}; zsampling adapts {supported}, "
        "or any object with a prepare_zsampling() method"
    )


def _pixel_size(pipe: Any, height: int | None, width: int | None, default: int, multiple: int) -> tuple[int, int]:
    height = height or default
    width = width or default
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            raise ValueError(f"{name} must be a multiple of {multiple} for {type(pipe).__name__}, got {value}")
    return height, width


def _prepare_sd(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                width: int | None) -> DiffusersTarget:
    scale = pipe.vae_scale_factor
    height, width = _pixel_size(pipe, height, width, pipe.unet.config.sample_size * scale, scale)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompts, pipe._execution_device, 1, True, negative)

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        with torch.no_grad():
            return pipe.unet(x, t, **kwargs, return_dict=False)[0]

    return _target(pipe, pipe.unet, network, {"encoder_hidden_states": uncond}, {"encoder_hidden_states": cond},
                   len(prompts), (pipe.unet.config.in_channels, height // scale, width // scale))


def _prepare_sdxl(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                  width: int | None) -> DiffusersTarget:
    scale = pipe.vae_scale_factor
    height, width = _pixel_size(pipe, height, width, pipe.default_sample_size * scale, scale)
    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompts, device=pipe._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=negative,
        )
    projection_dim = (
        int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
    )
    time_ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), dtype=cond.dtype, text_encoder_projection_dim=projection_dim
    ).to(pipe._execution_device).repeat(len(prompts), 1)

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        with torch.no_grad():
            return pipe.unet(x, t, **kwargs, return_dict=False)[0]

    def conditioning(embeds: torch.Tensor, pooled_embeds: torch.Tensor) -> Conditioning:
        return {
            "encoder_hidden_states": embeds,
            "added_cond_kwargs": {"text_embeds": pooled_embeds, "time_ids": time_ids},
        }

    return _target(pipe, pipe.unet, network, conditioning(uncond, pooled_uncond), conditioning(cond, pooled),
                   len(prompts), (pipe.unet.config.in_channels, height // scale, width // scale))


def _prepare_pixart(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                    width: int | None) -> DiffusersTarget:
    transformer = pipe.transformer
    scale = pipe.vae_scale_factor
    height, width = _pixel_size(
        pipe, height, width, transformer.config.sample_size * scale, scale * transformer.config.patch_size
    )
    with torch.no_grad():
        cond, cond_mask, uncond, uncond_mask = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=True, negative_prompt=negative if negative is not None else "",
            device=pipe._execution_device, clean_caption=False,
        )
    added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
    if transformer.config.sample_size == 128:  # PixArt-alpha 1024px checkpoints take micro-conditions
        added = {
            "resolution": torch.tensor([[height, width]], dtype=cond.dtype, device=cond.device).repeat(len(prompts), 1),
            "aspect_ratio": torch.tensor([[height / width]], dtype=cond.dtype, device=cond.device).repeat(
                len(prompts), 1),
        }
    channels = transformer.config.in_channels
    learned_sigma = transformer.config.out_channels // 2 == channels

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        with torch.no_grad():
            output = transformer(x, timestep=t.expand(x.shape[0]), **kwargs, return_dict=False)[0]
        return output.chunk(2, dim=1)[0] if learned_sigma else output

    def conditioning(embeds: torch.Tensor, mask: torch.Tensor) -> Conditioning:
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "added_cond_kwargs": added}

    return _target(pipe, transformer, network, conditioning(uncond, uncond_mask), conditioning(cond, cond_mask),
                   len(prompts), (channels, height // scale, width // scale))


def _prepare_hunyuan(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                     width: int | None) -> DiffusersTarget:
    """``HunyuanDiTPipeline.__call__``'s conditioning, guidance_rescale 0.

    Per branch: the BERT (77 tokens) and mT5 (256 tokens) embeddings with
    their attention masks, the image-meta sizes (original size (1024, 1024),
    target size = the requested size, crop (0, 0)) and style 0. The rotary
    embedding of the patch grid has no batch dimension and lives in the
    network closure. The size is used as given, like
    ``pipe(..., use_resolution_binning=False)``; the pipeline's default
    binning leaves its ten supported sizes (1024x1024 among them) unchanged.
    """
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    transformer = pipe.transformer
    scale, patch = pipe.vae_scale_factor, transformer.config.patch_size
    height, width = _pixel_size(pipe, height, width, pipe.default_sample_size * scale, 16)
    device, dtype, batch = pipe._execution_device, transformer.dtype, len(prompts)
    with torch.no_grad():
        encoded = [
            pipe.encode_prompt(prompts, device=device, dtype=dtype, do_classifier_free_guidance=True,
                               negative_prompt=negative, max_sequence_length=length, text_encoder_index=index)
            for index, length in ((0, 77), (1, 256))
        ]
    (cond, uncond, cond_mask, uncond_mask), (cond_t5, uncond_t5, cond_mask_t5, uncond_mask_t5) = encoded
    grid = (height // 8 // patch, width // 8 // patch)
    rotary = get_2d_rotary_pos_embed(transformer.inner_dim // transformer.num_heads,
                                     get_resize_crop_region_for_grid(grid, 512 // 8 // patch), grid,
                                     device=device, output_type="pt")
    meta = torch.tensor([[1024, 1024, height, width, 0, 0]], dtype=cond.dtype, device=device).repeat(batch, 1)
    style = torch.zeros(batch, dtype=torch.long, device=device)
    channels = transformer.config.in_channels

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        with torch.no_grad():
            output = transformer(x, t.expand(x.shape[0]).to(x.dtype), **kwargs, image_rotary_emb=rotary,
                                 return_dict=False)[0]
        return output.chunk(2, dim=1)[0]

    def conditioning(embeds: torch.Tensor, mask: torch.Tensor, embeds_t5: torch.Tensor,
                     mask_t5: torch.Tensor) -> Conditioning:
        return {"encoder_hidden_states": embeds, "text_embedding_mask": mask, "encoder_hidden_states_t5": embeds_t5,
                "text_embedding_mask_t5": mask_t5, "image_meta_size": meta, "style": style}

    return _target(pipe, transformer, network, conditioning(uncond, uncond_mask, uncond_t5, uncond_mask_t5),
                   conditioning(cond, cond_mask, cond_t5, cond_mask_t5), batch,
                   (channels, height // scale, width // scale))


def _target(pipe: Any, network_module: Any, network: Network, uncond: Conditioning, cond: Conditioning,
            batch_size: int, latent_shape: tuple[int, ...]) -> DiffusersTarget:
    scheduler = pipe.scheduler
    denoiser = ConditionedDenoiser(
        network, uncond, cond, epsilon_converter(scheduler.alphas_cumprod, scheduler.config.prediction_type)
    )
    return DiffusersTarget(
        pipe=pipe,
        denoiser=denoiser,
        scheduler=scheduler,
        batch_size=batch_size,
        latent_shape=latent_shape,
        dtype=network_module.dtype,
        device=pipe._execution_device,
    )


def _call_default(pipe: Any, name: str) -> float:
    """A default of the pipeline's ``__call__`` (SD3's guidance_scale 7.0, Flux's 3.5)."""
    return float(inspect.signature(type(pipe).__call__).parameters[name].default)


def _dynamic_shift(scheduler: Any, image_seq_len: int, max_shift: float) -> float:
    """The pipelines' ``calculate_shift`` (``mu`` of dynamic shifting) from the scheduler's config."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", max_shift))


class _EmptyPrompt:
    """The empty prompt's embeddings for the mix ``c + s ((1 - r) c + r c_empty)``,
    encoded once, on first use (text encoders only: no network rows)."""

    def __init__(self, encode_empty: Callable[[], dict[str, torch.Tensor]], batch_size: int) -> None:
        self._encode_empty = encode_empty
        self._batch = batch_size
        self._embeds: dict[str, torch.Tensor] | None = None

    def mix(self, embeds: dict[str, torch.Tensor], mix: tuple[float, float] | None) -> dict[str, torch.Tensor]:
        """``embeds`` mixed with the empty prompt's (unchanged for ``mix=None``)."""
        if mix is None:
            return embeds
        if self._embeds is None:
            with torch.no_grad():
                self._embeds = {k: v.expand(self._batch, *v.shape[1:]) for k, v in self._encode_empty().items()}
        s, r = mix
        return {key: embedding_mix(value, self._embeds[key], s, r) for key, value in embeds.items()}


def _prepare_sd3(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                 width: int | None) -> DiffusersTarget:
    transformer = pipe.transformer
    scale = pipe.vae_scale_factor
    patch = transformer.config.patch_size
    height, width = _pixel_size(pipe, height, width, pipe.default_sample_size * scale, scale * patch)
    device = pipe._execution_device
    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=True, negative_prompt=negative,
        )
    latent_shape = (transformer.config.in_channels, height // scale, width // scale)

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        with torch.no_grad():
            return transformer(hidden_states=x, timestep=t.expand(x.shape[0]), **kwargs, return_dict=False)[0]

    def encode_empty() -> dict[str, torch.Tensor]:
        embeds, _, pooled_empty, _ = pipe.encode_prompt("", None, None, device=device,
                                                        do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled_empty}

    base_uncond = {"encoder_hidden_states": uncond, "pooled_projections": pooled_uncond}
    base_cond = {"encoder_hidden_states": cond, "pooled_projections": pooled}
    empty = _EmptyPrompt(encode_empty, len(prompts))

    def conditioner(condition: Condition) -> tuple[Conditioning, Conditioning]:
        return base_uncond, empty.mix(base_cond, condition.mix)

    def set_timesteps_kwargs(num_inference_steps: int) -> dict[str, Any]:
        if not pipe.scheduler.config.get("use_dynamic_shifting", False):
            return {}
        return {"mu": _dynamic_shift(pipe.scheduler, (latent_shape[1] // patch) * (latent_shape[2] // patch), 1.16)}

    denoiser = ConditionedDenoiser(network, base_uncond, base_cond, timestep_dtype=torch.float32,
                                   conditioner=conditioner, supports_mix=True)
    return DiffusersTarget(pipe=pipe, denoiser=denoiser, scheduler=pipe.scheduler, batch_size=len(prompts),
                           latent_shape=latent_shape, dtype=transformer.dtype, device=device,
                           default_guidance=_call_default(pipe, "guidance_scale"),
                           set_timesteps_kwargs=set_timesteps_kwargs)


def _prepare_flux(pipe: Any, prompts: list[str], negative: list[str] | None, height: int | None,
                  width: int | None) -> DiffusersTarget:
    transformer = pipe.transformer
    scale = pipe.vae_scale_factor
    height, width = _pixel_size(pipe, height, width, pipe.default_sample_size * scale, scale * 2)
    device, dtype, batch = pipe._execution_device, transformer.dtype, len(prompts)
    with torch.no_grad():
        cond, pooled, text_ids = pipe.encode_prompt(prompts, None, device=device)
        if negative is not None:
            uncond, pooled_uncond, _ = pipe.encode_prompt(negative, None, device=device)
    channels = transformer.config.in_channels // 4
    latent_h, latent_w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    seq_len = (latent_h // 2) * (latent_w // 2)
    latent_shape = (seq_len, channels * 4)
    _, image_ids = pipe.prepare_latents(batch, channels, height, width, dtype, device, None,
                                        torch.zeros(batch, *latent_shape, device=device, dtype=dtype))
    guidance_embeds = bool(transformer.config.guidance_embeds)
    embed_default = _call_default(pipe, "guidance_scale")
    mode = "cfg" if negative is not None else ("embedded" if guidance_embeds else "none")

    def network(x: torch.Tensor, t: torch.Tensor, kwargs: Conditioning) -> torch.Tensor:
        timestep = t.expand(x.shape[0]).to(x.dtype) / 1000
        with torch.no_grad():
            return transformer(hidden_states=x, timestep=timestep, txt_ids=text_ids, img_ids=image_ids, **kwargs,
                               return_dict=False)[0]

    def guidance(value: float | None) -> dict[str, torch.Tensor | None]:
        if not guidance_embeds:
            return {"guidance": None}
        value = embed_default if value is None else value
        return {"guidance": torch.full([batch], value, device=device, dtype=torch.float32)}

    def encode_empty() -> dict[str, torch.Tensor]:
        embeds, pooled_empty, _ = pipe.encode_prompt("", None, device=device)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled_empty}

    base_cond = {"encoder_hidden_states": cond, "pooled_projections": pooled}
    base_uncond = base_cond if negative is None else {"encoder_hidden_states": uncond,
                                                      "pooled_projections": pooled_uncond}

    empty = _EmptyPrompt(encode_empty, batch)

    def conditioner(condition: Condition) -> tuple[Conditioning, Conditioning]:
        extra = guidance(condition.guidance_embed)
        return {**base_uncond, **extra}, {**empty.mix(base_cond, condition.mix), **extra}

    def set_timesteps_kwargs(num_inference_steps: int) -> dict[str, Any]:
        sigmas = None if pipe.scheduler.config.get("use_flow_sigmas", False) else \
            np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        return {"sigmas": sigmas, "mu": _dynamic_shift(pipe.scheduler, seq_len, 1.15)}

    def draw_latents(generator: Any) -> torch.Tensor:
        return pipe.prepare_latents(batch, channels, height, width, dtype, device, generator)[0]

    def unpack(latents: torch.Tensor) -> torch.Tensor:
        return pipe._unpack_latents(latents, height, width, scale)

    denoiser = ConditionedDenoiser(network, *conditioner(DEFAULT_CONDITION), timestep_dtype=torch.float32,
                                   guidance_mode=mode, conditioner=conditioner, has_guidance_embeds=guidance_embeds,
                                   supports_mix=True)
    default_guidance = _call_default(pipe, "true_cfg_scale" if mode == "cfg" else "guidance_scale")
    return DiffusersTarget(pipe=pipe, denoiser=denoiser, scheduler=pipe.scheduler, batch_size=batch,
                           latent_shape=latent_shape, dtype=dtype, device=device, default_guidance=default_guidance,
                           set_timesteps_kwargs=set_timesteps_kwargs, draw_latents=draw_latents, unpack=unpack)
