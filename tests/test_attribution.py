"""Prompt-part attribution (zsampling.trace.attribution) on a linear toy model.

The toy's conditional noise prediction is eps_c(x; prompt) = a x + sum of the
word vectors of the prompt's words, eps_u(x) = a x, so a part's direction
eps_c(prompt) - eps_c(prompt without the part) is, in closed form, the sum of
the part's word vectors -- at every x and t. The recorded projections are
checked against that closed form applied to the gains of an independent
record of the same (deterministic) run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import zsampling
from zsampling.denoisers.base import Branches, EpsPair
from zsampling.sampler import Event
from zsampling.schedule import DDIMSchedule
from zsampling.trace.attribution import PartAttributionRecorder, decompose, drop_part

DIM = 6
WORDS = {
    "red": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "cube": [0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
    "blue": [0.0, 0.0, 0.0, 0.8, 0.0, 0.0],
    "sphere": [0.0, 0.0, 0.0, 0.0, -0.6, 0.0],
    "and": [0.0, 0.0, 0.3, 0.0, 0.0, 0.2],
}
SLOPE = 0.2


def word_sum(text: str) -> torch.Tensor:
    return torch.tensor([WORDS[w] for w in text.split()] or [[0.0] * DIM], dtype=torch.float64).sum(0)


class ToyDenoiser:
    def __init__(self, prompts: list[str]) -> None:
        self.offsets = torch.stack([word_sum(p) for p in prompts])
        self.network_rows = 0

    def __call__(self, x: torch.Tensor, t: int, branches: Branches) -> EpsPair:
        self.network_rows += x.shape[0] * branches.count
        return EpsPair(uncond=SLOPE * x if branches.uncond else None,
                       cond=SLOPE * x + self.offsets if branches.cond else None)


@dataclass
class ToyTarget:
    denoiser: ToyDenoiser
    scheduler: object
    batch_size: int
    latent_shape: tuple[int, ...] = (DIM,)
    output_types: tuple[str, ...] = ("latent",)
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def decode(self, latents: torch.Tensor, output_type: str) -> torch.Tensor:
        return latents


class ToyPipe:
    def __init__(self) -> None:
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False,
                                       steps_offset=1)
        self.prepared: list[list[str]] = []

    def prepare_zsampling(self, prompts, negative_prompts=None, height=None, width=None) -> ToyTarget:
        self.prepared.append(list(prompts))
        return ToyTarget(ToyDenoiser(list(prompts)), self.scheduler, len(prompts))


class ListRecorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)


PROMPTS = ["red cube and blue sphere", "blue sphere and red cube", "red cube and blue sphere"]
PARTS = ["red cube", "blue sphere"]
T, LAM = 8, 5


def run(pipe: ToyPipe, recorder=None, g1: float = 3.0, g2: float = 0.5, window: int = LAM, rounds: int = 1):
    latents = torch.randn(len(PROMPTS), DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return zsampling.sample(pipe, PROMPTS, latents=latents, num_inference_steps=T, guidance_scale=g1,
                            inversion_guidance_scale=g2, zigzag_steps=window, rounds=rounds, output_type="latent",
                            recorder=recorder, progress=False)


def test_drop_part_removes_or_replaces_whole_words() -> None:
    assert drop_part("3 left of 7", "3") == "left of 7"
    assert drop_part("3 left of 7", "left of 7") == "3"
    assert drop_part("a red cube and a blue sphere", "a red cube", "something") == "something and a blue sphere"
    with pytest.raises(ValueError, match="does not occur"):
        drop_part("13 left of 7", "3")


@pytest.mark.parametrize("rounds", [1, 2])
def test_projections_equal_closed_form(rounds: int) -> None:
    pipe = ToyPipe()
    reference = ListRecorder()
    plain = run(pipe, reference, rounds=rounds)
    rec = PartAttributionRecorder(pipe, PROMPTS, PARTS)
    out = run(pipe, rec, rounds=rounds)
    assert torch.equal(plain.latents, out.latents)
    frame = rec.to_frame()
    # Closed-form directions: the part's word vectors (independent of x, t and the prompt's word order).
    dirs = {part: word_sum(part) for part in PARTS}
    zigs = {(e.step, e.round): e for e in reference.events if e.op == "zig"}
    zags = [e for e in reference.events if e.op == "zag"]
    assert len(zags) == LAM * rounds
    refl = frame[frame["kind"] == "reflection"]
    assert len(refl) == LAM * rounds * len(PROMPTS) * (len(PARTS) + 1)
    for zag in zags:
        delta = zag.x_out - zigs[(zag.step, zag.round)].x_in
        rows = refl[(refl["step"] == zag.step) & (refl["round"] == zag.round)]
        for b in range(len(PROMPTS)):
            for part, d in dirs.items():
                row = rows[(rows["sample"] == b) & (rows["part"] == part)].iloc[0]
                assert row["projection"] == pytest.approx(float(delta[b] @ d / d.norm()), abs=1e-10)
                assert row["direction_norm"] == pytest.approx(float(d.norm()), abs=1e-12)
                # The two directions are orthogonal: least squares = projection.
                assert row["coefficient"] == pytest.approx(float(delta[b] @ d / (d @ d)), abs=1e-10)
            span = torch.stack(list(dirs.values()))
            coef = torch.linalg.lstsq(span.T, delta[b].unsqueeze(1)).solution.squeeze(1)
            rest = rows[(rows["sample"] == b) & (rows["part"] == "rest")].iloc[0]
            assert rest["component"] == pytest.approx(float((delta[b] - span.T @ coef).norm()), abs=1e-10)
            assert rest["delta_norm"] == pytest.approx(float(delta[b].norm()), abs=1e-12)


def test_extra_rows_counted_exactly_with_stride() -> None:
    pipe = ToyPipe()
    baseline = run(pipe)
    rec = PartAttributionRecorder(pipe, PROMPTS, PARTS, stride=2)
    out = run(pipe, rec, rounds=2)
    recorded = len([i for i in range(LAM) if i % 2 == 0])  # steps 0, 2, 4
    assert rec.extra_rows == len(PARTS) * len(PROMPTS) * recorded
    assert sorted({s for _, s in rec.recorded_steps}) == [0, 2, 4]
    # The sampling run's own rows do not include the recorder's.
    assert out.network_rows == run(pipe, None, rounds=2).network_rows
    assert baseline.network_rows == (2 * T + 4 * LAM) * len(PROMPTS)  # g2 = 0.5: the zag needs both branches
    # The ablated prompts: each part removed from the prompt string.
    assert pipe.prepared[-3] == ["and blue sphere", "blue sphere and", "and blue sphere",
                                 "red cube and", "and red cube", "red cube and"]


def test_no_recorder_means_zero_extra_rows_and_identical_latents() -> None:
    pipe = ToyPipe()
    plain = run(pipe)
    rec = PartAttributionRecorder(pipe, PROMPTS, PARTS)
    assert rec.extra_rows == 0  # preparing the ablated prompts costs no rows
    again = run(pipe, rec)
    assert torch.equal(plain.latents, again.latents)
    assert plain.network_rows == again.network_rows


def test_guidance_injection_of_a_cfg_step_is_closed_form() -> None:
    pipe = ToyPipe()
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, T)
    reference = ListRecorder()
    run(pipe, reference, g1=4.0, window=0)
    rec = PartAttributionRecorder(pipe, PROMPTS, PARTS, reference_guidance=3.0, schedule=schedule)
    run(pipe, rec, g1=4.0, window=0)
    assert rec.extra_rows == T * len(PARTS) * len(PROMPTS)
    frame = rec.to_frame()
    steps = [e for e in reference.events if e.op == "step"]
    for e in steps:
        a, a_next = schedule.alpha_at(e.step), schedule.alpha_after(e.step)
        # Extra guidance (4 - 3) (eps_c - eps_u) through the DDIM step x -> sqrt(a') x0 + sqrt(1 - a') eps.
        x_hi = e.x_out
        eps_lo = e.eps.uncond + 3.0 * (e.eps.cond - e.eps.uncond)
        x0 = (e.x_in - (1 - a) ** 0.5 * eps_lo) / a**0.5
        x_lo = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps_lo
        injection = x_hi - x_lo
        for b in range(len(PROMPTS)):
            for part in PARTS:
                d = word_sum(part)
                row = frame[(frame["step"] == e.step) & (frame["sample"] == b) & (frame["part"] == part)].iloc[0]
                assert row["kind"] == "guidance"
                assert row["projection"] == pytest.approx(float(injection[b] @ d / d.norm()), abs=1e-10)


def test_decompose_handles_non_orthogonal_directions() -> None:
    d = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]], dtype=torch.float64)  # (P=2, B=1, n=3)
    delta = torch.tensor([[2.0, 3.0, 4.0]], dtype=torch.float64)
    out = decompose(delta, d)
    assert out["coefficient"][:, 0].tolist() == pytest.approx([-1.0, 3.0])
    assert float(out["rest_norm"][0]) == pytest.approx(4.0)
    assert float(out["projection"][1, 0]) == pytest.approx(5.0 / 2**0.5)


def test_bad_parts_are_refused() -> None:
    pipe = ToyPipe()
    with pytest.raises(ValueError, match="does not occur"):
        PartAttributionRecorder(pipe, PROMPTS, ["green cone"])
    with pytest.raises(ValueError, match="stride"):
        PartAttributionRecorder(pipe, PROMPTS, PARTS, stride=0)
    with pytest.raises(ValueError, match="schedule"):
        PartAttributionRecorder(pipe, PROMPTS, PARTS, reference_guidance=1.0)
