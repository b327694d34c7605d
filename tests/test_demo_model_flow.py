"""The shipped flow-matching demo model (``load_demo_pipeline(family="flow")``): fast, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from zsampling.demo_model import CONFIG_FILE, DEMO_MODEL_DIR, FLOW_DEMO_MODEL_DIR, WEIGHTS_FILE
from zsampling.denoisers.base import BOTH, Branches, Denoiser, SamplingTarget
from zsampling.denoisers.demo import DemoPipeline, load_demo_pipeline
from zsampling.metrics.demo import DigitAccuracy, DigitAlignment

G1 = 0.75
STEPS = 20


@pytest.fixture(scope="module")
def pipe() -> DemoPipeline:
    return load_demo_pipeline(family="flow")


def test_loads_offline_in_under_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import diffusers  # noqa: F401  (the one-off import of diffusers is not part of loading)

    load_demo_pipeline(family="flow")  # warm file cache
    start = time.perf_counter()
    pipe = load_demo_pipeline(family="flow")
    assert time.perf_counter() - start < 1.0
    assert pipe.family == "flow"
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 1


def test_shipped_files_are_small_plain_and_packaged() -> None:
    assert (FLOW_DEMO_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 5 * 1024 * 1024
    config = json.loads((FLOW_DEMO_MODEL_DIR / CONFIG_FILE).read_text())
    assert config["family"] == "flow"
    sched = config["scheduler"]
    assert sched["use_dynamic_shifting"] is False and sched["stochastic_sampling"] is False
    assert sched["shift"] == 1.0 and sched["num_train_timesteps"] == 1000
    # Same architecture and conditioner as the DDIM demo model.
    ddim = json.loads((DEMO_MODEL_DIR / CONFIG_FILE).read_text())
    assert config["unet"] == ddim["unet"] and config["conditioner"] == ddim["conditioner"]
    training_md = (FLOW_DEMO_MODEL_DIR / "TRAINING.md").read_text()
    assert "python scripts/train_demo_model.py --family flow" in training_md and "seed" in training_md
    assert config["training"]["train_seconds"] <= 15 * 60
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()  # no tomllib on 3.10
    package_data = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"demo_model_flow/*"' in package_data


def test_family_selection_and_errors(tmp_path: Path) -> None:
    assert load_demo_pipeline().family == "ddim"
    assert isinstance(load_demo_pipeline(family="ddim").scheduler, DDIMScheduler)
    assert load_demo_pipeline(model_dir=FLOW_DEMO_MODEL_DIR).family == "flow"  # read from config.json
    with pytest.raises(ValueError, match="family"):
        load_demo_pipeline(family="ddpm")
    with pytest.raises(ValueError, match="of family 'flow'"):
        load_demo_pipeline(model_dir=FLOW_DEMO_MODEL_DIR, family="ddim")


def test_target_follows_the_flow_contract(pipe: DemoPipeline) -> None:
    target = pipe.prepare_zsampling(["3", "digit 7"], None, None, None)
    assert isinstance(target, SamplingTarget) and isinstance(target.denoiser, Denoiser)
    assert isinstance(target.scheduler, FlowMatchEulerDiscreteScheduler) and target.scheduler is not pipe.scheduler
    assert target.latent_shape == (1, 8, 8) and target.batch_size == 2
    sched = FlowMatchEulerDiscreteScheduler.from_config(target.scheduler.config)
    sched.set_timesteps(STEPS)
    torch.testing.assert_close(sched.timesteps, sched.sigmas[:-1] * 1000)


def test_flow_denoiser_passes_float_timesteps_and_ddim_long(one_thread: None) -> None:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for family, t, dtype in (("flow", 437.5, torch.float32), ("ddim", 437, torch.long)):
        pipe = load_demo_pipeline(family=family)  # own copy: the hook stays on it
        seen: list[torch.Tensor] = []
        pipe.unet.register_forward_hook(lambda _m, args, _o, seen=seen: seen.append(args[1].clone()))
        target = pipe.prepare_zsampling(["1", "2"], None, None, None)
        out = target.denoiser(x, t, BOTH)
        assert seen[-1].dtype == dtype and seen[-1].shape == (4,) and float(seen[-1][0]) == t
        assert target.denoiser.network_rows == 4
        # The adapter is the UNet itself: uncond rows first, then cond rows, no rescaling.
        states = torch.cat([target.denoiser.uncond_states, target.denoiser.cond_states])
        with torch.no_grad():
            direct = pipe.unet(torch.cat([x, x]), torch.full((4,), t, dtype=dtype), encoder_hidden_states=states).sample
        assert torch.equal(torch.cat([out.uncond, out.cond]), direct)
    flow = load_demo_pipeline(family="flow").prepare_zsampling(["1", "2"], None, None, None).denoiser
    # A fractional timestep is not truncated: 437.5 and 437.0 give different velocities.
    assert not torch.equal(flow(x, 437.5, BOTH).cond, flow(x, 437.0, BOTH).cond)


def euler_cfg(pipe: DemoPipeline, prompts: list[str], g: float, steps: int, seed: int) -> torch.Tensor:
    """A plain Euler CFG loop over the scheduler's sigmas from N(0, I); images in [0, 1]."""
    target = pipe.prepare_zsampling(prompts, None, None, None)
    sched = FlowMatchEulerDiscreteScheduler.from_config(target.scheduler.config)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.tolist()
    x = torch.randn((len(prompts), 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(sched.timesteps.tolist()):
        pair = target.denoiser(x, float(t), Branches.for_guidance(g))
        x = x + (sigmas[i + 1] - sigmas[i]) * pair.guided(g)
    assert target.denoiser.network_rows == Branches.for_guidance(g).count * steps * len(prompts)
    return target.decode(x, "pt")


@pytest.mark.usefixtures("one_thread")
def test_euler_cfg_samples_show_the_prompted_digit(pipe: DemoPipeline) -> None:
    prompts = [str(c) for c in range(10) for _ in range(5)]
    images = euler_cfg(pipe, prompts, G1, STEPS, seed=0)
    assert images.shape == (50, 1, 8, 8)
    accuracy = DigitAccuracy().score(images, prompts)  # the DDIM model's classifier: same data
    alignment = DigitAlignment().score(images, prompts)
    assert accuracy.mean() > 0.6, f"accuracy {accuracy.mean():.3f} (chance 0.1)"
    assert alignment.mean() > 0.5, f"alignment {alignment.mean():.3f}"
    # Guidance matters: the unconditional model (g = 0) hits the prompt far less often.
    uncond = DigitAccuracy().score(euler_cfg(pipe, prompts, 0.0, STEPS, seed=0), prompts)
    assert accuracy.mean() > uncond.mean() + 0.3


def _training_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_script_flow_objective_and_smoke_run(tmp_path: Path, one_thread: None) -> None:
    script = _training_script()
    x0 = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    x_t, t, target = script.noisy_batch("flow", x0, None, gen)
    # Replay the draws: sigma ~ U(0, 1), then the noise.
    replay = torch.Generator().manual_seed(3)
    sigma = torch.rand(6, generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    assert t.dtype == torch.float32 and torch.equal(t, sigma * 1000)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.equal(x_t, (1 - s) * x0 + s * noise) and torch.equal(target, noise - x0)

    out = tmp_path / "flow"
    script.main(["--family", "flow", "--steps", "3", "--batch-size", "8", "--log-every", "1", "--out", str(out)])
    assert not (out / "metrics.safetensors").exists()  # shared with the DDIM model
    pipe = load_demo_pipeline(model_dir=out)
    assert pipe.family == "flow" and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert "--family flow" in (out / "TRAINING.md").read_text()
