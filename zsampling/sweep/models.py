"""Model and metric registries of sweeps.

Why: a spec names its model and metrics as strings; this module is the one
place that knows what each name means, checks it without loading weights
(so a bad spec fails before minutes of loading), and loads it when the
sweep starts.

Models (``model.name``):

* ``"demo"``: the shipped 8x8 digits model (``load_demo_pipeline``); options
  ``family`` ("ddim", default, or "flow": its rectified-flow twin, which
  needs ``zag: [euler]``), ``model_dir`` (another copy of the weights) and
  ``lora`` (a shipped demo LoRA, e.g. "thickness") or ``lora_path`` (a LoRA
  file), loaded as adapter "w2sd" for ``*.lora_scale`` knobs.
  Prompts "0".."9" / "digit 3".
* ``"pairs"``: the shipped 8x16 two-digit model (``load_pairs_pipeline``);
  option ``model_dir``. Prompts "3 left of 7", "7 right of 3", "3 and 7", "3"
  (grammar in :mod:`zsampling.pairs_model`).
* ``"analytic"``: :class:`~zsampling.denoisers.analytic.GaussianMixtureModel`
  with exact scores; options are those of ``GaussianMixtureModel.default``
  (``d``, ``num_components``, ``radius``, ``std``, ``weights``,
  ``scheduler``) or an explicit mixture (``weights``, ``means``,
  ``covariances``, ``component_names``, ``scheduler``). Prompts name
  components ("0", "0,2", names).
* ``"tiny-sd"``, ``"tiny-sdxl"``, ``"tiny-pixart"``, ``"tiny-hunyuan"``,
  ``"tiny-sd3"``, ``"tiny-flux"``: randomly initialised offline pipelines from
  :mod:`zsampling.tiny_pipelines` (plumbing checks, benchmarks); option
  ``seed`` (and ``guidance_embeds`` for ``tiny-flux``). Flow-matching models
  need ``zag: [euler]`` in the grid.
* a preset name or alias of :mod:`zsampling.presets` (``"sdxl"``,
  ``"sdxl-dpo"``, ``"sd15"``, ...): loaded with
  :func:`~zsampling.presets.load_preset_pipeline` (the preset's checkpoint,
  replaced components such as the DPO UNet, DDIM with the preset's
  overrides); options ``local_path``, ``unet_path``, ``vae``,
  ``vae_upcast``, ``variant``, ``cpu_offload``, ``compile`` (passed
  through) and ``height``, ``width`` (default: the preset's). Preset names
  win over a relative directory of the same name (write ``./sdxl``).
* a local diffusers directory (with ``model_index.json``) or a hub id
  (``org/name``) for users who have one: ``DiffusionPipeline.from_pretrained``;
  options ``height``, ``width``, ``variant``, ``revision``,
  ``local_files_only``, ``scheduler`` ("ddim": a scheduler the loop cannot
  follow is replaced by ``DDIMScheduler.from_config(config, clip_sample=False)``,
  or by ``FlowMatchEulerDiscreteScheduler.from_config(config)`` on a
  flow-matching pipeline (SD3, Flux); "keep": use the pipeline's own),
  ``lora_path`` (a LoRA loaded as adapter "w2sd", for grids that vary
  ``zig.lora_scale`` / ``zag.lora_scale`` / ``step.lora_scale``; presets
  take it too).

Metrics (``metrics:``): per-sample metrics have ``name``,
``higher_is_better`` and ``score(images, prompts) -> (B,)``; set-level
metrics ``score_set(images, prompts) -> float`` per cell. Built in: demo
``alignment``, ``accuracy``, ``nn_distance`` (per sample) and
``frechet_pca`` (set), ``stroke_thickness`` (mean ink per sample, the
thickness LoRA's property); analytic ``posterior`` (P(prompted components | x0)
under the clean mixture); pairs ``exact_match``, ``slot_accuracy``,
``binding_error``, ``missing_digit`` and ``pairs_nn_distance`` (per sample,
:mod:`zsampling.metrics.pairs`); the weight-free quality guards
``clipping_fraction`` (demo and diffusers models) and ``saturation``
(diffusers models, RGB), both lower-is-better. :func:`register_metric` adds more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from zsampling.devices import torch_dtype
from zsampling.sweep.spec import ModelSpec, SpecError

ModelKind = Literal["demo", "pairs", "analytic", "tiny", "preset", "diffusers"]

TINY_PIPELINES: dict[str, str] = {
    "tiny-sd": "tiny_sd_pipeline",
    "tiny-sdxl": "tiny_sdxl_pipeline",
    "tiny-pixart": "tiny_pixart_pipeline",
    "tiny-hunyuan": "tiny_hunyuan_pipeline",
    "tiny-sd3": "tiny_sd3_pipeline",
    "tiny-flux": "tiny_flux_pipeline",
}
SMALL_MODEL_KINDS: tuple[str, ...] = ("demo", "pairs", "analytic", "tiny")
"""Kinds whose final images are saved by default (``images: auto``)."""
STEP_METRIC_KINDS: tuple[str, ...] = ("demo", "pairs", "analytic")
"""Kinds whose predicted x0 maps to metric inputs without a VAE (per-step metrics)."""

_OPTION_KEYS: dict[str, tuple[str, ...]] = {
    "demo": ("model_dir", "family", "lora", "lora_path"),
    "pairs": ("model_dir",),
    "analytic": ("d", "num_components", "radius", "std", "weights", "means", "covariances", "component_names",
                 "scheduler"),
    "tiny": ("seed", "guidance_embeds"),
    "preset": ("local_path", "unet_path", "vae", "vae_upcast", "variant", "cpu_offload", "compile", "height",
               "width", "lora_path"),
    "diffusers": ("height", "width", "variant", "revision", "local_files_only", "scheduler", "lora_path"),
}
_PIPELINE_KINDS: tuple[str, ...] = ("preset", "diffusers")
"""Kinds loaded as diffusers pipelines (metrics registered for "diffusers" apply to both)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# ------------------------------------------------------------------- model kinds
def model_kind(name: str, *, key: str = "model.name") -> ModelKind:
    """Classify a model name without loading anything.

    Raises:
        SpecError: the name is neither a known model, an existing diffusers
            directory, nor shaped like a hub id.
    """
    if name in ("demo", "pairs", "analytic"):
        return name  # type: ignore[return-value]
    if name in TINY_PIPELINES:
        return "tiny"
    if _preset(name) is not None:
        return "preset"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise SpecError(f"{key}: {name!r} is a path but not a diffusers pipeline directory (no model_index.json)")
        return "diffusers"
    if _HUB_ID.fullmatch(name) and not name.startswith((".", "/", "~")):
        return "diffusers"
    raise SpecError(
        f"{key}: unknown model {name!r}; allowed: 'demo', 'analytic', 'pairs', {', '.join(map(repr, TINY_PIPELINES))}, "
        f"a preset ({', '.join(_preset_names())}), a local diffusers directory (with model_index.json) "
        "or a hub id 'org/name'"
    )


def _preset(name: str) -> Any:
    """The :class:`~zsampling.presets.ModelPreset` called ``name`` (or an alias), else None."""
    from zsampling.presets import get_preset

    try:
        return get_preset(name)
    except ValueError:
        return None


def _preset_names() -> list[str]:
    from zsampling.presets import list_presets

    return list_presets()


def _check_preset_options(model: ModelSpec) -> None:
    options = model.options
    local = options.get("local_path")
    if local is not None:
        if not isinstance(local, str) or not (Path(local).expanduser() / "model_index.json").is_file():
            raise SpecError(f"model.options.local_path must be a local diffusers directory (with model_index.json), "
                            f"got {local!r}")
    for option in ("unet_path", "vae"):
        value = options.get(option)
        if value is not None and (not isinstance(value, str) or not value):
            raise SpecError(f"model.options.{option} must be a path or hub id (string), got {value!r}")
    for option in ("cpu_offload", "vae_upcast"):
        value = options.get(option)
        if value is not None and not isinstance(value, bool):
            raise SpecError(f"model.options.{option} must be true or false, got {value!r}")
    compile_ = options.get("compile")
    if compile_ is not None and not isinstance(compile_, (bool, Mapping)):
        raise SpecError(f"model.options.compile must be true, false or a mapping of torch.compile keywords, "
                        f"got {compile_!r}")
    variant = options.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise SpecError(f"model.options.variant must be 'auto', a variant name or null, got {variant!r}")
    if model.dtype == "float64":
        raise SpecError("model.dtype: presets load in float32, float16 or bfloat16, got 'float64'")
    if options.get("cpu_offload") and model.device == "cpu":
        raise SpecError("model.options.cpu_offload moves models between the CPU and an accelerator; it needs "
                        "model.device 'auto' or 'cuda', got 'cpu'")


def check_model_spec(model: ModelSpec, kind: str) -> None:
    """Check the model's options (and, for the demo model, that its files exist)."""
    allowed = _OPTION_KEYS[kind]
    for option in model.options:
        if option not in allowed:
            raise SpecError(f"unknown key model.options.{option!r} for model {model.name!r}; allowed: "
                            f"{', '.join(allowed)}")
    if kind == "demo":
        from zsampling.demo_model import CONFIG_FILE, WEIGHTS_FILE, lora_file

        directory = demo_dir(model)
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            if not (directory / file).is_file():
                raise SpecError(f"model 'demo': {directory / file} is missing (the demo weights are built by "
                                "scripts/train_demo_model.py; give model.options.model_dir for another copy)")
        if "lora" in model.options and "lora_path" in model.options:
            raise SpecError("model.options: give lora (a shipped demo LoRA) or lora_path (a file), not both")
        path = None
        if "lora" in model.options:
            try:
                path = directory / lora_file(model.options["lora"])
            except ValueError as error:
                raise SpecError(f"model.options.{error}") from None
        elif "lora_path" in model.options:
            path = Path(str(model.options["lora_path"])).expanduser()
        if path is not None and not path.is_file():
            raise SpecError(f"model 'demo': LoRA file {path} is missing (demo LoRAs are built by "
                            "scripts/train_demo_model.py --lora NAME)")
    elif kind == "pairs":
        from zsampling.pairs_model import CONFIG_FILE, WEIGHTS_FILE

        for file in (WEIGHTS_FILE, CONFIG_FILE):
            if not (pairs_dir(model) / file).is_file():
                raise SpecError(f"model 'pairs': {pairs_dir(model) / file} is missing (built by "
                                "scripts/train_pairs_model.py; give model.options.model_dir for another copy)")
    elif kind == "analytic":
        build_analytic(model.options, torch.float32, "cpu")
    elif kind == "tiny":
        seed = model.options.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"model.options.seed must be an integer >= 0, got {seed!r}")
    else:
        for option in ("height", "width"):
            value = model.options.get(option)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8):
                raise SpecError(f"model.options.{option} must be an integer >= 8 or absent, got {value!r}")
        if kind == "preset":
            _check_preset_options(model)
            return
        scheduler = model.options.get("scheduler", "ddim")
        if scheduler not in ("ddim", "keep"):
            raise SpecError(f"model.options.scheduler must be 'ddim' or 'keep', got {scheduler!r}")


def demo_dir(model: ModelSpec) -> Path:
    """Directory of the demo model's files: ``model_dir``, else the shipped copy of ``family``
    ("ddim", the default, or "flow": the rectified-flow digits model)."""
    from zsampling.demo_model import DEMO_FAMILIES, DEMO_MODEL_DIR, FLOW_DEMO_MODEL_DIR

    given = model.options.get("model_dir")
    if given:
        return Path(given).expanduser()
    family = model.options.get("family", "ddim")
    if family not in DEMO_FAMILIES:
        raise SpecError(f"model.options.family must be one of {', '.join(DEMO_FAMILIES)}, got {family!r}")
    return FLOW_DEMO_MODEL_DIR if family == "flow" else DEMO_MODEL_DIR


def demo_metrics_dir(model: ModelSpec) -> Path:
    """Directory of the demo metrics' arrays: ``model_dir`` when given, else the DDIM
    model's copy, which both families share (same data, same classifier)."""
    from zsampling.demo_model import DEMO_MODEL_DIR

    given = model.options.get("model_dir")
    return Path(given).expanduser() if given else DEMO_MODEL_DIR


def pairs_dir(model: ModelSpec) -> Path:
    """Directory of the pairs model's files."""
    from zsampling.pairs_model import PAIRS_MODEL_DIR

    given = model.options.get("model_dir")
    return Path(given).expanduser() if given else PAIRS_MODEL_DIR


def check_prompts(model: ModelSpec, kind: str, prompts: Sequence[str], negative: str | None) -> None:
    """Check prompts against the model's vocabulary (demo digits, analytic components)."""
    if kind == "demo":
        from zsampling.demo_model import negative_prompt_to_class, prompt_to_class

        check, negative_check = prompt_to_class, negative_prompt_to_class
    elif kind == "pairs":
        from zsampling.pairs_model import parse_prompt

        check = negative_check = parse_prompt
    elif kind == "analytic":
        mixture = build_analytic(model.options, torch.float32, "cpu")
        check = negative_check = mixture.components
    else:
        return
    for index, prompt in enumerate(prompts):
        try:
            check(prompt)
        except ValueError as error:
            raise SpecError(f"prompts[{index}]: {error}") from None
    if negative is not None:
        try:
            negative_check(negative)
        except ValueError as error:
            raise SpecError(f"negative_prompt: {error}") from None


def check_steps(model: ModelSpec, kind: str, steps: Sequence[int],
                schedules: Sequence[Sequence[int]] = ()) -> None:
    """T must not exceed the scheduler's num_train_timesteps, nor a custom list's t_0 reach it (read from
    configs, no weights)."""
    train = None
    if kind == "demo":
        from zsampling.demo_model import CONFIG_FILE

        config = json.loads((demo_dir(model) / CONFIG_FILE).read_text())
        train = config.get("scheduler", {}).get("num_train_timesteps")
    elif kind == "pairs":
        from zsampling.pairs_model import CONFIG_FILE as PAIRS_CONFIG

        config = json.loads((pairs_dir(model) / PAIRS_CONFIG).read_text())
        train = config.get("scheduler", {}).get("num_train_timesteps")
    elif kind == "analytic":
        from zsampling.denoisers.analytic import DEFAULT_SCHEDULER_CONFIG

        train = {**DEFAULT_SCHEDULER_CONFIG, **dict(model.options.get("scheduler") or {})}["num_train_timesteps"]
    elif kind == "tiny":
        train = 1000
    else:
        folder = model.options.get("local_path") if kind == "preset" else model.name
        path = Path(str(folder)).expanduser() / "scheduler" / "scheduler_config.json"
        if folder is not None and path.is_file():
            train = json.loads(path.read_text()).get("num_train_timesteps")
    if isinstance(train, int):
        for value in steps:
            if value > train:
                raise SpecError(f"grid.num_inference_steps: {value} exceeds the model's num_train_timesteps={train}")
        for timesteps in schedules:
            if timesteps[0] >= train:
                raise SpecError(f"grid.timesteps: t_0={timesteps[0]} must be < the model's num_train_timesteps={train}")


def build_analytic(options: Mapping[str, Any], dtype: torch.dtype, device: str | torch.device) -> Any:
    """A GaussianMixtureModel from spec options (``default()`` parameters or an explicit mixture).

    Raises:
        SpecError: naming the bad option.
    """
    from zsampling.denoisers.analytic import GaussianMixtureModel

    opts = dict(options)
    try:
        if "means" in opts or "covariances" in opts:
            missing = [k for k in ("weights", "means", "covariances") if k not in opts]
            if missing:
                raise ValueError(f"an explicit mixture needs weights, means and covariances; missing {missing}")
            extra = [k for k in ("d", "num_components", "radius", "std") if k in opts]
            if extra:
                raise ValueError(f"{extra} apply to the default mixture, not to an explicit one")
            return GaussianMixtureModel(opts["weights"], opts["means"], opts["covariances"],
                                        scheduler=opts.get("scheduler"), component_names=opts.get("component_names"),
                                        dtype=dtype, device=device)
        if "component_names" in opts:
            raise ValueError("component_names needs an explicit mixture (weights, means, covariances)")
        return GaussianMixtureModel.default(**opts, dtype=dtype, device=device)
    except (ValueError, TypeError) as error:
        raise SpecError(f"model.options (analytic): {error}") from None


# ---------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    """A loaded model plus what the runner needs to sample and score with it.

    ``prepare(prompts, negative)`` encodes a batch (a ``SamplingTarget``);
    ``to_images(x0)`` maps latents to metric inputs (demo: [0, 1] images,
    analytic: the points themselves); ``pipe`` is the pipeline-like object.
    """

    spec: ModelSpec
    kind: str
    pipe: Any
    device: torch.device
    dtype: torch.dtype
    height: int | None = None
    width: int | None = None
    _metrics: dict[str, Any] = field(default_factory=dict)

    def prepare(self, prompts: list[str], negative: str | None) -> Any:
        """Encode a batch of prompts (one negative prompt for all, or None)."""
        from zsampling.api import prepare

        negatives = None if negative is None else [negative] * len(prompts)
        return prepare(self.pipe, prompts, negatives, self.height, self.width)

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Metric inputs from latents without a VAE (demo and analytic only)."""
        if self.kind in ("demo", "pairs"):
            from zsampling.denoisers.small_unet import latents_to_images

            return latents_to_images(latents)
        if self.kind == "analytic":
            return latents
        raise ValueError(f"per-step metrics need the demo or analytic model, not {self.spec.name!r}")

    def metric(self, name: str) -> Any:
        """The metric object registered under ``name`` for this model (built once)."""
        if name not in self._metrics:
            self._metrics[name] = METRICS[name].factory(self)
        return self._metrics[name]


def load_model(spec: ModelSpec, device: torch.device) -> LoadedModel:
    """Load the model a spec names onto ``device`` (weights read here, never earlier)."""
    kind = model_kind(spec.name)
    dtype = torch_dtype(spec.dtype)
    options = dict(spec.options)
    height = width = None
    if kind == "demo":
        from zsampling.denoisers.demo import load_demo_pipeline

        pipe = load_demo_pipeline(device=device, dtype=dtype, model_dir=demo_dir(spec), lora=options.get("lora"),
                                  lora_path=options.get("lora_path"))
    elif kind == "pairs":
        from zsampling.denoisers.pairs import load_pairs_pipeline

        pipe = load_pairs_pipeline(device=device, dtype=dtype, model_dir=pairs_dir(spec))
    elif kind == "analytic":
        pipe = build_analytic(options, dtype, device)
    elif kind == "preset":
        from zsampling.presets import get_preset, load_preset_pipeline

        preset = get_preset(spec.name)
        passed = {k: options[k] for k in ("local_path", "unet_path", "vae", "vae_upcast", "variant", "cpu_offload",
                                           "compile", "lora_path") if k in options}
        pipe = load_preset_pipeline(preset.name, device=device, dtype=spec.dtype, **passed)
        pipe.set_progress_bar_config(disable=True)
        height, width = options.get("height", preset.height), options.get("width", preset.width)
    elif kind == "tiny":
        from zsampling import tiny_pipelines

        extra = {"guidance_embeds": bool(options["guidance_embeds"])} \
            if spec.name == "tiny-flux" and "guidance_embeds" in options else {}
        pipe = getattr(tiny_pipelines, TINY_PIPELINES[spec.name])(seed=options.get("seed", 0), **extra).to(device)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
    else:
        from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

        kwargs = {k: options[k] for k in ("variant", "revision", "local_files_only") if k in options}
        try:
            pipe = DiffusionPipeline.from_pretrained(spec.name, torch_dtype=dtype, **kwargs)
        except Exception as error:
            raise RuntimeError(f"cannot load diffusers pipeline {spec.name!r}: {error}") from error
        if options.get("scheduler", "ddim") == "ddim":
            if "FlowMatch" in type(pipe.scheduler).__name__:
                if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
                    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
            elif not isinstance(pipe.scheduler, DDIMScheduler):
                pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        if "lora_path" in options:
            pipe.load_lora_weights(str(options["lora_path"]), adapter_name="w2sd")
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        height, width = options.get("height"), options.get("width")
    return LoadedModel(spec=spec, kind=kind, pipe=pipe, device=device, dtype=dtype, height=height, width=width)


# ---------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class MetricEntry:
    """A registered metric: per-sample (``score``) or set-level (``score_set``)."""

    name: str
    level: Literal["sample", "set"]
    kinds: tuple[str, ...]
    factory: Callable[[LoadedModel], Any]
    higher_is_better: bool


METRICS: dict[str, MetricEntry] = {}
"""Registered metrics by name."""


def register_metric(name: str, factory: Callable[[LoadedModel], Any], *, level: Literal["sample", "set"],
                    kinds: Sequence[str], higher_is_better: bool) -> None:
    """Register a metric for sweeps.

    Args:
        name: the column name in the results (per sample) or cells table (set).
        factory: builds the scorer from the :class:`LoadedModel`; a per-sample
            scorer has ``score(images, prompts) -> (B,)``, a set-level one
            ``score_set(images, prompts) -> float``. ``images`` are
            ``target.decode(latents, "pt")``.
        level: "sample" or "set".
        kinds: model kinds it applies to ("demo", "analytic", "tiny", "diffusers"; "preset" models
            are diffusers pipelines and take the "diffusers" metrics too).
        higher_is_better: direction, for summaries.
    """
    if level not in ("sample", "set"):
        raise ValueError(f"level must be 'sample' or 'set', got {level!r}")
    unknown = [k for k in kinds if k not in _OPTION_KEYS]
    if unknown:
        raise ValueError(f"kinds must be from {tuple(_OPTION_KEYS)}, got {unknown}")
    METRICS[name] = MetricEntry(name, level, tuple(kinds), factory, higher_is_better)


def metrics_for(kind: str) -> tuple[str, ...]:
    """Names of the metrics registered for a model kind."""
    kinds = _PIPELINE_KINDS if kind in _PIPELINE_KINDS else (kind,)
    return tuple(name for name, entry in METRICS.items() if any(k in entry.kinds for k in kinds))


class PosteriorMetric:
    """Analytic alignment: P(prompted component(s) | x0) under the clean mixture (higher is better)."""

    name = "posterior"
    higher_is_better = True

    def __init__(self, mixture: Any) -> None:
        self.mixture = mixture

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) posteriors of points ``images`` (B, d) given their prompts."""
        out = torch.empty(len(prompts), dtype=torch.float64)
        for prompt in dict.fromkeys(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            out[rows] = self.mixture.posterior(images[rows], prompt).cpu()
        return out


class FrechetPCA:
    """Set-level Frechet distance of a cell's demo images to the digits data (PCA space; lower is better)."""

    name = "frechet_pca"
    higher_is_better = False

    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = model_dir

    def score_set(self, images: torch.Tensor, prompts: list[str]) -> float:
        from zsampling.metrics.demo import frechet_distance

        return frechet_distance(images, None, self.model_dir)


def _demo_metric(cls_name: str) -> Callable[[LoadedModel], Any]:
    def factory(model: LoadedModel) -> Any:
        from zsampling.metrics import demo

        return getattr(demo, cls_name)(demo_metrics_dir(model.spec))

    return factory


register_metric("alignment", _demo_metric("DigitAlignment"), level="sample", kinds=("demo",), higher_is_better=True)
register_metric("accuracy", _demo_metric("DigitAccuracy"), level="sample", kinds=("demo",), higher_is_better=True)
register_metric("nn_distance", _demo_metric("NearestNeighbourDistance"), level="sample", kinds=("demo",),
                higher_is_better=False)
register_metric("stroke_thickness", _demo_metric("StrokeThickness"), level="sample", kinds=("demo",),
                higher_is_better=True)
register_metric("frechet_pca", lambda model: FrechetPCA(demo_metrics_dir(model.spec)), level="set", kinds=("demo",),
                higher_is_better=False)


def _pairs_metric(name: str) -> Callable[[LoadedModel], Any]:
    def factory(model: LoadedModel) -> Any:
        from zsampling.metrics import pairs

        if name == "pairs_nn_distance":
            return pairs.PairsNearestNeighbourDistance(pairs_dir(model.spec))
        return pairs.PairScore(name, pairs_dir(model.spec))

    return factory


for _name, _higher in (("exact_match", True), ("slot_accuracy", True), ("binding_error", False),
                       ("missing_digit", False), ("pairs_nn_distance", False)):
    register_metric(_name, _pairs_metric(_name), level="sample", kinds=("pairs",), higher_is_better=_higher)
register_metric("posterior", lambda model: PosteriorMetric(model.pipe), level="sample", kinds=("analytic",),
                higher_is_better=True)


def _quality_metric(cls_name: str) -> Callable[[LoadedModel], Any]:
    def factory(model: LoadedModel) -> Any:
        from zsampling.metrics import quality

        return getattr(quality, cls_name)()

    return factory


register_metric("clipping_fraction", _quality_metric("ClippingFraction"), level="sample",
                kinds=("demo", "pairs", "diffusers"), higher_is_better=False)
register_metric("saturation", _quality_metric("Saturation"), level="sample", kinds=("diffusers",),
                higher_is_better=False)


def check_metric_files(model: ModelSpec, kind: str, metrics: Sequence[str]) -> None:
    """The demo metrics read ``metrics.safetensors``; refuse early when it is missing."""
    if kind == "demo" and any(m in ("alignment", "accuracy", "nn_distance", "frechet_pca") for m in metrics):
        from zsampling.demo_model import METRICS_FILE

        path = demo_metrics_dir(model) / METRICS_FILE
        if not path.is_file():
            raise SpecError(f"metrics: the demo metrics need {path} (built by scripts/train_demo_model.py)")
    if kind == "pairs":
        from zsampling.pairs_model import METRICS_FILE as PAIRS_METRICS

        path = pairs_dir(model) / PAIRS_METRICS
        if any(m in METRICS and "pairs" in METRICS[m].kinds and m != "clipping_fraction" for m in metrics) and \
                not path.is_file():
            raise SpecError(f"metrics: the pairs metrics need {path} (built by scripts/train_pairs_model.py)")
