"""Grid expansion, cell hashing, samples and the plan of shared work.

Why: resuming, extending and distributing a sweep all need a name for "the
same run" that survives restarts, machines and edits of unrelated settings:
a cell's hash. Prefix sharing needs to know which cells differ only in
lambda. Pairing samples across methods needs initial noise that depends on
the sample alone.

What:

* :func:`expand_cells` turns a spec's grid into :class:`Cell` s (grid order:
  the last knob varies fastest), each with a stable :attr:`Cell.hash` of the
  model identity, its settings, the CFG branch mode and the sample set
  (prompts, negative prompt, seeds, noise mode).
* :func:`sweep_samples` lists a cell's samples (every prompt x every seed,
  prompt-major; with paired seeds prompt i with seed offset + i);
  :func:`initial_noise` draws each sample's noise from its own
  ``torch.Generator`` seeded by (seed, prompt_index) only.
* :func:`plan_groups` groups cells into lambda-sharing :class:`Group` s:
  cells with the same T, g1, g2, rounds and zag operator share one
  reflecting trunk and branch off at their lambda. Settings that do not
  change the computation are folded: a standard cell (lambda = 0) ignores
  g2, rounds and the zag, and the "official" zag ignores
  ``zag_eval_timestep``; such cells are computed once and each gets its own
  rows (:class:`Unit`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zsampling.config import (
    LEG_KNOBS,
    OPTIONAL_KNOBS,
    SCHEDULE_KNOB,
    ZigzagConfig,
    leg_knobs,
    legs_from_knobs,
    timesteps_label,
)
from zsampling.legs import Legs
from zsampling.schedule import resolve_timesteps
from zsampling.sweep.spec import KNOBS, SpecError, SweepSpec, check_knob, stable_hash

CELL_SCHEMA = "zsampling.sweep.cell/1"


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a model and one value of every knob.

    ``index`` is the position in the spec's grid order; ``hash`` the stable
    identity used for file names, resume and the ``cell`` column. A derived
    matched-baseline cell (:mod:`zsampling.sweep.matched`) also has
    ``matched`` (its ``method``, e.g. "cfg_matched_measured") and ``source``
    (the hash of the Z-Sampling cell it matches).
    """

    index: int
    hash: str
    model: str
    num_inference_steps: int
    guidance_scale: float
    inversion_guidance_scale: float
    zigzag_steps: int
    rounds: int
    zag: str
    zag_eval_timestep: str
    legs: Legs = field(default_factory=Legs)
    schedule: str | tuple[int, ...] | None = None
    """The ``timesteps`` grid value: None (the scheduler's spacing), a name or a custom list."""
    matched: str | None = None
    source: str | None = None

    @property
    def method(self) -> str:
        """"standard" when lambda == 0, else "zigzag"; a matched baseline's kind for derived cells."""
        if self.matched is not None:
            return self.matched
        return "standard" if self.zigzag_steps == 0 else "zigzag"

    def knobs(self) -> dict[str, Any]:
        """The knob values (``zigzag_steps`` resolved to an int); leg knobs are in :meth:`leg_knobs`."""
        return {knob: getattr(self, knob) for knob in KNOBS}

    def leg_knobs(self) -> dict[str, float]:
        """The leg knobs this cell sets ("zig.lora_scale": 1.5, ...)."""
        return leg_knobs(self.legs)

    def value(self, knob: str) -> Any:
        """One knob's value, optional knobs included (None: a leg knob the cell leaves unset, or the
        scheduler's own timestep spacing)."""
        if knob == SCHEDULE_KNOB:
            return self.schedule
        return self.leg_knobs().get(knob) if knob in LEG_KNOBS else getattr(self, knob)

    @property
    def timesteps(self) -> tuple[int, ...] | None:
        """The custom timestep list of this cell (a name resolved), or None."""
        return resolve_timesteps(self.schedule)

    def settings(self) -> dict[str, Any]:
        """The settings columns of the results tables: leg knobs and ``timesteps`` (its
        :func:`~zsampling.config.timesteps_label`) only where set; the tables fill the rest in."""
        settings = {"cell": self.hash, "model": self.model, "method": self.method, **self.knobs(),
                    **self.leg_knobs()}
        if self.schedule is not None:
            settings[SCHEDULE_KNOB] = timesteps_label(self.schedule)
        return settings

    def config(self) -> ZigzagConfig:
        """The validated :class:`ZigzagConfig` of this cell."""
        return ZigzagConfig(**self.knobs(), legs=self.legs, timesteps=self.timesteps)

    @property
    def effective_key(self) -> tuple[Any, ...]:
        """Settings that change the computation (cells with equal keys are computed once)."""
        if self.zigzag_steps == 0:
            return ("standard", self.num_inference_steps, self.guidance_scale, self.legs.step, self.schedule)
        return (*self.trunk_key, self.zigzag_steps)

    @property
    def trunk_key(self) -> tuple[Any, ...]:
        """The lambda-sharing key: everything but lambda that shapes the reflecting trunk.

        A cell branches off a longer window's trunk at its lambda by taking the trunk's zig at that step
        as its own ordinary step, which is exact only when the zig and step legs are the same; cells
        whose legs differ there (W2SD) keep lambda in the key and run alone.
        """
        evaluation = None if self.zag == "official" else self.zag_eval_timestep  # the official zag ignores it
        own = self.zigzag_steps if self.legs.zig != self.legs.step else None
        return ("zigzag", self.num_inference_steps, self.guidance_scale, self.inversion_guidance_scale,
                self.rounds, self.zag, evaluation, self.legs, self.schedule, own)


def cell_identity(spec: SweepSpec, knobs: Mapping[str, Any], legs: Legs | None = None,
                  schedule: str | tuple[int, ...] | None = None) -> dict[str, Any]:
    """What names a cell's computation: model identity, knobs (leg knobs and a
    timestep schedule only when set, so plain Z-Sampling cells keep their
    hashes), branch mode, sample set."""
    identity = {
        "schema": CELL_SCHEMA,
        "model": spec.model.identity(),
        "knobs": {knob: knobs[knob] for knob in KNOBS},
        "branches": spec.branches,
        "samples": spec.samples_identity(),
    }
    if legs is not None and not legs.is_default:
        identity["legs"] = leg_knobs(legs)
    if schedule is not None:
        identity[SCHEDULE_KNOB] = schedule if isinstance(schedule, str) else list(schedule)
    return identity


def cell_hash(spec: SweepSpec, knobs: Mapping[str, Any], legs: Legs | None = None,
              schedule: str | tuple[int, ...] | None = None) -> str:
    """Stable hash of a grid cell's :func:`cell_identity`."""
    return stable_hash(cell_identity(spec, knobs, legs, schedule))


def expand_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the spec's grid, in grid order; lambda "full" becomes T-1
    and a cell listed twice after that (e.g. "full" and 19 for T = 20) once.
    A custom timestep list fixes T to its length, whatever ``num_inference_steps`` says."""
    cells: list[Cell] = []
    seen: set[str] = set()
    names = spec.knobs
    for values in itertools.product(*(spec.grid[knob] for knob in names)):
        point = dict(zip(names, values, strict=True))
        knobs = {knob: point[knob] for knob in KNOBS}
        legs = legs_from_knobs({knob: point[knob] for knob in names if knob in LEG_KNOBS})
        schedule = point.get(SCHEDULE_KNOB)
        if schedule is not None:
            knobs["num_inference_steps"] = len(resolve_timesteps(schedule))
        if knobs["zigzag_steps"] == "full":
            knobs["zigzag_steps"] = knobs["num_inference_steps"] - 1
        digest = cell_hash(spec, knobs, legs, schedule)
        if digest in seen:
            continue
        seen.add(digest)
        cells.append(Cell(index=len(cells), hash=digest, model=spec.model.name, legs=legs, schedule=schedule,
                          **knobs))
    return cells


# ---------------------------------------------------------------------- selection
def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` words (``--cell`` options or ``wandb agent`` arguments) into knob values.

    Raises:
        SpecError: unknown knob, malformed word or a value of the wrong type.
    """
    allowed = (*KNOBS, *OPTIONAL_KNOBS)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise SpecError(f"--cell {item!r}: expected KEY=VALUE with KEY one of {', '.join(allowed)}")
        if key not in allowed:
            raise SpecError(f"--cell {item!r}: unknown knob {key!r}; allowed: {', '.join(allowed)}")
        values[key] = check_knob(f"--cell {key}", key, _coerce(key, raw.strip()))
    return values


def _coerce(knob: str, raw: str) -> Any:
    if knob == SCHEDULE_KNOB:  # what timesteps_label writes: "scheduler", a name, or t_0,t_1,...
        if raw in ("scheduler", "null", "None"):
            return None
        return [int(t) for t in raw.split(",")] if raw.replace(",", "").isdigit() else raw
    if knob in ("num_inference_steps", "rounds") or (knob == "zigzag_steps" and raw not in ("full", "None")):
        try:
            return int(float(raw)) if float(raw).is_integer() else raw
        except ValueError:
            return raw
    if knob in LEG_KNOBS and raw in ("None", "null"):
        return None  # no override (what W&B writes for a null grid value)
    if knob in ("guidance_scale", "inversion_guidance_scale", *LEG_KNOBS):
        try:
            return float(raw)
        except ValueError:
            return raw
    return "full" if raw == "None" else raw


def select_cells(spec: SweepSpec, cells: Sequence[Cell], values: Mapping[str, Any]) -> list[Cell]:
    """The cells whose knobs equal ``values`` (knobs not given: any value).

    Raises:
        SpecError: a value that is not in the spec's grid for that knob.
    """
    for knob, value in values.items():
        if knob not in spec.grid:
            raise SpecError(f"--cell {knob}={value!r}: the spec's grid does not vary {knob}")
        if value not in spec.grid[knob] and not (knob == "zigzag_steps" and isinstance(value, int)
                                                 and "full" in spec.grid[knob]):
            raise SpecError(f"--cell {knob}={value!r} is not in the spec's grid.{knob} values "
                            f"{list(spec.grid[knob])}")
    chosen = []
    for cell in cells:
        ok = True
        for knob, value in values.items():
            actual = cell.value(knob)
            if knob == "zigzag_steps" and value == "full":
                ok &= actual == cell.num_inference_steps - 1
            else:
                ok &= actual == value
        if ok:
            chosen.append(cell)
    if not chosen:
        raise SpecError(f"--cell {values}: no cell of the grid matches")
    return chosen


# ------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class Sample:
    """One sample of a cell: prompt ``prompt_index`` with ``seed``."""

    sample_index: int
    prompt_index: int
    prompt: str
    seed: int


def sweep_samples(spec: SweepSpec) -> list[Sample]:
    """Every prompt x every seed, prompt-major (sample_index = p * len(seeds) + s);
    with paired seeds one sample per prompt: sample i = (prompt i, seeds[i])."""
    if spec.paired:
        return [Sample(i, i, prompt, seed) for i, (prompt, seed) in enumerate(zip(spec.prompts, spec.seeds,
                                                                                   strict=True))]
    return [Sample(p * len(spec.seeds) + s, p, prompt, seed)
            for p, prompt in enumerate(spec.prompts) for s, seed in enumerate(spec.seeds)]


def noise_seed(seed: int, prompt_index: int, mode: str = "seed_prompt") -> int:
    """The generator seed of a sample: ``seed`` itself (mode "seed") or the
    first 63 bits of SHA-256("zsampling-noise:{seed}:{prompt_index}")."""
    if mode == "seed":
        return int(seed)
    digest = hashlib.sha256(f"zsampling-noise:{int(seed)}:{int(prompt_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def initial_noise(samples: Sequence[Sample], latent_shape: Sequence[int], mode: str = "seed_prompt") -> torch.Tensor:
    """Unit Gaussian noise (B, *latent_shape), float32 on the CPU, one generator per sample.

    Drawn on the CPU in float32 whatever the model's device and dtype, so a
    sample starts from the same noise on every machine and in every cell.
    """
    rows = []
    for item in samples:
        generator = torch.Generator().manual_seed(noise_seed(item.seed, item.prompt_index, mode))
        rows.append(torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32))
    return torch.cat(rows)


def batches(samples: Sequence[Sample], batch_size: int) -> list[list[Sample]]:
    """Consecutive chunks of at most ``batch_size`` samples."""
    return [list(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]


# ------------------------------------------------------------------ sharing plan
@dataclass
class Unit:
    """Cells with equal :attr:`Cell.effective_key`: one computation, one set of rows per cell."""

    cells: list[Cell]

    @property
    def lam(self) -> int:
        return self.cells[0].zigzag_steps

    @property
    def config(self) -> ZigzagConfig:
        return self.cells[0].config()


@dataclass
class Group:
    """Units that share one reflecting trunk: same T, g1 (and g2, rounds, zag
    for lambda > 0); sorted by lambda. The trunk runs with the largest lambda
    and the others branch off it."""

    units: list[Unit] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [cell for unit in self.units for cell in unit.cells]

    @property
    def trunk(self) -> Unit:
        """The unit with the largest lambda (its run is the trunk)."""
        return self.units[-1]

    @property
    def order(self) -> int:
        return min(cell.index for cell in self.cells)


def plan_groups(cells: Sequence[Cell], *, share_prefix: bool = True) -> list[Group]:
    """Group cells into units and lambda-sharing groups, in grid order.

    Standard cells (lambda = 0) join the first zigzag group with the same T
    and g1 whose zig leg is their step leg (their branch leaves the trunk at
    step 0: its first zig is their first step), else form their own.
    ``share_prefix=False`` gives one group per unit (each cell run alone).
    """
    units: dict[tuple[Any, ...], Unit] = {}
    for cell in sorted(cells, key=lambda c: c.index):
        units.setdefault(cell.effective_key, Unit([])).cells.append(cell)
    if not share_prefix:
        return [Group([unit]) for unit in units.values()]
    groups: dict[tuple[Any, ...], Group] = {}
    standard: list[Unit] = []
    for unit in units.values():
        if unit.lam == 0:
            standard.append(unit)
        else:
            groups.setdefault(unit.cells[0].trunk_key, Group()).units.append(unit)
    for unit in standard:
        cell = unit.cells[0]
        host = next((g for g in groups.values() if g.units[0].lam > 0 and _hosts(g.units[0].cells[0], cell)), None)
        if host is None:
            groups[cell.effective_key] = Group([unit])
        else:
            host.units.append(unit)
    ordered = sorted(groups.values(), key=lambda g: g.order)
    for group in ordered:
        group.units.sort(key=lambda u: u.lam)
    return ordered


def _hosts(trunk: Cell, standard: Cell) -> bool:
    """Whether a standard cell's run is the start of a zigzag trunk's: same T, g1 and timestep
    schedule, and the trunk's zig leg (equal to its step leg) is the standard cell's step leg."""
    return (trunk.num_inference_steps == standard.num_inference_steps
            and trunk.guidance_scale == standard.guidance_scale and trunk.schedule == standard.schedule
            and trunk.legs.zig == trunk.legs.step == standard.legs.step)


def assign_groups(groups: Sequence[Group], process_index: int, num_processes: int) -> list[Group]:
    """This process's share: deterministic round-robin over the groups."""
    return [group for k, group in enumerate(groups) if k % num_processes == process_index]
