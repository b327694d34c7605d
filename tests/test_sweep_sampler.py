"""zigzag_sample(start=, stop=): running steps [start, stop) chains exactly into the full run.

The sweep's prefix sharing relies on it: a reflecting prefix [0, k) followed
by [k, T) must be the full run, and a cell with lambda = k must equal the
reflecting trunk up to k followed by plain steps.
"""

from __future__ import annotations

import pytest
import torch
from gaussian_toy import GaussianDenoiser, sd_like_scheduler

from zsampling import DDIMSchedule, ZigzagConfig, zigzag_sample

STEPS = 8


def setup(**config):
    scheduler = sd_like_scheduler()
    denoiser = GaussianDenoiser(scheduler.alphas_cumprod)
    schedule = DDIMSchedule.from_scheduler(scheduler, STEPS)
    x = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return denoiser, schedule, x, ZigzagConfig(num_inference_steps=STEPS, guidance_scale=3.0, **config)


class Events:
    def __init__(self):
        self.events = []

    def record(self, event):
        self.events.append((event.op, event.step, event.round))


@pytest.mark.parametrize("split", [0, 1, 3, 7, 8])
@pytest.mark.parametrize(("zigzag_steps", "rounds", "zag"), [(7, 1, "official"), (4, 2, "ddim"), (0, 1, "official")])
def test_chained_segments_equal_the_full_run(split, zigzag_steps, rounds, zag):
    denoiser, schedule, x, config = setup(zigzag_steps=zigzag_steps, rounds=rounds, zag=zag)
    full_events, chained_events = Events(), Events()
    full = zigzag_sample(denoiser, x, schedule, config, recorder=full_events)
    rows_full = denoiser.network_rows
    middle = zigzag_sample(denoiser, x, schedule, config, stop=split, recorder=chained_events)
    chained = zigzag_sample(denoiser, middle, schedule, config, start=split, recorder=chained_events)
    assert torch.equal(full, chained)
    assert chained_events.events == full_events.events
    assert denoiser.network_rows == 2 * rows_full


def test_a_lambda_cell_is_the_reflecting_prefix_then_plain_steps():
    denoiser, schedule, x, trunk = setup(zigzag_steps=7)
    _, _, _, cell = setup(zigzag_steps=3)
    prefix = zigzag_sample(denoiser, x, schedule, trunk, stop=3)
    branched = zigzag_sample(denoiser, prefix, schedule, cell, start=3)
    alone = zigzag_sample(denoiser, x, schedule, cell)
    torch.testing.assert_close(branched, alone, rtol=0, atol=1e-12)


def test_empty_segment_returns_the_input():
    denoiser, schedule, x, config = setup()
    assert torch.equal(zigzag_sample(denoiser, x, schedule, config, start=4, stop=4), x)
    assert denoiser.network_rows == 0


@pytest.mark.parametrize(("start", "stop"), [(-1, None), (5, 4), (0, STEPS + 1), (STEPS + 1, None)])
def test_bad_segment_is_refused(start, stop):
    denoiser, schedule, x, config = setup()
    with pytest.raises(ValueError, match="start"):
        zigzag_sample(denoiser, x, schedule, config, start=start, stop=stop)
