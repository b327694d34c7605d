"""Weights & Biases logging of Z-Sampling runs.

:class:`WandbRecorder` is a sampler recorder (it records a scalars-only
:class:`~zsampling.trace.Trace` on the side, with no host sync in the loop)
and a logger: :meth:`WandbRecorder.log_run` sends

* the per-step scalars, averaged over the batch, with the diffusion step as
  the x axis (``diffusion_step``; keys ``zsampling/step/<scalar>``,
  ``zsampling/zig/<scalar>``, ``zsampling/reflection/<scalar>`` for the zag
  rows, which hold the semantic gain; rounds after the first get ``_r<r>``);
* the final images (``wandb.Image`` captioned with the prompt);
* the run config (``zsampling`` section: ZigzagConfig, schedule, versions,
  storage settings) and a ``wandb.Table`` of per-sample results (prompt,
  seed, image, NFE, total gain, final cumulative gain, mean gain cosine,
  final metric values; ``run`` counts the runs this recorder logged).

W&B must never cost a sample: every W&B call is guarded, and the first
failure (wandb not installed, no login, no network, a W&B bug) emits one
warning and turns W&B logging off for this recorder while sampling goes on.
``WANDB_MODE=offline`` and ``disabled`` work as usual. ``wandb`` is
imported on first use only, so importing zsampling never imports it.

Usage::

    wb = WandbRecorder(project="zsampling", mode="offline")
    out, trace = sample_with_trace(pipe, prompts, wandb=wb)   # or:
    out = zsampling.sample(pipe, prompts, recorder=wb); wb.log_run(out, prompts=prompts)
    wb.finish()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zsampling.sampler import Event
from zsampling.trace.data import Trace
from zsampling.trace.recorder import TraceRecorder
from zsampling.trace.schema import OPS

STEP_AXIS = "diffusion_step"
_OP_KEYS = {"zig": "zig", "zag": "reflection", "step": "step"}


class WandbRecorder:
    """Records a run's events and logs them (and the results) to W&B.

    Args:
        run: an existing ``wandb`` run to log to (it is not finished by
            :meth:`finish`); by default a run is started on first use with
            ``wandb.init(project=..., name=..., mode=..., dir=..., config=...,
            **init_kwargs)``.
        project, name, mode, dir, config, init_kwargs: passed to ``wandb.init``
            (``mode`` None respects ``WANDB_MODE``).
        prefix: key prefix of everything logged.
        recorder: the :class:`TraceRecorder` used when this object is passed
            as ``recorder=`` (default: scalars only).
        log_images / log_table: turn parts off.
    """

    def __init__(
        self,
        run: Any | None = None,
        *,
        project: str | None = None,
        name: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        config: Mapping[str, Any] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        prefix: str = "zsampling",
        recorder: TraceRecorder | None = None,
        log_images: bool = True,
        log_table: bool = True,
    ) -> None:
        if mode is not None and mode not in ("online", "offline", "disabled", "shared"):
            raise ValueError(f"mode must be one of 'online', 'offline', 'disabled', 'shared' or None, got {mode!r}")
        self.recorder = recorder if recorder is not None else TraceRecorder(keep="scalars")
        self.prefix = prefix
        self.log_images = log_images
        self.log_table = log_table
        self._run = run
        self._owns_run = run is None
        self._init = {"project": project, "name": name, "mode": mode, "dir": dir,
                      "config": dict(config or {}), **dict(init_kwargs or {})}
        self._failed = False
        self._table: Any | None = None
        self._columns: list[str] | None = None
        self._incremental: bool | None = None
        self.runs_logged = 0

    # ------------------------------------------------------------ recorder
    def record(self, event: Event) -> None:
        """Record the loop's event (the sampler's ``Recorder`` protocol)."""
        self.recorder.record(event)

    @property
    def enabled(self) -> bool:
        """False once a W&B failure turned logging off."""
        return not self._failed

    @property
    def run(self) -> Any | None:
        """The W&B run (None until first use, or after a failure)."""
        return None if self._failed else self._run

    # ------------------------------------------------------------- logging
    def log_run(self, output: Any | None = None, trace: Trace | None = None, *,
                prompts: Sequence[str] | None = None) -> None:
        """Log one finished run: per-step scalars, images, config, table rows.

        ``output`` is the :class:`~zsampling.SampleOutput` (for images and
        NFE); ``trace`` defaults to this recorder's own trace of the run.
        Never raises because of W&B.
        """
        if self._failed:
            return
        if trace is None:
            trace = self.recorder.trace
        if prompts is not None and trace.prompts is None:
            trace = trace.with_meta(prompts=list(prompts))
        try:
            self._log_run(output, trace)
        except Exception as error:  # W&B must never kill sampling
            self._fail("logging", error)

    def finish(self) -> None:
        """Finish the W&B run if this recorder started it. Never raises."""
        if self._failed or self._run is None:
            return
        try:
            if self._owns_run:
                self._run.finish()
        except Exception as error:
            self._fail("finish", error)
        finally:
            if self._owns_run:
                self._run = None

    def __enter__(self) -> WandbRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # ----------------------------------------------------------- internals
    def _fail(self, what: str, error: BaseException) -> None:
        self._failed = True
        warnings.warn(
            f"W&B {what} failed ({type(error).__name__}: {error}); W&B logging is off for this recorder, "
            "sampling goes on",
            RuntimeWarning,
            stacklevel=3,
        )

    def _ensure_run(self) -> Any:
        import wandb

        if self._run is None:
            kwargs = {key: value for key, value in self._init.items() if value is not None}
            self._run = wandb.init(**kwargs)
            self._owns_run = True
        if self.runs_logged == 0:
            self._run.define_metric(STEP_AXIS)
            self._run.define_metric(f"{self.prefix}/*", step_metric=STEP_AXIS)
        return self._run

    def _log_run(self, output: Any | None, trace: Trace) -> None:
        import wandb

        run = self._ensure_run()
        run.config.update({self.prefix: _run_config(trace)}, allow_val_change=True)
        for row in history_rows(trace, self.prefix):
            run.log(row)
        images = _images(output, trace) if self.log_images and output is not None else None
        if images is not None:
            prompts = trace.prompts or [""] * trace.num_samples
            run.log({
                f"{self.prefix}/images": [wandb.Image(image, caption=prompt) for image, prompt in
                                          zip(images, prompts, strict=True)],
                STEP_AXIS: trace.num_steps,
            })
        if self.log_table:
            columns, rows = sample_rows(trace, output)
            columns, rows = ["run", *columns], [[self.runs_logged, *row] for row in rows]
            if images is not None:
                columns = [*columns, "image"]
                prompts = trace.prompts or [""] * trace.num_samples
                rows = [[*row, wandb.Image(image, caption=prompt)]
                        for row, image, prompt in zip(rows, images, prompts, strict=True)]
            table = self._table_for(wandb, columns)
            for row in rows:
                table.add_data(*row)
            run.log({f"{self.prefix}/samples": table, STEP_AXIS: trace.num_steps})
            if self._incremental is False:
                self._table = None
        self.runs_logged += 1

    def _table_for(self, wandb: Any, columns: list[str]) -> Any:
        """One incremental table for all runs (a fresh table per run where the
        installed wandb has no incremental tables or the columns change)."""
        if self._table is not None and self._columns == columns:
            return self._table
        try:
            table = wandb.Table(columns=columns, log_mode="INCREMENTAL")
            self._incremental = True
        except TypeError:
            table = wandb.Table(columns=columns)
            self._incremental = False
        self._table, self._columns = table, columns
        return table


def history_rows(trace: Trace, prefix: str = "zsampling") -> list[dict[str, Any]]:
    """One W&B history row per diffusion step: every scalar and metric of the
    step's events, averaged over the batch (NaN-only values left out)."""
    values = {**trace.scalars, **trace.metrics}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        means = {name: np.nanmean(tensor.numpy().astype(np.float64), axis=1) for name, tensor in values.items()}
    ops = trace.events["op"].tolist()
    steps = trace.events["step"].tolist()
    rounds = trace.events["round"].tolist()
    t_eval = trace.events["t_eval"].tolist()
    rows: dict[int, dict[str, Any]] = {}
    for e, (code, step, round_) in enumerate(zip(ops, steps, rounds, strict=True)):
        op = OPS[code]
        row = rows.setdefault(step, {STEP_AXIS: step})
        if op == "step":
            row[f"{prefix}/timestep"] = t_eval[e]
        key = _OP_KEYS[op] if op == "step" or round_ == 0 else f"{_OP_KEYS[op]}_r{round_}"
        for name, mean in means.items():
            value = float(mean[e])
            if not math.isnan(value):
                row[f"{prefix}/{key}/{name}"] = value
    return [rows[step] for step in sorted(rows)]


def sample_rows(trace: Trace, output: Any | None = None) -> tuple[list[str], list[list[Any]]]:
    """Per-sample summary: ids, prompt, seed, NFE, gain totals, final metrics."""
    ops = np.asarray(trace.events["op"].tolist())
    zag = ops == OPS.index("zag")
    scalars = {name: tensor.numpy().astype(np.float64) for name, tensor in trace.scalars.items()}
    seeds = _seeds(trace)
    nfe = trace.meta.get("nfe", getattr(output, "nfe", None))
    columns = ["sample", "prompt", "seed", "nfe", "final_latent_norm", "gain_total", "gain_cum_norm_final",
               "gain_cos_mean", "gap_norm_total", "residual_norm_total", *sorted(trace.metrics)]
    prompts = trace.prompts or [""] * trace.num_samples
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, sample_id in enumerate(trace.sample_ids):
            row: list[Any] = [
                sample_id, prompts[b], seeds[b], nfe,
                _finite(scalars["latent_norm"][-1, b]),
                _finite(np.nansum(scalars["gain_norm"][zag, b])) if zag.any() else None,
                _last(scalars["gain_cum_norm"][:, b]),
                _finite(np.nanmean(scalars["gain_cos"][zag, b])) if zag.any() else None,
                _finite(np.nansum(scalars["gap_norm"][zag, b])) if zag.any() else None,
                _finite(np.nansum(scalars["residual_norm"][zag, b])) if zag.any() else None,
            ]
            row += [_last(trace.metrics[name][:, b].numpy().astype(np.float64)) for name in sorted(trace.metrics)]
            rows.append(row)
    return columns, rows


def _seeds(trace: Trace) -> list[int | None]:
    seed = trace.meta.get("seed") or {}
    if "seeds" in seed:
        return list(seed["seeds"])
    if "generator_seeds" in seed:
        return list(seed["generator_seeds"])
    single = seed.get("seed", seed.get("generator_seed"))
    return [single] * trace.num_samples


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _last(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


def _run_config(trace: Trace) -> dict[str, Any]:
    meta = trace.meta
    return {
        "config": meta.get("config"),
        "schedule": {k: v for k, v in (meta.get("schedule") or {}).items() if k != "alphas"},
        "versions": meta.get("versions"),
        "storage": meta.get("storage"),
        "branches": meta.get("branches"),
        "batch_size": meta.get("batch_size"),
    }


def _images(output: Any, trace: Trace) -> list[Any] | None:
    """The output's final images as a list wandb.Image accepts (None for latents)."""
    images = getattr(output, "images", None)
    if images is None or trace.meta.get("output_type") == "latent" or images is getattr(output, "latents", None):
        return None
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            return None
        pixels = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return [image.permute(1, 2, 0).numpy() for image in pixels]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else None
    if isinstance(images, (list, tuple)):
        return list(images)
    return None
