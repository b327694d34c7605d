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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsampling.demo_model import (
    CONFIG_FILE,
    DEMO_MODEL_DIR,
    FLOW_DEMO_MODEL_DIR,
    NULL_CLASS,
    WEIGHTS_FILE,
    negative_prompt_to_class,
    prompts_to_classes,
)
from zsampling.denoisers.small_unet import (
    SmallUNetPipeline,
    SmallUNetTarget,
    build_scheduler,
    check_family,
    latents_to_images,
    load_frozen,
)

__all__ = [
    "IMAGE_SIZE",
    "LATENT_SHAPE",
    "ClassConditioner",
    "DemoPipeline",
    "DemoTarget",
    "latents_to_images",
    "load_demo_lora",
    "load_demo_pipeline",
]

IMAGE_SIZE = 8
"""Height and width of the demo images (and latents)."""

LATENT_SHAPE: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE)


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


@dataclass(kw_only=True)
class DemoTarget(SmallUNetTarget):
    """``SamplingTarget`` of the demo model, with the class indices of its prompts."""

    classes: list[int]
    negative_classes: list[int]


class DemoPipeline(SmallUNetPipeline):
    """Pipeline-like wrapper of the demo model that ``zsampling.sample`` accepts.

    Attributes mirror a diffusers pipeline: ``unet``, ``scheduler`` (a
    ``DDIMScheduler``, or a ``FlowMatchEulerDiscreteScheduler`` for the flow
    family), ``device``, ``dtype``, plus ``conditioner`` (the class embedding
    that plays the text encoder), ``config`` (config.json) and ``family``
    ("ddim" or "flow", from config.json's ``family``; absent means "ddim").
    """

    latent_shape = LATENT_SHAPE
    size_note = "demo model (8x8 digits)"
    prompt_kind = "digit"

    def __init__(self, unet: nn.Module, conditioner: ClassConditioner, scheduler: Any, config: dict[str, Any]) -> None:
        super().__init__(unet, conditioner, scheduler, config, family=config.get("family", "ddim"))
        self.conditioner = conditioner

    def encode_classes(self, classes: list[int]) -> torch.Tensor:
        """Cross-attention states (B, tokens, dim) for class indices."""
        return self.encode(torch.tensor(classes, dtype=torch.long))

    def encode_batch(self, prompts: list[str], negative_prompts: list[str | None]) -> DemoTarget:
        """Target of digit prompts (ValueError for an unknown one, listing the valid ones); a negative prompt
        of None or "" is the null class."""
        classes = prompts_to_classes(prompts)
        negatives = [negative_prompt_to_class(p) for p in negative_prompts]
        fields = self.target_fields(self.encode_classes(negatives), self.encode_classes(classes))
        return DemoTarget(**fields, classes=classes, negative_classes=negatives)


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
    if family is not None:
        check_family(family)
    if model_dir is not None:
        directory = Path(model_dir)
    else:
        directory = FLOW_DEMO_MODEL_DIR if family == "flow" else DEMO_MODEL_DIR
    config = json.loads((directory / CONFIG_FILE).read_text())
    stored = config.get("family", "ddim")
    if family is not None and stored != family:
        raise ValueError(f"family={family!r} but the model in {directory} is of family {stored!r}")
    unet, conditioner = load_frozen(directory / WEIGHTS_FILE, config, ClassConditioner, "conditioner", "demo")
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
