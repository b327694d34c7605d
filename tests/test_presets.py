"""Model presets: documented settings, offline failures, and loading a tiny local pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

import zsampling
from zsampling.presets import (
    PRESETS,
    WeightsNotFoundError,
    get_preset,
    list_presets,
    load_preset_pipeline,
    resolve_dtype,
)
from zsampling.prompts import seed_generators
from zsampling.tiny_pipelines import tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_sdxl_preset_is_the_released_setting() -> None:
    preset = get_preset("sdxl")
    assert preset.hub_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (preset.guidance_scale, preset.inversion_guidance_scale, preset.num_inference_steps,
            preset.zigzag_steps, preset.rounds, preset.zag) == (5.5, 0.0, 50, 49, 1, "official")
    assert (preset.height, preset.width, preset.dtype, preset.variant) == (1024, 1024, "float16", "fp16")
    assert preset.scheduler_overrides == {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                                          "timestep_spacing": "leading"}
    assert preset.vae_fp16_fix == "madebyollin/sdxl-vae-fp16-fix"
    assert preset.guidance_from_paper
    assert preset.sampling_kwargs() == {"num_inference_steps": 50, "guidance_scale": 5.5,
                                        "inversion_guidance_scale": 0.0, "zigzag_steps": 49, "rounds": 1,
                                        "zag": "official", "height": 1024, "width": 1024}
    assert preset.sampling_kwargs(zigzag=False)["zigzag_steps"] == 0
    assert preset.sweep_grid()["zigzag_steps"] == [0, 49]


def test_other_presets_document_their_sources() -> None:
    assert list_presets()[:6] == ["sdxl", "sdxl-dpo", "dreamshaper-xl", "sd15", "sd21", "pixart-alpha"]
    expected = {  # name: (hub id, pipeline class, px, g1, prediction type)
        "sdxl-dpo": ("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline", 1024, 5.0, "epsilon"),
        "dreamshaper-xl": ("Lykon/dreamshaper-xl-v2-turbo", "StableDiffusionXLPipeline", 1024, 2.0, "epsilon"),
        "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline", 512, 7.5, "epsilon"),
        "sd21": ("stabilityai/stable-diffusion-2-1", "StableDiffusionPipeline", 768, 7.5, "v_prediction"),
        "pixart-alpha": ("PixArt-alpha/PixArt-XL-2-1024-MS", "PixArtAlphaPipeline", 1024, 4.5, "epsilon"),
    }
    for name, (hub_id, cls, px, g1, prediction) in expected.items():
        preset = PRESETS[name]
        assert (preset.hub_id, preset.pipeline_class, preset.height, preset.width, preset.guidance_scale,
                preset.prediction_type) == (hub_id, cls, px, px, g1, prediction)
        assert not preset.guidance_from_paper
        assert "not from the paper" in preset.sources["guidance_scale"] and "not from the paper" in preset.notes
        assert preset.scheduler_overrides["clip_sample"] is False
        assert preset.to_dict()["name"] == name
    assert [c.hub_id for c in PRESETS["sdxl-dpo"].components] == ["mhdang/dpo-sdxl-text2image-v1"]
    assert PRESETS["sd15"].hub_id_alternatives == ("runwayml/stable-diffusion-v1-5",)


def test_aliases_and_unknown_names() -> None:
    assert get_preset("SD-2.1").name == "sd21" and get_preset("dpo-sdxl").name == "sdxl-dpo"
    assert get_preset("pixart").name == "pixart-alpha"
    with pytest.raises(ValueError, match=r"unknown model preset 'sdxll' \(did you mean 'sdxl'\?\)"):
        get_preset("sdxll")


def test_dtype_resolution() -> None:
    preset = get_preset("sdxl")
    assert resolve_dtype(None, preset, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, preset, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", preset, torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", preset, torch.device("cpu"))


def test_absent_weights_fail_fast_offline(offline: None, tiny_sdxl_dir: Path) -> None:
    begin = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        load_preset_pipeline("sdxl", device="cpu")
    message = str(error.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message and "HF_HUB_OFFLINE" in message
    assert "local_path=" in message and "--model-path" in message
    assert time.perf_counter() - begin < 5
    with pytest.raises(WeightsNotFoundError, match="mhdang/dpo-sdxl-text2image-v1"):
        load_preset_pipeline("sdxl-dpo", local_path=tiny_sdxl_dir, device="cpu")
    with pytest.raises(WeightsNotFoundError, match="madebyollin/sdxl-vae-fp16-fix"):
        load_preset_pipeline("sdxl", local_path=tiny_sdxl_dir, device="cpu", vae="fp16-fix")


def test_bad_local_paths_and_options(tmp_path: Path, tiny_sdxl_dir: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_preset_pipeline("sdxl", local_path=tmp_path / "nope", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="no model_index.json"):
        load_preset_pipeline("sdxl", local_path=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="cpu_offload .* needs device='cuda'"):
        load_preset_pipeline("sdxl", local_path=tiny_sdxl_dir, device="cpu", cpu_offload=True)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_preset_pipeline("sdxl", local_path=tiny_sdxl_dir, device="cuda")
    with pytest.raises(ValueError, match="expects a StableDiffusionPipeline, .* holds a StableDiffusionXLPipeline"):
        load_preset_pipeline("sd15", local_path=tiny_sdxl_dir, device="cpu")


def test_local_tiny_pipeline_loads_and_samples(offline: None, tiny_sdxl_dir: Path) -> None:
    pipe = load_preset_pipeline("sdxl", local_path=tiny_sdxl_dir, device="cpu")
    assert isinstance(pipe, StableDiffusionXLPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    config = pipe.scheduler.config
    assert (config.timestep_spacing, config.steps_offset, config.set_alpha_to_one, config.clip_sample) == (
        "leading", 1, False, False)
    assert pipe.unet.dtype == torch.float32

    kwargs = {**get_preset("sdxl").sampling_kwargs(), "num_inference_steps": 2, "zigzag_steps": 1,
              "height": 64, "width": 64}
    prompts = ["a cat", "a dog"]
    out = zsampling.sample(pipe, prompts, generator=seed_generators([0, 1]), output_type="pt", progress=False,
                           **kwargs)
    assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.latents).all()
    assert out.nfe == 2 * 2 + 3 * 1
    # prompt i <-> seed i: a sample's noise depends on its own seed, not on the batch
    alone = zsampling.sample(pipe, prompts[1:], generator=seed_generators([1]), output_type="latent",
                             progress=False, **kwargs)
    torch.testing.assert_close(alone.latents[0], out.latents[1], rtol=1e-4, atol=1e-4)


def test_local_load_options(tiny_sdxl_dir: Path) -> None:
    pipe = load_preset_pipeline("sdxl", local_path=tiny_sdxl_dir, device="cpu", vae_upcast=False, compile=True,
                                dtype="float32")
    assert pipe.vae.config.force_upcast is False
    assert getattr(pipe.unet, "_compiled_call_impl", None) is not None  # compiled lazily on the first call
    dpo = load_preset_pipeline("sdxl-dpo", local_path=tiny_sdxl_dir, unet_path=tiny_sdxl_dir, device="cpu")
    assert isinstance(dpo.scheduler, DDIMScheduler)


def test_paper_sweep_specs_match_presets() -> None:
    from zsampling.sweep import load_spec

    folder = Path(__file__).resolve().parents[1] / "configs" / "paper"
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    assert names == sorted(name for name, preset in PRESETS.items() if not preset.components and preset.legs.is_default)
    for name in names:
        preset = PRESETS[name]
        spec = load_spec(folder / f"{name}.yaml")
        assert spec.model.name in (preset.hub_id, preset.name) and spec.model.dtype == preset.dtype
        assert spec.model.options["height"] == preset.height and spec.model.options.get("variant") == preset.variant
        for knob, values in preset.sweep_grid().items():
            assert list(spec.grid[knob]) == values, (name, knob)
        assert spec.paired and spec.noise == "seed" and spec.images  # prompt i <-> seed i
        assert spec.seeds == tuple(range(len(spec.prompts)))


def test_sweep_loads_a_preset_by_name(offline: None, tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """model.name may be a preset (loaded by load_preset_pipeline): sdxl-dpo runs without save_pretrained."""
    from safetensors.torch import load_file

    from zsampling.sweep import SpecError, parse_spec, run_sweep
    from zsampling.sweep.results import load_images

    torch.set_num_threads(1)
    data = {
        "model": {"name": "sdxl-dpo", "options": {"local_path": str(tiny_sdxl_dir), "unet_path": str(tiny_sdxl_dir),
                                                  "height": 64, "width": 64, "compile": False}},
        "prompts": ["a cat", "a dog"],
        "seeds": {"paired": True},
        "grid": {"num_inference_steps": 2, "guidance_scale": [5.0], "zigzag_steps": [0, 1]},
        "images": True,
    }
    spec = parse_spec(data)
    assert spec.model.name == "sdxl-dpo" and spec.seeds == (0, 1)
    result = run_sweep(spec, tmp_path / "out", progress=False)
    assert result.cells_run == 2 and len(result.results) == 4
    assert result.results.groupby("method")["nfe"].first().to_dict() == {"standard": 4, "zigzag": 7}
    for cell in result.cells["cell"]:
        path = tmp_path / "out" / "images" / f"{cell}.safetensors"
        assert load_file(path)["images"].dtype == torch.uint8
        images = load_images(path)
        assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
    # the same pipeline sampled directly with prompt i <-> seed i gives the sweep's standard images
    pipe = load_preset_pipeline("sdxl-dpo", local_path=tiny_sdxl_dir, unet_path=tiny_sdxl_dir, device="cpu")
    direct = zsampling.sample(pipe, ["a cat", "a dog"], generator=seed_generators([0, 1]), output_type="pt",
                              progress=False, num_inference_steps=2, guidance_scale=5.0, zigzag_steps=0,
                              height=64, width=64)
    standard = result.cells.loc[result.cells["method"] == "standard", "cell"].iloc[0]
    torch.testing.assert_close(load_images(tmp_path / "out" / "images" / f"{standard}.safetensors"),
                               direct.images.float().clamp(0, 1), rtol=0, atol=1 / 255 + 1e-4)

    assert parse_spec({**data, "model": {"name": "SDXL", "options": {"local_path": str(tiny_sdxl_dir)}}}).model
    with pytest.raises(SpecError, match=r"unknown key model.options.'scheduler' for model 'sdxl'"):
        parse_spec({**data, "model": {"name": "sdxl", "options": {"scheduler": "ddim"}}})
    with pytest.raises(SpecError, match=r"model.options.local_path must be a local diffusers directory"):
        parse_spec({**data, "model": {"name": "sdxl", "options": {"local_path": str(tmp_path / "nope")}}})
    with pytest.raises(SpecError, match=r"model.options.cpu_offload must be true or false"):
        parse_spec({**data, "model": {"name": "sdxl", "options": {"cpu_offload": "yes"}}})


def test_flow_matching_presets_mark_what_is_not_from_the_paper() -> None:
    expected = {  # name: (hub id, pipeline class, T, g1, g2)
        "sd3-medium": ("stabilityai/stable-diffusion-3-medium-diffusers", "StableDiffusion3Pipeline", 28, 7.0, 0.0),
        "sd3.5-large": ("stabilityai/stable-diffusion-3.5-large", "StableDiffusion3Pipeline", 28, 3.5, 0.0),
        "sd3.5-medium": ("stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline", 40, 4.5, 0.0),
        "flux-dev": ("black-forest-labs/FLUX.1-dev", "FluxPipeline", 50, 3.5, 1.0),
        "flux-schnell": ("black-forest-labs/FLUX.1-schnell", "FluxPipeline", 4, 0.0, 0.0),
    }
    assert [name for name in list_presets() if PRESETS[name].scheduler != "DDIMScheduler"] == list(expected)
    for name, (hub_id, cls, steps, g1, g2) in expected.items():
        preset = PRESETS[name]
        assert (preset.hub_id, preset.pipeline_class, preset.num_inference_steps, preset.guidance_scale,
                preset.inversion_guidance_scale) == (hub_id, cls, steps, g1, g2)
        assert (preset.dtype, preset.scheduler, preset.zag, preset.zigzag_steps) == (
            "bfloat16", "FlowMatchEulerDiscreteScheduler", "euler", steps - 1)
        assert not preset.guidance_from_paper and "not from the paper" in preset.notes
        assert preset.to_dict()["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert PRESETS["flux-schnell"].sampling_kwargs()["legs"].zag.mix == (0.0, 0.7)
    with pytest.raises(ValueError, match="sweeps cannot express yet"):
        PRESETS["flux-schnell"].sweep_grid()
    w2sd = PRESETS["w2sd-sdxl"].sweep_grid()  # LoRA legs are knobs
    assert (w2sd["zig.lora_scale"], w2sd["zag.lora_scale"], w2sd["step.lora_scale"]) == ([1.5], [-1.5], [0.8])


def test_flow_preset_fails_fast_offline_naming_the_hub_id(offline: None) -> None:
    with pytest.raises(WeightsNotFoundError, match="black-forest-labs/FLUX.1-dev"):
        load_preset_pipeline("flux-dev", device="cpu")


def test_flow_preset_loads_a_local_tiny_flux_with_the_euler_scheduler(offline: None, tmp_path: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from zsampling.tiny_pipelines import tiny_flux_pipeline

    tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    pipe = load_preset_pipeline("flux-dev", local_path=tmp_path / "flux", device="cpu")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    out = zsampling.sample(pipe, "a cat", **{**PRESETS["flux-dev"].sampling_kwargs(), "num_inference_steps": 3,
                                             "zigzag_steps": 2, "height": 32, "width": 32},
                           output_type="latent", progress=False)
    assert out.nfe == 3 + 2 * 2 and out.config.zag == "euler"


def test_w2sd_preset_is_the_released_weight_gap_and_needs_its_lora(offline: None, tiny_sdxl_dir: Path) -> None:
    preset = get_preset("w2sd")
    assert preset.name == "w2sd-sdxl" and (preset.guidance_scale, preset.inversion_guidance_scale) == (5.5, 1.0)
    legs = preset.sampling_kwargs()["legs"]
    assert (legs.zig.lora_scale, legs.zag.lora_scale, legs.step.lora_scale) == (1.5, -1.5, 0.8)
    assert "not from the paper" in preset.sources["zigzag_steps"]
    with pytest.raises(ValueError, match="needs its LoRA: pass lora_path"):
        load_preset_pipeline("w2sd-sdxl", local_path=tiny_sdxl_dir, device="cpu")
    with pytest.raises(WeightsNotFoundError, match="cannot load the LoRA"):
        load_preset_pipeline("w2sd-sdxl", local_path=tiny_sdxl_dir, device="cpu", lora_path=tiny_sdxl_dir / "none")


def test_w2sd_preset_loads_a_saved_lora_and_samples_with_its_legs(offline: None, tiny_sdxl_dir: Path,
                                                                   tmp_path: Path) -> None:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                      target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = get_peft_model_state_dict(donor.unet)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    pipe = load_preset_pipeline("w2sd-sdxl", local_path=tiny_sdxl_dir, device="cpu", lora_path=tmp_path / "lora")
    kwargs = {**get_preset("w2sd-sdxl").sampling_kwargs(), "num_inference_steps": 4, "zigzag_steps": 3,
              "height": 64, "width": 64}
    out = zsampling.sample(pipe, "a cat", output_type="latent", progress=False,
                           generator=torch.Generator().manual_seed(0), **kwargs)
    plain = zsampling.sample(pipe, "a cat", output_type="latent", progress=False,
                             generator=torch.Generator().manual_seed(0), **{**kwargs, "legs": None})
    assert out.nfe == 2 * 4 + 3 * 3 and (out.latents - plain.latents).abs().max().item() > 1e-4


def test_w2sd_reproduction_spec_carries_the_lora_legs(offline: None, tiny_sdxl_dir: Path) -> None:
    from zsampling.reproduce import paper_spec
    from zsampling.sweep import SpecError, expand_cells

    spec = paper_spec("w2sd-sdxl", ["a cat", "a dog"], model_path=tiny_sdxl_dir, lora_path=tiny_sdxl_dir / "lora",
                      num_inference_steps=4, device="cpu")
    cells = expand_cells(spec)
    assert [c.zigzag_steps for c in cells] == [0, 3]
    assert all(c.leg_knobs() == {"zig.lora_scale": 1.5, "zag.lora_scale": -1.5, "step.lora_scale": 0.8}
               for c in cells)
    assert spec.model.options["lora_path"].endswith("lora")
    with pytest.raises(SpecError, match="lora_path"):
        paper_spec("w2sd-sdxl", ["a cat"], model_path=tiny_sdxl_dir, num_inference_steps=4, device="cpu")
