"""Reflection legs: what the zig, the zag and the ordinary step each run.

A run has three legs (docs/design.md, "Reflection legs"): ``zig`` (the denoising
half of a reflection), ``zag`` (the inversion) and ``step`` (the ordinary
move after a step's reflections and at every step outside the window). A leg
is (model variant, guidance, conditioning): the base denoiser, a LoRA scale
on it (negative allowed) or a second pipeline in the same latent space; a
guidance value; the prompt, another prompt or an embedding mix. Z-Sampling
is zig = step = (base, g1, prompt), zag = (base, g2, prompt): the gap
between the zig's and the zag's outputs is what a reflection injects.
Weak-to-strong reflection (W2SD, the same authors' generalisation) uses a
weight gap: its released SDXL setting is zig (LoRA +1.5, g1), zag (LoRA
-1.5, conditional branch only: g2 = 1), step (LoRA 0.8, g1)
(:meth:`Legs.w2sd`).

Guidance means the CFG scale on two-branch models and the guidance-embedding
value on guidance-distilled ones (Flux.1-dev). The conditioning can also be
the prompt-embedding mix of the Z-Sampling authors' Flux code (RF-Sampling):
``c + s ((1 - r) c + r c_empty)`` with c the prompt's embeddings and c_empty
those of "" (zig (3.5, 0.3), zag (0, 0.7) in their code).

Standard library only, like :mod:`zsampling.config`, so analysis code can
read configs without importing torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

LEG_NAMES: tuple[str, ...] = ("zig", "zag", "step")

LEG_FIELDS: dict[str, str] = {"guidance_scale": "guidance", "guidance_embed": "guidance_embed",
                              "lora_scale": "lora_scale"}
"""Sweep knob name -> :class:`Leg` field of the numeric leg settings a grid can vary
(prompts, mixes and other pipelines are set in code)."""

RF_SAMPLING_MIX: dict[str, tuple[float, float]] = {"zig": (3.5, 0.3), "zag": (0.0, 0.7)}
"""(s, r) of the embedding mix in the authors' Flux code, per leg."""


@dataclass(frozen=True)
class Leg:
    """One leg's settings; ``None`` keeps the run's default.

    Args:
        guidance: the leg's guidance in the run's own sense: the CFG scale on
            two-branch runs, the guidance-embedding value on a
            guidance-distilled model run without a negative prompt (as
            diffusers' ``FluxPipeline`` calls it ``guidance_scale``). None: g1
            for the zig and the step, g2 for the zag.
        guidance_embed: an explicit guidance-embedding value for this leg on a
            model with guidance embeddings that runs true CFG (a negative
            prompt); None keeps the pipeline's value.
        mix: (s, r) of the prompt-embedding mix ``c + s ((1 - r) c + r c_empty)``,
            or None for the prompt's own embeddings.
        lora_scale: the scale of the pipeline's LoRA adapter(s) on this leg
            (negative allowed); None keeps the adapters as loaded.
        model: the name of another pipeline (passed to ``zsampling.sample``
            as ``models={name: pipe}``) whose denoiser runs this leg; it must
            share the latent space; None is the base pipeline.
        prompt: another prompt for this leg (every sample), encoded by the
            leg's pipeline; None is each sample's own prompt.
    """

    guidance: float | None = None
    guidance_embed: float | None = None
    mix: tuple[float, float] | None = None
    lora_scale: float | None = None
    model: str | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        for name in ("guidance", "guidance_embed", "lora_scale"):
            if getattr(self, name) is not None:
                _check_finite(name, getattr(self, name))
        for name in ("model", "prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {value!r}")
        if self.mix is not None:
            if isinstance(self.mix, (str, bytes)) or len(tuple(self.mix)) != 2:
                raise ValueError(f"mix must be a pair (s, r) of finite numbers, got {self.mix!r}")
            s, r = (float(v) for v in self.mix)
            _check_finite("mix s", s)
            _check_finite("mix r", r)
            object.__setattr__(self, "mix", (s, r))


@dataclass(frozen=True)
class Legs:
    """The three legs of a run; the defaults are plain Z-Sampling."""

    zig: Leg = field(default_factory=Leg)
    zag: Leg = field(default_factory=Leg)
    step: Leg = field(default_factory=Leg)

    def __post_init__(self) -> None:
        for name in LEG_NAMES:
            value = getattr(self, name)
            if not isinstance(value, Leg):
                raise ValueError(f"legs.{name} must be a Leg, got {value!r}")

    @classmethod
    def embedding_mix(cls, zig: tuple[float, float] = RF_SAMPLING_MIX["zig"],
                      zag: tuple[float, float] = RF_SAMPLING_MIX["zag"]) -> Legs:
        """The authors' Flux gap: zig and step on mix ``zig``, zag on mix ``zag``.

        Hold the guidance fixed on every leg by passing
        ``inversion_guidance_scale`` equal to ``guidance_scale``, as their code does.
        """
        return cls(zig=Leg(mix=zig), zag=Leg(mix=zag), step=Leg(mix=zig))

    @classmethod
    def w2sd(cls, zig: float = 1.5, zag: float = -1.5, step: float = 0.8) -> Legs:
        """W2SD's released SDXL weight gap: LoRA scales per leg, the zag on the
        conditional branch only (pass ``inversion_guidance_scale=1``)."""
        return cls(zig=Leg(lora_scale=zig), zag=Leg(lora_scale=zag), step=Leg(lora_scale=step))

    @property
    def is_default(self) -> bool:
        return self == Legs()

    @property
    def models(self) -> frozenset[str]:
        """The other pipelines the legs name."""
        return frozenset(getattr(self, name).model for name in LEG_NAMES) - {None}

    @property
    def prompts(self) -> frozenset[str]:
        """The other prompts the legs name."""
        return frozenset(getattr(self, name).prompt for name in LEG_NAMES) - {None}

    @property
    def uses_lora(self) -> bool:
        return any(getattr(self, name).lora_scale is not None for name in LEG_NAMES)


@dataclass(frozen=True)
class Condition:
    """What a leg changes in the network call, beyond the CFG branches.

    ``guidance_embed``: the guidance-embedding value (guidance-distilled
    models); ``mix``: the prompt-embedding mix (s, r); ``lora_scale``,
    ``model`` and ``prompt`` as in :class:`Leg`. The default (all None) is
    the base model on the prompt as encoded.
    """

    guidance_embed: float | None = None
    mix: tuple[float, float] | None = None
    lora_scale: float | None = None
    model: str | None = None
    prompt: str | None = None

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_CONDITION

    @property
    def routing(self) -> tuple[str | None, str | None]:
        """(model, prompt): which prepared target runs the call."""
        return self.model, self.prompt

    def local(self) -> Condition:
        """What the routed target's own denoiser sees (embedding value and mix)."""
        return Condition(guidance_embed=self.guidance_embed, mix=self.mix)


DEFAULT_CONDITION = Condition()
"""The base model on the prompt as encoded."""


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
