"""Which package versions produced a number: stamped on every trace and sweep manifest.

Why: a trace or a sweep directory outlives the environment that wrote it;
diffusers' schedulers, torch's kernels and this package's own loop all shape
the numbers, so their versions travel with the data. This module sits below
``trace/`` and ``sweep/`` so that both can stamp the same record.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence


@functools.cache
def _core_versions() -> tuple[tuple[str, str], ...]:
    import diffusers
    import safetensors
    import torch

    import zsampling

    return (("zsampling", zsampling.__version__), ("diffusers", diffusers.__version__),
            ("torch", torch.__version__), ("safetensors", safetensors.__version__),
            ("python", platform.python_version()))


def package_versions(optional: Sequence[str] = ()) -> dict[str, str]:
    """Versions of the packages that shape a trace's numbers, plus those of the
    ``optional`` modules that import (one missing or broken is left out: a
    version stamp must never stop a run)."""
    versions = dict(_core_versions())
    for module in optional:
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 -- see the docstring
            continue
    return versions
