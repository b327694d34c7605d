"""Running a sweep: prefix sharing, batching, atomic cells, resume, processes.

Why: a Z-Sampling ablation over the window lambda spends most of its
network calls on identical work -- every cell with lambda >= k runs the
same k reflecting steps -- and runs long enough to be killed, resumed,
extended and spread over GPUs. This module does the work once, writes each
finished cell so a kill loses at most the cells in flight, and splits cells
across ``accelerate`` processes.

How (one lambda-sharing :class:`~zsampling.sweep.cells.Group`, one batch of
samples): the trunk is the cell with the largest lambda, run with
:func:`~zsampling.zigzag_sample`. At step i = lambda_k of a smaller lambda the
trunk's first zig from x_i *is* that cell's ordinary step i (same x, same
eps_g1, same move), so the branch takes the zig's output as x_{i+1} for
free and finishes with ``zigzag_sample(..., start=lambda_k + 1)``; a trace
recorder per cell receives exactly the events of the cell's own run (the
trunk's events before lambda_k, the zig re-labelled as the step, then the
branch's). Outputs and traces equal running every cell alone (tested to
1e-5; bitwise on CPU). Rows: trunk 2T + 3 lambda_max (g2 = 0) plus
2 (T - 1 - lambda_k) per branch, instead of 2T + 3 lambda_k per cell.

Accounting: ``nfe`` is a cell's per-sample network rows as if run alone;
each record also stores the rows actually spent (a shared trunk's rows are
attributed once, to the trunk cell) and both totals go to the manifest.
``wall_time_s`` is as if alone: encoding + the trunk up to the branch point
+ the branch + decoding (metrics not included).

Processes: under ``accelerate launch`` (WORLD_SIZE > 1) each process takes a
deterministic round-robin share of the remaining groups, writes its own
cells, and the main process merges the tables once every cell is on disk.

Matched baselines (``matched_baselines: true``): once every grid cell is on
disk, each process derives the plain-CFG baseline cells of the finished
Z-Sampling cells from their traces (:mod:`zsampling.sweep.matched`; the
derivation is deterministic, so every process plans the same cells), runs
its share of them like any other cell, and the tables include them. Every
traced cell's record carries its effective-guidance summary
(:func:`zsampling.trace.guidance_summary`), merged into
``effective_guidance.parquet``; the derived cells are listed in
``matched.parquet``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsampling.api import initial_latents, route_legs, target_schedule
from zsampling.devices import resolve_device, torch_dtype
from zsampling.provenance import package_versions
from zsampling.sampler import Event, expected_network_rows, guidance_mode, zigzag_sample
from zsampling.schedule import Schedule
from zsampling.sweep import results as res
from zsampling.sweep.cells import (
    Cell,
    Group,
    Sample,
    Unit,
    assign_groups,
    batches,
    expand_cells,
    initial_noise,
    parse_assignments,
    plan_groups,
    select_cells,
    sweep_samples,
)
from zsampling.sweep.matched import derive_matched
from zsampling.sweep.models import METRICS, LoadedModel, load_model
from zsampling.sweep.spec import SpecError, SweepSpec
from zsampling.sweep.validate import load_spec

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "zsampling.sweep.manifest"


class SpecChangedError(SpecError):
    """The output directory holds a sweep of a different spec (use ``extend=True``)."""


@dataclass
class SweepResult:
    """What :func:`run_sweep` did (in this process).

    ``results``/``cells`` are the merged tables (main process only, else
    None); ``network_rows_spent`` / ``network_rows_alone`` cover the cells
    this process ran in this call (alone: the same cells run one by one);
    ``compute_s`` is this process's time running its cells (model loading
    excluded), ``wall_time_s`` the whole call.
    """

    out: Path
    cells_total: int
    cells_run: int
    cells_skipped: int
    network_rows_spent: int
    network_rows_alone: int
    wall_time_s: float
    compute_s: float = 0.0
    results: Any | None = None
    cells: Any | None = None
    manifest: dict[str, Any] | None = None


# ------------------------------------------------------------------- processes
class _Processes:
    """Process index / count / device under ``accelerate launch``, else a single process."""

    def __init__(self, distributed: bool | None) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.state: Any | None = None
        self.index, self.num, self.device = 0, 1, None
        if distributed if distributed is not None else world > 1:
            from accelerate import PartialState

            cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") \
                or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)
            self.index, self.num, self.device = self.state.process_index, self.state.num_processes, self.state.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        if self.state is not None and self.num > 1:
            self.state.wait_for_everyone()


# ------------------------------------------------------------------------ entry
def run_sweep(
    spec: SweepSpec | str | Path,
    out: str | Path,
    *,
    extend: bool = False,
    select: Mapping[str, Any] | Sequence[str] | None = None,
    share_prefix: bool = True,
    progress: bool = True,
    device: str | None = None,
    batch_size: int | None = None,
    wandb: Any | None = None,
    distributed: bool | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into ``out``.

    Args:
        spec: a :class:`SweepSpec` or the path of a spec file.
        out: output directory (created); see :mod:`zsampling.sweep` for its layout.
        extend: accept a spec that differs from the one ``out`` was started
            with: its new cells run, the old cells stay in the tables.
        select: run only the matching cells: ``{"zigzag_steps": 5}`` or
            ``["zigzag_steps=5", ...]`` (what ``--cell`` and ``wandb agent`` give).
        share_prefix: share the zigzag prefix of cells that differ only in
            lambda (False runs each cell alone: the benchmark's baseline).
        progress: show a progress bar over cells with an ETA.
        device: overrides ``model.device``.
        batch_size: overrides ``batch_size`` (samples per network call).
        wandb: a :class:`~zsampling.sweep.wandb_log.WandbOptions` to log the
            merged tables to one W&B run (failures warn, never raise).
        distributed: force (True) or forbid (False) ``accelerate``'s
            PartialState; None uses it when WORLD_SIZE > 1.
        on_progress: called with the (fractional) number of cells each batch
            completes, as the progress bar advances (an outer bar over several
            sweeps: ``zsampling demo``).

    Raises:
        SpecError: an invalid spec or selection (before any model loads).
        SpecChangedError: ``out`` holds another spec and ``extend`` is False.
    """
    start = time.perf_counter()
    spec, cells = _resolve(spec, batch_size, select)
    out = Path(out)
    procs = _Processes(distributed)
    # read once, before any process can write a cell, so every process plans the same remaining work
    done = res.read_records(out)
    context = _open(spec, out, procs, done, extend, device)
    executor = _Executor(context, _Progress(progress, procs.index, on_progress))
    stats = _run_phase(executor, procs, cells, done, share_prefix)
    derived: list[Cell] = []
    if spec.matched_baselines:
        records = res.read_records(out)  # every grid cell is on disk now (each process waited for all)
        pairs = derive_matched(spec, out, cells, records)
        derived = [cell for cell, _ in pairs]
        stats += _run_phase(executor, procs, derived, records, share_prefix,
                            matched={cell.hash: info for cell, info in pairs})
    result = SweepResult(out=out, cells_total=stats.total, cells_run=stats.cells, cells_skipped=stats.skipped,
                         network_rows_spent=stats.spent, network_rows_alone=stats.alone,
                         wall_time_s=time.perf_counter() - start, compute_s=stats.compute_s)
    if procs.is_main:
        result.results, result.cells, result.manifest = _merge(spec, out, cells, derived, wandb)
    return result


# ----------------------------------------------------------------------- phases
def _resolve(spec: SweepSpec | str | Path, batch_size: int | None,
             select: Mapping[str, Any] | Sequence[str] | None) -> tuple[SweepSpec, list[Cell]]:
    """The validated spec (with the ``batch_size`` override) and its selected cells."""
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SpecError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        spec = dataclasses.replace(spec, batch_size=batch_size)
    cells = expand_cells(spec)
    if select:
        values = parse_assignments(select) if not isinstance(select, Mapping) else dict(select)
        cells = select_cells(spec, cells, values)
    return spec, cells


def _open(spec: SweepSpec, out: Path, procs: _Processes, done: Mapping[str, Mapping[str, Any]], extend: bool,
          device: str | None) -> _Context:
    """Check ``out`` against the spec, start this session's manifest and name where cells are written from."""
    previous = read_manifest(out)
    check_compatible(spec, out, previous, done, extend)
    procs.barrier()
    if procs.is_main:
        for name in (res.CELLS_DIR, res.TRACES_DIR, res.IMAGES_DIR):
            (out / name).mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(out)
        res.atomic_write_json(out / MANIFEST, _start_manifest(spec, previous, procs.num))
    procs.barrier()
    session = (read_manifest(out) or {}).get("session", {}).get("id", "")
    return _Context(spec=spec, out=out, device=resolve_device(device or spec.model.device, procs.device),
                    generation=_generation(spec, previous), session=session, process=procs.index,
                    processes=procs.num)


def _run_phase(executor: _Executor, procs: _Processes, cells: Sequence[Cell], done: Mapping[str, Any],
               share_prefix: bool, matched: Mapping[str, dict[str, Any]] | None = None) -> _Stats:
    """Plan, assign, run, wait: the cells not in ``done`` run, this process's share here, and every
    process returns once all of them are on disk (the next phase reads them)."""
    todo = [cell for cell in cells if cell.hash not in done]
    groups = plan_groups(todo, share_prefix=share_prefix)
    stats = executor.run(assign_groups(groups, procs.index, procs.num), matched or {})
    if procs.num > 1:
        _wait_for(executor.context.out, todo)
        procs.barrier()
    return dataclasses.replace(stats, total=len(cells), skipped=len(cells) - len(todo))


def _merge(spec: SweepSpec, out: Path, cells: Sequence[Cell], derived: Sequence[Cell],
           wandb: Any | None) -> tuple[Any, Any, dict[str, Any]]:
    """Merge every record on disk into the tables and the finished manifest (main process); log to W&B."""
    records = res.read_records(out)
    results, cell_table = res.build_tables(records.values())
    res.write_tables(out, results, cell_table)
    res.write_guidance_tables(out, *res.build_guidance_tables(records.values()))
    manifest = _finish_manifest(out, spec, records, cells, derived)
    if wandb is not None:
        from zsampling.sweep.wandb_log import log_sweep

        log_sweep(wandb, out, results, cell_table, manifest)
    return results, cell_table, manifest


# --------------------------------------------------------------------- manifest
def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest of an output directory (None when there is none)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"{path} is not a readable sweep manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise SpecError(f"{path} is not a zsampling sweep manifest; choose another --out")
    return manifest


def check_compatible(spec: SweepSpec, out: Path, previous: Mapping[str, Any] | None,
                     records: Mapping[str, Mapping[str, Any]], extend: bool) -> None:
    """Refuse a changed spec against an existing output directory unless ``extend``."""
    if extend:
        return
    if previous is not None and previous.get("spec_hash") != spec.hash:
        old = previous.get("spec_hashed") or {}
        new = spec.hashed_dict()
        changed = sorted({*old, *new} - {k for k in {*old, *new} if old.get(k) == new.get(k)})
        raise SpecChangedError(
            f"{out} holds a sweep of another spec (hash {previous.get('spec_hash')} != {spec.hash}; changed: "
            f"{', '.join(changed) or 'unknown'}). Pass --extend (extend=True) to run the new cells and keep the "
            "old ones, or choose another --out"
        )
    if previous is None:
        others = {r.get("spec_hash") for r in records.values()} - {spec.hash}
        if others:
            raise SpecChangedError(f"{out} holds cells of another spec ({', '.join(sorted(map(str, others)))}); "
                                   "pass --extend to add this spec's cells, or choose another --out")


def _generation(spec: SweepSpec, previous: Mapping[str, Any] | None) -> int:
    """Order key of new cells: the index of this spec in the directory's spec history."""
    if previous is None:
        return 0
    history = previous.get("spec_history") or []
    hashes = [entry.get("spec_hash") for entry in history]
    return hashes.index(spec.hash) if spec.hash in hashes else len(history)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _start_manifest(spec: SweepSpec, previous: Mapping[str, Any] | None, processes: int) -> dict[str, Any]:
    history = list((previous or {}).get("spec_history") or [])
    if spec.hash not in [entry.get("spec_hash") for entry in history]:
        history.append({"spec_hash": spec.hash, "spec": spec.to_dict(), "added": _now()})
    sessions = list((previous or {}).get("sessions") or [])
    session = {"id": uuid.uuid4().hex, "started": _now(), "finished": None, "processes": processes}
    return {
        "schema": MANIFEST_SCHEMA,
        "version": 1,
        "status": "running",
        "spec_hash": spec.hash,
        "spec": spec.to_dict(),
        "spec_hashed": spec.hashed_dict(),
        "spec_history": history,
        "versions": package_versions(optional=("accelerate", "pandas", "pyarrow")),
        "started": (previous or {}).get("started") or session["started"],
        "finished": None,
        "session": session,
        "sessions": [*sessions, session],
        "samples_protocol": "every prompt x every seed; initial noise from a per-sample torch.Generator seeded "
                            f"by {'hash(seed, prompt_index)' if spec.noise == 'seed_prompt' else 'the seed'}",
    }


def _finish_manifest(out: Path, spec: SweepSpec, records: Mapping[str, Mapping[str, Any]],
                     selected: Sequence[Cell], derived: Sequence[Cell] = ()) -> dict[str, Any]:
    manifest = read_manifest(out) or {}
    finished = _now()
    session = dict(manifest.get("session") or {})
    session["finished"] = finished
    session["cells_run"] = sum(1 for r in records.values() if r.get("session") == session.get("id"))
    manifest["session"] = session
    manifest["sessions"] = [session if s.get("id") == session.get("id") else s for s in manifest.get("sessions", [])]
    spent = sum(int(r["network_rows"]["spent"]) for r in records.values())
    alone = sum(int(r["network_rows"]["alone"]) for r in records.values())
    all_cells = expand_cells(spec)
    complete = all(cell.hash in records for cell in [*all_cells, *derived])
    if spec.matched_baselines:
        manifest["matched_baselines"] = {
            "derived": len(derived), "finished": sum(1 for cell in derived if cell.hash in records),
            "table": "matched.parquet", "methods": sorted({cell.method for cell in derived}),
        }
    manifest.update(
        status="complete" if complete else "partial",
        finished=finished,
        cells={"in_spec": len(all_cells), "selected": len(selected), "finished": len(records),
               "missing_from_spec": sum(1 for c in all_cells if c.hash not in records)},
        network_rows={"spent": spent, "alone": alone, "ratio": spent / alone if alone else None,
                      "note": "spent: rows actually computed for the finished cells (a shared prefix counted once); "
                              "alone: the same cells run one by one (sum of nfe x samples)"},
        tables={"results": "results.parquet", "results_csv": "results.csv", "cells": "cells.parquet",
                "cells_csv": "cells.csv"},
    )
    res.atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _remove_stale_tmp(out: Path, age_s: float = 3600.0) -> None:
    """Delete temporary files left by killed writers (older than ``age_s``, writer pid gone)."""
    now = time.time()
    for directory in (out, out / res.CELLS_DIR, out / res.TRACES_DIR, out / res.IMAGES_DIR):
        for path in directory.glob(".*.tmp"):
            try:
                pid = int(path.name.rsplit(".", 2)[-2])
                os.kill(pid, 0)
                continue  # the writer is alive
            except (ValueError, ProcessLookupError):
                pass
            except PermissionError:
                continue
            try:
                if now - path.stat().st_mtime > age_s:
                    path.unlink()
            except OSError:
                continue


def _wait_for(out: Path, cells: Sequence[Cell], poll_s: float = 0.5) -> None:
    """Wait until every cell's record exists (other processes' cells). A
    process that fails makes the launcher stop all of them, so no timeout;
    waiting on files instead of a collective avoids the backend's timeout in
    long, unbalanced sweeps."""
    pending = [res.record_path(out, cell.hash) for cell in cells]
    while pending:
        pending = [path for path in pending if not path.exists()]
        if pending:
            time.sleep(poll_s)


# --------------------------------------------------------------------- executor
@dataclass
class _UnitState:
    """What one unit accumulates over the batches of a group."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    saved: list[torch.Tensor] = field(default_factory=list)
    traces: list[Any] = field(default_factory=list)
    wall: float = 0.0
    spent: int = 0


@dataclass
class _Stats:
    """Cells and network rows of one phase (or, added up, of the whole call) in this process."""

    cells: int = 0
    spent: int = 0
    alone: int = 0
    compute_s: float = 0.0
    total: int = 0
    skipped: int = 0

    def __add__(self, other: _Stats) -> _Stats:
        return _Stats(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))


@dataclass(frozen=True)
class _Context:
    """Where this process writes cells and how they are stamped: fixed for one :func:`run_sweep` call."""

    spec: SweepSpec
    out: Path
    device: torch.device
    generation: int
    """Order key of this spec in the directory's spec history (:func:`_generation`)."""
    session: str
    process: int
    processes: int


@dataclass(frozen=True)
class _Progress:
    """How progress shows: a bar per process (at its own line) and an optional outer callback."""

    show: bool
    position: int
    on_progress: Callable[[float], None] | None = None


class _Fanout:
    """Recorder of the trunk run: forwards each event to the recorders of the
    cells whose own run contains it, and spawns branches at their lambda."""

    def __init__(self, units: Sequence[Unit], recorders: Mapping[int, Any], clock: Callable[[], float]) -> None:
        self.trunk_lam = units[-1].lam
        self.branch_lams = {unit.lam for unit in units[:-1]}
        self.recorders = recorders
        self.clock = clock
        self.spawned: dict[int, tuple[torch.Tensor, float]] = {}

    def record(self, event: Event) -> None:
        for lam, recorder in self.recorders.items():
            if lam == self.trunk_lam or event.step < lam:
                recorder.record(event)
        if event.op == "zig" and event.round == 0 and event.step in self.branch_lams:
            lam = event.step
            if lam in self.recorders:
                self.recorders[lam].record(dataclasses.replace(event, op="step", round=0))
            self.spawned[lam] = (event.x_out, self.clock())


class _Executor:
    """Runs this process's groups of cells, batch by batch, and writes their cells.

    One executor serves every phase of a call, so the model loads once and each
    batch's encoded prompts and initial latents are prepared once.
    """

    def __init__(self, context: _Context, progress: _Progress) -> None:
        self.context = context
        self.spec = context.spec
        self.progress = progress
        self.samples = sweep_samples(self.spec)
        self.chunks = batches(self.samples, self.spec.batch_size)
        self.sample_metrics = [m for m in self.spec.metrics if METRICS[m].level == "sample"]
        self.set_metrics = [m for m in self.spec.metrics if METRICS[m].level == "set"]
        self.model: LoadedModel | None = None
        self._prepared: dict[int, tuple[Any, torch.Tensor, float]] = {}
        self._guidance_mode = "cfg"  # the model's, read from its first prepared target

    def run(self, groups: Sequence[Group], matched: Mapping[str, dict[str, Any]]) -> _Stats:
        """Run ``groups`` and write their cells; ``matched`` maps a derived cell's hash to its record's
        ``matched`` entry (empty for grid cells)."""
        stats = _Stats()
        if not groups:
            return stats
        from tqdm.auto import tqdm

        if self.model is None:
            self.model = load_model(self.spec.model, self.context.device)
        begin = time.perf_counter()
        total = sum(len(group.cells) for group in groups)
        bar = tqdm(total=total, desc=self.spec.name or "sweep", unit="cell", disable=not self.progress.show,
                   position=self.progress.position,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}]")
        try:
            for group in groups:
                states = {unit.lam: _UnitState() for unit in group.units}
                for index, chunk in enumerate(self.chunks):
                    self._run_batch(group, index, chunk, states)
                    bar.update(len(group.cells) / len(self.chunks))
                    if self.progress.on_progress is not None:
                        self.progress.on_progress(len(group.cells) / len(self.chunks))
                for unit in group.units:
                    stats.spent += states[unit.lam].spent
                    stats.alone += self._write_unit(unit, states[unit.lam], matched)
                    stats.cells += len(unit.cells)
        finally:
            bar.close()
        stats.compute_s = time.perf_counter() - begin
        return stats

    # ------------------------------------------------------------ one batch
    def _sync(self) -> None:
        if self.context.device.type == "cuda":
            torch.cuda.synchronize(self.context.device)

    def _prepare(self, index: int, chunk: Sequence[Sample]) -> tuple[Any, torch.Tensor, float]:
        """Encoded prompts and initial latents of a batch (cached: shared by every group)."""
        if index not in self._prepared:
            assert self.model is not None
            begin = time.perf_counter()
            target = self.model.prepare([s.prompt for s in chunk], self.spec.negative_prompt)
            self._guidance_mode = guidance_mode(target.denoiser)
            noise = initial_noise(chunk, target.latent_shape, self.spec.noise)
            x = initial_latents(target, noise, None)
            self._sync()
            self._prepared[index] = (target, x, time.perf_counter() - begin)
        return self._prepared[index]

    def _recorder(self, unit: Unit, target: Any, schedule: Schedule, chunk: Sequence[Sample]) -> Any:
        from zsampling.trace import ScorerMetric, TraceRecorder

        trace = self.spec.trace
        assert trace is not None and self.model is not None
        metrics = [ScorerMetric(self.model.metric(name), to_images=self.model.to_images, name=name)
                   for name in trace.step_metrics]
        negative = None if self.spec.negative_prompt is None else [self.spec.negative_prompt] * len(chunk)
        decode = None
        if trace.decode_every is not None:
            def decode(latents: torch.Tensor) -> Any:
                return target.decode(latents, "pt")
        return TraceRecorder(keep=trace.keep, latent_dtype=torch_dtype(trace.latent_dtype),
                             downsample=trace.downsample, metrics=metrics, every=trace.every, config=unit.config,
                             schedule=schedule, prompts=[s.prompt for s in chunk], negative_prompts=negative,
                             decode=decode, decode_every=trace.decode_every)

    def _run_batch(self, group: Group, index: int, chunk: Sequence[Sample], states: dict[int, _UnitState]) -> None:
        target, x, prepare_time = self._prepare(index, chunk)
        units = group.units
        schedule = target_schedule(target, units[-1].config)  # a group shares T and the timestep schedule
        recorders = {u.lam: self._recorder(u, target, schedule, chunk) for u in units} if self.spec.trace else {}
        denoiser = self._leg_denoiser(target, units[-1].config, chunk)  # every unit of a group shares its legs
        branches = self.spec.branches
        begin = time.perf_counter()

        def clock() -> float:
            self._sync()
            return time.perf_counter() - begin

        fanout = _Fanout(units, recorders, clock)
        rows_before = denoiser.network_rows
        trunk = units[-1]
        finals: dict[int, tuple[torch.Tensor, float, int]] = {}
        final = zigzag_sample(denoiser, x, schedule, trunk.config, recorder=fanout, branches=branches)
        finals[trunk.lam] = (final, clock(), denoiser.network_rows - rows_before)
        for unit in units[:-1]:
            y, elapsed = fanout.spawned[unit.lam]
            rows_before = denoiser.network_rows
            branch_begin = time.perf_counter()
            final = zigzag_sample(denoiser, y, schedule, unit.config, recorder=recorders.get(unit.lam),
                                  branches=branches, start=unit.lam + 1)
            self._sync()
            finals[unit.lam] = (final, elapsed + time.perf_counter() - branch_begin,
                                denoiser.network_rows - rows_before)
        close = getattr(denoiser, "close", None)
        if callable(close):
            close()  # LoRA adapters back at their own scales
        for unit in units:
            final, elapsed, spent = finals[unit.lam]
            self._finish_batch(unit, target, final, chunk, prepare_time + elapsed, spent, states[unit.lam],
                               recorders.get(unit.lam))

    def _leg_denoiser(self, target: Any, config: Any, chunk: Sequence[Sample]) -> Any:
        """The target's denoiser, behind a leg router when the legs switch LoRA scales."""
        assert self.model is not None
        prompts = [s.prompt for s in chunk]
        negatives = None if self.spec.negative_prompt is None else [self.spec.negative_prompt] * len(chunk)
        return route_legs(target, config, self.model.pipe, None, prompts, negatives, self.model.height,
                          self.model.width).denoiser

    def _rows(self, config: Any, batch_size: int) -> int:
        """Network rows the loop spends on ``config`` for this model (its guidance mode, with recording)."""
        return expected_network_rows(config, batch_size, self.spec.branches, self._guidance_mode,
                                     recording=self.spec.trace is not None)

    def _finish_batch(self, unit: Unit, target: Any, final: torch.Tensor, chunk: Sequence[Sample], elapsed: float,
                      spent: int, state: _UnitState, recorder: Any | None) -> None:
        assert self.model is not None
        begin = time.perf_counter()
        need_images = bool(self.sample_metrics or self.set_metrics or (self.spec.images
                                                                       and self.spec.output_type == "pt"))
        images = target.decode(final, "pt") if need_images else None
        self._sync()
        state.wall += elapsed + time.perf_counter() - begin
        state.spent += spent
        prompts = [s.prompt for s in chunk]
        values = {name: self.model.metric(name).score(images, prompts).detach().cpu().double().tolist()
                  for name in self.sample_metrics}
        for b, item in enumerate(chunk):
            row = {"prompt": item.prompt, "prompt_index": item.prompt_index, "seed": item.seed,
                   "sample_index": item.sample_index}
            row.update({name: float(values[name][b]) for name in self.sample_metrics})
            state.rows.append(row)
        if self.set_metrics:
            state.images.append(images.detach().cpu())
        if self.spec.images:
            if self.spec.output_type == "pt" and self.model.kind != "analytic":
                state.saved.append(res.images_to_uint8(images).cpu())  # 4x smaller than float32
            else:  # latents and the analytic model's points stay float32
                kept = images if self.spec.output_type == "pt" else final
                state.saved.append(kept.detach().to("cpu", torch.float32))
        if recorder is not None:
            config = unit.config
            state.traces.append(recorder.finish(
                network_rows=spent, nfe=self._rows(config, 1),
                expected_network_rows=self._rows(config, len(chunk)),
                branches=self.spec.branches, output_type=self.spec.output_type,
                seed={"seeds": [s.seed for s in chunk]},
            ))

    # ---------------------------------------------------------- write cells
    def _write_unit(self, unit: Unit, state: _UnitState, matched: Mapping[str, dict[str, Any]]) -> int:
        """Write every cell of a unit (trace, images, then the record); returns rows-alone."""
        from safetensors.torch import save as save_safetensors

        from zsampling.sweep.traces import concat_traces
        from zsampling.trace.storage import save_trace

        assert self.model is not None
        n = len(self.samples)
        nfe = self._rows(unit.config, 1)
        prompts = [s.prompt for s in self.samples]
        set_values: dict[str, float] = {}
        if self.set_metrics:
            images = torch.cat(state.images)
            for name in self.set_metrics:
                set_values[name] = float(self.model.metric(name).score_set(images, prompts))
        trace = concat_traces(state.traces) if state.traces else None
        guidance = None
        if trace is not None:
            from zsampling.trace import guidance_summary

            guidance = guidance_summary(trace)
        saved = torch.cat(state.saved).contiguous() if state.saved else None
        alone_total = 0
        for k, cell in enumerate(unit.cells):
            files: dict[str, str | None] = {"trace": None, "images": None}
            sweep_meta = {"cell": cell.hash, "settings": cell.settings(),
                          "spec_hash": self.spec.hash,
                          "prompt_index": [s.prompt_index for s in self.samples],
                          "seeds": [s.seed for s in self.samples],
                          "sample_index": [s.sample_index for s in self.samples]}
            if trace is not None:
                path = self.context.out / res.TRACES_DIR / f"{cell.hash}.safetensors"
                save_trace(trace.with_meta(key=cell.hash, sweep=sweep_meta), path)
                files["trace"] = f"{res.TRACES_DIR}/{path.name}"
            if saved is not None:
                path = self.context.out / res.IMAGES_DIR / f"{cell.hash}.safetensors"
                meta = {"zsampling": json.dumps({**sweep_meta, "output_type": self.spec.output_type,
                                                 "layout": "pt" if self.spec.output_type == "pt" else "latent",
                                                 "dtype": str(saved.dtype).removeprefix("torch."),
                                                 "scale": 255 if saved.dtype == torch.uint8 else 1,
                                                 "prompts": prompts})}
                res.atomic_write_bytes(path, save_safetensors({"images": saved}, metadata=meta))
                files["images"] = f"{res.IMAGES_DIR}/{path.name}"
            alone = nfe * n
            alone_total += alone
            per_sample = state.wall / n
            rows = [{**row, "nfe": nfe, "wall_time_s": per_sample} for row in state.rows]
            res.write_record(self.context.out, {
                "cell": cell.hash,
                "settings": cell.settings(),
                "order": [self.context.generation, cell.index],
                "spec_hash": self.spec.hash,
                "session": self.context.session,
                "process": {"index": self.context.process, "count": self.context.processes},
                "n_samples": n,
                "nfe": nfe,
                "wall_time_s": state.wall,
                "rows": rows,
                "sample_metrics": list(self.sample_metrics),
                "set_metrics": list(self.set_metrics),
                "set_metric_values": set_values,
                "network_rows": {"spent": state.spent if k == 0 else 0, "alone": alone},
                "shared_with": [c.hash for c in unit.cells if c.hash != cell.hash],
                "files": files,
                "effective_guidance": guidance,
                "matched": matched.get(cell.hash),
                "created": _now(),
            })
        return alone_total
