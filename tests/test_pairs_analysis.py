"""analysis.attribution: prompt-level (cluster) intervals and the per-part tables, on hand-made frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.attribution import (
    attribution_table,
    cumulative_gain,
    matched_prompt_comparison,
    per_prompt_difference,
    prompt_bootstrap,
    relation_parts,
)


def results_frame() -> pd.DataFrame:
    rows = []
    # Two prompts x 3 seeds; Z wins exact match on prompt A only; binding errors only exist on the relation prompt.
    for prompt, z_exact, c_exact, z_bind, c_bind in (("3 left of 7", [1, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0]),
                                                     ("3 and 7", [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0])):
        for seed in range(3):
            rows.append({"cell": "z", "method": "zigzag", "prompt": prompt, "seed": seed, "nfe": 122,
                         "guidance_scale": 2.0, "num_inference_steps": 25,
                         "exact_match": z_exact[seed], "binding_error": z_bind[seed]})
            rows.append({"cell": "c", "method": "cfg_matched_measured", "prompt": prompt, "seed": seed, "nfe": 122,
                         "guidance_scale": 3.1, "num_inference_steps": 61,
                         "exact_match": c_exact[seed], "binding_error": c_bind[seed]})
    return pd.DataFrame(rows)


def test_per_prompt_difference_is_clustered_and_binding_uses_relation_prompts() -> None:
    results = results_frame()
    exact = per_prompt_difference(results, "z", "c", "exact_match")
    assert exact.to_dict() == pytest.approx({"3 and 7": 0.0, "3 left of 7": 2 / 3})
    binding = per_prompt_difference(results, "z", "c", "binding_error")
    assert binding.to_dict() == pytest.approx({"3 left of 7": -2 / 3})


def test_matched_prompt_comparison_table() -> None:
    matched = pd.DataFrame({"cell": ["c"], "method": ["cfg_matched_measured"], "source_cell": ["z"]})
    table = matched_prompt_comparison(results_frame(), matched, metrics=["exact_match", "binding_error"])
    exact = table[table["metric"] == "exact_match"].iloc[0]
    assert exact["diff"] == pytest.approx(1 / 3) and exact["n_prompts"] == 2
    assert exact["zigzag"] == pytest.approx((1 + 1 / 3) / 2)
    binding = table[table["metric"] == "binding_error"].iloc[0]
    assert binding["n_prompts"] == 1 and binding["ci_low"] == binding["ci_high"] == pytest.approx(-2 / 3)


def test_prompt_bootstrap_covers_the_mean_and_widens_with_spread() -> None:
    narrow = prompt_bootstrap(np.array([0.1, 0.12, 0.11, 0.09, 0.1, 0.13]))
    wide = prompt_bootstrap(np.array([-0.5, 0.7, 0.1, -0.3, 0.6, 0.0]))
    for mean, low, high in (narrow, wide):
        assert low <= mean <= high
    assert (wide[2] - wide[1]) > 5 * (narrow[2] - narrow[1])
    assert prompt_bootstrap([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))


def test_relation_parts() -> None:
    assert relation_parts("3 left of 7") == ["3", "left of 7"]
    assert relation_parts("7 right of 3") == ["7", "right of 3"]
    with pytest.raises(ValueError, match="relation"):
        relation_parts("3 and 7")


def test_cumulative_gain_and_table_sum_rounds_and_steps() -> None:
    rows = []
    for step in range(3):
        for rnd in range(2):
            for sample, prompt in enumerate(["3 left of 7", "5 left of 2"]):
                for part, value in (("subject", 1.0), ("relation", 0.5 * sample), ("rest", 2.0)):
                    rows.append({"setting": "Z", "method": "zigzag", "part": part, "step": step, "round": rnd,
                                 "progress": (step + 1) / 3, "sample": sample, "prompt": prompt, "component": value})
    frame = pd.DataFrame(rows)
    curves = cumulative_gain(frame, value="component")
    subject = curves[curves["part"] == "subject"]
    assert subject["gain"].tolist() == [2.0, 2.0, 2.0]  # two rounds per step
    assert subject["cumulative"].tolist() == [2.0, 4.0, 6.0]
    table = attribution_table(frame, value="component").set_index("part")
    assert table.loc["subject", "total"] == pytest.approx(6.0)
    assert table.loc["relation", "total"] == pytest.approx((0.0 + 3.0) / 2)
    assert table.loc["relation", "n_prompts"] == 2
    # The default reports injection toward each part: -component for parts, the rest's norm unchanged.
    injected = attribution_table(frame).set_index("part")
    assert injected.loc["subject", "total"] == pytest.approx(-6.0)
    assert injected.loc["rest", "total"] == pytest.approx(12.0)
