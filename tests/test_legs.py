"""Reflection legs: weight (LoRA), model and prompt gaps against literal loops written here.

The loops set the adapter weights with diffusers' own ``pipe.set_adapters``, call ``pipe.unet`` with
conditioning encoded by each pipeline's own ``encode_prompt``, and move latents with diffusers'
``DDIMScheduler.step`` (zig / step) and ``DDIMInverseScheduler.step`` (the official zag) or the hand-written
DDIM inversion (the exact zag).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from peft import LoraConfig

from zsampling import prepare, sample
from zsampling.legs import Leg, Legs
from zsampling.sampler import expected_network_rows
from zsampling.tiny_pipelines import tiny_sd3_pipeline, tiny_sdxl_pipeline
from zsampling.trace import sample_with_trace

PROMPTS = ["a photo of a cat", "a red bicycle"]
STEPS, WINDOW, G1 = 6, 5, 5.5


def lora_pipeline(seed: int = 0):
    """A tiny SDXL with a tiny random LoRA (rank 4, non-zero B) on its attention projections."""
    pipe = tiny_sdxl_pipeline(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="w2sd")
    return pipe


@pytest.fixture(scope="module")
def lora_pipe():
    return lora_pipeline()


def sdxl_conditioning(pipe, prompts):
    """The unet keyword arguments of [uncond, cond] for ``prompts``, from the pipeline's own encoders."""
    with torch.no_grad():
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                                 do_classifier_free_guidance=True)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=cond.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    time_ids = time_ids.repeat(2 * len(prompts), 1)
    return {"encoder_hidden_states": torch.cat([uncond, cond]),
            "added_cond_kwargs": {"text_embeds": torch.cat([pooled_uncond, pooled]), "time_ids": time_ids}}


class LiteralLegs:
    """``legs[name] = (pipe, lora scale or None, guidance, prompts)``: each leg's guided eps, written out."""

    def __init__(self, legs):
        self.legs = legs
        self.conditioning = {name: sdxl_conditioning(pipe, prompts) for name, (pipe, _, _, prompts) in legs.items()}

    def eps(self, name, x, t):
        pipe, scale, g, _ = self.legs[name]
        if scale is not None:
            pipe.set_adapters(["w2sd"], adapter_weights=[scale])
        with torch.no_grad():
            out = pipe.unet(torch.cat([x, x]), t, **self.conditioning[name], return_dict=False)[0]
        uncond, cond = out.chunk(2)
        return uncond + g * (cond - uncond)


def literal_loop(latents, legs, zag="official"):
    """Z-Sampling with per-leg models, LoRA scales, guidance and prompts; returns the final latents."""
    base = legs["step"][0]
    literal = LiteralLegs(legs)
    eps = literal.eps
    scheduler = DDIMScheduler.from_config(base.scheduler.config)
    inverse = DDIMInverseScheduler.from_config(base.scheduler.config)
    scheduler.set_timesteps(STEPS)
    inverse.set_timesteps(STEPS)
    timesteps = scheduler.timesteps
    ab = scheduler.alphas_cumprod.double()
    for i, t in enumerate(timesteps):
        if i < WINDOW:
            y = scheduler.step(eps("zig", latents, t), t, latents).prev_sample
            if zag == "official":
                latents = inverse.step(eps("zag", y, t), timesteps[i + 1], y).prev_sample
            else:  # exact DDIM inversion t_{i+1} -> t_i, evaluated at t_{i+1}
                a_next, a_i = ab[timesteps[i + 1]].item(), ab[t].item()
                e = eps("zag", y, timesteps[i + 1])
                latents = (math.sqrt(a_i) * (y - math.sqrt(1 - a_next) * e) / math.sqrt(a_next)
                           + math.sqrt(1 - a_i) * e).float()
        latents = scheduler.step(eps("step", latents, t), t, latents).prev_sample
    return latents


def initial(pipe, seed):
    shape = prepare(pipe, PROMPTS).latent_shape
    return torch.randn(len(PROMPTS), *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("zag", ["official", "ddim"])
def test_w2sd_weight_gap_equals_a_literal_loop_with_set_adapters(lora_pipe, zag):
    latents = initial(lora_pipe, 1)
    ours = sample(lora_pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1, inversion_guidance_scale=1.0,
                  zigzag_steps=WINDOW, zag=zag, legs=Legs.w2sd(), latents=latents, output_type="latent",
                  progress=False)
    legs = {"zig": (lora_pipe, 1.5, G1, PROMPTS), "zag": (lora_pipe, -1.5, 1.0, PROMPTS),
            "step": (lora_pipe, 0.8, G1, PROMPTS)}
    expected = literal_loop(latents.clone(), legs, zag)
    lora_pipe.set_adapters(["w2sd"], adapter_weights=[1.0])
    assert (ours.latents - expected).abs().max().item() <= 1e-4
    assert ours.nfe == 2 * STEPS + 3 * WINDOW  # zag on the conditional branch only
    # the adapters come back at their own scale, and the LoRA mattered
    plain = sample(lora_pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1, inversion_guidance_scale=1.0,
                   zigzag_steps=WINDOW, zag=zag, latents=latents, output_type="latent", progress=False)
    again = sample(lora_pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1, inversion_guidance_scale=1.0,
                   zigzag_steps=WINDOW, zag=zag, latents=latents, output_type="latent", progress=False)
    assert torch.equal(plain.latents, again.latents)
    assert (plain.latents - ours.latents).abs().max().item() > 1e-3


def test_two_pipeline_gap_equals_a_literal_loop():
    strong, weak = tiny_sdxl_pipeline(0), tiny_sdxl_pipeline(1)
    latents = initial(strong, 2)
    ours = sample(strong, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1, inversion_guidance_scale=G1,
                  zigzag_steps=WINDOW, legs=Legs(zag=Leg(model="weak")), models={"weak": weak}, latents=latents,
                  output_type="latent", progress=False)
    legs = {"zig": (strong, None, G1, PROMPTS), "zag": (weak, None, G1, PROMPTS), "step": (strong, None, G1, PROMPTS)}
    expected = literal_loop(latents.clone(), legs)
    assert (ours.latents - expected).abs().max().item() <= 1e-4
    assert ours.nfe == 2 * STEPS + 4 * WINDOW
    assert ours.network_rows == len(PROMPTS) * ours.nfe


def test_prompt_gap_equals_a_literal_loop():
    pipe = tiny_sdxl_pipeline()
    latents = initial(pipe, 3)
    weak_prompt = "a photo"
    ours = sample(pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1, inversion_guidance_scale=G1,
                  zigzag_steps=WINDOW, legs=Legs(zag=Leg(prompt=weak_prompt)), latents=latents,
                  output_type="latent", progress=False)
    legs = {"zig": (pipe, None, G1, PROMPTS), "zag": (pipe, None, G1, [weak_prompt] * 2),
            "step": (pipe, None, G1, PROMPTS)}
    assert (ours.latents - literal_loop(latents.clone(), legs)).abs().max().item() <= 1e-4


GAPS = {  # settings, and the literal legs: (pipe key, lora scale, guidance, prompts) per leg
    "lora": ({"legs": Legs.w2sd(), "inversion_guidance_scale": 1.0},
             {"zig": ("lora", 1.5, G1, PROMPTS), "zag": ("lora", -1.5, 1.0, PROMPTS),
              "step": ("lora", 0.8, G1, PROMPTS)}),
    "model": ({"legs": Legs(zag=Leg(model="weak")), "inversion_guidance_scale": G1},
              {"zig": ("lora", None, G1, PROMPTS), "zag": ("weak", None, G1, PROMPTS),
               "step": ("lora", None, G1, PROMPTS)}),
    "prompt": ({"legs": Legs(zag=Leg(prompt="a photo")), "inversion_guidance_scale": 0.0},
               {"zig": ("lora", None, G1, PROMPTS), "zag": ("lora", None, 0.0, ["a photo"] * 2),
                "step": ("lora", None, G1, PROMPTS)}),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_delta_is_gap_term_plus_residual_for_every_gap_kind(lora_pipe, gap):
    """With the exact zag, delta = c (o_zig - o_zag)(x_i) + c (o_zag(x_i) - o_zag(y)); every output is
    recomputed by the literal legs, and the recorded gap and residual norms must match them."""
    settings, literal_legs = GAPS[gap]
    weak = tiny_sdxl_pipeline(1)
    out, trace = sample_with_trace(lora_pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1,
                                   zigzag_steps=WINDOW, zag="ddim", measure_gap=True, models={"weak": weak},
                                   output_type="latent", progress=False, seed=0, keep="all",
                                   latent_dtype=torch.float32, **settings)
    assert out.network_rows == expected_network_rows(out.config, len(PROMPTS), recording=True)
    zag_rows = 1 if settings["inversion_guidance_scale"] in (0.0, 1.0) else 2
    assert out.nfe == 2 * STEPS + WINDOW * (2 + 2 * zag_rows)  # the probe: one zag-leg call per reflection
    pipes = {"lora": lora_pipe, "weak": weak}
    literal = LiteralLegs({name: (pipes[key], scale, g, prompts)
                           for name, (key, scale, g, prompts) in literal_legs.items()})
    events = trace.events
    norm = lambda v: v.reshape(len(PROMPTS), -1).norm(dim=1)  # noqa: E731
    for e in range(trace.num_events):
        if int(events["op"][e]) != 1:
            continue
        x, y, after = trace.latents_in(e - 1), trace.latents_in(e), trace.tensor("latents", e)
        t_i, t_next, c = int(events["t_eval"][e - 1]), int(events["t_eval"][e]), float(events["c"][e])
        t_i, t_next = torch.tensor(t_i), torch.tensor(t_next)
        gap_term = c * (literal.eps("zig", x, t_i) - literal.eps("zag", x, t_i))
        residual = c * (literal.eps("zag", x, t_i) - literal.eps("zag", y, t_next))
        torch.testing.assert_close(after - x, gap_term + residual, rtol=0, atol=1e-5)
        torch.testing.assert_close(trace.scalars["gap_norm"][e], norm(gap_term), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trace.scalars["residual_norm"][e], norm(residual), rtol=1e-4, atol=1e-5)
    lora_pipe.set_adapters(["w2sd"], adapter_weights=[1.0])
    # without measure_gap: same latents, one probe less per reflection, no gap recorded
    out2, trace2 = sample_with_trace(lora_pipe, PROMPTS, num_inference_steps=STEPS, guidance_scale=G1,
                                     zigzag_steps=WINDOW, zag="ddim", models={"weak": weak}, output_type="latent",
                                     progress=False, seed=0, **settings)
    assert torch.equal(out2.latents, out.latents)
    assert out2.nfe == out.nfe - WINDOW * zag_rows
    assert trace2.to_frame().query("op == 'zag'").gap_norm.isna().all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"legs": Legs(zag=Leg(lora_scale=-1.0))}, "no LoRA adapter is loaded"),
    ({"legs": Legs(zag=Leg(model="weak"))}, r"not in models="),
    ({"legs": Legs(zag=Leg(model="sd3")), "models": {"sd3": "later"}, "height": 64, "width": 64},
     "must share one latent space"),
    ({"legs": Legs(zag=Leg(model="sd3")), "models": {"sd3": "later"}}, "must share one family"),
])
def test_invalid_legs_fail_before_any_network_call(kwargs, message):
    pipe = tiny_sdxl_pipeline()
    calls = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    if kwargs.get("models") == {"sd3": "later"}:
        kwargs = {**kwargs, "models": {"sd3": tiny_sd3_pipeline()}}
    with pytest.raises(ValueError, match=message):
        sample(pipe, PROMPTS, num_inference_steps=4, output_type="latent", progress=False, **kwargs)
    assert calls == []


# ------------------------------------------------------------------------------------------------------ sweeps
def test_leg_knobs_in_a_sweep_equal_zsampling_sample_and_only_share_prefixes_when_exact(tmp_path):
    """Leg knobs are grid knobs: cells equal zsampling.sample with the same Legs; cells whose zig and step
    legs differ cannot branch off a longer window's trunk, and the runner computes them alone."""
    from safetensors.torch import load_file

    import zsampling
    from zsampling.denoisers.analytic import GaussianMixtureModel
    from zsampling.sweep import expand_cells, parse_spec, run_sweep
    from zsampling.sweep.cells import initial_noise, sweep_samples

    steps = 6
    spec = parse_spec({
        "model": "analytic", "prompts": ["0", "1"], "seeds": [0, 1], "metrics": ["posterior"], "batch_size": 4,
        "grid": {"num_inference_steps": steps, "guidance_scale": [3.0], "zigzag_steps": [0, 2, 5], "zag": ["ddim"],
                 "step.guidance_scale": [None, 1.5], "zag.guidance_scale": [0.5]},
    })
    cells = expand_cells(spec)
    assert {tuple(sorted(c.leg_knobs().items())) for c in cells} == {
        (("zag.guidance_scale", 0.5),), (("step.guidance_scale", 1.5), ("zag.guidance_scale", 0.5))}
    shared = run_sweep(spec, tmp_path / "shared", progress=False)
    alone = run_sweep(spec, tmp_path / "alone", progress=False, share_prefix=False)
    assert {"step.guidance_scale", "zag.guidance_scale"} <= set(shared.results.columns)
    pd_equal = shared.results.drop(columns="wall_time_s").equals(alone.results.drop(columns="wall_time_s"))
    assert pd_equal
    model = GaussianMixtureModel.default()
    samples = sweep_samples(spec)
    noise = initial_noise(samples, model.latent_shape)
    for cell in cells:
        images = load_file(tmp_path / "shared" / "images" / f"{cell.hash}.safetensors")["images"]
        out = zsampling.sample(model, [s.prompt for s in samples], latents=noise, output_type="pt", progress=False,
                               legs=cell.legs, **cell.knobs())
        torch.testing.assert_close(images, out.images, rtol=0, atol=1e-5)
    # sharing saved rows only where the zig and step legs agree
    assert shared.network_rows_spent < alone.network_rows_spent


def test_lora_knobs_need_a_lora_path():
    from zsampling.sweep import SpecError, parse_spec

    with pytest.raises(SpecError, match="set model.options.lora_path"):
        parse_spec({"model": "tiny-sdxl", "prompts": ["a"], "seeds": [0], "grid": {"zig.lora_scale": [1.5]}})
    with pytest.raises(SpecError, match="unknown key grid.'zig.lora'"):
        parse_spec({"model": "analytic", "prompts": ["0"], "seeds": [0], "grid": {"zig.lora": [1.5]}})


def test_weight_gap_matched_baselines_apply_each_leg_plainly_at_the_same_rows(tmp_path):
    """A W2SD cell's baselines: its strong (zig) leg and its step leg on every step, steps raised to the same
    network rows, on the same samples; they equal zsampling.sample with those legs."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    import zsampling
    from zsampling.sweep import parse_spec, run_sweep
    from zsampling.sweep.cells import initial_noise, sweep_samples

    tiny_sdxl_pipeline().save_pretrained(tmp_path / "model")  # the base weights, without the adapter
    pipe = lora_pipeline()
    type(pipe).save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet,
                                                                                             adapter_name="w2sd"))
    steps = 4
    spec = parse_spec({
        "model": {"name": str(tmp_path / "model"), "options": {"lora_path": str(tmp_path / "lora")}},
        "prompts": PROMPTS, "seeds": [0], "metrics": [], "trace": False, "matched_baselines": True, "images": True,
        "grid": {"num_inference_steps": steps, "guidance_scale": [G1], "inversion_guidance_scale": [1.0],
                 "zigzag_steps": [3], "zig.lora_scale": [1.5], "zag.lora_scale": [-1.5], "step.lora_scale": [0.8]},
    })
    result = run_sweep(spec, tmp_path / "run", progress=False)
    cells = result.cells.set_index("method")
    assert set(cells.index) == {"zigzag", "legs_matched_strong", "legs_matched_step"}
    z_nfe = 2 * steps + 3 * 3
    for method, scale in (("legs_matched_strong", 1.5), ("legs_matched_step", 0.8)):
        row = cells.loc[method]
        assert row["nfe"] >= z_nfe and row["nfe"] - z_nfe < 2 and row["zigzag_steps"] == 0
        assert row["step.lora_scale"] == scale
    # the derived cells are plain sampling with that leg, from the same initial noise
    model = type(pipe).from_pretrained(tmp_path / "model")
    model.load_lora_weights(str(tmp_path / "lora"), adapter_name="w2sd")
    samples = sweep_samples(spec)
    noise = initial_noise(samples, prepare(model, PROMPTS).latent_shape)
    strong = cells.loc["legs_matched_strong"]
    images = load_file(tmp_path / "run" / "images" / f"{strong['cell']}.safetensors")["images"]
    out = zsampling.sample(model, [s.prompt for s in samples], latents=noise,
                           num_inference_steps=int(strong["num_inference_steps"]), guidance_scale=G1, zigzag_steps=0,
                           legs=Legs(step=Leg(lora_scale=1.5)), output_type="pt", progress=False)
    expected = (out.images.clamp(0, 1) * 255).round().to(torch.uint8)
    assert (images.int() - expected.int()).abs().max().item() <= 1
