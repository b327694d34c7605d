"""Reading and validating sweep specs: the checks that need the model registry.

:mod:`zsampling.sweep.spec` holds the spec's data types and knob validators
and imports nothing of :mod:`zsampling.sweep`; this module reads spec files
and validates a mapping into a :class:`~zsampling.sweep.spec.SweepSpec`,
checking the model name, the prompts against the model's vocabulary, the
metrics against its registry, lambda against every T and the matched
baselines against the grid -- everything that needs the models, cells and
matched modules (so every arrow inside the package points down).
"""

from __future__ import annotations

import difflib
import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsampling.config import KNOB_DEFAULTS, KNOBS, OPTIONAL_KNOBS, SCHEDULE_KNOB
from zsampling.devices import DTYPE_NAMES, torch_dtype
from zsampling.prompts import SHIPPED_PROMPTS, PromptFileError, load_prompts
from zsampling.schedule import resolve_timesteps
from zsampling.sweep import models
from zsampling.sweep.cells import expand_cells
from zsampling.sweep.matched import check_matched_spec
from zsampling.sweep.spec import (
    BRANCH_MODES,
    MODEL_KEYS,
    NOISE_MODES,
    OUTPUT_TYPES,
    SEED_KEYS,
    TOP_KEYS,
    TRACE_KEYS,
    ModelSpec,
    SpecError,
    SweepSpec,
    TraceSpec,
    check_knob,
    choice,
    plain_json,
    positive_int,
)
from zsampling.trace.data import KEEP_KINDS


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a spec file (YAML, TOML or JSON).

    Relative prompt-file paths are resolved against the spec's directory.
    ``overrides`` replace top-level keys (e.g. ``{"batch_size": 8}``) before
    validation.

    Raises:
        SpecError: unreadable file, syntax error, or an invalid setting.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise SpecError(f"{path}: spec files must end in .yaml, .yml, .toml or .json, "
                            f"got {suffix or 'no suffix'!r}")
    except SpecError:
        raise
    except Exception as error:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        raise SpecError(f"{path}: cannot parse {suffix[1:].upper()}: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: a spec must be a mapping of keys ({', '.join(TOP_KEYS)}), got {type(data).__name__}")
    data = {**data, **dict(overrides or {})}
    try:
        return parse_spec(data, base_dir=path.parent)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def parse_spec(data: Mapping[str, Any], *, base_dir: str | Path | None = None) -> SweepSpec:
    """Validate a spec mapping into a :class:`SweepSpec`.

    Checks every key and value, the model name (without loading it), the
    prompts against the model's vocabulary (demo digits, analytic
    components), the metrics against the model's registry and lambda
    against every T of the grid.

    Raises:
        SpecError: naming the first bad key and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"a spec must be a mapping, got {type(data).__name__}")
    _check_keys(data, TOP_KEYS, "")
    for key in ("model", "prompts", "seeds"):
        if key not in data:
            raise SpecError(f"missing required key {key!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    model = _parse_model(data["model"])
    kind = models.model_kind(model.name, key="model.name")
    prompts, source = _parse_prompts(data["prompts"], base)
    negative = data.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise SpecError(f"negative_prompt must be a string or null, got {negative!r}")
    seeds, paired = _parse_seeds(data["seeds"], len(prompts))
    noise = choice("noise", data.get("noise", "seed" if paired else "seed_prompt"), NOISE_MODES)
    if paired and noise != "seed":
        raise SpecError(f"noise: paired seeds seed sample i's generator with exactly seed offset + i (noise 'seed'); "
                        f"got noise {noise!r} (leave noise out or write noise: seed)")
    grid = _parse_grid(data.get("grid", {}))
    metrics = _parse_names("metrics", data.get("metrics", []))
    trace = _parse_trace(data.get("trace", True))
    output_type = choice("output_type", data.get("output_type", "pt"), OUTPUT_TYPES)
    images = data.get("images", "auto")
    if images == "auto" or images is None:
        images = kind in models.SMALL_MODEL_KINDS
    if not isinstance(images, bool):
        raise SpecError(f"images must be true, false or 'auto', got {images!r}")
    batch_size = positive_int("batch_size", data.get("batch_size", 64))
    branches = choice("branches", data.get("branches", "needed"), BRANCH_MODES)
    matched = data.get("matched_baselines", False)
    if not isinstance(matched, bool):
        raise SpecError(f"matched_baselines must be true or false, got {matched!r}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"name must be a string, got {name!r}")

    lora_knobs = [knob for knob in grid if knob.endswith(".lora_scale") and any(v is not None for v in grid[knob])]
    if lora_knobs and not {"lora_path", "lora"} & set(model.options):
        raise SpecError(f"grid.{lora_knobs[0]}: LoRA scales need a LoRA: set model.options.lora_path (a preset, "
                        "diffusers or demo model) or model.options.lora (a shipped demo LoRA)")
    models.check_model_spec(model, kind)
    models.check_prompts(model, kind, prompts, negative)
    allowed = models.metrics_for(kind)
    for index, metric in enumerate(metrics):
        if metric not in allowed:
            raise SpecError(
                f"metrics[{index}]: unknown metric {metric!r} for model {model.name!r}; "
                f"allowed: {', '.join(allowed) or 'none (register one with zsampling.sweep.register_metric)'}"
            )
    if trace is not None and trace.decode_every is not None and kind == "analytic":
        raise SpecError("trace.decode_every: the analytic model's samples are points, not images; keep x0 instead "
                        "(trace.keep: [x0])")
    if trace is not None:
        per_sample = [m for m in allowed if models.METRICS[m].level == "sample"]
        for index, metric in enumerate(trace.step_metrics):
            if kind not in models.STEP_METRIC_KINDS:
                raise SpecError(f"trace.step_metrics: per-step metrics need the demo or analytic model, "
                                f"got model {model.name!r}")
            if metric not in per_sample:
                raise SpecError(f"trace.step_metrics[{index}]: unknown per-sample metric {metric!r} for model "
                                f"{model.name!r}; allowed: {', '.join(per_sample) or 'none'}")
    models.check_metric_files(model, kind, [*metrics, *(trace.step_metrics if trace else ())])
    schedules = _check_schedules(grid, matched)
    models.check_steps(model, kind, grid["num_inference_steps"], schedules)
    step_counts = sorted({*(grid["num_inference_steps"] if None in grid.get(SCHEDULE_KNOB, (None,)) else ()),
                          *(len(timesteps) for timesteps in schedules)})
    for lam in grid["zigzag_steps"]:
        for steps in step_counts:
            if lam != "full" and lam > steps - 1:
                raise SpecError(
                    f"grid.zigzag_steps: lambda={lam} is > T-1={steps - 1} for T={steps} steps; "
                    "lambda must be in 0..T-1 for every T of the grid (or 'full' for T-1)"
                )
    count = len(prompts) if paired else len(prompts) * len(seeds)
    if count < 2 and any(models.METRICS[m].level == "set" for m in metrics):
        raise SpecError("metrics: set-level metrics (e.g. frechet_pca) need at least 2 samples per cell "
                        f"({'paired prompts' if paired else 'prompts x seeds'} = {count})")
    spec = SweepSpec(
        model=model, prompts=prompts, seeds=seeds, grid=grid, name=name, negative_prompt=negative, noise=noise,
        metrics=metrics, trace=trace, images=images, output_type=output_type, batch_size=batch_size,
        branches=branches, prompt_source=source, matched_baselines=matched, paired=paired,
    )
    if matched:
        check_matched_spec(spec, expand_cells(spec))
    return spec


# --------------------------------------------------------------------- sections
def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            place = f"{where}." if where else ""
            raise SpecError(f"unknown key {place}{key!r}{hint}; allowed keys{' of ' + where if where else ''}: "
                            f"{', '.join(allowed)}")








def _parse_names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"{key} must be a list of names, got {value!r}")
    names: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{key}[{index}] must be a name (string), got {item!r}")
        if item in names:
            raise SpecError(f"{key}[{index}]: {item!r} is listed twice")
        names.append(item)
    return tuple(names)


def _parse_model(value: Any) -> ModelSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"model must be a name or a mapping with keys {', '.join(MODEL_KEYS)}, got {value!r}")
    _check_keys(value, MODEL_KEYS, "model")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"model.name must be a non-empty string (demo, analytic, tiny-sd, a path or a hub id), "
                        f"got {name!r}")
    dtype = _dtype_name("model.dtype", value.get("dtype", "float32"))
    device = value.get("device", "auto")
    if not isinstance(device, str) or not device:
        raise SpecError(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device != "auto":
        import torch

        try:
            torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise SpecError(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise SpecError(f"model.options must be a mapping, got {options!r}")
    try:
        json.dumps(plain_json(options), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise SpecError(f"model.options must hold plain JSON values: {error}") from error
    return ModelSpec(name=name.strip(), dtype=dtype, device=device, options=plain_json(options))


def _parse_prompts(value: Any, base: Path) -> tuple[tuple[str, ...], str]:
    if isinstance(value, str):
        raise SpecError("prompts must be a list of strings or {file: PATH, column: NAME, limit: N}; "
                        f"got the string {value!r} (write [{value!r}] for one prompt)")
    if isinstance(value, Mapping):
        _check_keys(value, ("file", "column", "limit"), "prompts")
        if "file" not in value:
            raise SpecError("prompts: a prompt file needs the key 'file'")
        path = Path(str(value["file"]))
        if not path.is_absolute():
            path = base / path
        if not path.exists() and str(value["file"]).partition(":")[0] in SHIPPED_PROMPTS:
            path = Path(str(value["file"]))  # a shipped list by name ("parti", "geneval:two_object")
        limit = value.get("limit")
        if limit is not None:
            limit = positive_int("prompts.limit", limit)
        prompts = _read_prompt_file(path, value.get("column"), limit)
        if not prompts:
            raise SpecError(f"prompts.file {str(path)!r} holds no prompts")
        return tuple(prompts), str(path)
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"prompts must be a non-empty list of strings or {{file: PATH}}, got {value!r}")
    prompts = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, numbers.Integral)):
            raise SpecError(f"prompts[{index}] must be a string, got {item!r}")
        prompts.append(str(item))  # YAML reads the demo prompt 3 as an int
    return tuple(prompts), "inline"


def _read_prompt_file(path: Path, column: Any, limit: int | None) -> list[str]:
    """A prompt file through :func:`zsampling.prompts.load_prompts` (any benchmark format).

    Without ``column`` the format is detected (DrawBench, Pick-a-Pic, HPD v2,
    GenEval, PartiPrompts TSV with its quotes kept, text with ``#`` comments,
    generic tables); with ``column`` the file is read as a table and that
    column holds the prompts.
    """
    if column is not None and (not isinstance(column, str) or not column):
        raise SpecError(f"prompts.column must be a column name (string), got {column!r}")
    try:
        if column is None:
            frame = load_prompts(path, limit=limit)
        else:
            if path.is_file() and path.suffix.lower() == ".txt":
                raise SpecError("prompts.column applies to tables (.csv/.tsv/.parquet/.jsonl/.json), not .txt "
                                "(one prompt a line)")
            frame = load_prompts(path, format="table", limit=limit, prompt_column=column)
    except PromptFileError as error:
        if column is not None and "no prompt column" in str(error):
            raise SpecError(f"prompts.column {column!r} is not a column of the file: {error}") from None
        hint = "; give prompts.column to name the prompt column" if "no prompt column" in str(error) else ""
        raise SpecError(f"prompts.file: {error}{hint}") from None
    return [str(prompt) for prompt in frame["prompt"]]


def _parse_seeds(value: Any, num_prompts: int) -> tuple[tuple[int, ...], bool]:
    """The seeds and whether they are paired with the prompts (seed offset + i for prompt i)."""
    if value == "paired":
        value = {"paired": True}
    if isinstance(value, Mapping):
        _check_keys(value, SEED_KEYS, "seeds")
        paired = value.get("paired", False)
        if not isinstance(paired, bool):
            raise SpecError(f"seeds.paired must be true or false, got {paired!r}")
        if paired:
            extra = [key for key in ("start", "count") if key in value]
            if extra:
                raise SpecError(f"seeds.{extra[0]}: paired seeds are offset + i for prompt i (one per prompt); "
                                "give seeds.offset instead of start/count")
            offset = value.get("offset", 0)
            if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or not 0 <= offset:
                raise SpecError(f"seeds.offset must be an integer >= 0, got {offset!r}")
            if int(offset) + num_prompts > 2**63:
                raise SpecError(f"seeds.offset: offset + number of prompts must stay below 2**63, got {offset!r}")
            return tuple(range(int(offset), int(offset) + num_prompts)), True
        if "offset" in value:
            raise SpecError("seeds.offset applies to paired seeds (seeds: {paired: true, offset: S}); "
                            "use seeds.start for a range of seeds")
        start = value.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
            raise SpecError(f"seeds.start must be an integer >= 0, got {start!r}")
        count = positive_int("seeds.count", value.get("count"))
        return tuple(range(int(start), int(start) + count)), False
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"seeds must be a non-empty list of integers, {{start: S, count: N}} or paired "
                        f"({{paired: true, offset: S}}), got {value!r}")
    seeds: list[int] = []
    for index, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise SpecError(f"seeds[{index}] must be an integer in 0..2**63-1, got {seed!r}")
        if int(seed) in seeds:
            raise SpecError(f"seeds[{index}]: seed {seed} is listed twice")
        seeds.append(int(seed))
    return tuple(seeds), False


def _parse_grid(value: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, Mapping):
        raise SpecError(f"grid must be a mapping of knobs ({', '.join(KNOBS)}) to values, got {value!r}")
    _check_keys(value, (*KNOBS, *OPTIONAL_KNOBS), "grid")
    grid: dict[str, tuple[Any, ...]] = {}
    for knob in (*KNOBS, *(k for k in OPTIONAL_KNOBS if k in value)):
        raw = value.get(knob, KNOB_DEFAULTS.get(knob))
        items = _schedules(raw) if knob == SCHEDULE_KNOB else _expand_values(f"grid.{knob}", raw)
        checked = [check_knob(f"grid.{knob}[{index}]", knob, item) for index, item in enumerate(items)]
        seen: list[Any] = []
        for index, item in enumerate(checked):
            if item in seen:
                raise SpecError(f"grid.{knob}[{index}]: value {items[index]!r} is listed twice")
            seen.append(item)
        grid[knob] = tuple(checked)
    return grid


def _check_schedules(grid: Mapping[str, tuple[Any, ...]], matched: bool) -> list[tuple[int, ...]]:
    """The grid's custom timestep lists (names resolved), refusing what they cannot run with: the
    "official" zag (its stride is undefined on a list) and matched baselines (which raise T)."""
    schedules = [resolve_timesteps(v) for v in grid.get(SCHEDULE_KNOB, ()) if v is not None]
    if not schedules:
        return []
    if "official" in grid["zag"] and any(lam != 0 for lam in grid["zigzag_steps"]):
        raise SpecError("grid.zag: the 'official' operator reproduces the released code's stride 1000 // T, which a "
                        "custom timestep list (grid.timesteps) does not have; use zag: [ddim] (the exact inversion)")
    if matched:
        raise SpecError("matched_baselines: a matched baseline raises T to spend the Z cell's network rows, which a "
                        "fixed timestep list (grid.timesteps) cannot; set matched_baselines: false")
    return schedules


def _schedules(raw: Any) -> list[Any]:
    """The values of ``grid.timesteps``: one name, or a list of schedules (null, names, lists)."""
    if raw is None or isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise SpecError(f"grid.timesteps must be a list of schedules (null, a name or a list of timesteps), "
                        f"got {raw!r}")
    if all(isinstance(item, numbers.Integral) for item in raw):
        raise SpecError(f"grid.timesteps must be a list of schedules; one custom list is written in brackets "
                        f"twice: timesteps: [{list(raw)!r}]")
    return list(raw)


def _expand_values(key: str, raw: Any) -> list[Any]:
    if isinstance(raw, Mapping):
        _check_keys(raw, ("range",), key)
        bounds = raw.get("range")
        if not isinstance(bounds, (list, tuple)) or not 1 <= len(bounds) <= 3 or not all(
                isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in bounds):
            raise SpecError(f"{key}.range must be [stop], [start, stop] or [start, stop, step] of integers "
                            f"(Python's range), got {bounds!r}")
        values = list(range(*[int(b) for b in bounds]))
        if not values:
            raise SpecError(f"{key}.range {list(bounds)} is empty")
        return values
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise SpecError(f"{key} must not be an empty list")
    return values





def _parse_trace(value: Any) -> TraceSpec | None:
    if value is False or value is None:
        return None
    if value is True:
        return TraceSpec()
    if isinstance(value, str):
        value = {"keep": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"trace must be true, false or a mapping with keys {', '.join(TRACE_KEYS)}, got {value!r}")
    _check_keys(value, TRACE_KEYS, "trace")
    keep = value.get("keep", "scalars")
    kinds = list(KEEP_KINDS) if keep == "all" else ([keep] if isinstance(keep, str) else keep)
    if not isinstance(kinds, (list, tuple)) or not all(k in KEEP_KINDS for k in kinds):
        raise SpecError(f"trace.keep must be 'all' or a list from {', '.join(KEEP_KINDS)}, got {keep!r}")
    kinds = sorted(set(kinds) | {"scalars"}, key=KEEP_KINDS.index)
    latent_dtype = _dtype_name("trace.latent_dtype", value.get("latent_dtype", "float16"))
    downsample = value.get("downsample")
    if downsample is not None:
        downsample = positive_int("trace.downsample", downsample)
    every = positive_int("trace.every", value.get("every", 1))
    decode_every = value.get("decode_every")
    if decode_every is not None:
        decode_every = positive_int("trace.decode_every", decode_every)
    step_metrics = _parse_names("trace.step_metrics", value.get("step_metrics", []))
    return TraceSpec(keep=tuple(kinds), latent_dtype=latent_dtype, downsample=downsample,
                     step_metrics=step_metrics, every=every, decode_every=decode_every)


def _dtype_name(key: str, value: Any) -> str:
    """The canonical name ("float16", ...) of any dtype name zsampling accepts (``fp16``, ``half``, ...),
    so specs that spell one dtype two ways hash alike; else a SpecError naming ``key`` and the names."""
    try:
        return str(torch_dtype(str(value))).removeprefix("torch.")
    except ValueError:
        raise SpecError(f"{key} must be one of {', '.join(DTYPE_NAMES)}, got {value!r}") from None

