"""Data and vocabulary of the shipped offline demo model.

The directory holds the trained class-conditional UNet for scikit-learn's
8x8 ``digits`` data set (``weights.safetensors`` + ``config.json``), the
arrays of the demo metrics (``metrics.safetensors``: logistic-regression
classifier, PCA, data statistics) and ``TRAINING.md``, which records the
command that produced them. ``scripts/train_demo_model.py`` rebuilds all of it.

This module is dependency-free so that both the denoiser adapter
(``zsampling.denoisers.demo``) and the metrics (``zsampling.metrics.demo``) can
share the prompt vocabulary without importing each other.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent
"""Directory holding the shipped demo model files."""

FLOW_DEMO_MODEL_DIR: Path = DEMO_MODEL_DIR.parent / "demo_model_flow"
"""Directory holding the flow-matching demo model (same data, rectified-flow loss); its
metric arrays are the ones in ``DEMO_MODEL_DIR``."""

DEMO_FAMILIES: tuple[str, ...] = ("ddim", "flow")
"""Demo model families: epsilon prediction with a DDIMScheduler, or velocity with a
FlowMatchEulerDiscreteScheduler."""

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.safetensors"

DEMO_LORAS: tuple[str, ...] = ("thickness",)
"""LoRAs shipped for the DDIM demo model (``lora_<name>.safetensors``, built by
``scripts/train_demo_model.py --lora <name>``): "thickness" fine-tunes on the digits
thickened by half a grey-scale dilation step, so positive scales draw bolder strokes."""

LORA_ADAPTER_NAME = "w2sd"
"""Adapter name under which a demo LoRA is loaded (the name the leg presets use)."""


def lora_file(name: str) -> str:
    """File name of the shipped demo LoRA ``name`` (one of ``DEMO_LORAS``).

    Raises:
        ValueError: unknown name, listing the shipped ones.
    """
    if name not in DEMO_LORAS:
        raise ValueError(f"lora must be one of {DEMO_LORAS} (a shipped demo LoRA), got {name!r}")
    return f"lora_{name}.safetensors"

NUM_CLASSES = 10
"""Digit classes 0-9; the class embedding has one more row, the null class."""

NULL_CLASS = NUM_CLASSES
"""Row of the class embedding used for the unconditional / negative branch."""

VALID_PROMPTS: tuple[str, ...] = tuple(str(d) for d in range(NUM_CLASSES)) + tuple(
    f"digit {d}" for d in range(NUM_CLASSES)
)
"""Accepted prompts (case and surrounding whitespace are ignored)."""


def prompt_to_class(prompt: str) -> int:
    """Map a prompt such as ``"3"`` or ``"digit 3"`` to its class index.

    Raises:
        ValueError: for anything else, listing the valid prompts.
    """
    if isinstance(prompt, str):
        text = " ".join(prompt.strip().lower().split())
        if text.startswith("digit "):
            text = text[len("digit ") :]
        if len(text) == 1 and text.isdigit():
            return int(text)
    raise ValueError(f"unknown demo prompt {prompt!r}; valid prompts are {', '.join(repr(p) for p in VALID_PROMPTS)}")


def prompts_to_classes(prompts: list[str]) -> list[int]:
    """Map every prompt of a list to its class index (see ``prompt_to_class``)."""
    return [prompt_to_class(p) for p in prompts]


def negative_prompt_to_class(prompt: str | None) -> int:
    """Map a negative prompt to a class index: ``None`` or ``""`` is the null class."""
    if prompt is None or (isinstance(prompt, str) and prompt.strip() == ""):
        return NULL_CLASS
    return prompt_to_class(prompt)
