"""Per-step and final metrics, and scorer plug-ins.

A scorer has ``name``, ``higher_is_better`` and
``score(images, prompts) -> torch.Tensor (B,)``. The demo-model metrics live
in ``zsampling.metrics.demo`` (imported lazily: it needs only numpy, scipy and
safetensors, but loads its arrays on first use). Weight-free quality guards
(clipping fraction, colour saturation) live in ``zsampling.metrics.quality``.
"""

from zsampling.metrics.base import (
    MissingWeightsError,
    Scorer,
    as_step_metric,
    available_scorers,
    get_scorer,
    register_scorer,
)

__all__ = ["MissingWeightsError", "Scorer", "as_step_metric", "available_scorers", "get_scorer", "register_scorer"]
