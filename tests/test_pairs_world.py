"""The shipped pairs world: grammar, loading, slot classifier, GenEval-style metrics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import zsampling
from zsampling.denoisers.pairs import LATENT_SHAPE, PairsTokenizer, load_pairs_pipeline
from zsampling.metrics.pairs import (
    PairScore,
    classify_slot_pixels,
    load_metric_arrays,
    pair_scores,
    pairs_nn_distance,
    score_labels,
)
from zsampling.pairs_model import ANY, BLANK, PAIRS_MODEL_DIR, VOCABULARY, parse_prompt


@pytest.fixture(scope="module")
def pipe():
    return load_pairs_pipeline()


def digit(label: int, index: int = 0) -> torch.Tensor:
    """A real digit (8, 8) in [0, 1] from the stored metric arrays."""
    a = load_metric_arrays()
    rows = np.flatnonzero(a["data_labels"] == label)
    return torch.from_numpy(a["data_pixels_u8"][rows[index]].reshape(8, 8) / 16.0)


def pair(left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    blank = torch.zeros(8, 8, dtype=torch.float64)
    return torch.cat([blank if left is None else left, blank if right is None else right], dim=1)[None, None]


def test_grammar() -> None:
    left, right = parse_prompt("3 left of 7"), parse_prompt("7 right of 3")
    assert (left.left, left.right, left.ordered) == (right.left, right.right, right.ordered)
    assert (parse_prompt("3 left of 7").left, parse_prompt("3 left of 7").right) == (3, 7)
    assert parse_prompt(" 7  AND 3 ") == parse_prompt("3 and 7")
    assert not parse_prompt("3 and 7").ordered
    assert (parse_prompt("3").left, parse_prompt("3").right) == (3, BLANK)
    assert (parse_prompt("left of 7").left, parse_prompt("right of 3").right) == (ANY, ANY)
    assert parse_prompt("").form == "empty"
    ids = PairsTokenizer()(["3 left of 7", ""])["input_ids"]
    assert ids.tolist() == [[VOCABULARY.index(w) for w in ("3", "left", "of", "7")], [0, 0, 0, 0]]


@pytest.mark.parametrize("bad", ["a cat", "3 above 7", "37", "3 left 7", "3 and", "10"])
def test_bad_prompt_lists_vocabulary_and_grammar(bad: str, pipe) -> None:
    with pytest.raises(ValueError) as info:
        pipe.prepare_zsampling([bad])
    message = str(info.value)
    assert repr(bad) in message
    for word in ("'left'", "'right'", "'of'", "'and'", "'9'"):
        assert word in message
    assert '"<d> left of <d>"' in message and '"<d> and <d>"' in message


def test_loads_offline_fast_and_small() -> None:
    start = time.perf_counter()
    pipe = load_pairs_pipeline()
    assert time.perf_counter() - start < 1.0
    assert (PAIRS_MODEL_DIR / "weights.safetensors").stat().st_size <= 10_000_000
    cfg = pipe.scheduler.config
    assert cfg.prediction_type == "epsilon" and cfg.clip_sample is False
    target = pipe.prepare_zsampling(["3 left of 7", "3"], None)
    assert target.latent_shape == LATENT_SHAPE == (1, 8, 16)
    assert target.negative_prompts == ["", ""]


def test_slot_classifier_is_accurate_on_held_out_real_pairs() -> None:
    a = load_metric_arrays()
    test_idx = a["classifier_test_indices"]
    x = a["data_pixels_u8"][test_idx].astype(np.float64) / 16.0
    y = a["data_labels"][test_idx]
    rng = np.random.default_rng(1)
    partner = rng.permutation(len(test_idx))
    images = np.zeros((len(test_idx), 1, 8, 16))
    images[:, 0, :, :8] = x.reshape(-1, 8, 8)
    right_blank = rng.random(len(test_idx)) < 0.1
    images[:, 0, :, 8:] = np.where(right_blank[:, None, None], 0.0, x[partner].reshape(-1, 8, 8))
    truth = np.stack([y, np.where(right_blank, BLANK, y[partner])], axis=1)
    from zsampling.metrics.pairs import slot_labels

    predicted = slot_labels(torch.from_numpy(images))
    accuracy = float((predicted == truth).mean())
    assert accuracy >= 0.97, accuracy
    # And the classifier really uses the pixels: shuffled labels would score ~10%.
    assert float((classify_slot_pixels(x).argmax(1) == y).mean()) >= 0.97


def test_metrics_on_hand_made_images() -> None:
    three, seven = digit(3), digit(7)
    images = torch.cat([pair(three, seven), pair(seven, three), pair(three, None), pair(seven, three)])
    prompts = ["3 left of 7", "3 left of 7", "3 left of 7", "3 and 7"]
    s = pair_scores(images, prompts)
    assert s["exact_match"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert s["binding_error"].tolist() == [0.0, 1.0, 0.0, 0.0]  # swapped pair; "and" is order-free
    assert s["missing_digit"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert s["slot_accuracy"].tolist() == [1.0, 0.0, 0.5, 1.0]
    # "7 right of 3" means the same as "3 left of 7".
    assert pair_scores(images[:2], ["7 right of 3"] * 2)["binding_error"].tolist() == [0.0, 1.0]
    # A single digit next to a blank, on either side.
    single = pair_scores(torch.cat([pair(three, None), pair(None, three), pair(three, seven)]), ["3"] * 3)
    assert single["exact_match"].tolist() == [1.0, 1.0, 0.0]
    # Real pairs are at distance 0 from the real-pair set; noise is not.
    distances = pairs_nn_distance(torch.cat([pair(three, seven), pair(three, None)]))
    assert distances.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert float(pairs_nn_distance(torch.full((1, 1, 8, 16), 0.5))) > 1.0
    assert PairScore("binding_error").score(images, prompts).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_score_labels_multiplicity_and_partial_prompts() -> None:
    labels = np.array([[3, 3], [3, BLANK], [4, 7], [7, BLANK]])
    s = score_labels(labels, ["3 and 3", "3 and 3", "left of 7", "left of 7"])
    assert s["exact_match"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert s["missing_digit"].tolist() == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="vocabulary"):
        score_labels(labels[:1], ["3 over 7"])


def test_sample_plugs_in_like_the_demo_model(pipe) -> None:
    out = zsampling.sample(pipe, ["3 left of 7", "5 and 2"], num_inference_steps=6, guidance_scale=2.0,
                           zigzag_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt",
                           progress=False)
    assert out.images.shape == (2, 1, 8, 16)
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    assert out.nfe == 2 * 6 + 3 * 3  # 2T + 3 lambda with g2 = 0
    from zsampling.trace import TraceRecorder

    rec = TraceRecorder(keep="scalars")
    again = zsampling.sample(pipe, ["3 left of 7", "5 and 2"], num_inference_steps=6, guidance_scale=2.0,
                             zigzag_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt",
                             recorder=rec, progress=False)
    assert torch.equal(out.latents, again.latents)
    assert len(rec.trace.to_frame()) > 0


def test_sweep_spec_accepts_the_pairs_model() -> None:
    from zsampling.sweep import parse_spec
    from zsampling.sweep.spec import SpecError

    spec = parse_spec({"name": "p", "model": {"name": "pairs"}, "prompts": ["3 left of 7"], "seeds": [0],
                       "metrics": ["exact_match", "binding_error", "pairs_nn_distance"],
                       "grid": {"num_inference_steps": [4], "guidance_scale": [2.0], "zigzag_steps": [0, 2]}})
    assert spec.model.name == "pairs"
    with pytest.raises(SpecError, match="vocabulary"):
        parse_spec({"name": "p", "model": {"name": "pairs"}, "prompts": ["3 above 7"], "seeds": [0],
                    "grid": {"num_inference_steps": [4]}})
