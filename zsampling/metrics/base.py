"""The scorer interface, a registry of scorers, and the per-step adapter.

A *scorer* maps images and their prompts to one number per image::

    scorer.name              # str: the column name in traces and tables
    scorer.higher_is_better  # bool: the direction
    scorer.score(images, prompts) -> torch.Tensor  # float32, CPU, shape (B,)

``images`` is a float tensor (B, C, H, W) with values in [0, 1] -- what a
pipeline's ``decode(latents, output_type="pt")`` returns -- or, for the
image-text scorers of :mod:`zsampling.metrics.scorers`, also a list of PIL
images. ``prompts`` holds one string per image (prompt-free scorers such as the
aesthetic predictor accept and ignore it). The same object serves as a final
metric (call ``score`` on the decoded samples) and as a per-step metric (wrap
it with :func:`as_step_metric` and hand it to a
:class:`~zsampling.trace.TraceRecorder`, which decodes the predicted x0 every
``decode_every`` steps).

The registry maps short names to factories, resolved lazily so that listing
or importing never loads a model (nor ``transformers``' CLIP)::

    from zsampling.metrics import get_scorer, available_scorers

    available_scorers()   # ['aesthetic', 'clip_score', 'clipping_fraction', ..., 'saturation']
    clip = get_scorer("clip_score", model="/models/clip-vit-base-patch32")

For the model-based scorers ``get_scorer(name, **kwargs)`` calls the class's
``from_pretrained(**kwargs)``; the demo-model metrics and the weight-free
quality guards (``clipping_fraction``, ``saturation``: lower is better; see
:mod:`zsampling.metrics.quality`) take their constructor's arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from zsampling.trace.recorder import ScorerMetric

__all__ = [
    "MissingWeightsError",
    "Scorer",
    "as_step_metric",
    "available_scorers",
    "get_scorer",
    "register_scorer",
]


@runtime_checkable
class Scorer(Protocol):
    """A per-image metric: ``name``, ``higher_is_better`` and ``score``.

    ``score(images, prompts)`` returns a float32 CPU tensor of shape (B,), one
    value per image; ``images`` is a float tensor (B, C, H, W) in [0, 1].
    ``isinstance(obj, Scorer)`` checks that the three members exist (not
    their types or signatures).
    """

    name: str
    higher_is_better: bool

    def score(self, images: Any, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """One value per image, float32 on the CPU, shape (B,)."""
        ...


class MissingWeightsError(OSError):
    """Weights (or a tokenizer / config) could not be found locally nor downloaded.

    The message names what is missing, the Hugging Face hub id (and file)
    it would come from, and how to point the scorer at a local copy. A
    subclass of ``OSError``, like the errors of ``from_pretrained``.
    """


# name -> "module:attribute" (resolved on first use) or a callable returning a scorer
_REGISTRY: dict[str, str | Callable[..., Any]] = {
    "clip_score": "zsampling.metrics.scorers.clip:CLIPScore.from_pretrained",
    "pick_score": "zsampling.metrics.scorers.clip:PickScore.from_pretrained",
    "hpsv2": "zsampling.metrics.scorers.hpsv2:HPSv2.from_pretrained",
    "image_reward": "zsampling.metrics.scorers.image_reward:ImageReward.from_pretrained",
    "aesthetic": "zsampling.metrics.scorers.aesthetic:LaionAesthetic.from_pretrained",
    "digit_alignment": "zsampling.metrics.demo:DigitAlignment",
    "digit_accuracy": "zsampling.metrics.demo:DigitAccuracy",
    "nn_distance": "zsampling.metrics.demo:NearestNeighbourDistance",
    "clipping_fraction": "zsampling.metrics.quality:ClippingFraction",
    "saturation": "zsampling.metrics.quality:Saturation",
}


def register_scorer(name: str, factory: str | Callable[..., Any], *, overwrite: bool = False) -> None:
    """Register ``factory`` under ``name`` for :func:`get_scorer`.

    Args:
        name: the registry key (a non-empty string).
        factory: a callable returning a scorer, or ``"module:attribute"``
            (dotted attributes allowed, e.g. ``"pkg.mod:Cls.from_pretrained"``)
            imported only when the scorer is requested.
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: empty name, a name already registered (without
            ``overwrite``), or a factory that is neither callable nor a
            ``"module:attribute"`` string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"scorer name must be a non-empty string, got {name!r}")
    if isinstance(factory, str):
        if factory.count(":") != 1 or not all(factory.split(":")):
            raise ValueError(f"factory string must look like 'package.module:attribute', got {factory!r}")
    elif not callable(factory):
        raise ValueError(f"factory must be callable or a 'module:attribute' string, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a scorer named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def available_scorers() -> list[str]:
    """The registered scorer names, sorted (nothing is imported or loaded)."""
    return sorted(_REGISTRY)


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, attribute = spec.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def get_scorer(name: str, **kwargs: Any) -> Any:
    """Build the scorer registered as ``name`` with ``kwargs``.

    Model-based scorers are built with their ``from_pretrained`` (e.g.
    ``get_scorer("pick_score", device="cuda")``), which raises
    :class:`MissingWeightsError` when the weights are neither local nor
    downloadable.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; available scorers: {', '.join(available_scorers())}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        factory = _resolve(factory)
    return factory(**kwargs)


def as_step_metric(
    scorer: Any,
    *,
    to_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str | None = None,
) -> ScorerMetric:
    """Wrap a scorer as a per-step metric on the predicted x0.

    Returns a :class:`zsampling.trace.ScorerMetric`: give it to a
    :class:`~zsampling.trace.TraceRecorder` (``metrics=[...]``) together with
    ``decode=`` / ``decode_every=k`` (or ``sample_with_trace(...,
    decode_every=k)``), and the scorer runs on the decoded x0 of every k-th
    step (and the last), on the steps whose images were decoded; its values
    become the trace column ``name`` (default: ``scorer.name``). With
    ``to_images`` (a cheap latent-to-image map) it runs on every metric step
    without the VAE.

    Raises:
        ValueError: ``scorer`` has no ``score`` method.
    """
    from zsampling.trace.recorder import ScorerMetric

    return ScorerMetric(scorer, to_images=to_images, name=name)
