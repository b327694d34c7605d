"""Adapters from diffusers text-to-image pipelines to the denoiser protocol.

Supported: ``StableDiffusionPipeline`` (SD 1.x / 2.x, epsilon or v
prediction), ``StableDiffusionXLPipeline`` (pooled text embeds and time ids)
and the DiT pipelines ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``.

Prompts are encoded once with the pipeline's own ``encode_prompt``; each
network call then concatenates only the requested CFG branches, in the
order [uncond, cond] that diffusers uses, so eps_u and eps_c come from one
batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from zsampling.denoisers.base import Branches, EpsPair
from zsampling.schedule import to_epsilon

Conditioning = dict[str, Any]
Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


class ConditionedDenoiser:
    """Denoiser over a network with per-branch conditioning tensors.

    ``uncond`` and ``cond`` are keyword arguments of the network (tensors with
    batch dimension B, possibly nested one level in dicts such as SDXL's
    ``added_cond_kwargs``). The three batched variants (u, c, u+c) are built
    once here, so a network call does no concatenation of conditioning.
    """

    def __init__(
        self,
        network: Network,
        uncond: Conditioning,
        cond: Conditioning,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
    ) -> None:
        self._network = network
        self._conditioning = {
            Branches(True, False): uncond,
            Branches(False, True): cond,
            Branches(True, True): _concat(uncond, cond),
        }
        self._alphas = alphas_cumprod
        self._prediction_type = prediction_type
        self._timesteps: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.network_rows = 0

    def __call__(self, x: torch.Tensor, t: int, branches: Branches) -> EpsPair:
        if branches.count == 0:
            raise ValueError("a denoiser call needs at least one branch")
        batch = x.shape[0]
        model_input = torch.cat([x, x]) if branches.count == 2 else x
        output = self._network(model_input, self._timestep(t, x.device), self._conditioning[branches])
        self.network_rows += model_input.shape[0]
        eps = to_epsilon(output, model_input, float(self._alphas[t]), self._prediction_type)
        if branches.count == 2:
            return EpsPair(uncond=eps[:batch], cond=eps[batch:])
        return EpsPair(uncond=eps, cond=None) if branches.uncond else EpsPair(uncond=None, cond=eps)

    def _timestep(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, device)
        if key not in self._timesteps:
            self._timesteps[key] = torch.tensor(t, dtype=torch.long, device=device)
        return self._timesteps[key]


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

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Decode like the pipeline does (SDXL's fp16 VAE upcast included)."""
        if output_type == "latent":
            return latents
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
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    builders: list[tuple[type, Callable[..., DiffusersTarget]]] = [
        (StableDiffusionXLPipeline, _prepare_sdxl),
        (StableDiffusionPipeline, _prepare_sd),
        (PixArtAlphaPipeline, _prepare_pixart),
        (PixArtSigmaPipeline, _prepare_pixart),
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


def _target(pipe: Any, network_module: Any, network: Network, uncond: Conditioning, cond: Conditioning,
            batch_size: int, latent_shape: tuple[int, ...]) -> DiffusersTarget:
    scheduler = pipe.scheduler
    denoiser = ConditionedDenoiser(
        network, uncond, cond, scheduler.alphas_cumprod, scheduler.config.prediction_type
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
