"""The plumbing shared by the shipped small offline UNet worlds (``demo`` digits, ``pairs``).

Both worlds are a diffusers ``UNet2DConditionModel`` without a VAE (the latent
is the image, in [-1, 1]) whose cross-attention reads the token states of a
small learned encoder (the digits' class embedding, the pairs' text encoder).
What differs is only the encoder, the prompt grammar and the latent shape, so
the denoiser, the sampling target, the pipeline's ``device`` / ``dtype`` /
``to`` / ``prepare_zsampling`` plumbing and the weight loading live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from zsampling.demo_model import DEMO_FAMILIES
from zsampling.denoisers.base import Branches, EpsPair

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PIL_SCALE = 8
"""Nearest-neighbour upscale factor of "pil" outputs (8x8 content becomes 64x64 pixels)."""


def check_family(family: str) -> None:
    """Raise ValueError unless ``family`` is "ddim" (epsilon prediction) or "flow" (velocity)."""
    if family not in DEMO_FAMILIES:
        raise ValueError(f"family must be one of {DEMO_FAMILIES}, got {family!r}")


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Map model-space latents in [-1, 1] to images in [0, 1] (clamped)."""
    return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def decode_latents(latents: torch.Tensor, output_type: str) -> Any:
    """Turn final latents (B, 1, H, W) into ``output_type``.

    "pt": float tensor (B, 1, H, W) in [0, 1]; "np": float32 array (B, H, W, 1)
    in [0, 1]; "pil": list of greyscale ("L") PIL images upscaled ``PIL_SCALE``
    times with nearest neighbour; "latent": the latents unchanged.
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
    size = (array.shape[2] * PIL_SCALE, array.shape[1] * PIL_SCALE)
    return [Image.fromarray(p).resize(size, Image.NEAREST) for p in pixels]


@dataclass(eq=False)
class SmallUNetDenoiser:
    """``Denoiser`` over a small UNet with the encoder states of one prompt batch.

    Each call runs the requested branches as ONE batched UNet call (uncond rows
    first, then cond rows) and adds the rows it ran to ``network_rows``.
    ``family="ddim"``: ``t`` is an integer training timestep and the outputs
    are eps; ``family="flow"``: ``t = 1000 sigma`` is passed to the UNet as a
    float and the outputs are velocities ``v = eps - x0``. ``prepare_input``
    (e.g. the pairs world's position channel) maps the latents to the UNet's
    input right before the call.
    """

    unet: nn.Module = field(repr=False)
    uncond_states: torch.Tensor = field(repr=False)
    cond_states: torch.Tensor = field(repr=False)
    latent_shape: tuple[int, ...]
    family: str = "ddim"
    prepare_input: Callable[[torch.Tensor], torch.Tensor] | None = None
    network_rows: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        check_family(self.family)

    @property
    def batch_size(self) -> int:
        return int(self.cond_states.shape[0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float, branches: Branches) -> EpsPair:
        """Unconditional and/or conditional output (eps, or v for the flow family) of
        ``x`` (B, *latent_shape) at timestep ``t``."""
        if x.shape[0] != self.batch_size or tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"x must have shape ({self.batch_size}, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(x.shape)}"
            )
        wanted = [s for s, on in ((self.uncond_states, branches.uncond), (self.cond_states, branches.cond)) if on]
        if not wanted:
            return EpsPair(uncond=None, cond=None)
        x_in = torch.cat([x] * len(wanted)).to(self.cond_states.dtype)
        states = torch.cat(wanted)
        if self.family == "flow":
            timestep = torch.full((x_in.shape[0],), float(t), device=x_in.device, dtype=torch.float32)
        else:
            timestep = torch.full((x_in.shape[0],), int(t), device=x_in.device, dtype=torch.long)
        if self.prepare_input is not None:
            x_in = self.prepare_input(x_in)
        eps = self.unet(x_in, timestep, encoder_hidden_states=states).sample.to(x.dtype)
        self.network_rows += x_in.shape[0]
        parts = list(eps.chunk(len(wanted)))
        uncond = parts.pop(0) if branches.uncond else None
        cond = parts.pop(0) if branches.cond else None
        return EpsPair(uncond=uncond, cond=cond)


@dataclass(kw_only=True)
class SmallUNetTarget:
    """``SamplingTarget`` of a small UNet world: prompts encoded, fresh scheduler.

    Keyword-only, so that each world's subclass can add its own prompt fields.
    """

    denoiser: SmallUNetDenoiser
    scheduler: Any
    batch_size: int
    dtype: torch.dtype
    device: torch.device
    latent_shape: tuple[int, ...]
    output_types: tuple[str, ...] = field(default=OUTPUT_TYPES)

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """See ``decode_latents``."""
        return decode_latents(latents, output_type)


def _prompt_batch(prompts: str | list[str], negative_prompts: str | list[str] | None, kind: str) -> tuple[
        list[str], list[str | None]]:
    """Prompts as a non-empty list and one negative prompt per prompt (None means "" for every prompt).

    Raises:
        ValueError: no prompts, or a negative prompt list of another length.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError(f"prompts must be a non-empty list of {kind} prompts")
    if negative_prompts is None:
        return prompts, [""] * len(prompts)
    negatives = [negative_prompts] * len(prompts) if isinstance(negative_prompts, str) else list(negative_prompts)
    if len(negatives) != len(prompts):
        raise ValueError(
            f"negative_prompts must be None or have one entry per prompt ({len(prompts)}), got {len(negatives)}"
        )
    return prompts, negatives


_Pipeline = TypeVar("_Pipeline", bound="SmallUNetPipeline")


class SmallUNetPipeline:
    """Pipeline-like base of the small UNet worlds: ``device``, ``dtype``, ``to``, ``prepare_zsampling``.

    A subclass names its encoder in its own attribute (``conditioner``,
    ``text_encoder``) and hands it here too, so that ``to`` moves it with the
    UNet; it sets ``latent_shape``, ``size_note`` (the height/width error's
    name of the model) and ``prompt_kind`` (the empty-prompt error's), and
    encodes a checked prompt batch in ``encode_batch``.
    """

    latent_shape: tuple[int, int, int]
    size_note: str
    prompt_kind: str

    def __init__(self, unet: nn.Module, encoder: nn.Module, scheduler: Any, config: dict[str, Any],
                 family: str = "ddim") -> None:
        check_family(family)
        self.unet = unet
        self.scheduler = scheduler
        self.config = config
        self.family = family
        self._encoder = encoder

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self: _Pipeline, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> _Pipeline:
        """Move (and optionally cast) the UNet and the encoder; returns self."""
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None and dtype != self.dtype:
            kwargs["dtype"] = dtype
        if kwargs:
            # nn.Module.to directly: diffusers' override warns about keep-in-fp32 modules on any
            # dtype argument, and these UNets have none.
            nn.Module.to(self.unet, **kwargs)
            self._encoder.to(**kwargs)
        return self

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Cross-attention states of the encoder's inputs (class indices or token ids), in the UNet's dtype."""
        return self._encoder(inputs.to(self.device)).to(self.dtype)

    def prepare_zsampling(
        self,
        prompts: str | list[str],
        negative_prompts: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> SmallUNetTarget:
        """Encode prompts (and negative prompts; None means "", the unconditional branch) into a
        ``SamplingTarget`` (see ``encode_batch``).

        Raises:
            ValueError: a prompt the world does not know (the message lists
                the valid ones), a mismatched negative prompt count, or
                height/width other than None or the latent's own.
        """
        for name, value, allowed in (("height", height, self.latent_shape[1]), ("width", width, self.latent_shape[2])):
            if value is not None and value != allowed:
                raise ValueError(f"{name} must be None or {allowed} for the {self.size_note}, got {value!r}")
        return self.encode_batch(*_prompt_batch(prompts, negative_prompts, self.prompt_kind))

    def encode_batch(self, prompts: list[str], negative_prompts: list[str | None]) -> SmallUNetTarget:
        """The world's target of a checked prompt batch: one negative prompt per prompt ("" or None: none)."""
        raise NotImplementedError

    def target_fields(
        self,
        uncond_states: torch.Tensor,
        cond_states: torch.Tensor,
        prepare_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """The ``SmallUNetTarget`` fields of one encoded prompt batch (a fresh scheduler each time)."""
        return {
            "denoiser": SmallUNetDenoiser(self.unet, uncond_states, cond_states, self.latent_shape,
                                          family=self.family, prepare_input=prepare_input),
            "scheduler": type(self.scheduler).from_config(self.scheduler.config),
            "batch_size": int(cond_states.shape[0]),
            "dtype": self.dtype,
            "device": self.device,
            "latent_shape": self.latent_shape,
        }


def build_unet(unet_config: dict[str, Any]) -> nn.Module:
    """An untrained ``UNet2DConditionModel`` from its stored config."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(unet_config)


def build_scheduler(scheduler_config: dict[str, Any], family: str = "ddim") -> Any:
    """A small world's scheduler from its stored config: a ``DDIMScheduler``
    (family "ddim") or a ``FlowMatchEulerDiscreteScheduler`` (family "flow")."""
    check_family(family)
    if family == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config)


def split_state_dict(
    state: dict[str, torch.Tensor], encoder_key: str, world: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a weights file into the UNet's (``unet.*``) and the encoder's (``<encoder_key>.*``) state dicts."""
    unet = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    prefix = f"{encoder_key}."
    enc = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    unknown = sorted(k for k in state if not k.startswith(("unet.", prefix)))
    if unknown:
        raise ValueError(f"unexpected keys in {world} weights: {unknown[:5]}")
    return unet, enc


def load_frozen(
    weights: Path, config: dict[str, Any], encoder_type: Callable[..., nn.Module], encoder_key: str, world: str
) -> tuple[nn.Module, nn.Module]:
    """The UNet (``config["unet"]``) and the encoder (``encoder_type(**config[encoder_key])``) of a model, with
    the stored weights of the safetensors file ``weights``, in eval mode and without gradients."""
    from safetensors.torch import load_file

    unet_state, enc_state = split_state_dict(load_file(str(weights)), encoder_key, world)
    unet = build_unet(config["unet"])
    unet.load_state_dict(unet_state, strict=True)
    encoder = encoder_type(**config[encoder_key])
    encoder.load_state_dict(enc_state, strict=True)
    unet.eval().requires_grad_(False)
    encoder.eval().requires_grad_(False)
    return unet, encoder
