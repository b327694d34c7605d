"""The shipped offline demo model: a class-conditional UNet on 8x8 digits.

The model is a diffusers ``UNet2DConditionModel`` trained (epsilon prediction,
DDPM loss, 15% condition dropout) on scikit-learn's ``digits`` data scaled to
[-1, 1]. A learned class embedding (``ClassConditioner``: 10 digit rows plus a
null row) stands in for a text encoder and feeds the UNet's cross-attention,
so classifier-free guidance, negative prompts and Z-Sampling work exactly as
with Stable Diffusion, only in seconds on a CPU. There is no VAE: the latent
is the image itself, shape (1, 8, 8), in [-1, 1].

Usage::

    from zsampling.denoisers.demo import load_demo_pipeline
    pipe = load_demo_pipeline()
    target = pipe.prepare_zsampling(["3", "digit 7"], None, None, None)

Prompts are ``"0"``-``"9"`` or ``"digit 0"``-``"digit 9"``; a negative prompt
of ``None`` or ``""`` is the null class (the unconditional branch).
``scripts/train_demo_model.py`` rebuilds the weights; ``TRAINING.md`` in
``zsampling/demo_model`` records how the shipped ones were made.

A second, flow-matching model of the same architecture on the same data ships
in ``zsampling/demo_model_flow`` (``load_demo_pipeline(family="flow")``): it
predicts the velocity ``v = eps - x0`` under ``x_sigma = (1 - sigma) x0 +
sigma eps``, its scheduler is a ``FlowMatchEulerDiscreteScheduler`` (shift 1,
no dynamic shifting), its denoiser takes the float timestep ``t = 1000 sigma``
(the SD3 convention) and returns velocities in the ``EpsPair`` slots, and its
initial latents are plain N(0, I).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsampling.demo_model import (
    CONFIG_FILE,
    DEMO_FAMILIES,
    DEMO_MODEL_DIR,
    FLOW_DEMO_MODEL_DIR,
    NULL_CLASS,
    WEIGHTS_FILE,
    negative_prompt_to_class,
    prompts_to_classes,
)
from zsampling.denoisers.base import Branches, EpsPair

IMAGE_SIZE = 8
"""Height and width of the demo images (and latents)."""

LATENT_SHAPE: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PIL_SCALE = 8
"""Nearest-neighbour upscale factor of "pil" outputs (8x8 content, 64x64 pixels)."""


class ClassConditioner(nn.Module):
    """Learned class embedding that stands in for a text encoder.

    Row ``c`` (0-9: digits, 10: null class) is reshaped to ``num_tokens``
    tokens of width ``dim``: the UNet's ``encoder_hidden_states``.
    """

    def __init__(self, num_embeddings: int = NULL_CLASS + 1, num_tokens: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_tokens = num_tokens
        self.dim = dim
        self.embedding = nn.Embedding(num_embeddings, num_tokens * dim)

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        """Token states (B, num_tokens, dim) for class indices (B,)."""
        return self.embedding(classes).view(classes.shape[0], self.num_tokens, self.dim)

    def config(self) -> dict[str, int]:
        """Constructor arguments, as stored in config.json."""
        return {"num_embeddings": self.num_embeddings, "num_tokens": self.num_tokens, "dim": self.dim}


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Map model-space latents in [-1, 1] to images in [0, 1] (clamped)."""
    return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def decode_latents(latents: torch.Tensor, output_type: str) -> Any:
    """Turn final latents (B, 1, 8, 8) into ``output_type``.

    "pt": float tensor (B, 1, 8, 8) in [0, 1]; "np": float32 array (B, 8, 8, 1)
    in [0, 1]; "pil": list of greyscale ("L") PIL images, 8x8 content upscaled
    ``PIL_SCALE`` times with nearest neighbour; "latent": the latents unchanged.
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
    size = (IMAGE_SIZE * PIL_SCALE, IMAGE_SIZE * PIL_SCALE)
    return [Image.fromarray(p).resize(size, Image.NEAREST) for p in pixels]


class DemoDenoiser:
    """``Denoiser`` over the demo UNet with the class states of one prompt batch.

    Each call runs the requested branches as ONE batched UNet call (uncond rows
    first, then cond rows) and adds the rows it ran to ``network_rows``.
    ``family="ddim"``: ``t`` is an integer training timestep and the outputs
    are eps; ``family="flow"``: ``t = 1000 sigma`` is passed to the UNet as a
    float and the outputs are velocities ``v = eps - x0``.
    """

    def __init__(
        self,
        unet: nn.Module,
        uncond_states: torch.Tensor,
        cond_states: torch.Tensor,
        family: str = "ddim",
    ) -> None:
        _check_family(family)
        self.unet = unet
        self.uncond_states = uncond_states
        self.cond_states = cond_states
        self.family = family
        self.network_rows = 0

    @property
    def batch_size(self) -> int:
        return int(self.cond_states.shape[0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float, branches: Branches) -> EpsPair:
        """Unconditional and/or conditional output (eps, or v for the flow family) of
        ``x`` (B, 1, 8, 8) at timestep ``t``."""
        if x.shape[0] != self.batch_size or tuple(x.shape[1:]) != LATENT_SHAPE:
            raise ValueError(
                f"x must have shape ({self.batch_size}, {', '.join(map(str, LATENT_SHAPE))}), got {tuple(x.shape)}"
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
        eps = self.unet(x_in, timestep, encoder_hidden_states=states).sample.to(x.dtype)
        self.network_rows += x_in.shape[0]
        parts = list(eps.chunk(len(wanted)))
        uncond = parts.pop(0) if branches.uncond else None
        cond = parts.pop(0) if branches.cond else None
        return EpsPair(uncond=uncond, cond=cond)


@dataclass
class DemoTarget:
    """``SamplingTarget`` of the demo model: prompts encoded, fresh scheduler."""

    denoiser: DemoDenoiser
    scheduler: Any
    batch_size: int
    dtype: torch.dtype
    device: torch.device
    classes: list[int]
    negative_classes: list[int]
    latent_shape: tuple[int, ...] = field(default=LATENT_SHAPE)
    output_types: tuple[str, ...] = field(default=OUTPUT_TYPES)

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """See ``decode_latents``."""
        return decode_latents(latents, output_type)


def _check_family(family: str) -> None:
    if family not in DEMO_FAMILIES:
        raise ValueError(f"family must be one of {DEMO_FAMILIES}, got {family!r}")


def _check_size(name: str, value: int | None) -> None:
    if value is not None and value != IMAGE_SIZE:
        raise ValueError(f"{name} must be None or {IMAGE_SIZE} for the demo model (8x8 digits), got {value!r}")


class DemoPipeline:
    """Pipeline-like wrapper of the demo model that ``zsampling.sample`` accepts.

    Attributes mirror a diffusers pipeline: ``unet``, ``scheduler`` (a
    ``DDIMScheduler``, or a ``FlowMatchEulerDiscreteScheduler`` for the flow
    family), ``device``, ``dtype``, plus ``conditioner`` (the class embedding
    that plays the text encoder), ``config`` (config.json) and ``family``
    ("ddim" or "flow", from config.json's ``family``; absent means "ddim").
    """

    def __init__(self, unet: nn.Module, conditioner: ClassConditioner, scheduler: Any, config: dict[str, Any]) -> None:
        self.unet = unet
        self.conditioner = conditioner
        self.scheduler = scheduler
        self.config = config
        self.family: str = config.get("family", "ddim")
        _check_family(self.family)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DemoPipeline:
        """Move (and optionally cast) the UNet and the class embedding; returns self."""
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None and dtype != self.dtype:
            kwargs["dtype"] = dtype
        if kwargs:
            # nn.Module.to directly: diffusers' override warns about keep-in-fp32 modules on any
            # dtype argument, and this UNet has none.
            nn.Module.to(self.unet, **kwargs)
            self.conditioner.to(**kwargs)
        return self

    @torch.no_grad()
    def encode_classes(self, classes: list[int]) -> torch.Tensor:
        """Cross-attention states (B, tokens, dim) for class indices."""
        index = torch.tensor(classes, dtype=torch.long, device=self.device)
        return self.conditioner(index).to(self.dtype)

    def prepare_zsampling(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> DemoTarget:
        """Encode prompts (and negative prompts) into a ``SamplingTarget``.

        Raises:
            ValueError: unknown prompt (the message lists the valid ones),
                mismatched negative prompt count, or height/width other than
                None or 8.
        """
        _check_size("height", height)
        _check_size("width", width)
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of digit prompts")
        classes = prompts_to_classes(list(prompts))
        if negative_prompts is None:
            negatives = [NULL_CLASS] * len(classes)
        else:
            if isinstance(negative_prompts, str):
                negative_prompts = [negative_prompts] * len(classes)
            if len(negative_prompts) != len(classes):
                raise ValueError(
                    f"negative_prompts must be None or have one entry per prompt ({len(classes)}), "
                    f"got {len(negative_prompts)}"
                )
            negatives = [negative_prompt_to_class(p) for p in negative_prompts]
        denoiser = DemoDenoiser(
            self.unet, self.encode_classes(negatives), self.encode_classes(classes), family=self.family
        )
        return DemoTarget(
            denoiser=denoiser,
            scheduler=type(self.scheduler).from_config(self.scheduler.config),
            batch_size=len(classes),
            dtype=self.dtype,
            device=self.device,
            classes=classes,
            negative_classes=negatives,
        )


def build_unet(unet_config: dict[str, Any]) -> nn.Module:
    """An untrained ``UNet2DConditionModel`` from its stored config."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(unet_config)


def build_scheduler(scheduler_config: dict[str, Any], family: str = "ddim") -> Any:
    """The demo model's scheduler from its stored config: a ``DDIMScheduler``
    (family "ddim") or a ``FlowMatchEulerDiscreteScheduler`` (family "flow")."""
    _check_family(family)
    if family == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config)


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a weights file into the UNet's and the conditioner's state dicts."""
    unet = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    cond = {k[len("conditioner.") :]: v for k, v in state.items() if k.startswith("conditioner.")}
    unknown = sorted(k for k in state if not k.startswith(("unet.", "conditioner.")))
    if unknown:
        raise ValueError(f"unexpected keys in demo weights: {unknown[:5]}")
    return unet, cond


def load_demo_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model_dir: str | Path | None = None,
    family: str | None = None,
    lora: str | None = None,
    lora_path: str | Path | None = None,
) -> DemoPipeline:
    """Load the shipped demo model offline (well under a second on a CPU).

    Args:
        device: where to put the UNet and class embedding.
        dtype: parameter dtype (weights are stored in float32).
        model_dir: directory with ``weights.safetensors`` and ``config.json``;
            defaults to the copy shipped for ``family``.
        family: "ddim" (``zsampling/demo_model``, epsilon prediction) or
            "flow" (``zsampling/demo_model_flow``, velocity prediction).
            None means "ddim" without ``model_dir``, and whatever the
            directory's config.json says with it.

    Raises:
        ValueError: unknown ``family``, or a ``model_dir`` whose config.json
            holds another family.
    """
    from safetensors.torch import load_file

    if family is not None:
        _check_family(family)
    if model_dir is not None:
        directory = Path(model_dir)
    else:
        directory = FLOW_DEMO_MODEL_DIR if family == "flow" else DEMO_MODEL_DIR
    config = json.loads((directory / CONFIG_FILE).read_text())
    stored = config.get("family", "ddim")
    if family is not None and stored != family:
        raise ValueError(f"family={family!r} but the model in {directory} is of family {stored!r}")
    unet_state, cond_state = split_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    unet = build_unet(config["unet"])
    unet.load_state_dict(unet_state, strict=True)
    conditioner = ClassConditioner(**config["conditioner"])
    conditioner.load_state_dict(cond_state, strict=True)
    unet.eval().requires_grad_(False)
    conditioner.eval().requires_grad_(False)
    if lora is not None or lora_path is not None:
        load_demo_lora(unet, _lora_file(directory, lora, lora_path))
    pipe = DemoPipeline(unet, conditioner, build_scheduler(config["scheduler"], stored), config)
    return pipe.to(device=device, dtype=dtype)


def _lora_file(directory: Path, lora: str | None, lora_path: str | Path | None) -> Path:
    from zsampling.demo_model import lora_file

    if lora is not None and lora_path is not None:
        raise ValueError("give lora (a shipped demo LoRA name) or lora_path (a file), not both")
    path = directory / lora_file(lora) if lora is not None else Path(lora_path).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        raise ValueError(f"demo LoRA file {path} does not exist (shipped LoRAs are built by "
                         "scripts/train_demo_model.py --lora NAME)")
    return path


def load_demo_lora(unet: nn.Module, path: str | Path) -> None:
    """Load a demo LoRA file (diffusers keys ``unet.*``) onto ``unet`` as peft adapter "w2sd", scale 1."""
    from safetensors.torch import load_file

    from zsampling.demo_model import LORA_ADAPTER_NAME

    state = load_file(str(path))
    if not state or not all(k.startswith("unet.") and ".lora_" in k for k in state):
        raise ValueError(f"{path} is not a demo LoRA file: expected only 'unet.*lora_A/B*' keys")
    unet.load_lora_adapter(state, prefix="unet", adapter_name=LORA_ADAPTER_NAME)
