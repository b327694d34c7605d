"""The sweep spec: a validated description of a grid of Z-Sampling runs.

Why: a sweep runs for hours and writes a results table other code depends
on, so every setting is checked up front -- with an error that names the key
(``grid.guidance_scale[2]``) and what is allowed -- before any model is
loaded or any directory is touched.

What: :func:`load_spec` reads YAML (``.yaml``/``.yml``), TOML (``.toml``) or
JSON (``.json``) and :func:`parse_spec` validates a mapping into a frozen
:class:`SweepSpec`. Example (YAML)::

    name: lambda-sweep                  # optional, cosmetic
    model:
      name: demo                        # demo | analytic | tiny-sd | tiny-sdxl | tiny-pixart
                                        # | a preset (sdxl, sdxl-dpo, sd15, ...; zsampling.presets)
                                        # | a local diffusers directory | a hub id (org/name)
      dtype: float32                    # float32 | float16 | bfloat16 | float64 (or fp16, bf16, half, ...)
      device: auto                      # auto | cpu | cuda | cuda:1 ...
      options: {}                       # model-specific (analytic: d, num_components, radius, std, ...)
    prompts: ["0", "3", "7"]            # or {file: prompts.txt} / {file: p.csv, column: prompt, limit: 100}
                                        # (any zsampling.prompts.load_prompts format: DrawBench, Pick-a-Pic,
                                        # HPD v2, GenEval, PartiPrompts TSV, text, tables)
    negative_prompt: null
    seeds: [0, 1, 2, 3]                 # or {start: 0, count: 4}; or paired / {paired: true, offset: 0}
    noise: seed_prompt                  # seed_prompt (default) | seed (the default with paired seeds)
    grid:                               # each knob: a value, a list, or {range: [start, stop, step]}
      num_inference_steps: [20]
      guidance_scale: [5.5]
      inversion_guidance_scale: [0.0]
      zigzag_steps: {range: [0, 20]}    # lambda; "full" means T-1
      rounds: [1]
      zag: [official]
      zag_eval_timestep: [next]
      # optional: timesteps: [null, ays-sd15, [999, 800, 600, 400, 200]]  -- null is the scheduler's
      #   spacing at each T; a name or a list fixes T to its length (DDIM only, with zag: [ddim])
      # optional, per leg: zig.guidance_scale, zag.lora_scale, step.guidance_embed, ...
    metrics: [alignment, accuracy, nn_distance, frechet_pca]
    trace: {keep: scalars, latent_dtype: float16, downsample: null}   # or false; also
                                        # step_metrics: [alignment], every: 1, decode_every: 5
    images: true                        # save final images (default: true for small models)
    output_type: pt                     # pt (images in [0, 1]) | latent (final latents)
    batch_size: 64
    branches: needed                    # needed (branch-aware) | both (what the released code pays)
    matched_baselines: false            # true: after each Z-Sampling cell, plain CFG at its measured
                                        # effective guidance, at g1 and at 2 g1 - g2, with the steps raised
                                        # to the same network rows (see zsampling.sweep.matched)

Samples: every prompt x every seed (prompt-major). With ``noise:
seed_prompt`` a sample's initial noise comes from its own
``torch.Generator`` seeded by a hash of (seed, prompt_index), so the same
(prompt, seed) starts from the same latents in every cell -- this is what
pairs samples across methods -- while different prompts never share noise.
``noise: seed`` seeds the generator with the seed alone (the same noise for
every prompt, as ``generator=torch.Generator().manual_seed(seed)`` gives in
diffusers for one image).

Paired seeds (``seeds: paired`` or ``seeds: {paired: true, offset: s}``):
the paper's protocol, prompt i <-> seed s + i. A cell has one sample per
prompt, sample i = (prompt i, seed s + i), and its generator is seeded with
exactly that seed (noise mode "seed", the default and the only mode allowed
then), as ``zsampling.prompts.seed_generators`` does for direct ``sample``
calls. Pairing across cells holds as before: the same (prompt_index, seed)
starts from the same noise in every cell.

Prompt files (``{file: PATH, column: NAME, limit: N}``) are read with
:func:`zsampling.prompts.load_prompts` (format detected; ``column`` reads
that column of a table); relative paths are resolved against the spec's
directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zsampling.config import (
    KNOB_DEFAULTS,
    KNOBS,
    LEG_KNOBS,
    NAMED_TIMESTEPS,
    OPTIONAL_KNOBS,
    SCHEDULE_KNOB,
    ZAG_EVAL_TIMESTEPS,
    ZAG_OPERATORS,
    check_timesteps,
)

SPEC_SCHEMA_VERSION = 1

__all__ = ["KNOBS", "KNOB_DEFAULTS", "LEG_KNOBS", "ModelSpec", "SpecError", "SweepSpec", "TraceSpec", "check_knob",
           "choice", "plain_json", "positive_int", "stable_hash"]

TOP_KEYS: tuple[str, ...] = (
    "name", "model", "prompts", "negative_prompt", "seeds", "noise", "grid", "metrics", "trace", "images",
    "output_type", "batch_size", "branches", "matched_baselines",
)
MODEL_KEYS: tuple[str, ...] = ("name", "dtype", "device", "options")
TRACE_KEYS: tuple[str, ...] = ("keep", "latent_dtype", "downsample", "step_metrics", "every", "decode_every")
NOISE_MODES: tuple[str, ...] = ("seed_prompt", "seed")
OUTPUT_TYPES: tuple[str, ...] = ("pt", "latent")
BRANCH_MODES: tuple[str, ...] = ("needed", "both")
SEED_KEYS: tuple[str, ...] = ("start", "count", "paired", "offset")


class SpecError(ValueError):
    """A sweep spec is invalid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model a sweep runs and how it is loaded.

    ``name`` is "demo", "analytic", a tiny offline pipeline ("tiny-sd",
    "tiny-sdxl", "tiny-pixart"), a preset of :mod:`zsampling.presets`
    ("sdxl", "sdxl-dpo", ...), a local diffusers directory or a hub id;
    ``options`` are model-specific (see :mod:`zsampling.sweep.models`).
    ``device`` is an execution detail: it is not part of the spec hash, so a
    sweep may be resumed on another device.
    """

    name: str
    dtype: str = "float32"
    device: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What makes two models' samples comparable: name, dtype, options (not the device)."""
        return {"name": self.name, "dtype": self.dtype, "options": plain_json(self.options)}


@dataclass(frozen=True)
class TraceSpec:
    """What each cell's trace keeps (:class:`zsampling.trace.TraceRecorder` options).

    ``step_metrics`` are per-sample metric names evaluated on the predicted
    x0 every ``every`` steps (demo and analytic models only);
    ``decode_every`` decodes the predicted x0 to uint8 images in the trace
    every this many steps (VAE rows, never network rows).
    """

    keep: tuple[str, ...] = ("scalars",)
    latent_dtype: str = "float16"
    downsample: int | None = None
    step_metrics: tuple[str, ...] = ()
    every: int = 1
    decode_every: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: model, samples (prompts x seeds), knob grid, outputs.

    Build with :func:`load_spec` or :func:`parse_spec`; :meth:`to_dict` is
    the normalised JSON form stored in the manifest and :attr:`hash` the
    digest that detects a changed spec against an existing output directory.
    """

    model: ModelSpec
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: Mapping[str, tuple[Any, ...]]
    name: str | None = None
    negative_prompt: str | None = None
    noise: str = "seed_prompt"
    metrics: tuple[str, ...] = ()
    trace: TraceSpec | None = field(default_factory=TraceSpec)
    images: bool = True
    output_type: str = "pt"
    batch_size: int = 64
    branches: str = "needed"
    prompt_source: str = "inline"
    matched_baselines: bool = False
    paired: bool = False

    @property
    def knobs(self) -> tuple[str, ...]:
        """The grid's knobs: every :data:`KNOBS` entry, then the optional knobs the grid sets (legs, timesteps)."""
        return (*KNOBS, *(knob for knob in OPTIONAL_KNOBS if knob in self.grid))

    @property
    def num_samples(self) -> int:
        """Samples per cell: every prompt x every seed, or one per prompt with paired seeds."""
        return len(self.prompts) if self.paired else len(self.prompts) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec as plain JSON values (what the manifest stores)."""
        return {
            "schema_version": SPEC_SCHEMA_VERSION,
            "name": self.name,
            "model": {**self.model.identity(), "device": self.model.device},
            "prompts": list(self.prompts),
            "prompt_source": self.prompt_source,
            "negative_prompt": self.negative_prompt,
            "seeds": list(self.seeds),
            **({"paired_seeds": True} if self.paired else {}),
            "noise": self.noise,
            "grid": {knob: list(self.grid[knob]) for knob in self.knobs},
            "metrics": list(self.metrics),
            "trace": None if self.trace is None else {
                "keep": list(self.trace.keep), "latent_dtype": self.trace.latent_dtype,
                "downsample": self.trace.downsample, "step_metrics": list(self.trace.step_metrics),
                "every": self.trace.every, "decode_every": self.trace.decode_every,
            },
            "images": self.images,
            "output_type": self.output_type,
            "batch_size": self.batch_size,
            "branches": self.branches,
            "matched_baselines": self.matched_baselines,
        }

    def hashed_dict(self) -> dict[str, Any]:
        """The part of :meth:`to_dict` that defines the results: everything but
        the name, the prompt file's path, the device, the batch size and
        ``matched_baselines`` (it adds derived cells without changing any grid
        cell, so turning it on resumes an existing run)."""
        values = self.to_dict()
        for key in ("name", "prompt_source", "batch_size", "matched_baselines"):
            values.pop(key)
        values["model"].pop("device")
        return values

    @property
    def hash(self) -> str:
        """Stable digest of :meth:`hashed_dict` (16 hex characters)."""
        return stable_hash(self.hashed_dict())

    def samples_identity(self) -> dict[str, Any]:
        """What defines a cell's samples (part of every cell's hash)."""
        identity = {"prompts": list(self.prompts), "negative_prompt": self.negative_prompt,
                    "seeds": list(self.seeds), "noise": self.noise}
        if self.paired:  # only then, so the hashes of unpaired specs are unchanged
            identity["paired_seeds"] = True
        return identity


def stable_hash(value: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys), truncated."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# ------------------------------------------------------------------- validators
def choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else a SpecError naming ``key`` and the allowed values."""
    if value not in allowed:
        raise SpecError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


def positive_int(key: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a SpecError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SpecError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_knob(key: str, knob: str, value: Any) -> Any:
    """A validated grid value of ``knob`` (``key`` names it in errors)."""
    if knob in LEG_KNOBS:
        if value is None:
            return None  # no override: the run's own value
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise SpecError(f"{key} must be a finite number or null (no override), got {value!r}")
        return float(value)
    if knob == SCHEDULE_KNOB:
        return _check_schedule(key, value)
    if knob in ("num_inference_steps", "rounds"):
        return positive_int(key, value)
    if knob in ("guidance_scale", "inversion_guidance_scale"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise SpecError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if knob == "zigzag_steps":
        if value in ("full", None):
            return "full"
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise SpecError(f"{key} (lambda) must be an integer >= 0 or 'full' (T-1), got {value!r}")
        return int(value)
    if knob == "zag":
        return choice(key, value, ZAG_OPERATORS)
    return choice(key, value, ZAG_EVAL_TIMESTEPS)


def _check_schedule(key: str, value: Any) -> str | tuple[int, ...] | None:
    """A ``timesteps`` grid value: null, a name of NAMED_TIMESTEPS or a strictly decreasing list of integers."""
    if value is None or (isinstance(value, str) and value in NAMED_TIMESTEPS):
        return value
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError(f"{key} must be null (the scheduler's spacing), one of {', '.join(NAMED_TIMESTEPS)} or a "
                        f"list of timesteps, got {value!r}")
    try:
        return check_timesteps(value)
    except ValueError as error:
        raise SpecError(f"{key}: {error}") from None


def plain_json(value: Any) -> Any:
    """Mappings and sequences as dicts and lists (for JSON and hashing)."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value
