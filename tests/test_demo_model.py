"""The shipped offline demo model, its adapter and its metrics (fast, offline)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from zsampling.demo_model import CONFIG_FILE, DEMO_MODEL_DIR, METRICS_FILE, VALID_PROMPTS, WEIGHTS_FILE
from zsampling.denoisers.base import BOTH, Branches, Denoiser, SamplingTarget
from zsampling.denoisers.demo import DemoPipeline, load_demo_pipeline
from zsampling.metrics.demo import (
    DigitAccuracy,
    DigitAlignment,
    NearestNeighbourDistance,
    class_probabilities,
    data_images,
    frechet_distance,
    load_metric_arrays,
)

# The regime where the demo model shows the Z-Sampling effect (see TRAINING.md).
G1 = 0.75
STEPS = 25


@pytest.fixture(scope="module")
def pipe() -> DemoPipeline:
    return load_demo_pipeline()


def test_loads_offline_in_under_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import diffusers  # noqa: F401  (the one-off import of diffusers is not part of loading)

    load_demo_pipeline()  # warm file cache
    start = time.perf_counter()
    pipe = load_demo_pipeline()
    assert time.perf_counter() - start < 1.0
    assert pipe.unet.config.sample_size == 8
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 1
    assert pipe.to("cpu") is pipe
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_shipped_files_are_small_and_plain() -> None:
    weights = DEMO_MODEL_DIR / WEIGHTS_FILE
    assert weights.stat().st_size <= 5 * 1024 * 1024
    assert (DEMO_MODEL_DIR / METRICS_FILE).exists()
    config = json.loads((DEMO_MODEL_DIR / CONFIG_FILE).read_text())
    sched = config["scheduler"]
    assert sched["clip_sample"] is False and sched["prediction_type"] == "epsilon"
    assert config["conditioner"]["num_embeddings"] == 11
    training_md = (DEMO_MODEL_DIR / "TRAINING.md").read_text()
    assert "python scripts/train_demo_model.py" in training_md and "seed" in training_md


def test_scheduler_is_ddim_from_config(pipe: DemoPipeline) -> None:
    from diffusers import DDIMScheduler

    target = pipe.prepare_zsampling(["3"], None, None, None)
    assert isinstance(target.scheduler, DDIMScheduler)
    assert target.scheduler is not pipe.scheduler
    assert target.scheduler.config.clip_sample is False


def test_bad_prompt_lists_valid_prompts(pipe: DemoPipeline) -> None:
    with pytest.raises(ValueError, match="valid prompts") as err:
        pipe.prepare_zsampling(["a cat"], None, None, None)
    for p in ("'0'", "'9'", "'digit 3'"):
        assert p in str(err.value)
    with pytest.raises(ValueError, match="valid prompts"):
        pipe.prepare_zsampling(["3"], ["dog"], None, None)
    with pytest.raises(ValueError, match="height"):
        pipe.prepare_zsampling(["3"], None, 16, None)
    with pytest.raises(ValueError, match="width"):
        pipe.prepare_zsampling(["3"], None, None, 64)
    with pytest.raises(ValueError, match="negative_prompts"):
        pipe.prepare_zsampling(["3", "4"], ["", "", ""], None, None)


def test_prompt_forms_and_null_negative(pipe: DemoPipeline) -> None:
    target = pipe.prepare_zsampling(["3", "digit 7", " Digit 1 "], None, 8, 8)
    assert target.classes == [3, 7, 1]
    assert target.negative_classes == [10, 10, 10]
    assert isinstance(target, SamplingTarget)
    assert isinstance(target.denoiser, Denoiser)
    assert target.latent_shape == (1, 8, 8) and target.batch_size == 3
    other = pipe.prepare_zsampling(["3", "3"], [None, "digit 8"], None, None)  # type: ignore[list-item]
    assert other.negative_classes == [10, 8]
    assert set(VALID_PROMPTS) >= {str(d) for d in range(10)}


def _count_forwards(pipe: DemoPipeline) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    return calls


def test_denoiser_computes_only_requested_branches() -> None:
    pipe = load_demo_pipeline()  # own copy: the hook below stays on it
    calls = _count_forwards(pipe)
    target = pipe.prepare_zsampling(["1", "2", "3"], ["", "", "4"], None, None)
    den = target.denoiser
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = 500

    both = den(x, t, BOTH)
    assert calls == [6] and den.network_rows == 6
    only_u = den(x, t, Branches.for_guidance(0.0))
    assert only_u.cond is None and calls[-1] == 3 and den.network_rows == 9
    only_c = den(x, t, Branches.for_guidance(1.0))
    assert only_c.uncond is None and calls[-1] == 3 and den.network_rows == 12
    none = den(x, t, Branches(uncond=False, cond=False))
    assert none.uncond is None and none.cond is None and len(calls) == 3 and den.network_rows == 12

    torch.testing.assert_close(both.uncond, only_u.uncond, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.cond, only_c.cond, atol=1e-5, rtol=1e-4)
    assert both.guided(0.5).shape == (3, 1, 8, 8)
    # the negative prompt "4" changes the third row's uncond branch only
    plain = pipe.prepare_zsampling(["1", "2", "3"], None, None, None).denoiser(x, t, BOTH)
    torch.testing.assert_close(plain.uncond[:2], both.uncond[:2], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain.uncond[2], both.uncond[2])
    with pytest.raises(ValueError, match="shape"):
        den(torch.randn(2, 1, 8, 8), t, BOTH)


def test_decode_output_types(pipe: DemoPipeline) -> None:
    target = pipe.prepare_zsampling(["0", "1"], None, None, None)
    latents = torch.linspace(-1.5, 1.5, 128).reshape(2, 1, 8, 8)
    pt = target.decode(latents, "pt")
    assert pt.shape == (2, 1, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    torch.testing.assert_close(pt[0, 0, 4, 0], (latents[0, 0, 4, 0] + 1) / 2)
    arr = target.decode(latents, "np")
    assert arr.shape == (2, 8, 8, 1) and arr.dtype == np.float32
    pil = target.decode(latents, "pil")
    assert len(pil) == 2 and pil[0].mode == "L"
    assert np.array(pil[0].resize((8, 8), resample=0)).shape == (8, 8)
    assert target.decode(latents, "latent") is latents
    with pytest.raises(ValueError, match="output_type"):
        target.decode(latents, "jpeg")


def test_classifier_scores_real_digits() -> None:
    images, labels = data_images()
    held_out = torch.from_numpy(load_metric_arrays()["classifier_test_indices"])
    images, labels = images[held_out], labels[held_out]
    prompts = [str(int(c)) for c in labels]
    acc = DigitAccuracy().score(images, prompts)
    for c in range(10):
        assert acc[labels == c].mean() > 0.9, f"class {c}"
    align = DigitAlignment().score(images, prompts)
    assert align.shape == (len(prompts),)
    assert align.min() >= 0 and align.max() <= 1 and align.mean() > 0.8
    probs = class_probabilities(images[:5])
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert DigitAlignment.name == "alignment" and DigitAlignment.higher_is_better
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DigitAlignment().score(images[:2] * 2 - 1, prompts[:2])
    with pytest.raises(ValueError, match="valid prompts"):
        DigitAlignment().score(images[:1], ["cat"])


def test_classifier_matches_scikit_learn_data() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = data_images()
    np.testing.assert_allclose(images.reshape(-1, 64).numpy(), digits.data / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(labels.numpy(), digits.target)


def test_frechet_distance_separates_real_from_noise() -> None:
    images, _ = data_images()
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = images[perm[:600]], images[perm[600:1200]]
    noise = torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    real_real = frechet_distance(a, b)
    real_noise = frechet_distance(a, noise)
    assert real_real >= -1e-6
    assert real_noise > 20 * max(real_real, 1e-3)
    assert frechet_distance(a) < frechet_distance(noise)  # against the stored data statistics
    nn = NearestNeighbourDistance()
    assert nn.score(a[:10]).abs().max() < 1e-5
    assert nn.score(noise[:10]).min() > 1.0


@pytest.mark.usefixtures("one_thread")
def test_zigzag_raises_alignment_over_standard(pipe: DemoPipeline) -> None:
    sample = pytest.importorskip("zsampling").sample
    prompts = [str(c) for c in range(10) for _ in range(5)]

    def run(zigzag_steps: int) -> torch.Tensor:
        out = sample(
            pipe,
            prompts,
            num_inference_steps=STEPS,
            guidance_scale=G1,
            inversion_guidance_scale=0.0,
            zigzag_steps=zigzag_steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            progress=False,
        )
        assert out.images.shape == (50, 1, 8, 8)
        return DigitAlignment().score(out.images, prompts)

    standard, zigzag = run(0), run(STEPS - 1)
    assert zigzag.mean() > standard.mean() + 0.02
    assert (zigzag > standard).float().mean() > 0.5
