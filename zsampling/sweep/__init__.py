"""Grid sweeps of Z-Sampling: validated specs, shared prefixes, resume, scale-out, W&B.

Run from the command line::

    zsampling sweep SPEC.yaml --out runs/lambda            # resumes if re-run
    zsampling sweep SPEC.yaml --out runs/lambda --extend   # after editing the spec
    accelerate launch -m zsampling sweep SPEC.yaml --out runs/lambda   # cells split over processes

or from Python::

    from zsampling.sweep import load_spec, run_sweep
    result = run_sweep(load_spec("spec.yaml"), "runs/lambda")
    result.results      # one row per cell x sample

Output directory:

* ``results.parquet`` / ``results.csv``: one row per cell x sample: ``cell``,
  ``model``, ``method`` ("standard" when lambda = 0, else "zigzag"; the
  matched baselines' kinds below),
  ``prompt``, ``prompt_index``, ``seed``, ``sample_index``, the knobs
  (``num_inference_steps``, ``guidance_scale``, ``inversion_guidance_scale``,
  ``zigzag_steps``, ``rounds``, ``zag``, ``zag_eval_timestep``), ``nfe``
  (network rows per sample as if the cell ran alone), ``wall_time_s`` (the
  cell's wall time as if alone, divided among its samples), then one float
  column per per-sample metric.
* ``cells.parquet`` / ``cells.csv``: one row per cell: the settings columns,
  ``n_samples``, ``nfe``, ``wall_time_s`` (the cell's total), set-level
  metrics (``frechet_pca``).
* ``traces/<cell>.safetensors``: the cell's :class:`~zsampling.trace.Trace`
  (all samples; scalars by default); ``images/<cell>.safetensors``: tensor
  ``images`` (N, C, H, W) **uint8** in 0..255 ("pt" layout, ``round(255 x)``
  of the [0, 1] images: 4x smaller than float32), row = ``sample_index``.
  Every reader converts back with
  :func:`zsampling.sweep.results.images_to_float` (uint8 / 255 -> float32 in
  [0, 1]) or :func:`zsampling.sweep.results.load_images`; the analytic
  model's points and the latents of ``output_type: latent`` stay float32
  (the file's metadata says ``dtype`` and ``scale``).
* ``cells/<cell>.json``: the atomic record of each finished cell;
  ``manifest.json``: spec, spec history, versions, start/end, network rows
  spent vs alone.
* ``effective_guidance.parquet`` / ``.csv``: one row per traced cell, its
  effective guidance (:func:`zsampling.trace.guidance_summary`: the
  ||d||-weighted mean of ||g1 d + sum_r delta_r / c_i|| / ||d||, the window
  mean, the signed parallel form, the first-order value g1 + rounds (g1 - g2)).
* with ``matched_baselines: true`` (``zsampling sweep --matched-baselines``):
  three plain-CFG cells per Z-Sampling cell, run after it on the same samples
  with the steps raised to the same network rows, with ``method``
  ``cfg_matched_nfe`` (at g1), ``cfg_matched_measured`` (at the measured
  effective guidance) and ``cfg_matched_first_order`` (at 2 g1 - g2), and
  ``matched.parquet`` / ``.csv`` linking each to its Z-Sampling cell; see
  :mod:`zsampling.sweep.matched`.

Protocol: every prompt x every seed, or with ``seeds: paired`` the paper's
prompt i <-> seed offset + i (one sample per prompt, its generator seeded
with exactly that seed); a sample's initial noise depends only on
(seed, prompt_index) through its own ``torch.Generator``, so the same sample
starts from the same latents in every cell (samples pair across methods).
See :mod:`zsampling.sweep.spec` for the spec format.
"""

from zsampling.sweep.cells import Cell, expand_cells, initial_noise, noise_seed, sweep_samples
from zsampling.sweep.matched import MATCHED_METHODS
from zsampling.sweep.models import register_metric
from zsampling.sweep.results import CELL_COLUMNS, RESULT_COLUMNS, load_results
from zsampling.sweep.runner import SpecChangedError, SweepResult, read_manifest, run_sweep
from zsampling.sweep.spec import SpecError, SweepSpec
from zsampling.sweep.validate import load_spec, parse_spec

__all__ = [
    "CELL_COLUMNS",
    "MATCHED_METHODS",
    "RESULT_COLUMNS",
    "Cell",
    "SpecChangedError",
    "SpecError",
    "SweepResult",
    "SweepSpec",
    "expand_cells",
    "initial_noise",
    "load_results",
    "load_spec",
    "noise_seed",
    "parse_spec",
    "read_manifest",
    "register_metric",
    "run_sweep",
    "sweep_samples",
]
