"""Tests for the scorer interface and the image(-text) scorers.

Everything is offline: tiny randomly initialised CLIP / BLIP models built from
configs, the in-memory byte-level CLIP tokenizer of ``zsampling.tiny_pipelines``
and a tiny BERT vocabulary. The tests check the math of each scorer (hand
computations from the model's own feature functions, normalisation, logit
scale, heads, standardisation), the checkpoint conversions against
independent re-implementations of the original architectures (open_clip's
ViT CLIP for HPSv2, BLIP's ViT for ImageReward), the preprocessing against
Pillow / ``transformers``' PIL image processor, batching invariance, input
handling, device/dtype handling, the missing-weights errors, the registry,
the per-step adapter on the tiny SD pipeline and the demo metrics' protocol.
Not the real weights: none are available offline.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsampling.devices import resolve_device
from zsampling.metrics import (
    MissingWeightsError,
    Scorer,
    as_step_metric,
    available_scorers,
    get_scorer,
    register_scorer,
)
from zsampling.metrics.scorers import (
    CLIPScore,
    HPSv2,
    ImagePreprocess,
    ImageReward,
    ImageRewardModel,
    LaionAesthetic,
    PickScore,
    RewardMLP,
    convert_image_reward_state_dict,
    convert_open_clip_state_dict,
)
from zsampling.metrics.scorers._loading import load_state_dict_file
from zsampling.metrics.scorers.hpsv2 import HPSV2_FILES, clip_from_open_clip
from zsampling.metrics.scorers.image_reward import IMAGE_REWARD_MEAN, IMAGE_REWARD_STD
from zsampling.metrics.scorers.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, default_dtype

torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertTokenizer,
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    CLIPConfig,
    CLIPModel,
    CLIPVisionModelWithProjection,
)

from zsampling.tiny_pipelines import _tiny_clip_tokenizer  # noqa: E402

IMAGE = 32  # tiny models' input resolution
PATCH = 8
WIDTH = 32
HEADS = 4
EMBED = 16
PROMPTS = ["a cat", "a red dog", "a cat"]
MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def clip_tokenizer():
    return _tiny_clip_tokenizer()


def tiny_clip_config(tokenizer, hidden_act: str = "quick_gelu", intermediate: int = 37) -> CLIPConfig:
    text = dict(vocab_size=1000, hidden_size=WIDTH, intermediate_size=intermediate, num_hidden_layers=2,
                num_attention_heads=HEADS, max_position_embeddings=77, hidden_act=hidden_act, layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, projection_dim=EMBED)
    vision = dict(hidden_size=WIDTH, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=HEADS,
                  image_size=IMAGE, patch_size=PATCH, hidden_act=hidden_act, layer_norm_eps=1e-5,
                  projection_dim=EMBED)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)


@pytest.fixture(scope="module")
def tiny_clip(clip_tokenizer) -> CLIPModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(tiny_clip_config(clip_tokenizer)).eval()
        model.logit_scale.data.fill_(math.log(42.0))
    return model


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "red", "dog", "photo", "of"]
    words += list("bcdefghijklmnopqrstuvwxyz")
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizer(str(path))


def uint8_images(batch: int, height: int = IMAGE, width: int = IMAGE, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random uint8 images (B, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 4 + 1, width // 4 + 1, generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.rand(batch, 3, height, width, generator=g) * 0.2
    return ((smooth * 0.8 + noise) * 255).round().clamp(0, 255).to(torch.uint8)


def as_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 255.0


def to_pil(images_u8: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images_u8]


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def hand_clip_cosine(model, tokenizer, pixels, texts) -> torch.Tensor:
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=pixels))
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        text = features(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
    return F.cosine_similarity(image, text, dim=-1)


# --------------------------------------------------------------- protocol
def test_registry_and_protocol(tiny_clip, clip_tokenizer):
    names = available_scorers()
    for name in ("clip_score", "pick_score", "hpsv2", "image_reward", "aesthetic", "digit_alignment"):
        assert name in names
    with pytest.raises(ValueError, match="unknown scorer 'nope'.*clip_score"):
        get_scorer("nope")

    class Brightness:
        name = "brightness"
        higher_is_better = True

        def score(self, images, prompts=None):
            return images.mean(dim=(1, 2, 3))

    register_scorer("test_brightness", Brightness)
    try:
        scorer = get_scorer("test_brightness")
        assert isinstance(scorer, Scorer) and scorer.name == "brightness"
        with pytest.raises(ValueError, match="already registered"):
            register_scorer("test_brightness", Brightness)
        register_scorer("test_brightness", "zsampling.metrics.scorers.clip:CLIPScore", overwrite=True)
        built = get_scorer("test_brightness", model=tiny_clip, tokenizer=clip_tokenizer)
        assert isinstance(built, CLIPScore)
        with pytest.raises(ValueError, match="module:attribute"):
            register_scorer("bad", "no_colon_here")
    finally:
        from zsampling.metrics import base

        base._REGISTRY.pop("test_brightness", None)

    scorers = [
        CLIPScore(tiny_clip, tokenizer=clip_tokenizer),
        PickScore(tiny_clip, tokenizer=clip_tokenizer),
        HPSv2(tiny_clip, tokenizer=clip_tokenizer),
        LaionAesthetic(tiny_clip, RewardMLP(EMBED)),
    ]
    assert [s.name for s in scorers] == ["clip_score", "pick_score", "hpsv2", "aesthetic"]
    for scorer in scorers:
        assert isinstance(scorer, Scorer) and scorer.higher_is_better is True
    assert not isinstance(object(), Scorer)
    assert CLIPScore(tiny_clip, tokenizer=clip_tokenizer, name="clip_b32").name == "clip_b32"


def test_importing_zsampling_loads_no_scorer_model_code():
    code = (
        "import sys, zsampling, zsampling.metrics, zsampling.metrics.scorers, zsampling.metrics.scorers.clip, "
        "zsampling.metrics.scorers.hpsv2, zsampling.metrics.scorers.image_reward, "
        "zsampling.metrics.scorers.aesthetic\n"
        "bad = [m for m in sys.modules if m.startswith(('transformers.models.clip', 'transformers.models.blip', "
        "'open_clip', 'ImageReward', 'hpsv2', 'torchvision'))]\n"
        "assert not bad, bad\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# --------------------------------------------------------------- CLIPScore
def test_clip_score_is_hessel_clip_s(tiny_clip, clip_tokenizer):
    images = uint8_images(3)
    scorer = CLIPScore(tiny_clip, tokenizer=clip_tokenizer)
    out = scorer.score(as_float(images), PROMPTS)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (3,)
    cos = hand_clip_cosine(tiny_clip, clip_tokenizer, normalise(as_float(images)),
                           ["A photo depicts " + p for p in PROMPTS])
    torch.testing.assert_close(out, 2.5 * cos.clamp(min=0), rtol=1e-5, atol=1e-6)

    torchmetrics_style = CLIPScore(tiny_clip, tokenizer=clip_tokenizer, weight=100.0, text_prefix="")
    cos_plain = hand_clip_cosine(tiny_clip, clip_tokenizer, normalise(as_float(images)), PROMPTS)
    torch.testing.assert_close(torchmetrics_style.score(as_float(images), PROMPTS), 100 * cos_plain.clamp(min=0),
                               rtol=1e-5, atol=1e-5)
    # the clamp at zero (negative cosines score 0) and the weight
    torch.testing.assert_close(scorer.combine(torch.tensor([-0.3, 0.0, 0.4])), torch.tensor([0.0, 0.0, 1.0]))


def tiny_image_processor():
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_cls(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})


def test_pick_score_uses_logit_scale(tiny_clip, clip_tokenizer):
    images = uint8_images(3, seed=1)
    scorer = PickScore(tiny_clip, tokenizer=clip_tokenizer)
    cos = hand_clip_cosine(tiny_clip, clip_tokenizer, normalise(as_float(images)), PROMPTS)
    torch.testing.assert_close(scorer.score(as_float(images), PROMPTS), 42.0 * cos, rtol=1e-5, atol=1e-5)
    # built from a model + CLIPProcessor: tokenizer and preprocessing come from the processor
    processor = transformers.CLIPProcessor(image_processor=tiny_image_processor(), tokenizer=clip_tokenizer)
    from_processor = PickScore(tiny_clip, processor)
    assert from_processor.tokenizer is clip_tokenizer and from_processor.preprocess.crop_rounding == "floor"
    wide = as_float(uint8_images(3, IMAGE, 35, seed=1))  # odd crop margin: the processor's floor offset
    reference = torch.from_numpy(np.asarray(processor.image_processor(to_pil(uint8_images(3, IMAGE, 35, seed=1)),
                                                                      return_tensors="np")["pixel_values"]))
    cos = hand_clip_cosine(tiny_clip, clip_tokenizer, reference, PROMPTS)
    torch.testing.assert_close(from_processor.score(wide, PROMPTS), 42.0 * cos, rtol=1e-5, atol=1e-5)


def test_hpsv2_score_is_the_plain_cosine(tiny_clip, clip_tokenizer):
    images = uint8_images(2, seed=2)
    scorer = HPSv2(tiny_clip, tokenizer=clip_tokenizer)
    cos = hand_clip_cosine(tiny_clip, clip_tokenizer, normalise(as_float(images)), PROMPTS[:2])
    torch.testing.assert_close(scorer.score(as_float(images), PROMPTS[:2]), cos, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ preprocessing
def pil_reference(image: Image.Image, size: int, crop: int, rounding: str) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC) + CenterCrop(crop) on a PIL image, written with Pillow."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = image.resize((new_w, new_h), Image.BICUBIC) if (new_w, new_h) != (width, height) else image
    if rounding == "round":
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    else:
        top, left = (new_h - crop) // 2, (new_w - crop) // 2
    array = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    return normalise(torch.from_numpy(array).permute(2, 0, 1)[None])


@pytest.mark.parametrize("height,width", [(50, 41), (96, 96), (32, 35), (130, 200), (20, 24)])
def test_clip_preprocessing_matches_pillow(height, width):
    image = to_pil(uint8_images(1, height, width, seed=height + width))[0]
    for preprocess, rounding in ((ImagePreprocess.openai_clip(IMAGE), "round"),
                                 (ImagePreprocess(size=IMAGE, crop=(IMAGE, IMAGE), crop_rounding="floor",
                                                  emulate_pil=True), "floor")):
        ours = preprocess.pixel_values(image)
        reference = pil_reference(image, IMAGE, IMAGE, rounding)
        levels = ((ours - reference) * STD * 255).abs()
        # Pillow's fixed-point weights differ from torch's float ones by < 2^-22: at most one uint8 level, rarely
        assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.02, (levels.max(), levels.mean())
        if (height, width) == (32, 35):  # no resize: exact; odd margin 3: floor 1 vs round 2
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_processor_preprocessing_matches_transformers_pil_processor():
    processor = tiny_image_processor()
    preprocess = ImagePreprocess.from_image_processor(processor)
    assert preprocess.crop_rounding == "floor" and preprocess.size == IMAGE and preprocess.crop == (IMAGE, IMAGE)
    for height, width in ((32, 35), (61, 47), (100, 100)):
        image = to_pil(uint8_images(1, height, width, seed=height))[0]
        reference = torch.from_numpy(np.asarray(processor(image, return_tensors="np")["pixel_values"]))
        levels = ((preprocess.pixel_values(image) - reference) * STD * 255).abs()
        assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.02


def test_hpsv2_preprocessing_resize_max_size():
    preprocess = ImagePreprocess.hpsv2(IMAGE)
    images = as_float(uint8_images(2, 40, 60, seed=3))
    out = preprocess(images)
    assert out.shape == (2, 3, IMAGE, IMAGE)
    new_h = round(40 * IMAGE / 60)  # 21; the long side becomes 32
    resized = F.interpolate(images, size=(new_h, IMAGE), mode="bicubic", align_corners=False, antialias=True)
    top = (IMAGE - new_h) // 2
    torch.testing.assert_close(out[:, :, top:top + new_h], normalise(resized), rtol=0, atol=1e-6)
    black = normalise(torch.zeros(1, 3, 1, 1)).expand(2, 3, 1, IMAGE)
    torch.testing.assert_close(out[:, :, :top], black.expand(2, 3, top, IMAGE))
    torch.testing.assert_close(out[:, :, top + new_h:], black.expand(2, 3, IMAGE - top - new_h, IMAGE))
    # float pipeline: bicubic overshoot is not clamped, nothing is rounded (the reference works on tensors)
    assert not preprocess.emulate_pil
    no_aa = ImagePreprocess.hpsv2(IMAGE, antialias=False)(images)
    assert not torch.allclose(no_aa, out)
    # an image whose longest side already is the size is left alone (ResizeMaxSize's scale == 1)
    square = as_float(uint8_images(1, IMAGE, IMAGE))
    torch.testing.assert_close(preprocess(square), normalise(square))


# ------------------------------------------------------------------ inputs
def test_pil_numpy_uint8_and_float_inputs_agree(tiny_clip, clip_tokenizer):
    images = uint8_images(3, 40, 36, seed=4)
    scorer = CLIPScore(tiny_clip, tokenizer=clip_tokenizer)
    reference = scorer.score(as_float(images), PROMPTS)
    for variant in (images, to_pil(images), images.permute(0, 2, 3, 1).numpy(),
                    as_float(images).permute(0, 2, 3, 1).numpy(), list(as_float(images))):
        torch.testing.assert_close(scorer.score(variant, PROMPTS), reference, rtol=1e-6, atol=1e-6)
    single = scorer.score(to_pil(images)[0], "a cat")
    torch.testing.assert_close(single, reference[:1], rtol=1e-6, atol=1e-6)
    # greyscale: one channel repeated, like PIL's convert("RGB")
    grey = images[:, :1]
    torch.testing.assert_close(scorer.score(grey, PROMPTS), scorer.score(grey.expand(-1, 3, -1, -1), PROMPTS))
    # PIL images of different sizes in one list
    mixed = [to_pil(uint8_images(1, 40, 36, seed=5))[0], to_pil(uint8_images(1, 64, 50, seed=6))[0]]
    separate = torch.cat([scorer.score(image, p) for image, p in zip(mixed, PROMPTS, strict=False)])
    torch.testing.assert_close(scorer.score(mixed, PROMPTS[:2]), separate, rtol=1e-6, atol=1e-6)
    assert scorer.score(torch.zeros(0, 3, IMAGE, IMAGE), []).shape == (0,)


def test_bad_inputs_raise_before_the_model(tiny_clip, clip_tokenizer):
    scorer = CLIPScore(tiny_clip, tokenizer=clip_tokenizer)
    calls = []
    handle = tiny_clip.register_forward_pre_hook(lambda *args: calls.append(1))
    good = as_float(uint8_images(2))
    try:
        with pytest.raises(ValueError, match=r"in \[0, 1\].*\(x \+ 1\) / 2"):
            scorer.score(good * 2 - 1, PROMPTS[:2])
        with pytest.raises(ValueError, match="1 or 3 channels"):
            scorer.score(torch.rand(2, 4, IMAGE, IMAGE), PROMPTS[:2])
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            scorer.score(torch.rand(3, IMAGE, IMAGE), PROMPTS)
        with pytest.raises(ValueError, match="one prompt per image: 2 images, 3 prompts"):
            scorer.score(good, PROMPTS)
        with pytest.raises(ValueError, match="needs one prompt per image"):
            scorer.score(good, None)
        with pytest.raises(ValueError, match="NaN"):
            scorer.score(torch.full((2, 3, IMAGE, IMAGE), math.nan), PROMPTS[:2])
        with pytest.raises(ValueError, match="images must be a tensor"):
            scorer.score("cat.png", ["a cat"])
        with pytest.raises(ValueError, match="batch_size"):
            CLIPScore(tiny_clip, tokenizer=clip_tokenizer, batch_size=0)
        with pytest.raises(ValueError, match="tokenizer"):
            CLIPScore(tiny_clip)
    finally:
        handle.remove()
    assert not calls
    # within the tolerance: clamped, not refused
    nudged = good.clone()
    nudged[0, 0, 0, 0] = 1.0005
    scorer.score(nudged, PROMPTS[:2])


# ----------------------------------------------------------- batching/dtype
def test_batching_is_invariant(tiny_clip, clip_tokenizer):
    images = as_float(uint8_images(5, 44, 38, seed=7))
    prompts = ["a cat", "a dog", "a cat", "a bird", "a long prompt " * 20]  # the last is truncated to 77 tokens
    for cls in (CLIPScore, PickScore, HPSv2):
        results = [cls(tiny_clip, tokenizer=clip_tokenizer, batch_size=b).score(images, prompts) for b in (1, 2, None)]
        for other in results[1:]:
            torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)
    head = RewardMLP(EMBED)
    aesthetic = [LaionAesthetic(tiny_clip, head, batch_size=b).score(images) for b in (1, 3, None)]
    for other in aesthetic[1:]:
        torch.testing.assert_close(other, aesthetic[0], rtol=1e-5, atol=1e-6)


def test_device_and_dtype_handling(clip_tokenizer):
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.float16
    assert default_dtype(torch.device("cuda", 0)) == torch.float16
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = CLIPModel(tiny_clip_config(clip_tokenizer))
    model.train()
    images = as_float(uint8_images(2, seed=8))
    fp32 = CLIPScore(model, tokenizer=clip_tokenizer)
    assert not model.training  # eval mode: no dropout in the scores
    reference = fp32.score(images, PROMPTS[:2])
    fp64 = CLIPScore(model, tokenizer=clip_tokenizer, dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64 and fp64.dtype == torch.float64
    out = fp64.score(images, PROMPTS[:2])  # inputs are cast to the model's dtype
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    bf16 = CLIPScore(model, tokenizer=clip_tokenizer, dtype=torch.bfloat16).score(images, PROMPTS[:2])
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, reference, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="floating"):
        CLIPScore(model, tokenizer=clip_tokenizer, dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_matches_cpu(clip_tokenizer):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = CLIPModel(tiny_clip_config(clip_tokenizer))
    images = as_float(uint8_images(4, 300, 260, seed=9))
    cpu = CLIPScore(model, tokenizer=clip_tokenizer).score(images, PROMPTS + ["x"])
    gpu_scorer = CLIPScore(model, tokenizer=clip_tokenizer, device="cuda", dtype=default_dtype("cuda"))
    assert next(model.parameters()).dtype == torch.float16
    pixels = gpu_scorer.preprocess(images.cuda())
    assert pixels.device.type == "cuda" and pixels.dtype == torch.float32
    out = gpu_scorer.score(images.cuda(), PROMPTS + ["x"])
    assert out.device.type == "cpu" and out.dtype == torch.float32
    torch.testing.assert_close(out, cpu, rtol=0.02, atol=0.02)


# ------------------------------------------------------------------ HPSv2
def random_open_clip_state_dict(layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """An open_clip ViT CLIP state dict (tiny sizes) with random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = 1 + r(WIDTH, scale=0.1)
        sd[prefix + ".bias"] = r(WIDTH, scale=0.1)

    sd: dict[str, torch.Tensor] = {}
    for tower in ("transformer", "visual.transformer"):
        for i in range(layers):
            p = f"{tower}.resblocks.{i}."
            ln(p + "ln_1", sd)
            ln(p + "ln_2", sd)
            sd[p + "attn.in_proj_weight"] = r(3 * WIDTH, WIDTH)
            sd[p + "attn.in_proj_bias"] = r(3 * WIDTH)
            sd[p + "attn.out_proj.weight"] = r(WIDTH, WIDTH)
            sd[p + "attn.out_proj.bias"] = r(WIDTH)
            sd[p + "mlp.c_fc.weight"] = r(4 * WIDTH, WIDTH)
            sd[p + "mlp.c_fc.bias"] = r(4 * WIDTH)
            sd[p + "mlp.c_proj.weight"] = r(WIDTH, 4 * WIDTH)
            sd[p + "mlp.c_proj.bias"] = r(WIDTH)
    sd["token_embedding.weight"] = r(1000, WIDTH, scale=0.5)
    sd["positional_embedding"] = r(77, WIDTH)
    ln("ln_final", sd)
    sd["text_projection"] = r(WIDTH, EMBED)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    sd["visual.class_embedding"] = r(WIDTH)
    sd["visual.conv1.weight"] = r(WIDTH, 3, PATCH, PATCH, scale=0.05)
    sd["visual.positional_embedding"] = r((IMAGE // PATCH) ** 2 + 1, WIDTH)
    ln("visual.ln_pre", sd)
    ln("visual.ln_post", sd)
    sd["visual.proj"] = r(WIDTH, EMBED)
    return sd


def _ln(x: torch.Tensor, sd: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps=eps)


def _attention(x: torch.Tensor, w_qkv, b_qkv, w_out, b_out, heads: int, mask=None) -> torch.Tensor:
    batch, length, width = x.shape
    q, k, v = (x @ w_qkv.T + b_qkv).reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        logits = logits + mask
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width) @ w_out.T + b_out


def open_clip_reference(sd: dict, pixels: torch.Tensor, ids: torch.Tensor, heads: int = HEADS):
    """open_clip's CLIP.encode_image / encode_text (normalised), transcribed from
    its model.py / transformer.py (exact GELU, LayerNorm eps 1e-5)."""

    def block(x, p, mask=None):
        h = _ln(x, sd, p + "ln_1", 1e-5)
        x = x + _attention(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"],
                           sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"], heads, mask)
        h = _ln(x, sd, p + "ln_2", 1e-5)
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]

    layers = sum(1 for k in sd if k.startswith("transformer.resblocks.") and k.endswith("ln_1.weight"))
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(layers):
        x = block(x, f"transformer.resblocks.{i}.", mask)
    x = _ln(x, sd, "ln_final", 1e-5)
    text = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]

    v = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(v.shape[0], 1, -1)
    v = torch.cat([cls, v], dim=1) + sd["visual.positional_embedding"]
    v = _ln(v, sd, "visual.ln_pre", 1e-5)
    for i in range(layers):
        v = block(v, f"visual.transformer.resblocks.{i}.")
    image = _ln(v[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def open_clip_tokens(tokenizer, prompts: list[str]) -> torch.Tensor:
    """open_clip's ``tokenize`` layout: [start, ..., end] padded with 0 to 77."""
    ids = torch.zeros(len(prompts), 77, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens = tokenizer(prompt)["input_ids"]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids


def test_hpsv2_conversion_matches_open_clip(clip_tokenizer, tmp_path):
    sd = random_open_clip_state_dict()
    config = tiny_clip_config(clip_tokenizer, hidden_act="gelu", intermediate=4 * WIDTH)  # open_clip: mlp_ratio 4
    model = clip_from_open_clip(sd, config)
    images = as_float(uint8_images(3, IMAGE, IMAGE, seed=10))
    with torch.no_grad():
        ref_image, ref_text = open_clip_reference(sd, normalise(images), open_clip_tokens(clip_tokenizer, PROMPTS))
    scorer = HPSv2(model, tokenizer=clip_tokenizer)
    torch.testing.assert_close(scorer.image_embeddings(images), ref_image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scorer.text_embeddings(PROMPTS), ref_text, rtol=1e-4, atol=1e-5)
    # HPS = diag(image_features @ text_features.T)
    torch.testing.assert_close(scorer.score(images, PROMPTS), (ref_image * ref_text).sum(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.logit_scale, sd["logit_scale"])

    # from_pretrained on the released layout: {"state_dict": {"module.<key>": ...}} read with weights_only=True
    path = tmp_path / HPSV2_FILES["v2.1"]
    torch.save({"state_dict": {"module." + k: v.half() for k, v in sd.items()}}, path)
    loaded = HPSv2.from_pretrained(tmp_path, version="v2.1", tokenizer=clip_tokenizer, config=config,
                                   device="cpu")
    assert loaded.name == "hpsv2.1" and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded.score(images, PROMPTS), scorer.score(images, PROMPTS), rtol=0.02, atol=5e-3)

    with pytest.raises(ValueError, match="unconverted open_clip keys"):
        convert_open_clip_state_dict({**sd, "visual.attn_pool.query": torch.zeros(1)})
    with pytest.raises(ValueError, match="lacks 'visual.proj'"):
        convert_open_clip_state_dict({k: v for k, v in sd.items() if k != "visual.proj"})
    with pytest.raises(ValueError, match="version must be one of"):
        HPSv2.from_pretrained(path, version="v3")


# ------------------------------------------------------------- ImageReward
def tiny_blip_configs() -> tuple[BlipVisionConfig, BlipTextConfig]:
    vision = BlipVisionConfig(hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-6)
    text = BlipTextConfig(vocab_size=64, hidden_size=24, encoder_hidden_size=WIDTH, intermediate_size=29,
                          num_hidden_layers=2, num_attention_heads=HEADS, max_position_embeddings=40,
                          is_decoder=True, bos_token_id=None, sep_token_id=None, eos_token_id=None)
    return vision, text


def random_image_reward_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """ImageReward.pt's layout (BLIP ViT keys, med BERT keys, mlp, unused projections), tiny sizes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = r(1, 1, WIDTH)
    sd[v + "pos_embed"] = r(1, (IMAGE // PATCH) ** 2 + 1, WIDTH)
    sd[v + "patch_embed.proj.weight"] = r(WIDTH, 3, PATCH, PATCH, scale=0.05)
    sd[v + "patch_embed.proj.bias"] = r(WIDTH)
    for i in range(2):
        b = f"{v}blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[b + norm + ".weight"] = 1 + r(WIDTH, scale=0.1)
            sd[b + norm + ".bias"] = r(WIDTH, scale=0.1)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * WIDTH, WIDTH), r(3 * WIDTH)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(WIDTH, WIDTH), r(WIDTH)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(37, WIDTH), r(37)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(WIDTH, 37), r(WIDTH)
    sd[v + "norm.weight"], sd[v + "norm.bias"] = 1 + r(WIDTH, scale=0.1), r(WIDTH, scale=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = BlipTextModel(tiny_blip_configs()[1], add_pooling_layer=False)  # same names as BLIP's med.BertModel
    for key, value in text.state_dict().items():
        sd["blip.text_encoder." + key] = value + r(*value.shape, scale=0.05)
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = r(8, WIDTH), r(8)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = r(8, 24), r(8)
    for i, (n_in, n_out) in zip((0, 2, 4, 6, 7), ((24, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)),
                                strict=True):
        sd[f"mlp.layers.{i}.weight"] = r(n_out, n_in, scale=1 / math.sqrt(n_in))
        sd[f"mlp.layers.{i}.bias"] = r(n_out, scale=0.1)
    return sd


def blip_vit_reference(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """BLIP's VisionTransformer.forward (models/vit.py), transcribed: eps 1e-6, exact GELU."""
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sd[v + "pos_embed"][:, : x.shape[1]]
    for i in range(2):
        b = f"{v}blocks.{i}."
        x = x + _attention(_ln(x, sd, b + "norm1", 1e-6), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"],
                           sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"], HEADS)
        h = F.gelu(_ln(x, sd, b + "norm2", 1e-6) @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        x = x + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    return _ln(x, sd, v + "norm", 1e-6)


def test_image_reward_conversion_and_score(bert_tokenizer, tmp_path):
    sd = random_image_reward_state_dict()
    configs = tiny_blip_configs()
    model = ImageRewardModel.from_image_reward_state_dict(sd, configs)
    images = as_float(uint8_images(3, IMAGE, IMAGE, seed=11))
    pixels = normalise(images)
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(vision, blip_vit_reference(sd, pixels), rtol=1e-4, atol=1e-5)
    for key, value in model.text_encoder.state_dict().items():  # every med BERT weight lands in place
        torch.testing.assert_close(value, sd["blip.text_encoder." + key])

    prompts = ["a cat", "a red dog photo", "a cat"]
    scorer = ImageReward(model, bert_tokenizer)
    out = scorer.score(images, prompts)
    assert out.dtype == torch.float32 and out.shape == (3,) and scorer.name == "image_reward"
    tokens = bert_tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (3, 35) and (tokens["input_ids"][:, 0] == bert_tokenizer.cls_token_id).all()
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                    encoder_hidden_states=vision,
                                    encoder_attention_mask=torch.ones(vision.shape[:2], dtype=torch.long))
        cls_feature = hidden.last_hidden_state[:, 0].float()
        layers = [(sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"]) for i in (0, 2, 4, 6, 7)]
        reward = cls_feature
        for weight, bias in layers:  # no activations: the head is five affine maps
            reward = reward @ weight.T + bias
    expected = (reward[:, 0] - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # the prompt matters (cross-attention)
    for b in (1, 2):
        torch.testing.assert_close(ImageReward(model, bert_tokenizer, batch_size=b).score(images, prompts), out,
                                   rtol=1e-5, atol=1e-6)

    path = tmp_path / "ImageReward.pt"
    torch.save(sd, path)
    loaded = ImageReward.from_pretrained(tmp_path, tokenizer=bert_tokenizer, configs=configs, device="cpu")
    torch.testing.assert_close(loaded.score(to_pil((images * 255).round().to(torch.uint8)), prompts), out,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ImageReward keys"):
        convert_image_reward_state_dict({**sd, "blip.text_decoder.cls.weight": torch.zeros(1)})
    assert "blip.vision_proj.weight" in sd and not any("proj" in k and "vision_model" not in k and "self_attn"
                                                       not in k for k in convert_image_reward_state_dict(sd))


# --------------------------------------------------------------- aesthetic
def test_aesthetic_is_mlp_of_normalised_embedding(tiny_clip, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        head = RewardMLP(EMBED).train()  # dropout on: the scorer must switch it off
    images = as_float(uint8_images(3, seed=12))
    scorer = LaionAesthetic(tiny_clip, head)
    out = scorer.score(images, PROMPTS)  # prompts are accepted and ignored
    assert not head.training and out.shape == (3,) and out.dtype == torch.float32
    with torch.no_grad():
        emb = features(tiny_clip.get_image_features(pixel_values=normalise(images)))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        expected = head(emb)[:, 0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scorer.score(images), out)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images, PROMPTS[:2])
    assert [type(m).__name__ for m in head.layers] == ["Linear", "Dropout"] * 3 + ["Linear", "Linear"]
    assert [(m.in_features, m.out_features) for m in head.layers if isinstance(m, torch.nn.Linear)] == [
        (EMBED, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]

    # the released layout: a plain state dict (torch.save, weights_only) or safetensors; a vision-only CLIP
    vision = CLIPVisionModelWithProjection(tiny_clip.config.vision_config)
    vision.load_state_dict({k: v for k, v in tiny_clip.state_dict().items()
                            if k.startswith(("vision_model.", "visual_projection."))})
    torch.testing.assert_close(LaionAesthetic(vision, head).score(images), out, rtol=1e-5, atol=1e-6)
    clip_dir = tmp_path / "clip"
    tiny_clip.save_pretrained(clip_dir)
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    loaded = LaionAesthetic.from_pretrained(str(clip_dir), tmp_path, device="cpu", local_files_only=True)
    torch.testing.assert_close(loaded.score(images), out, rtol=1e-5, atol=1e-6)
    from safetensors.torch import save_file

    save_file(head.state_dict(), tmp_path / "head.safetensors")
    reloaded = RewardMLP.from_state_dict(load_state_dict_file(tmp_path / "head.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), head.state_dict().values(),
                                                 strict=True))


def test_state_dict_files_are_read_without_unpickling_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": torch.zeros(2, 2), "extra": Path("x")}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(path)
    with pytest.raises(ValueError, match="not an aesthetic"):
        RewardMLP.from_state_dict({"fc.weight": torch.zeros(1)})


# ----------------------------------------------------------- from_pretrained
def test_from_pretrained_local_directories(tiny_clip, clip_tokenizer, tmp_path):
    model_dir = tmp_path / "clip"
    tiny_clip.save_pretrained(model_dir)
    clip_tokenizer.save_pretrained(model_dir)
    images = as_float(uint8_images(2, 37, 45, seed=13))
    loaded = CLIPScore.from_pretrained(str(model_dir), device="cpu", local_files_only=True)
    direct = CLIPScore(tiny_clip, tokenizer=clip_tokenizer)
    torch.testing.assert_close(loaded.score(images, PROMPTS[:2]), direct.score(images, PROMPTS[:2]))
    tiny_image_processor().save_pretrained(model_dir)
    pick = PickScore.from_pretrained(str(model_dir), str(model_dir), device="cpu", local_files_only=True)
    assert pick.preprocess.crop_rounding == "floor" and pick.preprocess.size == IMAGE
    torch.testing.assert_close(pick.score(images, PROMPTS[:2]),
                               PickScore(tiny_clip, tokenizer=clip_tokenizer).score(images, PROMPTS[:2]))
    via_registry = get_scorer("clip_score", model=str(model_dir), device="cpu", local_files_only=True)
    assert isinstance(via_registry, CLIPScore)


@pytest.mark.parametrize(
    "build,needles",
    [
        (lambda: CLIPScore.from_pretrained(local_files_only=True), ["openai/clip-vit-base-patch32", "--local-dir"]),
        (lambda: PickScore.from_pretrained(local_files_only=True), ["yuvalkirstain/PickScore_v1"]),
        (lambda: HPSv2.from_pretrained(local_files_only=True), ["xswu/HPSv2", "HPS_v2_compressed.pt"]),
        (lambda: HPSv2.from_pretrained(version="v2.1", local_files_only=True), ["HPS_v2.1_compressed.pt"]),
        (lambda: ImageReward.from_pretrained(local_files_only=True), ["THUDM/ImageReward", "ImageReward.pt"]),
        (lambda: LaionAesthetic.from_pretrained(local_files_only=True),
         ["camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth"]),
        (lambda: get_scorer("pick_score", local_files_only=True), ["yuvalkirstain/PickScore_v1"]),
        (lambda: HPSv2.from_pretrained("/nonexistent/HPS_v2_compressed.pt"), ["/nonexistent", "xswu/HPSv2"]),
        (lambda: CLIPScore.from_pretrained("/nonexistent/clip", local_files_only=True),
         ["/nonexistent/clip", "openai/clip-vit-base-patch32"]),
    ],
)
def test_missing_weights_error_names_the_hub_id(build, needles):
    with pytest.raises(MissingWeightsError) as info:
        build()
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert "from_pretrained(" in message and isinstance(info.value, OSError)


def test_missing_clip_for_the_aesthetic_head_names_the_clip_hub_id(tmp_path):
    torch.save(RewardMLP(768).state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(MissingWeightsError, match="openai/clip-vit-large-patch14"):
        LaionAesthetic.from_pretrained(head=tmp_path, local_files_only=True)
    with pytest.raises(MissingWeightsError, match="has no 'sac"):
        LaionAesthetic.from_pretrained(head=tmp_path / "..", local_files_only=True)


# --------------------------------------------------------------- per step
def test_scorer_as_step_metric_on_the_tiny_sd_pipeline(tiny_clip, clip_tokenizer):
    import zsampling
    from zsampling.tiny_pipelines import tiny_sd_pipeline
    from zsampling.trace import ScorerMetric, StepMetric, sample_with_trace

    pipe = tiny_sd_pipeline()
    scorer = CLIPScore(tiny_clip, tokenizer=clip_tokenizer, batch_size=1)
    metric = as_step_metric(scorer)
    assert isinstance(metric, ScorerMetric) and isinstance(metric, StepMetric) and metric.name == "clip_score"
    prompts = ["a cat", "a dog"]
    _, trace = sample_with_trace(pipe, prompts, keep=("x0",), latent_dtype=torch.float32, metrics=[metric],
                                 every=2, decode_every=2, num_inference_steps=4, guidance_scale=5.5, seed=0,
                                 output_type="latent", progress=False)
    assert trace.decoded_steps == [0, 2, 3]
    values = trace.metrics["clip_score"]
    target = zsampling.prepare(pipe, prompts)
    for step in range(4):
        event = trace.event_index(step, "step")
        if step in trace.decoded_steps:
            images = target.decode(trace.x0(step), "pt")  # what the recorder decoded and scored
            torch.testing.assert_close(values[event], scorer.score(images, prompts), rtol=1e-5, atol=1e-6)
        else:
            assert torch.isnan(values[event]).all()
    frame = trace.to_frame()
    assert sorted(frame[frame["clip_score"].notna()]["step"].unique()) == [0, 2, 3]


# -------------------------------------------------------------- demo model
def test_demo_metrics_implement_the_scorer_protocol():
    demo = pytest.importorskip("zsampling.metrics.demo")
    expected = {"digit_alignment": ("alignment", True), "digit_accuracy": ("accuracy", True),
                "nn_distance": ("nn_distance", False)}
    for key, (name, higher) in expected.items():
        scorer = get_scorer(key)  # constructing loads nothing
        assert isinstance(scorer, Scorer), key
        assert scorer.name == name and scorer.higher_is_better is higher
    assert isinstance(demo.DigitAlignment(), Scorer) and isinstance(demo.NearestNeighbourDistance(), Scorer)

    from zsampling.demo_model import DEMO_MODEL_DIR, METRICS_FILE

    if not (DEMO_MODEL_DIR / METRICS_FILE).exists():
        pytest.skip(f"demo metric arrays {METRICS_FILE} not present yet in {DEMO_MODEL_DIR}: protocol checked, "
                    "scores not")
    images, labels = demo.data_images()
    images, prompts = images[:4], [f"digit {int(label)}" for label in labels[:4]]
    for key in expected:
        out = get_scorer(key).score(images, prompts)
        assert isinstance(out, torch.Tensor) and out.shape == (4,) and out.dtype == torch.float32
        assert out.device.type == "cpu"
