"""Hunyuan-DiT (tiny, offline) through zsampling against diffusers itself.

1. The tiny pipeline is deterministic by seed, offline, and has the
   checkpoint's scheduler (Hunyuan-DiT's betas, v-prediction) and both text
   encoders (BERT 77 tokens, mT5-style T5 256 tokens).
2. zigzag_steps=0 equals ``HunyuanDiTPipeline(..., output_type="latent")``
   (with and without a negative prompt; v-prediction as the checkpoint, and
   epsilon).
3. The "official" operator equals a literal loop (tests/released_loop.py)
   on the pipeline's own conditioning, rebuilt here from ``encode_prompt``
   (two encoders, image-meta sizes, style, rotary grid), its transformer
   call with the learned sigma dropped, ``DDIMScheduler.step`` and
   ``DDIMInverseScheduler.step(out, t_{i+1}, y)`` as the released code does.
"""

import pytest
import torch
from diffusers import DDIMScheduler, HunyuanDiTPipeline
from diffusers.models.embeddings import get_2d_rotary_pos_embed
from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid
from released_loop import released_zigzag

from zsampling import prepare, sample
from zsampling.tiny_pipelines import tiny_hunyuan_pipeline

PROMPTS = ["a photo of a cat", "a red bicycle"]
pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every socket connection raises


@pytest.fixture(scope="module", params=["v_prediction", "epsilon"])
def pipe(request):
    return tiny_hunyuan_pipeline(prediction_type=request.param)


def diffusers_latents(pipe, **kwargs):
    return pipe(PROMPTS, output_type="latent", use_resolution_binning=False, **kwargs).images


def test_tiny_pipeline_is_deterministic_offline_and_shaped_like_the_checkpoint():
    a, b, c = tiny_hunyuan_pipeline(0), tiny_hunyuan_pipeline(0), tiny_hunyuan_pipeline(1)
    assert isinstance(a, HunyuanDiTPipeline)
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].numel() > 1), name
    config = a.scheduler.config
    assert isinstance(a.scheduler, DDIMScheduler)
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.03, "scaled_linear")
    assert (config.prediction_type, config.steps_offset, config.timestep_spacing) == ("v_prediction", 1, "leading")
    assert a.vae_scale_factor == 8 and a.transformer.config.in_channels * 2 == a.transformer.out_channels
    embeds, _, mask, _ = a.encode_prompt(PROMPTS, device="cpu", text_encoder_index=0)
    embeds_t5, _, mask_t5, _ = a.encode_prompt(PROMPTS, device="cpu", text_encoder_index=1)
    assert embeds.shape == (2, 77, 32) and embeds_t5.shape == (2, 256, 32)
    # [CLS] + one piece per non-space character + [SEP]; "</s>" after the T5 pieces
    assert mask.sum(1).tolist() == [len(p.replace(" ", "")) + 2 for p in PROMPTS]
    assert mask_t5.sum(1).tolist() == [len(p.replace(" ", "")) + 1 for p in PROMPTS]
    assert diffusers_latents(a, num_inference_steps=2).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("g1", [1.5, 5.0])
def test_standard_sampling_equals_the_diffusers_pipeline(pipe, g1):
    ours = sample(pipe, PROMPTS, num_inference_steps=6, guidance_scale=g1, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs = diffusers_latents(pipe, num_inference_steps=6, guidance_scale=g1,
                               generator=torch.Generator().manual_seed(0))
    assert ours.nfe == 2 * 6 and ours.network_rows == len(PROMPTS) * ours.nfe
    assert (ours.latents - theirs).abs().max().item() <= 1e-4
    # negative control: another original size (image-meta conditioning) moves the pipeline's result
    other = diffusers_latents(pipe, num_inference_steps=6, guidance_scale=g1, original_size=(512, 512),
                              generator=torch.Generator().manual_seed(0))
    assert (ours.latents - other).abs().max().item() > 1e-3


def test_standard_sampling_with_negative_prompt_and_given_latents(pipe):
    latents = torch.randn(len(PROMPTS), *prepare(pipe, PROMPTS).latent_shape,
                          generator=torch.Generator().manual_seed(1))
    ours = sample(pipe, PROMPTS, negative_prompt="blurry", num_inference_steps=5, guidance_scale=4.0,
                  zigzag_steps=0, latents=latents, output_type="latent", progress=False)
    theirs = diffusers_latents(pipe, negative_prompt=["blurry"] * 2, num_inference_steps=5, guidance_scale=4.0,
                               latents=latents.clone())
    assert (ours.latents - theirs).abs().max().item() <= 1e-4
    without = diffusers_latents(pipe, num_inference_steps=5, guidance_scale=4.0, latents=latents.clone())
    assert (ours.latents - without).abs().max().item() > 1e-3


def pipeline_guided_output(pipe, height=64, width=64):
    """``HunyuanDiTPipeline.__call__``'s guided network output, written out from its source."""
    encoded = [pipe.encode_prompt(PROMPTS, device="cpu", dtype=pipe.transformer.dtype, max_sequence_length=length,
                                  text_encoder_index=index) for index, length in ((0, 77), (1, 256))]
    (embeds, neg, mask, neg_mask), (embeds_2, neg_2, mask_2, neg_mask_2) = encoded
    patch = pipe.transformer.config.patch_size
    grid_height, grid_width = height // 8 // patch, width // 8 // patch
    rotary = get_2d_rotary_pos_embed(
        pipe.transformer.inner_dim // pipe.transformer.num_heads,
        get_resize_crop_region_for_grid((grid_height, grid_width), 512 // 8 // patch),
        (grid_height, grid_width), output_type="pt",
    )
    time_ids = torch.tensor([list((1024, 1024) + (height, width) + (0, 0))], dtype=embeds.dtype)
    kwargs = {
        "encoder_hidden_states": torch.cat([neg, embeds]),
        "text_embedding_mask": torch.cat([neg_mask, mask]),
        "encoder_hidden_states_t5": torch.cat([neg_2, embeds_2]),
        "text_embedding_mask_t5": torch.cat([neg_mask_2, mask_2]),
        "image_meta_size": torch.cat([time_ids] * 2).repeat(len(PROMPTS), 1),
        "style": torch.cat([torch.tensor([0])] * 2).repeat(len(PROMPTS)),
        "image_rotary_emb": rotary,
    }

    def guided(x, t, g):
        model_input = torch.cat([x] * 2)
        t_expand = torch.tensor([t] * model_input.shape[0]).to(dtype=model_input.dtype)
        with torch.no_grad():
            out = pipe.transformer(model_input, t_expand, **kwargs, return_dict=False)[0]
        out, _ = out.chunk(2, dim=1)
        uncond, cond = out.chunk(2)
        return uncond + g * (cond - uncond)

    return guided


def released_code_loop(pipe, latents, steps, g1, g2, window, rounds):
    """The released code's zigzag with diffusers' schedulers and Hunyuan-DiT's own network call."""
    return released_zigzag(pipe.scheduler.config, pipeline_guided_output(pipe), latents, steps, g1, g2, window,
                           rounds)


def test_the_literal_loop_at_lambda_zero_is_the_pipeline(pipe):
    """The reference loop itself reproduces ``pipe(...)`` (so it is the pipeline's conditioning)."""
    latents = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(4))
    expected = diffusers_latents(pipe, num_inference_steps=5, guidance_scale=5.0, latents=latents.clone())
    loop = released_code_loop(pipe, latents.clone(), 5, 5.0, 0.0, 0, 1)
    assert (loop - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize(("window", "rounds", "g2"), [(9, 1, 0.0), (4, 2, 0.0), (9, 1, 1.5)])
def test_official_operator_equals_the_released_code(pipe, window, rounds, g2):
    steps, g1 = 10, 5.0
    latents = torch.randn(len(PROMPTS), *prepare(pipe, PROMPTS).latent_shape,
                          generator=torch.Generator().manual_seed(2))
    ours = sample(pipe, PROMPTS, num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2,
                  zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent", progress=False)
    expected = released_code_loop(pipe, latents.clone(), steps, g1, g2, window, rounds)
    error = (ours.latents - expected).abs().max().item()
    if pipe.scheduler.config.prediction_type == "v_prediction":  # the checkpoint's parameterisation
        assert error <= 1e-4
    else:  # the random eps network drives the latents to ~1e3: float32 agreement is relative there
        assert error <= 1e-5 * expected.abs().max().item()
    zag_rows = 1 if g2 in (0.0, 1.0) else 2
    assert ours.nfe == 2 * steps + (2 + zag_rows) * window * rounds
    assert ours.network_rows == len(PROMPTS) * ours.nfe
    standard = sample(pipe, PROMPTS, num_inference_steps=steps, guidance_scale=g1, zigzag_steps=0, latents=latents,
                      output_type="latent", progress=False)
    assert (ours.latents - standard.latents).abs().max().item() > 1e-3


def test_decoded_images_and_size_errors():
    pipe = tiny_hunyuan_pipeline()
    ours = sample(pipe, PROMPTS, num_inference_steps=3, guidance_scale=3.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="np", progress=False)
    theirs = pipe(PROMPTS, num_inference_steps=3, guidance_scale=3.0, output_type="np", use_resolution_binning=False,
                  generator=torch.Generator().manual_seed(0)).images
    assert ours.images.shape == theirs.shape == (2, 64, 64, 3)
    assert abs(ours.images - theirs).max() <= 1e-4
    wide = sample(pipe, PROMPTS, height=64, width=96, num_inference_steps=3, guidance_scale=3.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    wide_theirs = diffusers_latents(pipe, height=64, width=96, num_inference_steps=3, guidance_scale=3.0,
                                    generator=torch.Generator().manual_seed(0))
    assert wide.latents.shape == (2, 4, 8, 12)
    assert (wide.latents - wide_theirs).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="height must be a multiple of 16 for HunyuanDiTPipeline"):
        sample(pipe, PROMPTS, height=40, num_inference_steps=2, progress=False)


def test_preset_marks_what_is_not_from_the_paper():
    from zsampling.presets import get_preset

    preset = get_preset("hunyuan")
    assert (preset.name, preset.hub_id, preset.pipeline_class) == (
        "hunyuan-dit", "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", "HunyuanDiTPipeline")
    assert (preset.dtype, preset.height, preset.width, preset.prediction_type) == (
        "float16", 1024, 1024, "v_prediction")
    assert (preset.guidance_scale, preset.num_inference_steps, preset.zigzag_steps, preset.zag) == (
        5.0, 50, 49, "official")
    assert not preset.guidance_from_paper and "not from the paper" in preset.sources["num_inference_steps"]
    # the tiny pipeline's scheduler is the preset's DDIM (the checkpoint's DDPM config through the overrides)
    tiny = tiny_hunyuan_pipeline().scheduler.config
    assert all(tiny[key] == value for key, value in preset.scheduler_overrides.items())


def test_sweep_runs_tiny_hunyuan(tmp_path):
    from zsampling.sweep import parse_spec, run_sweep

    spec = parse_spec({"model": {"name": "tiny-hunyuan"}, "prompts": ["a cat", "a dog"], "seeds": {"paired": True},
                       "grid": {"num_inference_steps": 4, "guidance_scale": [5.0], "zigzag_steps": [0, 3]}})
    result = run_sweep(spec, tmp_path / "out", progress=False)
    assert result.cells_run == 2
    assert result.results.groupby("method")["nfe"].first().to_dict() == {"standard": 8, "zigzag": 8 + 3 * 3}
