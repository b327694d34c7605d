"""The reflection theory on the exact analytic flow model (rectified-flow Gaussian mixture).

With the exact "euler" zag, one reflection moves x_i by the gap term c_i (v_g1 - v_g2)(x_i, sigma_i) plus a
residual c_i (v_g2(x_i, sigma_i) - v_g2(y, s)) that vanishes with the step size (one more power of it than the
gap term, so their ratio shrinks linearly); the effective guidance of Z-Sampling tends to 2 g1 - g2.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

import zsampling
from zsampling.denoisers.analytic import FlowGaussianMixtureModel
from zsampling.schedule import FlowSchedule
from zsampling.trace import guidance_summary, sample_with_trace

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> FlowGaussianMixtureModel:
    return FlowGaussianMixtureModel.default(dtype=torch.float64)


class _First:
    """Keeps the first zig and zag event."""

    def __init__(self) -> None:
        self.events: dict[str, zsampling.Event] = {}

    def record(self, event: zsampling.Event) -> None:
        self.events.setdefault(event.op, event)


@pytest.mark.parametrize(("eval_timestep", "g2"), [("next", 0.0), ("current", 0.0), ("next", 1.0)])
def test_euler_residual_shrinks_linearly_with_the_step_size(model: FlowGaussianMixtureModel, eval_timestep: str,
                                                            g2: float) -> None:
    g1 = 3.0
    steps_sizes, ratios = [], []
    for steps in (20, 40, 80, 160):  # the asymptotic regime: the residual is O(step^2), the gap O(step)
        schedule = FlowSchedule.from_scheduler(model.scheduler, steps)
        step = int(np.argmin([abs(s - 0.5) for s in schedule.sigmas[:-2]]))
        recorder = _First()
        zsampling.sample(model, ["0"] * 128, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                         guidance_scale=g1, inversion_guidance_scale=g2, zigzag_steps=[step],
                         zag_eval_timestep=eval_timestep, output_type="pt", recorder=recorder, branches="both",
                         progress=False)
        zig, zag = recorder.events["zig"], recorder.events["zag"]
        c = schedule.reflection_coefficient(step)
        assert c == pytest.approx(schedule.sigmas[step + 1] - schedule.sigmas[step], abs=1e-7) and c < 0
        delta = zag.x_out - zig.x_in
        gap = c * (g1 - g2) * (zig.eps.cond - zig.eps.uncond)
        residual = delta - gap
        # the exact split with no extra call: residual = c (v_g2(x_i, sigma_i) - v_g2(y, s))
        torch.testing.assert_close(residual, c * (zig.eps.guided(g2) - zag.eps.guided(g2)), rtol=1e-6, atol=1e-9)
        steps_sizes.append(-c)
        ratios.append(float(residual.norm() / gap.norm()))
    slope = float(np.polyfit(np.log(steps_sizes), np.log(ratios), 1)[0])
    assert all(a > b for a, b in pairwise(ratios)), ratios
    assert 0.85 < slope < 1.25, f"log-log slope {slope:.3f} of residual/gap vs step size, ratios {ratios}"


def test_effective_guidance_tends_to_2g1_minus_g2(model: FlowGaussianMixtureModel) -> None:
    g1, g2 = 3.0, 0.5
    target = 2 * g1 - g2
    errors = {}
    for steps in (25, 200):
        _, trace = sample_with_trace(model, ["0", "1", "2"] * 4, seed=list(range(12)), num_inference_steps=steps,
                                     guidance_scale=g1, inversion_guidance_scale=g2, output_type="pt",
                                     progress=False)
        summary = guidance_summary(trace)
        assert summary["first_order"] == target and summary["window_size"] == steps - 1
        errors[steps] = abs(summary["effective_guidance_window"] - target) / target
    assert errors[200] < 0.05, errors
    assert errors[25] > 3 * errors[200], errors  # the error shrinks with the step size


def test_standard_flow_sampling_has_effective_guidance_exactly_g1(model: FlowGaussianMixtureModel) -> None:
    _, trace = sample_with_trace(model, ["0", "1"], seed=[0, 1], num_inference_steps=8, guidance_scale=2.0,
                                 zigzag_steps=0, output_type="pt", progress=False)
    frame = trace.effective_guidance()
    assert (frame["eff_guidance"] == 2.0).all()
    assert trace.meta["schedule"]["family"] == "flow"
