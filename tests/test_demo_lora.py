"""The digits model's shipped thickness LoRA: file, loading as adapter "w2sd", its property metric,
leg scales in zsampling.sample and in sweeps, and ``zsampling demo --gap lora`` (quick)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zsampling
from zsampling.demo_model import DEMO_MODEL_DIR, LORA_ADAPTER_NAME, lora_file
from zsampling.denoisers.demo import load_demo_pipeline
from zsampling.legs import Leg, Legs
from zsampling.metrics.demo import StrokeThickness, data_images, stroke_thickness

G1 = 0.75
STEPS = 25
PROMPTS = [str(d) for d in range(10)] * 4


@pytest.fixture(scope="module")
def lora_pipe():
    torch.set_num_threads(1)
    return load_demo_pipeline(lora="thickness")


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn((len(PROMPTS), 1, 8, 8), generator=torch.Generator().manual_seed(0))


def _sample(pipe, latents, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("zigzag_steps", 0)  # standard sampling unless a window is given
    return zsampling.sample(pipe, PROMPTS[: latents.shape[0]], latents=latents.clone(), guidance_scale=G1,
                            output_type="pt", progress=False, **kwargs)


# ------------------------------------------------------------------------------------------ file and loading
def test_lora_file_is_small_peft_format_and_loads_as_w2sd(lora_pipe):
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    path = DEMO_MODEL_DIR / lora_file("thickness")
    assert path.stat().st_size <= 1_000_000
    stored = load_file(str(path))
    assert stored and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in stored)
    layers = [m for m in lora_pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(layer.active_adapters == [LORA_ADAPTER_NAME] for layer in layers)
    assert all(layer.scaling[LORA_ADAPTER_NAME] == 1.0 for layer in layers)  # alpha = rank: scale 1
    loaded = get_peft_model_state_dict(lora_pipe.unet, adapter_name=LORA_ADAPTER_NAME)
    assert {f"unet.{k}" for k in loaded} == set(stored)
    for key, value in loaded.items():
        torch.testing.assert_close(value, stored[f"unet.{key}"], rtol=0, atol=0)
    # the same file through lora_path
    again = load_demo_pipeline(lora_path=path)
    torch.testing.assert_close(get_peft_model_state_dict(again.unet, adapter_name=LORA_ADAPTER_NAME)[key],
                               stored[f"unet.{key}"], rtol=0, atol=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lora": "bold"}, "lora must be one of"),
    ({"lora": "thickness", "lora_path": "x.safetensors"}, "not both"),
    ({"lora_path": "/nonexistent/lora.safetensors"}, "does not exist"),
    ({"family": "flow", "lora": "thickness"}, "does not exist"),
])
def test_bad_lora_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_demo_pipeline(**kwargs)


def test_a_file_of_other_keys_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a demo LoRA file"):
        load_demo_pipeline(lora_path=tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------------------ the metric
def test_stroke_thickness_is_mean_ink_and_rises_on_the_thickened_data():
    import importlib.util
    import sys

    images, _ = data_images()
    from sklearn.datasets import load_digits

    reference = load_digits().images.reshape(len(images), -1).mean(axis=1) / 16.0  # independent of the arrays
    np.testing.assert_allclose(stroke_thickness(images).numpy(), reference, rtol=0, atol=1e-6)
    assert StrokeThickness().score(images).shape == (len(images),)
    spec = importlib.util.spec_from_file_location("train_demo_model", DEMO_MODEL_DIR.parents[1] / "scripts" /
                                                  "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_demo_model", module)
    spec.loader.exec_module(module)
    thick = (torch.from_numpy(module.thicken(images.numpy() * 2 - 1)) + 1) / 2
    gain = stroke_thickness(thick) - stroke_thickness(images)
    assert bool((gain >= 0).all()) and float(gain.mean()) > 0.08
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stroke_thickness(images * 2 - 1)


# ------------------------------------------------------------------------------------------ scales and legs
def test_lora_scale_one_raises_thickness_and_minus_one_lowers_it(lora_pipe, noise):
    plain = load_demo_pipeline()
    base = stroke_thickness(_sample(plain, noise).images)
    at = {scale: stroke_thickness(_sample(lora_pipe, noise, legs=Legs(step=Leg(lora_scale=scale))).images)
          for scale in (1.0, -1.0)}
    # loaded at scale 1: no legs is the LoRA at 1
    torch.testing.assert_close(_sample(lora_pipe, noise).images,
                               _sample(lora_pipe, noise, legs=Legs(step=Leg(lora_scale=1.0))).images)
    assert float(at[1.0].mean()) > float(base.mean()) + 0.03
    assert float(at[-1.0].mean()) < float(base.mean()) - 0.02
    assert float((at[1.0] > base).float().mean()) > 0.8  # paired by noise: most samples get bolder


def test_w2sd_legs_run_and_zero_scales_everywhere_equal_the_plain_model(lora_pipe, noise):
    plain = load_demo_pipeline()
    x = noise[:10]
    kwargs = {"inversion_guidance_scale": 1.0, "zigzag_steps": STEPS - 1}
    reference = _sample(plain, x, **kwargs)
    zero = _sample(lora_pipe, x, legs=Legs.w2sd(0.0, 0.0, 0.0), **kwargs)
    torch.testing.assert_close(zero.images, reference.images, rtol=0, atol=1e-6)
    assert zero.nfe == reference.nfe == 2 * STEPS + 3 * (STEPS - 1)
    w2sd = _sample(lora_pipe, x, legs=Legs.w2sd(1.0, -1.0, 0.5), **kwargs)
    assert w2sd.nfe == reference.nfe
    assert float((w2sd.images - reference.images).abs().max()) > 0.05
    # the router gives the adapters their own scale back after sampling
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert all(m.scaling[LORA_ADAPTER_NAME] == 1.0 for m in lora_pipe.unet.modules() if isinstance(m, BaseTunerLayer))


# ------------------------------------------------------------------------------------------ sweeps
def test_demo_lora_option_validates_lora_knobs_and_cells_equal_sample(tmp_path):
    from safetensors.torch import load_file

    from zsampling.sweep import SpecError, expand_cells, parse_spec, run_sweep
    from zsampling.sweep.cells import initial_noise, sweep_samples

    grid = {"num_inference_steps": [6], "guidance_scale": [G1], "zigzag_steps": [0, "full"],
            "inversion_guidance_scale": [1.0], "zig.lora_scale": [1.0], "zag.lora_scale": [-1.0],
            "step.lora_scale": [0.5]}
    base = {"prompts": ["3", "7"], "seeds": [0, 1], "metrics": ["stroke_thickness", "alignment"], "grid": grid,
            "images": True}
    with pytest.raises(SpecError, match="model.options.lora"):
        parse_spec({**base, "model": "demo"})
    with pytest.raises(SpecError, match="lora must be one of"):
        parse_spec({**base, "model": {"name": "demo", "options": {"lora": "bold"}}})
    with pytest.raises(SpecError, match="is missing"):
        parse_spec({**base, "model": {"name": "demo", "options": {"lora_path": str(tmp_path / "none.safetensors")}}})
    spec = parse_spec({**base, "model": {"name": "demo", "options": {"lora": "thickness"}}})
    result = run_sweep(spec, tmp_path / "run", progress=False)
    assert {"stroke_thickness", "zig.lora_scale", "step.lora_scale"} <= set(result.results.columns)
    pipe = load_demo_pipeline(lora="thickness")
    samples = sweep_samples(spec)
    latents = initial_noise(samples, (1, 8, 8))
    for cell in expand_cells(spec):
        images = load_file(tmp_path / "run" / "images" / f"{cell.hash}.safetensors")["images"]
        out = zsampling.sample(pipe, [s.prompt for s in samples], latents=latents, output_type="pt",
                               progress=False, legs=cell.legs, **cell.knobs())
        assert images.dtype == torch.uint8  # saved as 8-bit images
        torch.testing.assert_close(images.float() / 255, out.images, rtol=0, atol=0.5 / 255 + 1e-6)
        rows = result.results[result.results["cell"] == cell.hash].sort_values("sample_index")
        np.testing.assert_allclose(rows["stroke_thickness"].to_numpy(), stroke_thickness(out.images).numpy(),
                                   rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ the demo
@pytest.fixture(scope="module")
def lora_demo(tmp_path_factory):
    from zsampling.demo_ablation import run_demo

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo-lora")
    return out, run_demo(out, seeds_per_digit=4, quick=True, progress=False, figures=False, gap="lora")


def test_quick_lora_demo_compares_the_gaps_paired_with_nfe_and_a_verdict(lora_demo):
    from zsampling.demo_ablation import LORA_STEP, LORA_ZIG, lora_gap_settings

    out, summary = lora_demo
    assert list(summary["setting"]) == list(lora_gap_settings())
    assert (summary["n"] == 40).all()
    by = summary.set_index("setting")
    labels = list(lora_gap_settings())
    standard, zs, zs_c, w2sd, plain_c, plain_s = (by.loc[label] for label in labels)
    assert standard["nfe"] == plain_c["nfe"] == plain_s["nfe"] == 2 * STEPS
    assert zs["nfe"] == zs_c["nfe"] == w2sd["nfe"] == 2 * STEPS + 3 * (STEPS - 1)
    assert (w2sd["zig.lora_scale"], w2sd["zag.lora_scale"], w2sd["step.lora_scale"]) == (LORA_ZIG, -LORA_ZIG,
                                                                                         LORA_STEP)
    # the LoRA applied plainly thickens strokes, more at the larger scale
    assert standard["stroke_thickness"] < plain_c["stroke_thickness"] < plain_s["stroke_thickness"]
    assert plain_s["thickness_vs_standard_low"] > 0
    assert zs["alignment"] > standard["alignment"]  # the guidance gap still works on this pipeline
    # the paired differences agree with the means (all settings share the same 40 (prompt, seed) pairs)
    np.testing.assert_allclose(w2sd["thickness_vs_plain_c"],
                               w2sd["stroke_thickness"] - plain_c["stroke_thickness"], atol=1e-6)
    assert w2sd["thickness_vs_plain_c_low"] <= w2sd["thickness_vs_plain_c"] <= w2sd["thickness_vs_plain_c_high"]
    verdict = summary.attrs["verdict"]
    assert "Weight-gap reflection" in verdict and "95% CI" in verdict
    assert (out / "verdict.txt").read_text().strip() == verdict
    assert np.isfinite(summary["frechet_pca"]).all()


def test_lora_demo_cli_resumes_and_prints_the_verdict(lora_demo):
    from typer.testing import CliRunner

    from zsampling.cli import app

    out, summary = lora_demo
    result = CliRunner().invoke(app, ["demo", "--gap", "lora", "--quick", "--seeds", "4", "--out", str(out),
                                      "--no-progress", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert summary.attrs["verdict"] in result.output
    bad = CliRunner().invoke(app, ["demo", "--gap", "weights", "--out", str(out), "--no-progress"])
    assert bad.exit_code != 0 and "gap must be one of" in str(bad.exception)


def test_standard_cells_with_different_step_legs_and_no_zigzag_host_plan_apart():
    """Regression: a second standard cell looked for a host among standard-only groups (IndexError)."""
    from zsampling.sweep import expand_cells, parse_spec
    from zsampling.sweep.cells import plan_groups

    spec = parse_spec({"model": {"name": "demo", "options": {"lora": "thickness"}}, "prompts": ["3"], "seeds": [0],
                       "grid": {"num_inference_steps": [4], "guidance_scale": [G1], "zigzag_steps": [0],
                                "step.lora_scale": [0.5, 1.0]}})
    groups = plan_groups(expand_cells(spec))
    assert len(groups) == 2 and all(len(g.units) == 1 for g in groups)


def test_lora_demo_summary_columns_are_unique_and_ordered(lora_demo):
    _, summary = lora_demo
    assert summary.columns.is_unique
    assert list(summary.columns[-9:]) == ["win_rate", "ci_low", "ci_high", "thickness_vs_standard",
                                          "thickness_vs_standard_low", "thickness_vs_standard_high",
                                          "thickness_vs_plain_c", "thickness_vs_plain_c_low",
                                          "thickness_vs_plain_c_high"]
