"""Tests for zsampling.trace: recording, the semantic-gain split, storage.

The model is the closed-form Gaussian toy of ``gaussian_toy.py`` (x0 ~
N(mu_c, s^2 I) given the prompt, N(0, s^2 I) unconditionally) in float64, so every identity of
docs/design.md can be checked to 1e-5 against values recomputed here, with code
independent of the recorder.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from gaussian_toy import GaussianPipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import zsampling
from zsampling import ZigzagConfig
from zsampling.denoisers.base import EpsPair
from zsampling.schedule import DDIMSchedule, reflection_coefficient
from zsampling.trace import (
    SCALAR_NAMES,
    ScorerMetric,
    StepState,
    Trace,
    TraceDir,
    TraceFormatError,
    TraceRecorder,
    TraceWriter,
    estimate_trace_bytes,
    expected_network_rows,
    load_traces,
    sample_with_trace,
)

PROMPTS = ["a red cube", "a blue sphere"]


# --------------------------------------------------------------------------- model
def trace_pipe(latent_shape: tuple[int, ...] = (4, 8, 8), s: float = 0.5,
               dtype: torch.dtype = torch.float64) -> GaussianPipeline:
    """The shared Gaussian toy with one random mean latent per prompt, diffusers' default DDIMScheduler
    (clip_sample=False, set_alpha_to_one=False, steps_offset=1) and every output type."""
    return GaussianPipeline(latent_shape=latent_shape, dtype=dtype, scale=s, prompt_means=True,
                            scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                            output_types=("pil", "np", "pt", "latent"))


def run(pipe: GaussianPipeline, recorder=None, prompts=PROMPTS, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("output_type", "latent")
    return zsampling.sample(pipe, prompts, recorder=recorder, progress=False, **kwargs)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN == NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def assert_scalar(trace: Trace, name: str, event: int, expected: torch.Tensor, rtol: float = 1e-5,
                  atol: float = 1e-5) -> None:
    torch.testing.assert_close(trace.scalars[name][event].double(), expected.double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{name} at event {event}: {m}")


# ------------------------------------------------------------ recording is free
@pytest.mark.parametrize("keep", ["scalars", "all"])
@pytest.mark.parametrize(
    ("g1", "g2", "zag", "rounds"),
    [(5.5, 0.0, "official", 1), (5.5, 0.0, "ddim", 2), (3.0, 1.0, "ddim", 1), (1.0, 0.0, "official", 1)],
)
def test_recording_changes_no_latent_and_adds_no_rows(keep, g1, g2, zag, rounds):
    pipe = trace_pipe(dtype=torch.float32)
    kwargs = dict(guidance_scale=g1, inversion_guidance_scale=g2, zag=zag, rounds=rounds)
    plain = run(pipe, **kwargs)
    plain_rows = pipe.target.denoiser.network_rows
    rec = TraceRecorder(keep=keep, latent_dtype=torch.float16, metrics=[lambda s: {"m": s.x0.mean((1, 2, 3))}])
    traced = run(pipe, recorder=rec, **kwargs)
    assert torch.equal(plain.latents, traced.latents)  # bitwise
    assert pipe.target.denoiser.network_rows == plain_rows == traced.network_rows
    out, trace = sample_with_trace(pipe, PROMPTS, keep=keep, generator=torch.Generator().manual_seed(0),
                                   num_inference_steps=6, output_type="latent", progress=False, **kwargs)
    assert torch.equal(out.latents, plain.latents)
    config = ZigzagConfig(num_inference_steps=6, guidance_scale=g1, inversion_guidance_scale=g2, zag=zag,
                          rounds=rounds)
    assert trace.meta["network_rows"] == trace.meta["expected_network_rows"] == plain_rows
    assert plain_rows == expected_network_rows(config, len(PROMPTS))
    assert rec.trace.num_events == trace.num_events == 6 + 2 * config.reflections


def test_events_table_matches_the_schedule():
    pipe = trace_pipe()
    config = ZigzagConfig(num_inference_steps=6, zigzag_steps=[1, 3], rounds=2, zag="official")
    out, trace = sample_with_trace(pipe, PROMPTS, num_inference_steps=6, zigzag_steps=[1, 3], rounds=2,
                                   zag="official", seed=0, output_type="latent", progress=False)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 6)
    ts = list(schedule.timesteps)
    expected = []
    for i in range(6):
        if i in config.window:
            for r in range(2):
                expected += [("zig", i, r), ("zag", i, r)]
        expected.append(("step", i, 2 if i in config.window else 0))
    frame = trace.to_frame()
    got = list(zip(trace.ops, trace.events["step"].tolist(), trace.events["round"].tolist(), strict=True))
    assert got == expected
    for e, (op, i, _) in enumerate(expected):
        move = schedule.zag(i, config) if op == "zag" else schedule.zig(i)
        nxt = ts[i + 1] if i + 1 < 6 else -1
        t_from, t_to = (nxt, ts[i]) if op == "zag" else (ts[i], nxt)
        assert trace.events["t_eval"][e] == move.t_eval
        assert (trace.events["t_from"][e], trace.events["t_to"][e]) == (t_from, t_to)
        assert trace.events["a_from"][e].item() == move.a_from and trace.events["a_to"][e].item() == move.a_to
        assert trace.events["c"][e].item() == schedule.reflection_coefficient(i)
    assert len(frame) == 2 * trace.num_events
    assert list(frame["sample"].unique()) == [0, 1]
    assert set(SCALAR_NAMES) <= set(frame.columns)
    assert str(frame["op"].dtype) == "category"
    assert trace.meta["config"]["window"] == [1, 3]
    assert trace.meta["seed"] == {"seed": 0}


# ------------------------------------------------------------ the semantic gain
def check_reflections(pipe: GaussianPipeline, trace: Trace, config: ZigzagConfig, atol: float = 1e-5) -> int:
    """Recompute every reflection from the saved latents / eps and the model."""
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, config.num_inference_steps)
    model = pipe.target.denoiser
    g1, g2 = config.guidance_scale, config.inversion_guidance_scale
    cum = torch.zeros_like(trace.tensor("x_init"))
    checked = 0
    for i in sorted(config.window):
        c = schedule.reflection_coefficient(i)
        t_i = schedule.timesteps[i]
        zag_move = schedule.zag(i, config)
        for r in range(config.rounds):
            e_zig, e_zag = trace.event_index(i, "zig", r), trace.event_index(i, "zag", r)
            x = trace.latents_in(e_zig)
            y = trace.latents(i, "zig", r)
            after = trace.latents(i, "zag", r)
            delta = after - x
            eps_zig, eps_zag = trace.eps(i, "zig", r), trace.eps(i, "zag", r)
            d = eps_zig.cond - eps_zig.uncond
            gap = c * (g1 - g2) * d
            residual = delta - gap
            if config.zag == "ddim":
                # the docs/design.md identity, with eps evaluated here from the model itself
                expected_residual = c * (model.guided(x, t_i, g2) - model.guided(y, zag_move.t_eval, g2))
                torch.testing.assert_close(delta, gap + expected_residual, rtol=0, atol=atol)
                # ... and from the eps the sampler computed (the zig has both branches)
                saved = c * (eps_zig.guided(g2) - eps_zag.guided(g2))
                torch.testing.assert_close(residual, saved, rtol=0, atol=atol)
            cum = cum + delta
            dn = norm(d)
            parallel = (delta * d).reshape(2, -1).sum(1) / dn
            orthogonal = delta - (parallel / dn).view(-1, 1, 1, 1) * d
            assert_scalar(trace, "gain_norm", e_zag, norm(delta))
            assert_scalar(trace, "gap_norm", e_zag, norm(gap))
            assert_scalar(trace, "residual_norm", e_zag, norm(residual))
            assert_scalar(trace, "gain_cos", e_zag, parallel / norm(delta))
            assert_scalar(trace, "gain_parallel", e_zag, parallel)
            assert_scalar(trace, "gain_orthogonal", e_zag, norm(orthogonal))
            assert_scalar(trace, "zig_guidance_signal", e_zag, dn)
            assert_scalar(trace, "gain_cum_norm", e_zag, norm(cum))
            checked += 1
    return checked


@pytest.mark.parametrize("zag_eval_timestep", ["next", "current"])
@pytest.mark.parametrize(("g2", "rounds"), [(0.0, 1), (0.0, 2), (2.0, 1), (1.0, 2)])
def test_gain_splits_into_gap_term_and_inversion_residual(zag_eval_timestep, g2, rounds):
    pipe = trace_pipe()
    config = ZigzagConfig(num_inference_steps=8, guidance_scale=5.5, inversion_guidance_scale=g2, rounds=rounds,
                          zag="ddim", zag_eval_timestep=zag_eval_timestep)
    out, trace = sample_with_trace(
        pipe, PROMPTS, keep="all", latent_dtype=None, num_inference_steps=8, guidance_scale=5.5,
        inversion_guidance_scale=g2, rounds=rounds, zag="ddim", zag_eval_timestep=zag_eval_timestep, seed=[1, 2],
        output_type="latent", progress=False,
    )
    assert check_reflections(pipe, trace, config) == config.reflections
    reflections = trace.reflections()
    assert len(reflections) == 2 * config.reflections
    assert np.allclose(reflections["v_norm"], reflections["gain_norm"] / reflections["c"].abs())


def test_gap_term_with_the_official_operator_is_recorded_and_residual_is_the_rest():
    pipe = trace_pipe()
    config = ZigzagConfig(num_inference_steps=6, guidance_scale=4.0, zag="official")
    _, trace = sample_with_trace(pipe, PROMPTS, keep="all", latent_dtype=None, num_inference_steps=6,
                                 guidance_scale=4.0, zag="official", seed=3, output_type="latent", progress=False)
    assert check_reflections(pipe, trace, config) == config.reflections


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    g1=st.floats(-2.0, 9.0).filter(lambda g: g not in (0.0, 1.0)),
    g2=st.floats(-2.0, 4.0),
    steps=st.integers(2, 7),
    rounds=st.integers(1, 2),
    current=st.booleans(),
)
def test_gain_split_holds_for_any_guidance_pair(g1, g2, steps, rounds, current):
    pipe = trace_pipe(latent_shape=(2, 4, 4))
    config = ZigzagConfig(num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2, rounds=rounds,
                          zag="ddim", zag_eval_timestep="current" if current else "next")
    _, trace = sample_with_trace(
        pipe, PROMPTS, keep="all", latent_dtype=None, num_inference_steps=steps, guidance_scale=g1,
        inversion_guidance_scale=g2, rounds=rounds, zag="ddim", zag_eval_timestep=config.zag_eval_timestep,
        seed=5, output_type="latent", progress=False,
    )
    check_reflections(pipe, trace, config, atol=1e-5 * max(1.0, abs(g1), abs(g2)))


@pytest.mark.parametrize("g", [3.0, 0.0, 1.0])
def test_gap_term_is_exactly_zero_when_g1_equals_g2(g):
    pipe = trace_pipe()
    _, trace = sample_with_trace(pipe, PROMPTS, num_inference_steps=6, guidance_scale=g, inversion_guidance_scale=g,
                                 zag="ddim", seed=0, output_type="latent", progress=False)
    zag = np.array(trace.ops) == "zag"
    assert (trace.scalars["gap_norm"][zag] == 0).all()
    assert torch.equal(trace.scalars["residual_norm"][zag], trace.scalars["gain_norm"][zag])
    assert torch.isfinite(trace.scalars["gain_norm"][zag]).all()


def test_gap_term_needs_both_zig_branches_which_branches_both_buys():
    pipe = trace_pipe()
    kwargs = dict(num_inference_steps=6, guidance_scale=1.0, inversion_guidance_scale=0.0, zag="ddim", seed=0,
                  output_type="latent", progress=False)
    out_needed, needed = sample_with_trace(pipe, PROMPTS, **kwargs)
    zag = np.array(needed.ops) == "zag"
    for name in ("gap_norm", "residual_norm", "gain_cos", "gain_parallel", "gain_orthogonal", "zig_guidance_signal"):
        assert torch.isnan(needed.scalars[name][zag]).all(), name
    assert torch.isfinite(needed.scalars["gain_norm"][zag]).all()
    out_both, both = sample_with_trace(pipe, PROMPTS, branches="both", **kwargs)
    for name in ("gap_norm", "residual_norm", "gain_cos", "gain_parallel"):
        assert torch.isfinite(both.scalars[name][zag]).all(), name
    # the documented price: one extra row per sample for every zig, zag and step whose scale is 0 or 1
    config = ZigzagConfig(num_inference_steps=6, guidance_scale=1.0, inversion_guidance_scale=0.0)
    extra = both.meta["network_rows"] - needed.meta["network_rows"]
    assert extra == len(PROMPTS) * (config.num_inference_steps + 2 * config.reflections)
    assert both.meta["network_rows"] == expected_network_rows(config, 2, "both")
    # the sampled latents do not depend on which branches were computed
    torch.testing.assert_close(out_both.latents, out_needed.latents)


def test_per_step_scalars_match_recomputation():
    pipe = trace_pipe()
    config = ZigzagConfig(num_inference_steps=6, zag="ddim")
    _, trace = sample_with_trace(pipe, PROMPTS, keep="all", latent_dtype=None, num_inference_steps=6, zag="ddim",
                                 seed=0, output_type="latent", progress=False)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 6)
    prev_x0 = None
    for e, op in enumerate(trace.ops):
        i = int(trace.events["step"][e])
        move = schedule.zag(i, config) if op == "zag" else schedule.zig(i)
        g = float(trace.events["guidance"][e])
        x_in, x_out = trace.latents_in(e), trace.tensor("latents", e)
        eps = EpsPair(trace.tensor("eps_uncond", e), trace.tensor("eps_cond", e))
        eps_g = eps.uncond + g * (eps.cond - eps.uncond) if not torch.isnan(eps.cond).all() else eps.uncond
        x0 = (x_in - math.sqrt(1 - move.a_from) * eps_g) / math.sqrt(move.a_from)
        torch.testing.assert_close(trace.tensor("x0", e), x0)
        assert_scalar(trace, "latent_norm", e, norm(x_out))
        assert_scalar(trace, "latent_std", e, x_out.reshape(2, -1).std(dim=1))
        assert_scalar(trace, "eps_norm", e, norm(eps_g))
        assert_scalar(trace, "x0_norm", e, norm(x0))
        if not torch.isnan(eps.cond).all():
            assert_scalar(trace, "guidance_signal", e, norm(eps.cond - eps.uncond))
        if op != "zag":
            if prev_x0 is None:
                assert torch.isnan(trace.scalars["x0_change"][e]).all()
            else:
                assert_scalar(trace, "x0_change", e, norm(x0 - prev_x0))
            if op == "step":
                prev_x0 = x0
        else:
            assert torch.isnan(trace.scalars["x0_change"][e]).all()
    # the chain: the last output is the sample
    assert trace.latents(6).shape == (2, 4, 8, 8)


# ------------------------------------------------------------ metrics, decoding
def test_step_metrics_and_x0_decoding_every_k_steps():
    pipe = trace_pipe()
    seen: list[StepState] = []

    def alignment(state: StepState) -> dict[str, torch.Tensor]:
        seen.append(state)
        mu = torch.stack([pipe.mean(p) for p in state.prompts])
        flat_x0, flat_mu = state.x0.reshape(2, -1), mu.reshape(2, -1)
        return {"mu_cos": torch.nn.functional.cosine_similarity(flat_x0, flat_mu, dim=1),
                "has_images": torch.full((2,), float(state.images is not None))}

    class Brightness:
        name = "brightness"

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    plain = run(pipe, num_inference_steps=7)
    out, trace = sample_with_trace(pipe, PROMPTS, num_inference_steps=7,
                                   metrics=[alignment, ScorerMetric(Brightness())], every=3, decode_every=2,
                                   generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    assert torch.equal(out.latents, plain.latents)
    assert [s.step for s in seen] == [0, 3, 6]  # every 3 steps and the last
    assert trace.decoded_steps == [0, 2, 4, 6]
    assert trace.meta["decode_rows"] == 2 * 4 == pipe.target.decode_rows
    assert trace.meta["network_rows"] == trace.meta["expected_network_rows"]
    frame = trace.to_frame()
    rows = frame[frame["mu_cos"].notna()]
    assert set(rows["op"]) == {"step"} and sorted(rows["step"].unique()) == [0, 3, 6]
    assert rows["mu_cos"].between(0.9, 1.0 + 1e-6).all()  # x0 points at the prompt's mean
    assert list(rows.groupby("step")["has_images"].first()) == [1.0, 0.0, 1.0]
    assert sorted(frame[frame["brightness"].notna()]["step"].unique()) == [0, 6]
    assert "x0" not in trace.tensor_names  # scalars only: decoded images are kept, x0 latents are not
    images = trace.images(6)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8)
    assert set(trace.metrics) == {"mu_cos", "has_images", "brightness"}


def test_metric_names_may_not_shadow_builtin_columns():
    pipe = trace_pipe()
    rec = TraceRecorder(metrics=[lambda s: {"gain_norm": torch.zeros(2)}])
    with pytest.raises(ValueError, match="gain_norm"):
        run(pipe, recorder=rec)


def test_bad_settings_fail_before_any_network_call():
    for kwargs, match in [(dict(keep="everything"), "keep"), (dict(every=0), "every"),
                          (dict(downsample=0), "downsample"), (dict(latent_dtype=torch.int8), "latent_dtype")]:
        with pytest.raises(ValueError, match=match):
            TraceRecorder(**kwargs)
    pipe = trace_pipe(latent_shape=(16,))
    with pytest.raises(ValueError, match="downsample"):
        sample_with_trace(pipe, PROMPTS, keep="latents", downsample=2, num_inference_steps=3, progress=False)
    assert pipe.target.denoiser.network_rows == 0


# ------------------------------------------------------------ storage
def test_bytes_per_step_are_as_documented():
    pipe = trace_pipe(latent_shape=(4, 8, 8), dtype=torch.float32)
    config = ZigzagConfig(num_inference_steps=6)
    for keep, dtype, downsample in [("scalars", torch.float16, None), ("all", torch.float16, None),
                                    ("all", torch.float32, 2), (("latents",), torch.bfloat16, 4)]:
        _, trace = sample_with_trace(pipe, PROMPTS, keep=keep, latent_dtype=dtype, downsample=downsample,
                                     num_inference_steps=6, seed=0, output_type="latent", progress=False)
        actual = sum(t.numel() * t.element_size() for t in [*trace.events.values(), *trace.scalars.values()])
        actual += sum(trace.tensor(name).numel() * trace.tensor(name).element_size() for name in trace.tensor_names)
        estimate = estimate_trace_bytes((4, 8, 8), 6, config.reflections, batch_size=2, keep=keep,
                                        latent_dtype=dtype, downsample=downsample)
        assert actual == estimate, (keep, dtype, downsample)
    # the documented SDXL figure
    sdxl = estimate_trace_bytes((4, 128, 128), 50, 49, keep="all") - 148 * 65
    assert sdxl == 148 * (4 * 128 * 128 * 2 * 4 + 56) + 128 * 128 * 4 * 2
    assert round((sdxl - 148 * 56) / 2**20, 1) == 74.1


def test_save_load_round_trips_bitwise(tmp_path):
    pipe = trace_pipe()
    _, trace = sample_with_trace(pipe, PROMPTS, keep="all", num_inference_steps=5, decode_every=2,
                                 metrics=[lambda s: {"m": s.latents.mean((1, 2, 3))}], seed=[4, 5],
                                 output_type="latent", progress=False, meta={"note": "round trip"})
    path = trace.save(tmp_path / "t.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = Trace.load(path, verify=True)
    assert loaded.meta == json.loads(json.dumps(trace.meta))
    for mine, theirs in [(trace.events, loaded.events), (trace.scalars, loaded.scalars),
                         (trace.metrics, loaded.metrics)]:
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert same_bits(mine[name], theirs[name]), name
    assert trace.tensor_names == loaded.tensor_names
    for name in trace.tensor_names:
        assert same_bits(trace.tensor(name), loaded.tensor(name)), name
    # lazy access slices the file
    assert same_bits(loaded.latents(3), trace.latents(3))
    assert same_bits(loaded.x0(2, "zig"), trace.x0(2, "zig"))
    assert same_bits(loaded.images(4), trace.images(4))
    assert loaded.to_frame().equals(trace.to_frame())
    # a second save of the loaded trace is the same file content
    again = loaded.save(tmp_path / "again.safetensors")
    assert Trace.load(again).meta == loaded.meta


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


class _Exploit:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_invalid_files_raise_clear_errors_and_never_unpickle(tmp_path):
    pipe = trace_pipe()
    _, trace = sample_with_trace(pipe, PROMPTS, keep="latents", num_inference_steps=4, seed=0, output_type="latent",
                                 progress=False)
    good = trace.save(tmp_path / "good.safetensors")
    data = good.read_bytes()

    def write(name: str, content: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path

    cases = {
        "truncated body": (write("a", data[:-100]), "truncated"),
        "truncated header": (write("b", data[:40]), "truncated|exceeds"),
        "tiny": (write("c", data[:5]), "truncated"),
        "garbage": (write("d", os.urandom(4096)), "not a|exceeds|JSON"),
    }
    flipped = bytearray(data)
    flipped[12] ^= 0xFF  # inside the JSON header
    cases["tampered header bytes"] = (write("e", bytes(flipped)), "JSON|corrupted")
    tampered = write("f", data)
    _rewrite_header(tampered, lambda h: h["scalars/gain_norm"].update(shape=[h["scalars/gain_norm"]["shape"][0] * 2,
                                                                            1]))
    cases["tampered shape"] = (tampered, "tampered|corrupted")

    def bump_version(h):
        meta = json.loads(h["__metadata__"]["zsampling.trace"])
        meta["schema_version"] = 99
        h["__metadata__"]["zsampling.trace"] = json.dumps(meta)

    newer = write("g", data)
    _rewrite_header(newer, bump_version)
    cases["schema version"] = (newer, "schema version 99")

    def drop_scalar(h):
        meta = json.loads(h["__metadata__"]["zsampling.trace"])
        del meta["tensors"]["scalars/gain_norm"]
        h["__metadata__"]["zsampling.trace"] = json.dumps(meta)

    inventory = write("h", data)
    _rewrite_header(inventory, drop_scalar)
    cases["inventory"] = (inventory, "disagree")
    body = bytearray(data)
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    start = header["scalars/latent_norm"]["data_offsets"][0]
    body[8 + length + start] ^= 0x01
    cases["flipped data"] = (write("i", bytes(body)), "checksum")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    cases["plain safetensors"] = (foreign, "not a zsampling trace")
    marker = tmp_path / "pwned.txt"
    cases["pickle"] = (write("p.pkl", pickle.dumps(_Exploit(marker))), "pickle")
    torch_file = tmp_path / "t.pt"
    torch.save({"x": torch.zeros(2)}, torch_file)
    cases["torch.save"] = (torch_file, "pickle|torch.save")
    for label, (path, match) in cases.items():
        with pytest.raises(TraceFormatError, match=match):
            Trace.load(path)
        assert not marker.exists(), label
    # the payload is live: unpickling it really would have run code
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()
    # flipped bytes in a lazily read tensor are caught by verify
    body = bytearray(data)
    start = header["tensors/latents"]["data_offsets"][0]
    body[8 + length + start + 3] ^= 0x01
    lazy = write("j", bytes(body))
    loaded = Trace.load(lazy)
    with pytest.raises(TraceFormatError, match="checksum"):
        loaded.verify()
    with pytest.raises(TraceFormatError, match="checksum"):
        Trace.load(lazy, verify=True)


# ------------------------------------------------------------ streaming
def test_streaming_writer_bounds_memory_and_survives_interruption(tmp_path):
    pipe = trace_pipe()
    directory = tmp_path / "sweep"
    writer = TraceWriter(directory)
    rec = TraceRecorder(keep="latents", writer=writer, config=ZigzagConfig(num_inference_steps=4))
    for k in range(3):
        run(pipe, recorder=rec, num_inference_steps=4, generator=torch.Generator().manual_seed(k))
    assert rec.traces == []  # nothing held in memory: each run went to disk as it finished
    assert rec.trace.meta["sample_ids"] == [4, 5]
    for k in range(3, 5):
        sample_with_trace(pipe, PROMPTS, writer=writer, key=f"cell-{k}", num_inference_steps=4, seed=k,
                          output_type="latent", progress=False)
    assert writer.num_samples == 10 and writer.done_keys() == {"cell-3", "cell-4"}
    # simulate a crash: a half-written temp file, a cut index line, and a batch whose index line was lost
    (directory / ".batch-000005.safetensors.123.tmp").write_bytes(b"\x00" * 10)
    index = directory / "index.jsonl"
    lines = index.read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    store = load_traces(directory)
    assert len(store) == 5 and store.num_samples == 10
    assert store.keys()[-1] == "cell-4"  # recovered from the batch file's own header
    frame = store.to_frame()
    assert sorted(frame["sample"].unique()) == list(range(10))
    assert {"batch", "key", "g1", "g2", "window_size"} <= set(frame.columns)
    trace, index_in_batch = store.find(3)
    assert trace.sample_ids[index_in_batch] == 3 and trace.meta["batch"] == 1
    assert same_bits(trace.latents(4), store[1].latents(4))
    # resuming continues numbering and ids, repairs the index, drops the temp file
    resumed = TraceWriter(directory)
    assert resumed.num_samples == 10 and resumed.done_keys() == {"cell-3", "cell-4"}
    _, last = sample_with_trace(pipe, PROMPTS, writer=resumed, key="cell-5", num_inference_steps=4, seed=5,
                                output_type="latent", progress=False)
    assert last.sample_ids == [10, 11] and last.meta["batch"] == 5
    assert not list(directory.glob(".*.tmp"))
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    assert [e["file"] for e in entries] == [f"batch-{k:06d}.safetensors" for k in range(6)]
    assert len(TraceDir(directory)) == 6


def test_recorder_without_context_splits_consecutive_runs():
    pipe = trace_pipe()
    rec = TraceRecorder()
    run(pipe, recorder=rec, num_inference_steps=4)
    run(pipe, recorder=rec, num_inference_steps=3, zigzag_steps=0)
    first, second = rec.traces
    assert first.num_steps == 4 and first.num_events == 4 + 2 * 3
    assert second.num_steps == 3 and second.num_events == 3
    assert rec.trace is second
    assert second.events["t_to"][-1] == -1  # after the last step: the final alpha


def test_tiny_sdxl_pipeline_trace():
    tiny = pytest.importorskip("zsampling.tiny_pipelines")
    pipe = tiny.tiny_sdxl_pipeline()
    kwargs = dict(num_inference_steps=3, guidance_scale=5.5, zag="ddim", output_type="latent", progress=False)
    plain = zsampling.sample(pipe, ["a cat"], generator=torch.Generator().manual_seed(0), **kwargs)
    out, trace = sample_with_trace(pipe, ["a cat"], keep="all", latent_dtype=torch.float32, decode_every=2,
                                   seed=0, **kwargs)
    assert torch.equal(out.latents, plain.latents)
    assert out.network_rows == plain.network_rows == trace.meta["expected_network_rows"]
    assert trace.decoded_steps == [0, 2] and trace.images(0).shape == (1, 3, 64, 64)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 3)
    for i in range(2):
        c = reflection_coefficient(schedule.alpha_at(i), schedule.alpha_after(i))
        x, after = trace.latents(i), trace.latents(i, "zag")
        eps_zig, eps_zag = trace.eps(i, "zig"), trace.eps(i, "zag")
        gap = c * 5.5 * (eps_zig.cond - eps_zig.uncond)
        residual = c * (eps_zig.uncond - eps_zag.uncond)  # g2 = 0: eps_g2 is eps_u
        torch.testing.assert_close(after - x, gap + residual, rtol=0, atol=1e-4)
        e = trace.event_index(i, "zag")
        assert_scalar(trace, "gap_norm", e, norm(gap), rtol=1e-4)
        assert_scalar(trace, "residual_norm", e, norm(residual), rtol=1e-3, atol=1e-4)
