"""The DreamShaper-XL-v2-turbo preset: its documented few-step schedule, and lambda = 0 parity on trailing spacing."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from zsampling import sample
from zsampling.presets import get_preset
from zsampling.reproduce import PAPER_WIN_RATE_PRESET, PAPER_WIN_RATES
from zsampling.tiny_pipelines import tiny_sdxl_pipeline


def test_turbo_preset_has_its_documented_schedule_and_owns_the_released_win_rates():
    preset = get_preset("dreamshaper-turbo")
    assert preset.name == PAPER_WIN_RATE_PRESET == "dreamshaper-xl"
    assert preset.hub_id == "Lykon/dreamshaper-xl-v2-turbo"
    assert (preset.num_inference_steps, preset.guidance_scale, preset.zigzag_steps) == (8, 2.0, 7)
    assert dict(preset.scheduler_overrides) == {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 0,
                                                "timestep_spacing": "trailing"}
    assert "model card" in preset.sources["guidance_scale"] and "not from the paper" in preset.sources["scheduler"]
    assert PAPER_WIN_RATES["drawbench"]["hpsv2"] == 0.94
    # the schedule the overrides give: trailing spacing starts at t = 999
    scheduler = DDIMScheduler.from_config(tiny_sdxl_pipeline().scheduler.config, **preset.scheduler_overrides)
    scheduler.set_timesteps(preset.num_inference_steps)
    assert scheduler.timesteps.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]


def test_standard_sampling_equals_the_pipeline_with_trailing_spacing():
    pipe = tiny_sdxl_pipeline()
    overrides = get_preset("dreamshaper-xl").scheduler_overrides
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **overrides)
    prompts = ["a photo of a cat", "a red bicycle"]
    ours = sample(pipe, prompts, num_inference_steps=8, guidance_scale=2.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs = pipe(prompts, num_inference_steps=8, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    assert (ours.latents - theirs).abs().max().item() <= 1e-4
    # with 6 steps (the card's example) DDIMScheduler.step's stride t - k leaves the trailing list (diffusers
    # issue #12633) while zsampling follows the list: a deliberate disagreement (docs/design.md, "Schedules")
    six = sample(pipe, prompts, num_inference_steps=6, guidance_scale=2.0, zigzag_steps=0,
                 generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs6 = pipe(prompts, num_inference_steps=6, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                   output_type="latent").images
    assert (six.latents - theirs6).abs().max().item() > 1e-2
