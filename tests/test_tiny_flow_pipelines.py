"""Tiny offline flow-matching pipelines: ``tiny_sd3_pipeline`` and ``tiny_flux_pipeline``.

Socket connections are forbidden in every test, so any attempt to reach the
Hugging Face hub fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from zsampling.tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline

PROMPT = "a prompt"
SIZE = 16
STEPS = 3
pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every socket connection raises


def _run(pipe: DiffusionPipeline, output_type: str, **kwargs: object) -> object:
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        output_type=output_type,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def _count_transformer_calls(pipe: DiffusionPipeline) -> list[int]:
    """Attach a forward hook that appends each call's batch size."""
    calls: list[int] = []
    pipe.transformer.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(int(kwargs["hidden_states"].shape[0])), with_kwargs=True
    )
    return calls


def test_sd3_runs_offline_with_sd3_scheduler() -> None:
    pipe = tiny_sd3_pipeline()
    assert isinstance(pipe, StableDiffusion3Pipeline)
    sched = pipe.scheduler
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler)
    assert sched.config.shift == 3.0 and sched.config.use_dynamic_shifting is False
    assert sched.config.stochastic_sampling is False
    calls = _count_transformer_calls(pipe)
    latents = _run(pipe, "latent")
    assert latents.shape == (1, 4, SIZE, SIZE) and torch.isfinite(latents).all()
    # SD3 runs CFG (default guidance 7.0) as one batched call of 2 rows per step.
    assert calls == [2] * STEPS
    images = _run(pipe, "pil")
    assert isinstance(images[0], Image.Image) and images[0].size == (SIZE, SIZE)
    # The prompt reaches the transformer: another prompt gives other latents.
    other = pipe(
        "another prompt",
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert not torch.equal(other, latents)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_runs_offline(guidance_embeds: bool) -> None:
    pipe = tiny_flux_pipeline(guidance_embeds=guidance_embeds)
    assert isinstance(pipe, FluxPipeline)
    assert pipe.transformer.config.guidance_embeds is guidance_embeds
    sched = pipe.scheduler
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler)
    cfg = sched.config
    assert cfg.use_dynamic_shifting is True and cfg.shift == 3.0
    assert (cfg.base_shift, cfg.max_shift, cfg.base_image_seq_len, cfg.max_image_seq_len) == (0.5, 1.15, 256, 4096)
    calls = _count_transformer_calls(pipe)
    latents = _run(pipe, "latent", guidance_scale=3.5)
    assert latents.shape == (1, (SIZE // 2) ** 2, 16) and torch.isfinite(latents).all()
    assert calls == [1] * STEPS  # one branch per step: no CFG batch
    if guidance_embeds:
        # The guidance embedding is live: another guidance value changes the result.
        assert not torch.equal(_run(pipe, "latent", guidance_scale=1.0), latents)
    images = _run(pipe, "pil")
    assert isinstance(images[0], Image.Image) and images[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_true_cfg_runs_two_branches(guidance_embeds: bool) -> None:
    pipe = tiny_flux_pipeline(guidance_embeds=guidance_embeds)
    calls = _count_transformer_calls(pipe)
    plain = _run(pipe, "latent")
    n_plain = len(calls)
    true_cfg = _run(pipe, "latent", negative_prompt="a bad prompt", true_cfg_scale=2.0)
    # True CFG: a second (negative) transformer call every step, and a different result.
    assert n_plain == STEPS and len(calls) - n_plain == 2 * STEPS
    assert true_cfg.shape == plain.shape and not torch.equal(true_cfg, plain)


BUILDERS: dict[str, Callable[[int], DiffusionPipeline]] = {
    "sd3": tiny_sd3_pipeline,
    "flux-dev": lambda seed: tiny_flux_pipeline(seed, guidance_embeds=True),
    "flux-schnell": lambda seed: tiny_flux_pipeline(seed, guidance_embeds=False),
}


def _weights(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for key, value in module.state_dict().items()
    }


@pytest.mark.parametrize("name", list(BUILDERS))
def test_weights_depend_only_on_seed_and_keep_global_rng(name: str) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = _weights(BUILDERS[name](0))
    assert torch.equal(torch.get_rng_state(), state), "building a pipeline changed the caller's RNG"
    b = _weights(BUILDERS[name](0))
    c = _weights(BUILDERS[name](1))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
