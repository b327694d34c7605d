"""zsampling on real diffusers pipelines (tiny, offline) against diffusers itself.

1. zigzag_steps=0 equals ``pipe(..., output_type="latent")`` with DDIMScheduler.
2. The "official" operator equals a plain loop (tests/released_loop.py) that
   calls the pipeline's network, ``DDIMScheduler.step`` and
   ``DDIMInverseScheduler.step(eps, t_{i+1}, y)`` as the released code does.
"""

import pytest
import torch
from diffusers import DDIMScheduler
from released_loop import released_zigzag

from zsampling import prepare, sample
from zsampling.legs import DEFAULT_CONDITION
from zsampling.schedule import OutputReparam
from zsampling.tiny_pipelines import tiny_pixart_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a photo of a cat", "a red bicycle"]
BUILDERS = {"sd": tiny_sd_pipeline, "sdxl": tiny_sdxl_pipeline, "pixart": tiny_pixart_pipeline}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request):
    return BUILDERS[request.param]()


def diffusers_latents(pipe, **kwargs):
    extra = {"use_resolution_binning": False, "clean_caption": False} if "PixArt" in type(pipe).__name__ else {}
    return pipe(PROMPTS, output_type="latent", **kwargs, **extra).images


@pytest.mark.parametrize("g1", [3.0, 7.5])
def test_standard_sampling_equals_the_diffusers_pipeline(pipe, g1):
    generator = torch.Generator().manual_seed(0)
    ours = sample(pipe, PROMPTS, num_inference_steps=6, guidance_scale=g1, zigzag_steps=0,
                  generator=generator, output_type="latent", progress=False)
    theirs = diffusers_latents(pipe, num_inference_steps=6, guidance_scale=g1,
                               generator=torch.Generator().manual_seed(0))
    assert ours.nfe == 2 * 6
    assert (ours.latents - theirs).abs().max().item() <= 1e-4


def test_standard_sampling_with_negative_prompt_and_given_latents(pipe):
    target = prepare(pipe, PROMPTS)
    latents = torch.randn(len(PROMPTS), *target.latent_shape, generator=torch.Generator().manual_seed(1))
    ours = sample(pipe, PROMPTS, negative_prompt="blurry", num_inference_steps=5, guidance_scale=4.0,
                  zigzag_steps=0, latents=latents, output_type="latent", progress=False)
    theirs = diffusers_latents(pipe, negative_prompt=["blurry"] * 2, num_inference_steps=5, guidance_scale=4.0,
                               latents=latents.clone())
    assert (ours.latents - theirs).abs().max().item() <= 1e-4


def released_code_loop(pipe, latents, steps, g1, g2, window, rounds):
    """The released code's zigzag with diffusers' schedulers and the pipeline's own network call."""
    target = prepare(pipe, PROMPTS)
    network = target.denoiser._network
    conditioning = target.denoiser._table(DEFAULT_CONDITION)
    both = max(conditioning, key=lambda b: b.count)

    def guided(x, t, g):
        out = network(torch.cat([x, x]), t, conditioning[both])
        uncond, cond = out.chunk(2)
        return uncond + g * (cond - uncond)

    return released_zigzag(pipe.scheduler.config, guided, latents, steps, g1, g2, window, rounds)


@pytest.mark.parametrize(("window", "rounds", "g2"), [(9, 1, 0.0), (4, 2, 0.0), (9, 1, 1.5)])
def test_official_operator_equals_the_released_code(pipe, window, rounds, g2):
    steps, g1 = 10, 5.5
    target = prepare(pipe, PROMPTS)
    latents = torch.randn(len(PROMPTS), *target.latent_shape, generator=torch.Generator().manual_seed(2))
    ours = sample(pipe, PROMPTS, num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2,
                  zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent", progress=False)
    expected = released_code_loop(pipe, latents.clone(), steps, g1, g2, window, rounds)
    assert (ours.latents - expected).abs().max().item() <= 1e-4
    zag_rows = 1 if g2 in (0.0, 1.0) else 2
    assert ours.nfe == 2 * steps + (2 + zag_rows) * window * rounds
    assert ours.network_rows == len(PROMPTS) * ours.nfe


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize(("window", "rounds", "g2"), [(9, 1, 0.0), (4, 2, 1.5)])
def test_official_operator_equals_the_released_code_on_non_eps_models(prediction_type, window, rounds, g2,
                                                                      monkeypatch):
    """diffusers' DDIMInverseScheduler converts a v / x0 output at its own alpha (ab[t_{i+1} - k]), not at the
    evaluation timestep's: the official zag must do the same (SD 2.x 768 is v-prediction)."""
    pipe = tiny_sd_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    steps, g1 = 10, 5.5
    shape = prepare(pipe, PROMPTS).latent_shape
    latents = torch.randn(len(PROMPTS), *shape, generator=torch.Generator().manual_seed(3))
    ours = sample(pipe, PROMPTS, num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2,
                  zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent", progress=False)
    expected = released_code_loop(pipe, latents.clone(), steps, g1, g2, window, rounds)
    assert (ours.latents - expected).abs().max().item() <= 1e-4
    # negative control: converting at the evaluation timestep (no re-expression) misses the released code
    monkeypatch.setattr(OutputReparam, "__call__", lambda self, eps, x: eps)
    converted_at_eval = sample(pipe, PROMPTS, num_inference_steps=steps, guidance_scale=g1, inversion_guidance_scale=g2,
                               zigzag_steps=window, rounds=rounds, latents=latents, output_type="latent",
                               progress=False)
    assert (converted_at_eval.latents - expected).abs().max().item() > 1e-3


def test_v_prediction_is_converted_to_eps():
    pipe = tiny_sd_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    ours = sample(pipe, PROMPTS, num_inference_steps=5, guidance_scale=3.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", progress=False)
    theirs = diffusers_latents(pipe, num_inference_steps=5, guidance_scale=3.0,
                               generator=torch.Generator().manual_seed(0))
    assert (ours.latents - theirs).abs().max().item() <= 1e-4


def test_decoded_images_match_the_pipeline():
    pipe = tiny_sd_pipeline()
    ours = sample(pipe, PROMPTS, num_inference_steps=4, guidance_scale=3.0, zigzag_steps=0,
                  generator=torch.Generator().manual_seed(0), output_type="np", progress=False)
    theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert ours.images.shape == theirs.shape
    assert abs(ours.images - theirs).max() <= 1e-4
    pil = sample(pipe, PROMPTS[0], num_inference_steps=2, guidance_scale=3.0, output_type="pil", progress=False)
    assert len(pil.images) == 1 and pil.images[0].size == (theirs.shape[2], theirs.shape[1])


def test_non_ddim_scheduler_is_refused_before_encoding():
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_sd_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="needs a DDIMScheduler"):
        sample(pipe, PROMPTS, num_inference_steps=4, progress=False)


def test_unsupported_pipeline_and_bad_size():
    with pytest.raises(TypeError, match="unsupported pipeline object"):
        prepare(object(), PROMPTS)
    with pytest.raises(ValueError, match="height must be a multiple of"):
        sample(tiny_sd_pipeline(), PROMPTS, height=31, num_inference_steps=2, progress=False)
