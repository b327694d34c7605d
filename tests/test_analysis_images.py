"""Image figures from a small real run of a tiny (random-weight) Stable Diffusion pipeline.

The analytic model's samples are 2-D points; this run has (4, 32, 32)
latents and decoded (3, 64, 64) images, so it exercises the PCA trajectory
view and the pixel grids (predicted x0 per step, final samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_analysis_helpers import write_run

from analysis.report import FigureOutput, build_figures
from zsampling.trace import Trace

PROMPTS = ["a red cube", "a blue sphere"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zsampling.tiny_pipelines import tiny_sd_pipeline

    def per_sample(images: torch.Tensor, prompts: list[str]) -> dict[str, np.ndarray]:
        return {"brightness": images.mean(dim=(1, 2, 3)).double().numpy()}

    grid = [dict(num_inference_steps=3, zigzag_steps=0, inversion_guidance_scale=0.0, rounds=1, zag="official"),
            dict(num_inference_steps=3, zigzag_steps=2, inversion_guidance_scale=0.0, rounds=1, zag="official")]
    return write_run(tmp_path_factory.mktemp("tiny_sd") / "run", tiny_sd_pipeline(), grid, model_name="tiny-sd",
                     prompts=PROMPTS, seeds=[0], per_sample=per_sample, decode_every=1)


@pytest.fixture(scope="module")
def outputs(image_run: Path) -> dict[str, FigureOutput]:
    names = ["win_rate", "trajectory", "x0_grid", "sample_grid"]
    return {o.name: o for o in build_figures(image_run, n_resamples=500, names=names)}


def cells(run: Path) -> dict[str, str]:
    results = pd.read_parquet(run / "results.parquet")
    return dict(zip(results["method"], results["cell"], strict=False))


def test_all_image_figures_are_made(outputs: dict[str, FigureOutput]) -> None:
    for name, output in outputs.items():
        assert output.skipped is None, f"{name}: {output.skipped}"
        assert len(output.data) > 0


def test_trajectory_uses_pca_of_the_latents(outputs: dict[str, FigureOutput], image_run: Path) -> None:
    data = outputs["trajectory"].data
    assert set(data["run"]) == {"standard", "zigzag (official)"}
    assert set(data.loc[data["run"] != "standard", "op"]) == {"zig", "zag", "step"}
    ax = outputs["trajectory"].figure.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    # the PCA is a rigid projection: path lengths cannot exceed the latent-space distances
    trace = Trace.load(image_run / "traces" / f"{cells(image_run)['zigzag']}.safetensors")
    latents = trace.tensor("latents").double().numpy()
    path = data[(data["run"] != "standard") & (data["sample"] == 0)].sort_values("event")
    moved = np.hypot(path["x_end"] - path["x_start"], path["y_end"] - path["y_start"]).to_numpy()
    full = np.concatenate([trace.tensor("x_init")[0:1].double().numpy(), latents[:, 0]]).reshape(len(latents) + 1, -1)
    assert (moved <= np.linalg.norm(np.diff(full, axis=0), axis=1) + 1e-6).all()


def test_x0_grid_shows_the_decoded_predictions(outputs: dict[str, FigureOutput], image_run: Path) -> None:
    data = outputs["x0_grid"].data
    assert {"y", "x", "channel", "value"} <= set(data.columns)
    trace = Trace.load(image_run / "traces" / f"{cells(image_run)['zigzag']}.safetensors")
    part = data[(data["run"] == "zigzag (official)") & (data["sample"] == 0) & (data["step"] == 1)]
    image = np.zeros((3, 64, 64))
    image[part["channel"], part["y"], part["x"]] = part["value"]
    np.testing.assert_allclose(image, trace.images(1)[0].numpy() / 255.0, atol=1e-9)
    fig = outputs["x0_grid"].figure
    keys = data[["run", "sample"]].drop_duplicates()
    assert sum(len(ax.images) for ax in fig.axes) == len(keys) * data["step"].nunique() == 2 * 2 * 3


def test_sample_grid_shows_the_final_images(outputs: dict[str, FigureOutput], image_run: Path) -> None:
    from safetensors.numpy import load_file

    data = outputs["sample_grid"].data
    assert list(pd.unique(data["run"])) == ["standard", "zigzag (official)"]
    for run, method in (("standard", "standard"), ("zigzag (official)", "zigzag")):
        stored = load_file(str(image_run / "images" / f"{cells(image_run)[method]}.safetensors"))["images"]
        for row in range(len(PROMPTS)):
            part = data[(data["run"] == run) & (data["row"] == row)]
            image = np.zeros(stored.shape[1:])
            image[part["channel"], part["y"], part["x"]] = part["value"]
            sample_index = {p: k for k, p in enumerate(PROMPTS)}[part["prompt"].iloc[0]]
            np.testing.assert_allclose(image, stored[sample_index], atol=1e-6)
    fig = outputs["sample_grid"].figure
    assert sum(len(ax.images) for ax in fig.axes) == 2 * len(PROMPTS)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["standard", "zigzag (official)"]
