"""Image(-text) scorers on ``transformers`` models: CLIPScore, PickScore, HPSv2,
ImageReward and the LAION aesthetic predictor.

================  ==================  =====================================================
class             name                score
================  ==================  =====================================================
CLIPScore         ``clip_score``      ``2.5 * max(cos, 0)`` (Hessel et al.), ViT-B/32
PickScore         ``pick_score``      ``logit_scale.exp() * cos``, PickScore_v1 (CLIP-H)
HPSv2             ``hpsv2[.1]``       ``cos`` of the HPSv2 ViT-H-14 (open_clip weights converted)
ImageReward       ``image_reward``    ``(MLP(BLIP [CLS]) - mean) / std`` (BLIP weights converted)
LaionAesthetic    ``aesthetic``       ``MLP(e / ||e||)``, CLIP ViT-L/14 image embedding e
================  ==================  =====================================================

All are higher-is-better and implement :class:`zsampling.metrics.Scorer`.
Build one from loaded objects (``CLIPScore(model, processor)``) or with
``from_pretrained`` (local directory, local file or hub id; a missing
download raises :class:`~zsampling.metrics.MissingWeightsError` naming the hub
id). Preprocessing is done in torch on the images' device (see
:mod:`zsampling.metrics.scorers.images`). Needs only ``transformers`` and
``torch`` (no torchvision, open_clip or image-reward); importing this package
imports neither ``transformers`` nor any model until a scorer is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CLIPScore",
    "HPSv2",
    "ImagePreprocess",
    "ImageReward",
    "ImageRewardModel",
    "LaionAesthetic",
    "PickScore",
    "RewardMLP",
    "convert_image_reward_state_dict",
    "convert_open_clip_state_dict",
]

_LAZY = {
    "CLIPScore": "zsampling.metrics.scorers.clip",
    "PickScore": "zsampling.metrics.scorers.clip",
    "HPSv2": "zsampling.metrics.scorers.hpsv2",
    "convert_open_clip_state_dict": "zsampling.metrics.scorers.hpsv2",
    "ImageReward": "zsampling.metrics.scorers.image_reward",
    "ImageRewardModel": "zsampling.metrics.scorers.image_reward",
    "convert_image_reward_state_dict": "zsampling.metrics.scorers.image_reward",
    "LaionAesthetic": "zsampling.metrics.scorers.aesthetic",
    "RewardMLP": "zsampling.metrics.scorers.heads",
    "ImagePreprocess": "zsampling.metrics.scorers.images",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
