"""A small end-to-end sweep on the shipped demo model (skipped until its weights exist)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from zsampling.demo_model import DEMO_MODEL_DIR, METRICS_FILE, WEIGHTS_FILE
from zsampling.sweep import RESULT_COLUMNS, parse_spec, run_sweep
from zsampling.sweep.results import images_to_float, load_images

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / WEIGHTS_FILE).is_file() or not (DEMO_MODEL_DIR / METRICS_FILE).is_file(),
    reason="the demo model's weights and metric arrays are not built yet (scripts/train_demo_model.py)",
)


def test_demo_sweep_end_to_end(tmp_path):
    spec = parse_spec({
        "model": "demo",
        "prompts": ["1", "7"],
        "seeds": [0, 1],
        "grid": {"num_inference_steps": 6, "guidance_scale": [3.0], "zigzag_steps": [0, 2, 5]},
        "metrics": ["alignment", "accuracy", "nn_distance", "frechet_pca"],
        "batch_size": 3,
    })
    result = run_sweep(spec, tmp_path / "out", progress=False)
    alone = run_sweep(spec, tmp_path / "alone", progress=False, share_prefix=False)
    results = result.results
    assert list(results.columns) == [*RESULT_COLUMNS, "alignment", "accuracy", "nn_distance"]
    assert len(results) == 3 * 4 and list(result.cells["frechet_pca"].notna()) == [True] * 3
    assert results["alignment"].between(0, 1).all() and results["accuracy"].isin([0.0, 1.0]).all()
    assert list(result.cells["nfe"]) == [12, 18, 27]
    assert result.network_rows_spent < alone.network_rows_spent
    pd.testing.assert_frame_equal(results.drop(columns="wall_time_s"), alone.results.drop(columns="wall_time_s"),
                                  check_exact=False, rtol=1e-4, atol=1e-5)
    for cell in result.cells["cell"]:
        stored = load_file(tmp_path / "out" / "images" / f"{cell}.safetensors")["images"]
        assert stored.dtype == torch.uint8  # images are stored as uint8 (4x smaller than float32)
        images = images_to_float(stored)
        reference = load_images(tmp_path / "alone" / "images" / f"{cell}.safetensors")
        assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        torch.testing.assert_close(images, reference, rtol=0, atol=1 / 255 + 1e-6)  # at most one level apart
