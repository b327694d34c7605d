"""Model presets: the paper's settings under one name, and a loader with GPU options.

Why: reproducing a Z-Sampling number needs a dozen matching choices -- the
checkpoint, its dtype and variant, the resolution, DDIM with the right
config, T, g1, g2, lambda, rounds, the zag operator. A preset records them
once, says where each value comes from (the released code, diffusers'
defaults, the checkpoint), and :func:`load_preset_pipeline` loads the model
ready for :func:`zsampling.sample`::

    from zsampling.presets import get_preset, load_preset_pipeline
    import zsampling

    pipe = load_preset_pipeline("sdxl")                      # fp16 on cuda, DDIM
    preset = get_preset("sdxl")
    out = zsampling.sample(pipe, "a cat", **preset.sampling_kwargs())          # Z-Sampling
    ref = zsampling.sample(pipe, "a cat", **preset.sampling_kwargs(zigzag=False))  # standard

Presets (``list_presets()``; "paper" = the released code's value, else the
source is named in ``preset.sources``):

=============== =============================================== ====== ===== ===== ==== === ====== =======
name            checkpoint                                      dtype  px    g1    g2   T   lambda rounds
=============== =============================================== ====== ===== ===== ==== === ====== =======
sdxl            stabilityai/stable-diffusion-xl-base-1.0        fp16   1024  5.5   0    50  49     1
sdxl-dpo        SDXL base + UNet mhdang/dpo-sdxl-text2image-v1  fp16   1024  5.0*  0    50  49     1
dreamshaper-xl  Lykon/dreamshaper-xl-v2-turbo (few-step)        fp16   1024  2.0+  0    8+  7      1
sd15            stable-diffusion-v1-5/stable-diffusion-v1-5     fp16   512   7.5*  0    50  49     1
sd21            stabilityai/stable-diffusion-2-1 (v-pred)       fp16   768   7.5*  0    50  49     1
pixart-alpha    PixArt-alpha/PixArt-XL-2-1024-MS (DiT)          fp16   1024  4.5*  0    50  49     1
w2sd-sdxl       SDXL base + your LoRA (W2SD weight gap)         fp16   1024  5.5   1    50  49#    1
hunyuan-dit     Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers (v)   fp16   1024  5.0*  0    50  49     1
sd3-medium      stabilityai/stable-diffusion-3-medium-diffusers bf16   1024  7.0+  0    28+ 27     1
sd3.5-large     stabilityai/stable-diffusion-3.5-large          bf16   1024  3.5+  0    28+ 27     1
sd3.5-medium    stabilityai/stable-diffusion-3.5-medium         bf16   1024  4.5+  0    40+ 39     1
flux-dev        black-forest-labs/FLUX.1-dev (guidance-distil.) bf16   1024  3.5+  1.0# 50+ 49     1
flux-schnell    black-forest-labs/FLUX.1-schnell (embed. mix)   bf16   1024  0+    0    4+  3      1
=============== =============================================== ====== ===== ===== ==== === ====== =======

``*``: diffusers' default guidance for the pipeline, **not from the paper**
(the released code covers SDXL only). g2, T, lambda and rounds outside
``sdxl`` are the SDXL reference defaults, likewise not verified per model.
The DDIM presets use the "official" zag (the operator behind the published
numbers). ``+``: the model card's recommended steps and guidance, **not
from the paper**; the flow-matching presets (SD3 / SD3.5, Flux) run on
``FlowMatchEulerDiscreteScheduler`` with the exact "euler" zag (there is no
released flow-matching Z-Sampling), lambda = T - 1. ``#``: FLUX.1-dev is
guidance-distilled: g1 / g2 are guidance-embedding values, and g2 = 1.0 is
our choice (not from a paper); on ``w2sd-sdxl`` the window is ours (W2SD's legs, g1 and g2 are
its released code's: zig / zag / step LoRA scales +1.5 / -1.5 / 0.8). FLUX.1-schnell has no guidance at all: its
gap is the Z-Sampling authors' prompt-embedding mix (``Legs.embedding_mix()``,
from their Flux code), which sweeps cannot express yet.

Loading: ``DiffusionPipeline.from_pretrained(hub_id or local_path,
torch_dtype=...)`` (``local_files_only`` when ``HF_HUB_OFFLINE=1`` or with a
local path), ``DDIMScheduler.from_config(config, **scheduler_overrides)``,
the VAE decoded in float32 when its config says ``force_upcast`` (SDXL's fp16
behaviour in diffusers), optional ``enable_model_cpu_offload()`` and
``torch.compile`` of the UNet / transformer. Weights that are not available
fail fast with :class:`WeightsNotFoundError`, whose message names the hub
id and how to point at a local copy (``local_path=`` / ``--model-path``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsampling.config import leg_knobs, legs_from_knobs
from zsampling.devices import resolve_device, torch_dtype
from zsampling.legs import Legs

__all__ = [
    "PRESETS",
    "ComponentSource",
    "ModelPreset",
    "WeightsNotFoundError",
    "available_hub_id",
    "get_preset",
    "has_variant",
    "list_presets",
    "load_preset_pipeline",
    "resolve_dtype",
]

_RELEASED = ("released code (xie-lab-ml/Zigzag-Diffusion-Sampling infer.py: gamma_1 5.5, gamma_2 0, infer_step 50, "
             "lambda_step 49, T_max 1, image_size 1024, fp16 variant, DDIMScheduler.from_config of SDXL's config)")
_SDXL_REFERENCE = "Z-Sampling's SDXL reference setting (released code), not from the paper for this model"
_NATIVE = "the checkpoint's native resolution"
_DDIM = "DDIM, as Z-Sampling requires; other DDIM settings from the checkpoint's scheduler config"
_LEADING = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}
"""What ``DDIMScheduler.from_config`` gives from SD / SDXL's own configs (the released code's schedule)."""
_TRAILING = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 0, "timestep_spacing": "trailing"}
"""DDIM for few-step (turbo) checkpoints: trailing spacing starts at t = 999, as their samplers do."""
_SDXL_VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"

class WeightsNotFoundError(OSError):
    """A preset's weights are neither at the given path nor available from the hub.

    The message names the hub id, whether the hub was offline, and how to
    point the loader at a local copy (``local_path=`` in Python,
    ``--model-path`` on the command line).
    """


@dataclass(frozen=True)
class ComponentSource:
    """A pipeline component loaded from another repository (e.g. DPO's UNet).

    Attributes:
        component: the pipeline's component name ("unet", "vae").
        hub_id: the repository holding it.
        subfolder: its folder in that repository ("unet"), or None.
        model_class: the diffusers class that loads it.
    """

    component: str
    hub_id: str
    subfolder: str | None
    model_class: str


@dataclass(frozen=True)
class ModelPreset:
    """A model with the settings Z-Sampling is evaluated with.

    Attributes:
        name: the preset's name (what a user passes).
        hub_id: the Hugging Face repository of the pipeline.
        pipeline_class: the diffusers pipeline class the checkpoint loads as.
        dtype: weights dtype on an accelerator ("float16" / "bfloat16"); CPU
            loads use float32 unless a dtype is given.
        variant: the weight-file variant to download ("fp16"), or None.
        height, width: resolution in pixels.
        prediction_type: what the network predicts ("epsilon" / "v_prediction").
        scheduler_overrides: keyword overrides of the scheduler's ``from_config``.
        scheduler: "DDIMScheduler" or, for flow-matching models,
            "FlowMatchEulerDiscreteScheduler".
        legs: per-leg settings beyond g1 / g2 (FLUX.1-schnell's embedding mix).
        num_inference_steps, guidance_scale, inversion_guidance_scale,
        zigzag_steps, rounds, zag: the Z-Sampling settings (T, g1, g2,
            lambda, T_max, zag operator).
        components: components replaced from other repositories.
        vae_fp16_fix: hub id of an fp16-safe VAE for ``vae="fp16-fix"``, or None.
        pipeline_kwargs: extra ``from_pretrained`` keywords (no safety checker).
        hub_id_alternatives: older or mirror ids of the same weights, tried in
            the local cache when offline.
        aliases: other names that resolve to this preset.
        sources: where each value comes from (key -> provenance); values
            that are not the paper's say so.
        notes: caveats in words.
    """

    name: str
    hub_id: str
    pipeline_class: str
    dtype: str
    variant: str | None
    height: int
    width: int
    prediction_type: str
    scheduler_overrides: Mapping[str, Any]
    num_inference_steps: int = 50
    guidance_scale: float = 5.5
    inversion_guidance_scale: float = 0.0
    zigzag_steps: int = 49
    rounds: int = 1
    zag: str = "official"
    scheduler: str = "DDIMScheduler"
    legs: Legs = field(default_factory=Legs)
    components: tuple[ComponentSource, ...] = ()
    vae_fp16_fix: str | None = None
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hub_id_alternatives: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""

    @property
    def guidance_from_paper(self) -> bool:
        """Whether g1 is the paper's own value (False: a default, marked "not from the paper")."""
        return "not from the paper" not in self.sources.get("guidance_scale", "not from the paper")

    def sampling_kwargs(self, zigzag: bool = True) -> dict[str, Any]:
        """Keyword arguments of :func:`zsampling.sample` for this preset.

        ``zigzag=False`` gives standard sampling with the same T and g1
        (``zigzag_steps=0``), the paper's baseline.
        """
        kwargs = {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "inversion_guidance_scale": self.inversion_guidance_scale,
            "zigzag_steps": self.zigzag_steps if zigzag else 0,
            "rounds": self.rounds,
            "zag": self.zag,
            "height": self.height,
            "width": self.width,
        }
        if not self.legs.is_default:
            kwargs["legs"] = self.legs
        return kwargs

    def sweep_grid(self) -> dict[str, list[Any]]:
        """The sweep grid of the paper's comparison: standard (lambda 0) and Z-Sampling.

        Raises:
            ValueError: the preset's legs set something sweeps cannot vary (an
                embedding mix), so the grid could not reproduce it.
        """
        legs = leg_knobs(self.legs)
        if legs_from_knobs(legs) != self.legs:
            raise ValueError(f"preset {self.name!r} reflects through per-leg settings ({self.legs}) that sweeps "
                             "cannot express yet (only guidance, guidance_embed and lora_scale are leg knobs); run "
                             "it with zsampling.sample(pipe, ..., **preset.sampling_kwargs())")
        return {
            "num_inference_steps": [self.num_inference_steps],
            "guidance_scale": [self.guidance_scale],
            "inversion_guidance_scale": [self.inversion_guidance_scale],
            "zigzag_steps": [0, self.zigzag_steps],
            "rounds": [self.rounds],
            "zag": [self.zag],
            **{knob: [value] for knob, value in legs.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (for manifests and tables)."""
        return {
            "name": self.name, "hub_id": self.hub_id, "pipeline_class": self.pipeline_class, "dtype": self.dtype,
            "variant": self.variant, "height": self.height, "width": self.width,
            "prediction_type": self.prediction_type, "scheduler": self.scheduler,
            "legs": dataclasses.asdict(self.legs),
            "scheduler_overrides": dict(self.scheduler_overrides),
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
            "inversion_guidance_scale": self.inversion_guidance_scale, "zigzag_steps": self.zigzag_steps,
            "rounds": self.rounds, "zag": self.zag,
            "components": [vars(c).copy() for c in self.components], "vae_fp16_fix": self.vae_fp16_fix,
            "hub_id_alternatives": list(self.hub_id_alternatives), "aliases": list(self.aliases),
            "sources": dict(self.sources), "notes": self.notes,
        }


def _sources(guidance: str, **extra: str) -> dict[str, str]:
    values = {
        "guidance_scale": guidance,
        "inversion_guidance_scale": _SDXL_REFERENCE,
        "num_inference_steps": _SDXL_REFERENCE,
        "zigzag_steps": _SDXL_REFERENCE,
        "rounds": _SDXL_REFERENCE,
        "zag": "the released code's operator ('official'), behind the published numbers",
        "resolution": _NATIVE,
        "scheduler": _DDIM,
        "dtype": "half precision on an accelerator, as the released code loads SDXL",
    }
    values.update(extra)
    return values


_SD_NO_SAFETY = {"safety_checker": None, "requires_safety_checker": False}
_SDXL_FAMILY: dict[str, Any] = {
    "pipeline_class": "StableDiffusionXLPipeline", "dtype": "float16", "variant": "fp16", "height": 1024,
    "width": 1024, "prediction_type": "epsilon", "scheduler_overrides": _LEADING, "vae_fp16_fix": _SDXL_VAE_FP16_FIX,
}
"""What the SDXL-architecture presets share (checkpoint format, resolution, DDIM schedule, fp16-fix VAE)."""
_SD_FAMILY: dict[str, Any] = {
    "pipeline_class": "StableDiffusionPipeline", "dtype": "float16", "variant": "fp16",
    "scheduler_overrides": _LEADING, "pipeline_kwargs": _SD_NO_SAFETY,
}
"""What the Stable Diffusion 1.x / 2.x presets share (checkpoint format, DDIM schedule, no safety checker)."""
_W2SD = ("W2SD's released SDXL code (xie-lab-ml/Weak-to-Strong-Diffusion-with-Reflection w2sd_lora.py: T 50, "
         "guidance 5.5, lora scale 0.8, strong / weak lora 1.5 / -1.5, strong / weak guidance 5.5 / 1.0, "
         "1024 px, fp16, DDIM)")
_FLOW_COMMON: dict[str, Any] = {
    "dtype": "bfloat16", "variant": None, "height": 1024, "width": 1024, "prediction_type": "flow",
    "scheduler": "FlowMatchEulerDiscreteScheduler", "scheduler_overrides": {}, "zag": "euler",
}
_SD3_FAMILY: dict[str, Any] = {**_FLOW_COMMON, "pipeline_class": "StableDiffusion3Pipeline"}
_FLUX_FAMILY: dict[str, Any] = {**_FLOW_COMMON, "pipeline_class": "FluxPipeline"}
_FLOW_NOTES = ("Flow matching: there is no released flow-matching Z-Sampling, so T and g1 are the model card's and "
               "the exact 'euler' zag with lambda = T - 1 is our choice, not from the paper.")


def _flow_sources(card: str, **extra: str) -> dict[str, str]:
    """Provenance of a flow-matching preset's values (model card vs our choice)."""
    values = {
        "guidance_scale": f"the model card's recommendation ({card}), not from the paper",
        "num_inference_steps": f"the model card's recommendation ({card}), not from the paper",
        "inversion_guidance_scale": "Z-Sampling's null-guidance zag (g2 = 0), not from the paper for this model",
        "zigzag_steps": "the full window lambda = T - 1, not from the paper for this model",
        "rounds": _SDXL_REFERENCE,
        "zag": "the exact reverse Euler move ('euler'): no released operator exists for flow matching",
        "resolution": _NATIVE,
        "scheduler": "FlowMatchEulerDiscreteScheduler from the checkpoint's config (its shift / dynamic shift)",
        "dtype": "bfloat16, as the model card loads it",
    }
    values.update(extra)
    return values

PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            name="sdxl",
            hub_id="stabilityai/stable-diffusion-xl-base-1.0",
            **_SDXL_FAMILY,
            guidance_scale=5.5,
            aliases=("sdxl-base", "sdxl-base-1.0", "stable-diffusion-xl"),
            sources={key: _RELEASED for key in (
                "guidance_scale", "inversion_guidance_scale", "num_inference_steps", "zigzag_steps", "rounds",
                "resolution", "dtype", "scheduler", "zag")},
            notes="The paper's main setting. The released code decodes with SDXL's own VAE (upcast to float32 "
                  "for decoding, as diffusers does); vae='fp16-fix' swaps in madebyollin/sdxl-vae-fp16-fix, "
                  "which decodes in fp16 but gives slightly different pixels.",
        ),
        ModelPreset(
            name="sdxl-dpo",
            hub_id="stabilityai/stable-diffusion-xl-base-1.0",
            **_SDXL_FAMILY,
            guidance_scale=5.0,
            components=(ComponentSource("unet", "mhdang/dpo-sdxl-text2image-v1", "unet", "UNet2DConditionModel"),),
            aliases=("dpo-sdxl", "sdxl-diffusion-dpo"),
            sources=_sources("diffusers' default for StableDiffusionXLPipeline (not from the paper)",
                             components="Diffusion-DPO's SDXL UNet (Wallace et al. 2023) on the SDXL base pipeline"),
            notes="SDXL base with the Diffusion-DPO UNet (mhdang/dpo-sdxl-text2image-v1, subfolder unet; about "
                  "10 GB of float32 weights, no fp16 variant). Point at local copies with local_path= (the SDXL "
                  "base directory) and unet_path= (the DPO repository or its unet folder). Guidance is diffusers' "
                  "SDXL default, not from the paper.",
        ),
        ModelPreset(
            name="dreamshaper-xl",
            hub_id="Lykon/dreamshaper-xl-v2-turbo",
            **{**_SDXL_FAMILY, "scheduler_overrides": _TRAILING},
            num_inference_steps=8,
            guidance_scale=2.0,
            zigzag_steps=7,
            aliases=("dreamshaper", "dreamshaper-xl-v2-turbo", "dreamshaper-turbo"),
            sources=_sources(
                "the model card's setting (Lykon/dreamshaper-xl-v2-turbo: num_inference_steps=6, guidance_scale=2; "
                "its civitai page: CFG 2, 4-8 steps with DPM++ SDE Karras); not from the paper",
                num_inference_steps="8, the top of the card's 4-8 step range (its example uses 6); 8 divides "
                                    "1000, so DDIM's stride k = 125 agrees with the trailing timestep list and "
                                    "diffusers' own DDIM sampling equals ours (with 6 it would not: diffusers "
                                    "issue #11347); not from the paper",
                zigzag_steps="the full window lambda = T - 1 = 7 (Z-Sampling's reference choice, not from the paper "
                             "for this model)",
                scheduler="DDIM (Z-Sampling needs it) with 'trailing' timestep spacing and steps_offset 0, our choice "
                          "for a few-step turbo model (the card samples with DPM++ / DPMSolverMultistep); not from "
                          "the paper",
                model="Lykon/dreamshaper-xl-v2-turbo: the model behind the released winning-rate figure (the "
                      "paper's abstract and the authors' blog quote its Pick-a-Pic / DrawBench win rates)"),
            notes="DreamShaper-XL v2 Turbo, an SDXL fine-tune distilled for few steps: the released winning rates "
                  "(Pick-a-Pic 70/76/71/88%, DrawBench 75.5/76/81.5/94% on ImageReward / PickScore / AES / HPSv2) "
                  "are this model's, and `zsampling reproduce dreamshaper-xl` compares against them. g1 and the "
                  "step range are the model card's; the trailing-spacing DDIM schedule, g2 and lambda are our "
                  "choice, not from "
                  "the paper (which does not publish its turbo settings).",
        ),
        ModelPreset(
            name="sd15",
            hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            **_SD_FAMILY,
            height=512,
            width=512,
            prediction_type="epsilon",
            guidance_scale=7.5,
            hub_id_alternatives=("runwayml/stable-diffusion-v1-5",),
            aliases=("sd1.5", "sd-1.5", "sd-v1-5", "stable-diffusion-v1-5"),
            sources=_sources("diffusers' default for StableDiffusionPipeline (not from the paper)"),
            notes="runwayml/stable-diffusion-v1-5 was taken down; stable-diffusion-v1-5/stable-diffusion-v1-5 is "
                  "its maintained mirror (a cached runwayml copy is used when offline). Loaded without the safety "
                  "checker. Guidance is diffusers' default, not from the paper.",
        ),
        ModelPreset(
            name="sd21",
            hub_id="stabilityai/stable-diffusion-2-1",
            **_SD_FAMILY,
            height=768,
            width=768,
            prediction_type="v_prediction",
            guidance_scale=7.5,
            aliases=("sd2.1", "sd-2.1", "stable-diffusion-2-1"),
            sources=_sources("diffusers' default for StableDiffusionPipeline (not from the paper)",
                             prediction_type="the checkpoint's scheduler config (v-prediction, 768 px model)"),
            notes="v-prediction model at 768 px (zsampling converts v to eps internally). The paper evaluates "
                  "SD 2.1 but its guidance is not in the released code: diffusers' default, not from the paper. "
                  "If the hub id is unavailable, download a copy and pass local_path=.",
        ),
        ModelPreset(
            name="pixart-alpha",
            hub_id="PixArt-alpha/PixArt-XL-2-1024-MS",
            pipeline_class="PixArtAlphaPipeline",
            dtype="float16",
            variant=None,
            height=1024,
            width=1024,
            prediction_type="epsilon",
            scheduler_overrides={"clip_sample": False},
            guidance_scale=4.5,
            aliases=("pixart", "pixart-xl-2-1024-ms", "dit"),
            sources=_sources("diffusers' default for PixArtAlphaPipeline (not from the paper)",
                             num_inference_steps="Z-Sampling's SDXL reference T = 50 (diffusers' PixArt default is "
                                                 "20), not from the paper for this model",
                             scheduler="DDIM from the checkpoint's DPM-Solver config (its linear betas, spacing and "
                                       "final alpha), clip_sample off; not from the paper"),
            notes="A DiT (transformer) model with a T5-XXL text encoder (about 20 GB in float32; fp16 recommended). "
                  "Its checkpoint ships a DPM-Solver scheduler, replaced by DDIM from the same config; the timestep "
                  "spacing is the config's, not the paper's (unknown). Guidance is diffusers' default, not from "
                  "the paper.",
        ),
        ModelPreset(
            name="w2sd-sdxl",
            hub_id="stabilityai/stable-diffusion-xl-base-1.0",
            **_SDXL_FAMILY,
            guidance_scale=5.5,
            inversion_guidance_scale=1.0,
            legs=Legs.w2sd(1.5, -1.5, 0.8),
            aliases=("w2sd",),
            sources={**{key: _W2SD for key in ("guidance_scale", "inversion_guidance_scale", "num_inference_steps",
                                               "legs", "resolution", "dtype", "scheduler")},
                     "zigzag_steps": "Z-Sampling's full window lambda = T - 1: W2SD's window is not checked here "
                                     "(not from the paper)",
                     "rounds": _SDXL_REFERENCE,
                     "zag": "the released Z-Sampling operator ('official'); W2SD's code also inverts with "
                            "DDIMInverseScheduler"},
            notes="Weak-to-strong reflection (W2SD) with a weight gap: zig LoRA +1.5 with g1 5.5, zag LoRA -1.5 on the "
                  "conditional branch (g2 = 1), step LoRA 0.8. Its LoRA (xlMoreArtFullV1 in the released code) is "
                  "not on the hub: pass lora_path. The window is not from the paper.",
        ),
        ModelPreset(
            name="hunyuan-dit",
            hub_id="Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers",
            pipeline_class="HunyuanDiTPipeline",
            dtype="float16",
            variant=None,
            height=1024,
            width=1024,
            prediction_type="v_prediction",
            scheduler_overrides=_LEADING,
            guidance_scale=5.0,
            pipeline_kwargs=_SD_NO_SAFETY,
            aliases=("hunyuan", "hunyuandit", "hunyuan-dit-v1.2"),
            sources=_sources("diffusers' default for HunyuanDiTPipeline (not from the paper)",
                             num_inference_steps="50: Z-Sampling's SDXL reference T and HunyuanDiTPipeline's default "
                                                 "steps alike, not from the paper for this model",
                             scheduler="DDIM from the checkpoint's DDPM config (scaled-linear betas 0.00085..0.03, "
                                       "v-prediction, steps_offset 1, leading spacing); not from the paper",
                             prediction_type="the checkpoint's scheduler config (v-prediction)"),
            notes="A DiT (transformer) model with two text encoders (a bilingual CLIP-like BERT, 77 tokens, and "
                  "mT5, 256 tokens) and a learned-sigma output (zsampling keeps the first half, as the pipeline). "
                  "Its checkpoint ships DDPM, replaced by DDIM from the same config. zsampling renders the size as "
                  "given (the pipeline's resolution binning leaves 1024x1024 unchanged); guidance_rescale is 0. "
                  "Guidance and steps are HunyuanDiTPipeline's defaults, not from the paper.",
        ),
        ModelPreset(
            name="sd3-medium", hub_id="stabilityai/stable-diffusion-3-medium-diffusers", **_SD3_FAMILY,
            num_inference_steps=28, guidance_scale=7.0, zigzag_steps=27, aliases=("sd3", "stable-diffusion-3"),
            sources=_flow_sources("28 steps, guidance 7.0"),
            notes=_FLOW_NOTES,
        ),
        ModelPreset(
            name="sd3.5-large", hub_id="stabilityai/stable-diffusion-3.5-large", **_SD3_FAMILY,
            num_inference_steps=28, guidance_scale=3.5, zigzag_steps=27, aliases=("sd35-large", "sd3.5"),
            sources=_flow_sources("28 steps, guidance 3.5"),
            notes=_FLOW_NOTES,
        ),
        ModelPreset(
            name="sd3.5-medium", hub_id="stabilityai/stable-diffusion-3.5-medium", **_SD3_FAMILY,
            num_inference_steps=40, guidance_scale=4.5, zigzag_steps=39, aliases=("sd35-medium",),
            sources=_flow_sources("40 steps, guidance 4.5"),
            notes=_FLOW_NOTES,
        ),
        ModelPreset(
            name="flux-dev", hub_id="black-forest-labs/FLUX.1-dev", **_FLUX_FAMILY,
            num_inference_steps=50, guidance_scale=3.5, inversion_guidance_scale=1.0, zigzag_steps=49,
            aliases=("flux.1-dev", "flux"),
            sources=_flow_sources("50 steps, guidance-embedding value 3.5",
                                  inversion_guidance_scale="our choice: the zag's guidance-embedding value 1.0 "
                                                           "(not from a paper)"),
            notes="FLUX.1-dev is guidance-distilled: one network row per call, and g1 / g2 are guidance-embedding "
                  "values (the gap kind 'embedding value'). The Z-Sampling authors' own Flux code uses the "
                  "prompt-embedding mix instead (legs=Legs.embedding_mix(), g2 = g1). " + _FLOW_NOTES,
        ),
        ModelPreset(
            name="flux-schnell", hub_id="black-forest-labs/FLUX.1-schnell", **_FLUX_FAMILY,
            num_inference_steps=4, guidance_scale=0.0, zigzag_steps=3, legs=Legs.embedding_mix(),
            aliases=("flux.1-schnell",),
            sources=_flow_sources("4 steps, guidance 0 (no guidance: timestep-distilled)",
                                  legs="the Z-Sampling authors' Flux code (RF-Sampling): zig mix (3.5, 0.3), zag "
                                       "mix (0, 0.7), used here on schnell by our choice"),
            notes="FLUX.1-schnell has neither CFG nor a guidance embedding: the zig / zag gap is the prompt-embedding "
                  "mix. " + _FLOW_NOTES,
        ),
    )
}
"""Every preset by name (see the module docstring's table)."""

_ALIASES: dict[str, str] = {alias: p.name for p in PRESETS.values() for alias in (p.name, *p.aliases)}


def list_presets() -> list[str]:
    """The preset names, in the table's order."""
    return list(PRESETS)


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name`` (or one of its aliases, case-insensitive).

    Raises:
        ValueError: an unknown name, with the closest match and the list.
    """
    key = str(name).strip().lower()
    if key in _ALIASES:
        return PRESETS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1)
    hint = f" (did you mean {_ALIASES[close[0]]!r}?)" if close else ""
    raise ValueError(f"unknown model preset {name!r}{hint}; presets: {', '.join(PRESETS)}")


def resolve_dtype(dtype: str | torch.dtype | None, preset: ModelPreset, device: torch.device) -> torch.dtype:
    """The load dtype: the given one, else the preset's on an accelerator and float32 on the CPU."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch_dtype(preset.dtype)
    return torch_dtype(dtype)


def _offline() -> bool:
    """Whether the hub is off: HF_HUB_OFFLINE in the environment now, or huggingface_hub's setting."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # an old or broken huggingface_hub: assume online
        return False


def _cached(hub_id: str, filename: str) -> bool:
    """Whether ``filename`` of ``hub_id`` is in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, filename)
    except Exception:  # a malformed id or unreadable cache counts as absent
        return False
    return isinstance(found, str)


def _hint(preset: ModelPreset, what: str, hub_id: str, argument: str) -> str:
    return (f"{what} {hub_id!r} of preset {preset.name!r} is not available"
            f"{' offline (HF_HUB_OFFLINE=1) and not in the local hub cache' if _offline() else ''}. "
            f"Download it once (`huggingface-cli download {hub_id}` or `DiffusionPipeline.from_pretrained`) or "
            f"point at a local copy: {argument}=/path/to/copy in Python, --model-path /path/to/copy on the "
            "command line")


def available_hub_id(preset: ModelPreset) -> str:
    """The hub id to load: the preset's, or (offline) a cached alternative.

    Raises:
        WeightsNotFoundError: offline and none of the ids is in the local
            hub cache (checked without network; the message names the id).
    """
    if not _offline():
        return preset.hub_id
    for hub_id in (preset.hub_id, *preset.hub_id_alternatives):
        if _cached(hub_id, "model_index.json"):
            return hub_id
    raise WeightsNotFoundError(_hint(preset, "the model", preset.hub_id, "local_path"))


def _declared_class(folder: Path) -> str | None:
    """The pipeline class a local directory's ``model_index.json`` names (None when unreadable)."""
    import json

    try:
        value = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@contextmanager
def _quiet_dtype_deprecation() -> Iterator[None]:
    """Silence newer diffusers' "torch_dtype is deprecated, use dtype" warning.

    ``torch_dtype=`` is the keyword every supported diffusers version
    (>= 0.30) accepts; the newest ones also take ``dtype=`` and warn on the
    old name.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated.*", category=FutureWarning)
        yield


def has_variant(folder: str | Path, variant: str) -> bool:
    """Whether a local pipeline directory holds weight files of ``variant`` (``*.fp16.safetensors``)."""
    return any(f".{variant}." in path.name for path in Path(folder).rglob("*") if path.is_file())


def _load_component(preset: ModelPreset, source: ComponentSource, override: str | None, dtype: torch.dtype,
                    argument: str) -> Any:
    import diffusers

    model_class = getattr(diffusers, source.model_class)
    offline = _offline()
    if override is not None:
        path = Path(override).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"{argument} {str(path)!r} (the {source.component} of preset "
                                       f"{preset.name!r}, from {source.hub_id!r}) does not exist")
        subfolder = source.subfolder if source.subfolder and (path / source.subfolder).is_dir() else None
        location, local = str(path), True
    else:
        subfolder = source.subfolder
        config = f"{subfolder}/config.json" if subfolder else "config.json"
        if offline and not _cached(source.hub_id, config):
            raise WeightsNotFoundError(_hint(preset, f"the {source.component}", source.hub_id, argument))
        location, local = source.hub_id, offline
    try:
        with _quiet_dtype_deprecation():
            return model_class.from_pretrained(location, subfolder=subfolder, torch_dtype=dtype,
                                               local_files_only=local)
    except OSError as error:
        raise WeightsNotFoundError(f"{_hint(preset, f'the {source.component}', source.hub_id, argument)} "
                                   f"({type(error).__name__}: {error})") from error


def load_preset_pipeline(
    name: str,
    *,
    local_path: str | Path | None = None,
    device: str | torch.device = "cuda",
    dtype: str | torch.dtype | None = None,
    cpu_offload: bool = False,
    compile: bool | Mapping[str, Any] = False,
    vae_upcast: bool = True,
    vae: str | Path | None = None,
    unet_path: str | Path | None = None,
    variant: str | None = "auto",
    lora_path: str | Path | None = None,
) -> Any:
    """Load a preset's pipeline, ready for :func:`zsampling.sample`.

    Args:
        name: a preset name or alias (:func:`list_presets`).
        local_path: a local diffusers directory (with ``model_index.json``)
            to load instead of the hub id; nothing is downloaded then.
        device: "cuda" (default), "cuda:N", "cpu" or "auto". With
            ``cpu_offload`` the execution device.
        dtype: None: the preset's (half precision) on an accelerator,
            float32 on the CPU; or "float32" / "float16" / "bfloat16".
        cpu_offload: ``enable_model_cpu_offload`` (needs an accelerator):
            each model moves to the GPU only while it runs.
        compile: ``torch.compile`` the UNet / transformer in place
            (``module.compile()``); a mapping gives its keywords, e.g.
            ``{"mode": "max-autotune"}``. Compilation happens on the first call.
        vae_upcast: True decodes in float32 when the VAE's config asks for it
            (``force_upcast``: SDXL's VAE overflows in fp16), as diffusers'
            SDXL pipeline does; False decodes in the load dtype (only safe with
            an fp16-fixed VAE).
        vae: None keeps the checkpoint's VAE; "fp16-fix" loads the preset's
            fp16-safe VAE (SDXL family: madebyollin/sdxl-vae-fp16-fix); a path
            or hub id loads that ``AutoencoderKL``.
        unet_path: a local copy of a replaced UNet (``sdxl-dpo``'s DPO UNet).
        lora_path: a LoRA file or directory, loaded as adapter "w2sd" with
            ``pipe.load_lora_weights`` (required by presets whose legs switch
            LoRA scales, e.g. ``w2sd-sdxl``, whose LoRA is not on the hub).
        variant: "auto": the preset's variant ("fp16") for half-precision loads
            from the hub, or when the local directory has such files; None
            loads the full-precision files; a string forces that variant.

    Returns:
        The diffusers pipeline with a ``DDIMScheduler`` (flow-matching presets:
        ``FlowMatchEulerDiscreteScheduler``) built from its own config with the
        preset's ``scheduler_overrides``.

    Raises:
        ValueError: an unknown preset, bad dtype/device option, or a local
            directory holding another pipeline class.
        RuntimeError: CUDA requested but not available.
        WeightsNotFoundError: weights missing (offline and not cached, a bad
            local path, or a download failure); names the hub id.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    preset = get_preset(name)
    if preset.legs.uses_lora and lora_path is None:
        raise ValueError(f"preset {preset.name!r} switches LoRA scales per leg and needs its LoRA: pass lora_path= "
                         f"(--lora-path); {preset.notes}")
    target = resolve_device(device)
    if cpu_offload and target.type == "cpu":
        raise ValueError("cpu_offload moves models between the CPU and an accelerator; it needs device='cuda' "
                         "(or another accelerator), got device='cpu'")
    torch_dtype = resolve_dtype(dtype, preset, target)
    half = torch_dtype in (torch.float16, torch.bfloat16)

    if local_path is not None:
        folder = Path(local_path).expanduser()
        if not (folder / "model_index.json").is_file():
            what = "does not exist" if not folder.exists() else "is not a diffusers pipeline directory (no " \
                                                                "model_index.json)"
            raise WeightsNotFoundError(f"local_path {str(folder)!r} for preset {preset.name!r} ({preset.hub_id}) "
                                       f"{what}; save one with DiffusionPipeline.save_pretrained or "
                                       f"`huggingface-cli download {preset.hub_id} --local-dir DIR`")
        declared = _declared_class(folder)
        if declared is not None and declared != preset.pipeline_class:
            raise ValueError(f"preset {preset.name!r} expects a {preset.pipeline_class}, but {str(folder)!r} holds "
                             f"a {declared}; pick the preset that matches the checkpoint")
        source, local_only = str(folder), True
        chosen_variant = (preset.variant if half and preset.variant and has_variant(folder, preset.variant)
                          else None) if variant == "auto" else variant
    else:
        source, local_only = available_hub_id(preset), _offline()
        chosen_variant = (preset.variant if half else None) if variant == "auto" else variant

    kwargs: dict[str, Any] = dict(preset.pipeline_kwargs)
    for component in preset.components:
        override = unet_path if component.component == "unet" else None
        kwargs[component.component] = _load_component(preset, component, None if override is None else str(override),
                                                      torch_dtype, "unet_path")
    if unet_path is not None and not any(c.component == "unet" for c in preset.components):
        kwargs["unet"] = _load_component(
            preset, ComponentSource("unet", preset.hub_id, "unet", "UNet2DConditionModel"), str(unet_path),
            torch_dtype, "unet_path")
    if vae is not None:
        if str(vae) == "fp16-fix":
            if preset.vae_fp16_fix is None:
                raise ValueError(f"preset {preset.name!r} has no fp16-fix VAE; pass a VAE path or hub id instead")
            vae_source = ComponentSource("vae", preset.vae_fp16_fix, None, "AutoencoderKL")
            kwargs["vae"] = _load_component(preset, vae_source, None, torch_dtype, "vae")
        elif Path(str(vae)).expanduser().exists():
            vae_source = ComponentSource("vae", str(vae), "vae", "AutoencoderKL")
            kwargs["vae"] = _load_component(preset, vae_source, str(vae), torch_dtype, "vae")
        else:
            kwargs["vae"] = _load_component(preset, ComponentSource("vae", str(vae), None, "AutoencoderKL"), None,
                                            torch_dtype, "vae")

    def _from_pretrained(chosen: str | None) -> Any:
        with _quiet_dtype_deprecation():
            return DiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype, variant=chosen,
                                                     local_files_only=local_only, **kwargs)

    try:
        try:
            pipe = _from_pretrained(chosen_variant)
        except ValueError as error:
            if chosen_variant is None or "variant" not in str(error):
                raise
            pipe = _from_pretrained(None)  # no files of that variant: the full-precision ones
    except OSError as error:
        what = (f"cannot load preset {preset.name!r} from local_path {source!r}" if local_path is not None
                else _hint(preset, "the model", preset.hub_id, "local_path"))
        raise WeightsNotFoundError(f"{what} ({type(error).__name__}: {error})") from error

    if type(pipe).__name__ != preset.pipeline_class and not any(
            cls.__name__ == preset.pipeline_class for cls in type(pipe).__mro__):
        raise ValueError(f"preset {preset.name!r} expects a {preset.pipeline_class}, but {source!r} loads a "
                         f"{type(pipe).__name__}; pick the preset that matches the checkpoint")
    if preset.scheduler == "FlowMatchEulerDiscreteScheduler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                     **dict(preset.scheduler_overrides))
    else:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **dict(preset.scheduler_overrides))
    if preset.scheduler == "DDIMScheduler" and pipe.scheduler.config.prediction_type != preset.prediction_type:
        warnings.warn(f"preset {preset.name!r} expects prediction_type={preset.prediction_type!r}, the checkpoint's "
                      f"scheduler says {pipe.scheduler.config.prediction_type!r} (kept)", stacklevel=2)
    if lora_path is not None:
        try:
            pipe.load_lora_weights(str(lora_path), adapter_name="w2sd")
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(f"cannot load the LoRA at lora_path {str(lora_path)!r} for preset "
                                       f"{preset.name!r} ({type(error).__name__}: {error})") from error
    autoencoder = getattr(pipe, "vae", None)
    if isinstance(autoencoder, AutoencoderKL) and not vae_upcast:
        autoencoder.register_to_config(force_upcast=False)

    if cpu_offload:
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe = pipe.to(target)
    if compile:
        network = getattr(pipe, "unet", None)
        if network is None:
            network = getattr(pipe, "transformer", None)
        if network is None:
            raise ValueError(f"compile: {type(pipe).__name__} has neither a unet nor a transformer to compile")
        network.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))
    return pipe
