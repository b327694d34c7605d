"""The leg router: one denoiser that runs each leg on its model variant.

A leg's :class:`~zsampling.legs.Condition` can name another pipeline
(``model``), another prompt (``prompt``) and a LoRA scale (``lora_scale``).
:class:`LegRouter` holds one prepared target per (model, prompt) pair the
legs use -- each prompt encoded once, by that pipeline's own encoders --
routes every call to its target's denoiser, and sets the LoRA scale of the
routed network before the call. The loop still sees one denoiser with one
call site; rows are the sum over the routed denoisers.

LoRA scales switch through peft's per-layer ``set_scale`` (what diffusers'
``set_adapters`` does), never by fusing weights, and only when the scale
changes between consecutive calls; the adapters' own scales come back when
sampling ends (:meth:`LegRouter.close`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zsampling.denoisers.base import Branches, EpsPair, SamplingTarget
from zsampling.legs import DEFAULT_CONDITION, Condition

Route = tuple[str | None, str | None]
"""(model name or None for the base pipeline, prompt or None for each sample's own)."""


class LoraScales:
    """Sets the scale of every active LoRA adapter of a network, unfused.

    The scale multiplies each adapter's initial ``lora_alpha / r``, exactly as
    ``pipe.set_adapters([...], adapter_weights=[scale])``; ``None`` restores
    the scales found at construction.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._layers = [module for module in network.modules() if isinstance(module, BaseTunerLayer)]
        if not self._layers:
            raise ValueError("no LoRA adapter is loaded on this pipeline's network: load one with "
                             "pipe.load_lora_weights(path, adapter_name=...) before asking for a lora_scale")
        self._initial = [dict(layer.scaling) for layer in self._layers]
        self._current: float | None = None

    def set(self, scale: float | None) -> None:
        """Scale every active adapter by ``scale`` (None: the initial scales); a no-op if unchanged."""
        if scale == self._current:
            return
        for layer, initial in zip(self._layers, self._initial, strict=True):
            for adapter in layer.active_adapters:
                if scale is None:
                    layer.scaling[adapter] = initial[adapter]
                else:
                    layer.set_scale(adapter, scale)
        self._current = scale


def has_lora(pipe: Any) -> bool:
    """Whether the pipeline's denoising network carries peft LoRA layers."""
    network = denoising_network(pipe)
    if network is None:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in network.modules())


def denoising_network(pipe: Any) -> torch.nn.Module | None:
    """The pipeline's UNet or transformer."""
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


class LegRouter:
    """A denoiser that routes each leg's call to its prepared target (see the module docstring)."""

    def __init__(self, targets: Mapping[Route, SamplingTarget], lora: Mapping[str | None, LoraScales]) -> None:
        base = targets[(None, None)].denoiser
        self._denoisers = {route: target.denoiser for route, target in targets.items()}
        self._lora = dict(lora)
        self.guidance_mode = getattr(base, "guidance_mode", "cfg")
        self.has_guidance_embeds = getattr(base, "has_guidance_embeds", False)
        self.supports_mix = all(getattr(d, "supports_mix", False) for d in self._denoisers.values())
        self.supports_lora = bool(self._lora)
        self.supports_prompts = True
        self.models = frozenset(model for model, _ in targets) - {None}
        for route, denoiser in self._denoisers.items():
            if getattr(denoiser, "guidance_mode", "cfg") != self.guidance_mode:
                raise ValueError(f"the pipeline of leg route {route} applies guidance differently "
                                 f"({getattr(denoiser, 'guidance_mode', 'cfg')!r}) from the base pipeline "
                                 f"({self.guidance_mode!r}); legs must share one guidance mode")

    @property
    def network_rows(self) -> int:
        return sum(denoiser.network_rows for denoiser in {id(d): d for d in self._denoisers.values()}.values())

    def __call__(self, x: torch.Tensor, t: float, branches: Branches,
                 condition: Condition = DEFAULT_CONDITION) -> EpsPair:
        model, _ = route = condition.routing
        lora = self._lora.get(model)
        if lora is not None:
            lora.set(condition.lora_scale)
        elif condition.lora_scale is not None:
            raise ValueError(f"no LoRA adapter is loaded on {'the base pipeline' if model is None else model!r}")
        local = condition.local()
        denoiser = self._denoisers[route]
        return denoiser(x, t, branches) if local.is_default else denoiser(x, t, branches, local)

    def close(self) -> None:
        """Give every network its adapters' own scales back."""
        for lora in self._lora.values():
            lora.set(None)
