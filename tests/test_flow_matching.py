"""Z-Sampling on flow-matching pipelines (SD3, Flux): parity with diffusers, literal loops, gain split, rows.

Independent references: the pipelines' own ``__call__`` (lambda = 0), and plain loops written here that call
``pipe.transformer`` and ``FlowMatchEulerDiscreteScheduler.step`` for the zig and the reverse Euler formula
``y - (sigma_{i+1} - sigma_i) v`` for the zag.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from zsampling import prepare, sample
from zsampling.legs import Leg, Legs
from zsampling.sampler import LegPlan, expected_network_rows
from zsampling.tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline
from zsampling.trace import sample_with_trace

PROMPTS = ["a photo of a cat", "a red bicycle"]
NEGATIVE = ["blurry", "ugly"]


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux_dev():
    return tiny_flux_pipeline(guidance_embeds=True)


@pytest.fixture(scope="module")
def flux_schnell():
    return tiny_flux_pipeline(guidance_embeds=False)


def _latents(pipe, seed=0, negative=None):
    target = prepare(pipe, PROMPTS, negative)
    return torch.randn(len(PROMPTS), *target.latent_shape, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("g1", [3.0, 7.0])
def test_standard_sampling_equals_the_sd3_pipeline(sd3, g1):
    ours = sample(sd3, PROMPTS, num_inference_steps=6, guidance_scale=g1, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs = sd3(PROMPTS, num_inference_steps=6, guidance_scale=g1, generator=torch.Generator().manual_seed(0),
                 output_type="latent").images
    assert _max_diff(ours.latents, theirs) <= 1e-4
    assert ours.nfe == 2 * 6
    assert ours.config.zag == "euler"


def test_standard_sampling_equals_the_sd3_pipeline_with_negative_prompt_and_dynamic_shift(sd3):
    pipe = tiny_sd3_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=True)
    ours = sample(pipe, PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=4.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(1), output_type="latent", progress=False)
    theirs = pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(1), output_type="latent").images
    assert _max_diff(ours.latents, theirs) <= 1e-4


@pytest.mark.parametrize("embeds", [True, False], ids=["dev", "schnell"])
def test_standard_sampling_equals_the_flux_pipeline(flux_dev, flux_schnell, embeds):
    pipe = flux_dev if embeds else flux_schnell
    ours = sample(pipe, PROMPTS, num_inference_steps=6, guidance_scale=3.5, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs = pipe(PROMPTS, num_inference_steps=6, guidance_scale=3.5, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    assert _max_diff(ours.latents, theirs) <= 1e-4
    assert ours.nfe == 6  # one branch


def test_standard_sampling_equals_flux_true_cfg(flux_dev):
    ours = sample(flux_dev, PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=2.5,
                  zigzag_steps=0, generator=torch.Generator().manual_seed(2), output_type="latent", progress=False)
    theirs = flux_dev(PROMPTS, negative_prompt=NEGATIVE, true_cfg_scale=2.5, num_inference_steps=5,
                      generator=torch.Generator().manual_seed(2), output_type="latent").images
    assert _max_diff(ours.latents, theirs) <= 1e-4
    assert ours.nfe == 2 * 5


def test_decoded_images_match_the_pipelines(sd3, flux_dev):
    for pipe in (sd3, flux_dev):
        ours = sample(pipe, PROMPTS[:1], num_inference_steps=3, zigzag_steps=0, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0), output_type="np", progress=False)
        theirs = pipe(PROMPTS[:1], num_inference_steps=3, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
        assert np.abs(ours.images - theirs).max() <= 1e-3


# ----------------------------------------------------------------------------------------------- literal loops
def _euler_zigzag(scheduler, velocity, latents, steps, window, rounds, zag_eval="next"):
    """The flow zigzag written out on a set-up ``scheduler``: diffusers' Euler step for the zig and the step, the
    reverse Euler formula for the zag (its velocity at t_{i+1}, or t_i with ``zag_eval="current"``);
    ``velocity(x, t, leg)`` is the pipeline's for leg "zig", "zag" or "step"."""
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas

    def euler_step(v, i, x):
        scheduler._step_index = i
        return scheduler.step(v, timesteps[i], x).prev_sample

    for i in range(steps):
        if i < window:
            for _ in range(rounds):
                y = euler_step(velocity(latents, timesteps[i], "zig"), i, latents)
                s = timesteps[i + 1] if zag_eval == "next" else timesteps[i]
                latents = y - (sigmas[i + 1] - sigmas[i]) * velocity(y, s, "zag")
        latents = euler_step(velocity(latents, timesteps[i], "step"), i, latents)
    return latents


def _sd3_loop(pipe, latents, steps, g1, g2, window, rounds, zag_eval="next"):
    """Z-Sampling on SD3 written out: the pipeline's transformer, diffusers' Euler step for the zig, the
    reverse Euler formula for the zag."""
    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    guidance = {"zig": g1, "zag": g2, "step": g1}

    def velocity(x, t, leg):
        with torch.no_grad():
            out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2 * x.shape[0]),
                                   encoder_hidden_states=torch.cat([uncond, cond]),
                                   pooled_projections=torch.cat([pooled_uncond, pooled]), return_dict=False)[0]
        v_u, v_c = out.chunk(2)
        return v_u + guidance[leg] * (v_c - v_u)

    return _euler_zigzag(scheduler, velocity, latents, steps, window, rounds, zag_eval)


@pytest.mark.parametrize(("window", "rounds", "g2"), [(9, 1, 0.0), (4, 2, 0.0), (9, 1, 1.5)])
def test_zsampling_on_sd3_equals_a_literal_loop(sd3, window, rounds, g2):
    steps, g1 = 10, 5.0
    latents = _latents(sd3, seed=4)
    ours = sample(sd3, PROMPTS, num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2,
                  zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent", progress=False)
    expected = _sd3_loop(sd3, latents.clone(), steps, g1, g2, window, rounds)
    assert _max_diff(ours.latents, expected) <= 1e-4
    zag_rows = 1 if g2 in (0.0, 1.0) else 2
    assert ours.nfe == 2 * steps + (2 + zag_rows) * window * rounds


def test_zag_evaluated_at_the_current_timestep_equals_the_literal_loop(sd3):
    latents = _latents(sd3, seed=5)
    ours = sample(sd3, PROMPTS, num_inference_steps=6, guidance_scale=4.0, zigzag_steps=5, zag_eval_timestep="current",
                  latents=latents, output_type="latent", progress=False)
    expected = _sd3_loop(sd3, latents.clone(), 6, 4.0, 0.0, 5, 1, zag_eval="current")
    assert _max_diff(ours.latents, expected) <= 1e-4


def _flux_loop(pipe, latents, steps, legs, window, rounds):
    """One-branch Flux Z-Sampling written out: ``legs`` maps zig / zag / step to (guidance embedding, mix)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    with torch.no_grad():
        cond, pooled, text_ids = pipe.encode_prompt(PROMPTS, None)
        empty, pooled_empty, _ = pipe.encode_prompt([""] * len(PROMPTS), None)
    height = width = pipe.default_sample_size * pipe.vae_scale_factor
    channels = pipe.transformer.config.in_channels // 4
    _, image_ids = pipe.prepare_latents(len(PROMPTS), channels, height, width, latents.dtype, latents.device, None,
                                        latents)
    config = pipe.scheduler.config
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(latents.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)

    def velocity(x, t, leg):
        embed, mix = legs[leg]
        c, p = cond, pooled
        if mix is not None:
            s, r = mix
            c = cond + s * ((1 - r) * cond + r * empty)
            p = pooled + s * ((1 - r) * pooled + r * pooled_empty)
        guidance = torch.full([x.shape[0]], embed, dtype=torch.float32)
        with torch.no_grad():
            return pipe.transformer(hidden_states=x, timestep=t.expand(x.shape[0]).to(x.dtype) / 1000,
                                    guidance=guidance, pooled_projections=p, encoder_hidden_states=c,
                                    txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]

    return _euler_zigzag(scheduler, velocity, latents, steps, window, rounds)


def test_guidance_embedding_gap_on_flux_dev_equals_a_literal_loop(flux_dev):
    steps, window, rounds = 6, 5, 1
    latents = _latents(flux_dev, seed=6)
    ours = sample(flux_dev, PROMPTS, num_inference_steps=steps, guidance_scale=3.5, inversion_guidance_scale=1.0,
                  zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent", progress=False)
    legs = {"zig": (3.5, None), "zag": (1.0, None), "step": (3.5, None)}
    expected = _flux_loop(flux_dev, latents.clone(), steps, legs, window, rounds)
    assert _max_diff(ours.latents, expected) <= 1e-4
    assert ours.nfe == steps + 2 * window * rounds


@pytest.mark.parametrize("rounds", [1, 2])
def test_embedding_mix_gap_on_flux_dev_equals_a_literal_loop(flux_dev, rounds):
    steps, window = 6, 4
    latents = _latents(flux_dev, seed=7)
    ours = sample(flux_dev, PROMPTS, num_inference_steps=steps, guidance_scale=3.5, inversion_guidance_scale=3.5,
                  legs=Legs.embedding_mix(), zigzag_steps=window, rounds=rounds, latents=latents,
                  output_type="latent", progress=False)
    legs = {"zig": (3.5, (3.5, 0.3)), "zag": (3.5, (0.0, 0.7)), "step": (3.5, (3.5, 0.3))}
    expected = _flux_loop(flux_dev, latents.clone(), steps, legs, window, rounds)
    assert _max_diff(ours.latents, expected) <= 1e-4
    assert ours.nfe == steps + 2 * window * rounds


# ------------------------------------------------------------------------------------------- gain split, rows
CASES = {
    "sd3": ("sd3", {"guidance_scale": 4.0, "inversion_guidance_scale": 0.0}),
    "flux-cfg": ("dev", {"negative_prompt": NEGATIVE, "guidance_scale": 3.0, "inversion_guidance_scale": 1.0}),
    "flux-embed": ("dev", {"guidance_scale": 3.5, "inversion_guidance_scale": 0.0}),
    "flux-mix": ("dev", {"guidance_scale": 3.5, "inversion_guidance_scale": 3.5, "legs": Legs.embedding_mix()}),
    "schnell-mix": ("schnell", {"legs": Legs.embedding_mix()}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_is_gap_term_plus_residual_on_every_flow_pipeline(sd3, flux_dev, flux_schnell, case):
    """delta = c_i (o_zig - o_zag)(x_i) + c_i (o_zag(x_i) - o_zag(y)), with every output recomputed here through
    the prepared denoiser in float32 and the recorded norms compared against them."""
    name, settings = CASES[case]
    pipe = {"sd3": sd3, "dev": flux_dev, "schnell": flux_schnell}[name]
    steps, window = 5, 4
    out, trace = sample_with_trace(pipe, PROMPTS, num_inference_steps=steps, zigzag_steps=window, measure_gap=True,
                                   output_type="latent", progress=False, seed=0, keep="all",
                                   latent_dtype=torch.float32, **settings)
    mode = trace.meta["guidance_mode"]
    assert trace.meta["schedule"]["family"] == "flow" and trace.meta["schedule"]["parameterisation"] == "velocity"
    free = case in ("sd3", "flux-cfg")
    assert out.network_rows == expected_network_rows(out.config, len(PROMPTS), mode=mode, recording=True)
    per_step = 2 if mode == "cfg" else 1
    zag_rows = 1 if (mode != "cfg" or settings.get("inversion_guidance_scale") in (0.0, 1.0)) else 2
    assert out.nfe == steps * per_step + window * (per_step + zag_rows + (0 if free else zag_rows))

    target = prepare(pipe, PROMPTS, settings.get("negative_prompt"))
    plan = LegPlan.resolve(out.config, target.denoiser)

    def output(call, x, t):
        kwargs = {} if call.condition.is_default else {"condition": call.condition}
        return target.denoiser(x, t, call.branches, **kwargs).guided(call.cfg_scale)

    events = trace.events
    for e in range(trace.num_events):
        if int(events["op"][e]) != 1:
            continue
        x, y, after = trace.latents_in(e - 1), trace.latents_in(e), trace.tensor("latents", e)
        t_i, c = float(events["t_eval"][e - 1]), float(events["c"][e])
        t_next = float(events["t_eval"][e])
        gap = c * (output(plan.zig, x, t_i) - output(plan.zag, x, t_i))
        residual = c * (output(plan.zag, x, t_i) - output(plan.zag, y, t_next))
        torch.testing.assert_close(after - x, gap + residual, rtol=0, atol=1e-5)
        norm = lambda v: v.reshape(len(PROMPTS), -1).norm(dim=1)  # noqa: E731
        torch.testing.assert_close(trace.scalars["gap_norm"][e], norm(gap), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trace.scalars["residual_norm"][e], norm(residual), rtol=1e-4, atol=1e-5)


def test_without_measure_gap_a_non_cfg_gap_is_not_paid_for_and_not_recorded(flux_dev):
    out, trace = sample_with_trace(flux_dev, PROMPTS, num_inference_steps=5, zigzag_steps=4, guidance_scale=3.5,
                                   inversion_guidance_scale=0.0, output_type="latent", progress=False, seed=0)
    assert out.nfe == 5 + 2 * 4
    zag = trace.to_frame().query("op == 'zag'")
    assert zag.gap_norm.isna().all() and zag.gain_norm.notna().all()
    plain = sample(flux_dev, PROMPTS, num_inference_steps=5, zigzag_steps=4, guidance_scale=3.5,
                   inversion_guidance_scale=0.0, output_type="latent", progress=False,
                   generator=torch.Generator().manual_seed(0), measure_gap=True)
    assert plain.nfe == 5 + 2 * 4  # no recorder: nothing to measure, nothing paid
    assert torch.equal(plain.latents, out.latents)


@pytest.mark.parametrize("g2", [0.0, 1.0])
def test_network_rows_are_exact_with_branch_aware_zags(sd3, g2):
    out = sample(sd3, PROMPTS, num_inference_steps=6, guidance_scale=5.0, inversion_guidance_scale=g2,
                 zigzag_steps=5, rounds=2, output_type="latent", progress=False)
    assert out.nfe == 2 * 6 + 3 * 5 * 2
    assert out.network_rows == len(PROMPTS) * out.nfe


# ------------------------------------------------------------------------------------------------ refusals
class _Counting:
    """Wraps a pipeline's transformer to count calls."""

    def __init__(self, pipe):
        self.calls = 0
        original = pipe.transformer.forward

        def forward(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        pipe.transformer.forward = forward


@pytest.mark.parametrize(("builder", "kwargs", "message"), [
    ("sd3", {"zag": "official"}, "use 'euler'"),
    ("sd3", {"zag": "ddim"}, "use 'euler'"),
    ("sd3", {"legs": Legs(zag=Leg(guidance_embed=1.0))}, "needs a model with a guidance embedding"),
    ("schnell", {}, "a reflection injects nothing"),
    ("schnell", {"legs": Legs(zag=Leg(guidance_embed=0.0))}, "needs a model with a guidance embedding"),
    ("dev", {"inversion_guidance_scale": 3.5}, "a reflection injects nothing"),
    ("dev", {"branches": "both"}, "pass a negative_prompt to run true CFG"),
])
def test_bad_combinations_fail_before_any_network_call(builder, kwargs, message):
    pipe = {"sd3": tiny_sd3_pipeline, "dev": tiny_flux_pipeline,
            "schnell": lambda: tiny_flux_pipeline(guidance_embeds=False)}[builder]()
    counter = _Counting(pipe)
    settings = {"num_inference_steps": 4, "output_type": "latent", "progress": False, **kwargs}
    if builder == "dev":
        settings.setdefault("guidance_scale", 3.5)
    with pytest.raises(ValueError, match=message):
        sample(pipe, PROMPTS, **settings)
    assert counter.calls == 0


def test_ddim_pipeline_refuses_the_euler_operator_and_other_flow_schedulers(sd3):
    from zsampling.tiny_pipelines import tiny_sd_pipeline

    with pytest.raises(ValueError, match="use 'official' or 'ddim'"):
        sample(tiny_sd_pipeline(), PROMPTS, num_inference_steps=3, zag="euler", progress=False)
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = tiny_sd3_pipeline()
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="needs FlowMatchEulerDiscreteScheduler"):
        sample(pipe, PROMPTS, num_inference_steps=3, progress=False)


# ------------------------------------------------------------------------------------------------- sweeps
def test_a_flow_sweep_shares_its_zigzag_prefix_exactly(tmp_path):
    from safetensors.torch import load_file

    from zsampling.sweep import expand_cells, parse_spec, run_sweep

    spec = parse_spec({
        "model": {"name": "tiny-flux", "options": {"guidance_embeds": True}}, "prompts": PROMPTS, "seeds": [0],
        "grid": {"num_inference_steps": 4, "guidance_scale": [3.5], "inversion_guidance_scale": [0.0],
                 "zigzag_steps": {"range": [0, 4]}, "zag": ["euler"]},
        "metrics": [], "batch_size": 2,
    })
    shared = run_sweep(spec, tmp_path / "shared", progress=False)
    alone = run_sweep(spec, tmp_path / "alone", progress=False, share_prefix=False)
    assert shared.network_rows_spent < alone.network_rows_spent
    for cell in expand_cells(spec):
        a = load_file(tmp_path / "shared" / "images" / f"{cell.hash}.safetensors")["images"]
        b = load_file(tmp_path / "alone" / "images" / f"{cell.hash}.safetensors")["images"]
        assert torch.equal(a, b)
    nfe = shared.results.groupby("zigzag_steps")["nfe"].first()
    assert nfe.to_dict() == {lam: 4 + 2 * lam for lam in range(4)}


def test_euler_cells_with_different_evaluation_points_are_not_folded():
    """The official zag ignores zag_eval_timestep, the exact ones (ddim, euler) do not: cells differing only
    there must be computed separately."""
    from zsampling.sweep import expand_cells, parse_spec
    from zsampling.sweep.cells import plan_groups

    spec = parse_spec({"model": {"name": "demo", "options": {"family": "flow"}}, "prompts": ["3"], "seeds": [0],
                       "grid": {"num_inference_steps": 6, "zigzag_steps": [3], "zag": ["euler"],
                                "zag_eval_timestep": ["next", "current"]}})
    cells = expand_cells(spec)
    assert len({c.effective_key for c in cells}) == 2
    assert len([u for g in plan_groups(cells) for u in g.units]) == 2
