"""Sweep specs: parsing, defaults, hashing, and clear errors naming the bad key before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml

from zsampling.sweep import SpecError, expand_cells, load_spec, parse_spec, run_sweep
from zsampling.sweep import models as sweep_models

BASE = {
    "model": "analytic",
    "prompts": ["0", "1"],
    "seeds": [0, 1],
    "grid": {"num_inference_steps": 6, "guidance_scale": [2.0, 3.0], "zigzag_steps": [0, 2, "full"]},
    "metrics": ["posterior"],
}


def spec(**changes):
    data = {**BASE, **changes}
    return parse_spec({k: v for k, v in data.items() if v is not ...})


def test_defaults_and_normal_form():
    s = spec()
    assert s.model.name == "analytic" and s.model.dtype == "float32" and s.model.device == "auto"
    assert s.grid["inversion_guidance_scale"] == (0.0,) and s.grid["rounds"] == (1,)
    assert s.grid["zag"] == ("official",) and s.grid["zag_eval_timestep"] == ("next",)
    assert s.trace is not None and s.trace.keep == ("scalars",)
    assert s.images is True  # analytic is a small model
    assert s.noise == "seed_prompt" and s.branches == "needed" and s.output_type == "pt"
    json.dumps(s.to_dict())
    cells = expand_cells(s)
    assert [c.zigzag_steps for c in cells] == [0, 2, 5, 0, 2, 5]
    assert [c.method for c in cells[:3]] == ["standard", "zigzag", "zigzag"]



def test_dtype_aliases_take_the_canonical_name_and_hash_alike():
    """Every name zsampling.devices accepts works in a spec too ("fp16" in a preset works in a sweep)."""
    plain = spec(model={"name": "analytic", "dtype": "float16"}, trace={"latent_dtype": "bfloat16"})
    alias = spec(model={"name": "analytic", "dtype": "fp16"}, trace={"latent_dtype": "bf16"})
    assert (alias.model.dtype, alias.trace.latent_dtype) == ("float16", "bfloat16")
    assert alias.hash == plain.hash
    with pytest.raises(SpecError, match=r"trace.latent_dtype must be one of float32, fp32.*got 'int4'"):
        spec(trace={"latent_dtype": "int4"})

def test_hash_ignores_execution_details_but_not_results():
    s = spec()
    assert spec(batch_size=3, name="other").hash == s.hash
    assert parse_spec({**BASE, "model": {"name": "analytic", "device": "cpu"}}).hash == s.hash
    assert spec(seeds=[0, 2]).hash != s.hash
    assert spec(metrics=[]).hash != s.hash
    hashes = {c.hash for c in expand_cells(s)}
    assert len(hashes) == 6
    assert {c.hash for c in expand_cells(spec(batch_size=1))} == hashes
    assert not hashes & {c.hash for c in expand_cells(spec(prompts=["0", "2"]))}


def test_range_full_and_duplicate_cells():
    s = spec(grid={"num_inference_steps": [5], "zigzag_steps": {"range": [0, 5]}})
    assert [c.zigzag_steps for c in expand_cells(s)] == [0, 1, 2, 3, 4]
    s = spec(grid={"num_inference_steps": [5], "zigzag_steps": [4, "full"]})
    assert len(expand_cells(s)) == 1  # "full" is lambda = T-1 = 4


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"modle": "x"}, r"unknown key 'modle' \(did you mean 'model'\?\)"),
        ({"model": "nope"}, r"model.name: unknown model 'nope'; allowed: 'demo', 'analytic'"),
        ({"model": {"name": "analytic", "dtype": "int8"}}, r"model.dtype must be one of float32"),
        ({"model": {"name": "analytic", "options": {"radiuss": 1}}}, r"model.options.'radiuss'.*allowed: d, "),
        ({"model": {"name": "analytic", "options": {"std": -1.0}}}, r"model.options \(analytic\): std"),
        ({"prompts": "0"}, r"prompts must be a list"),
        ({"prompts": ["0", "7"]}, r"prompts\[1\]: .*component"),
        ({"negative_prompt": "9"}, r"negative_prompt: "),
        ({"seeds": [0, 0]}, r"seeds\[1\]: seed 0 is listed twice"),
        ({"seeds": [-1]}, r"seeds\[0\] must be an integer"),
        ({"seeds": {"start": 0}}, r"seeds.count must be an integer >= 1"),
        ({"grid": {"guidance_scale": [1.0, "x"]}}, r"grid.guidance_scale\[1\] must be a finite number, got 'x'"),
        ({"grid": {"zag": ["official", "fixed-point"]}}, r"grid.zag\[1\] must be one of 'official', 'ddim', 'euler'"),
        ({"grid": {"zag_eval_timestep": "later"}}, r"grid.zag_eval_timestep\[0\] must be one of 'next', 'current'"),
        ({"grid": {"rounds": [0]}}, r"grid.rounds\[0\] must be an integer >= 1"),
        ({"grid": {"num_inference_steps": [4], "zigzag_steps": [5]}}, r"grid.zigzag_steps: lambda=5 is > T-1=3"),
        ({"grid": {"num_inference_steps": [2000]}}, r"num_train_timesteps=1000"),
        ({"grid": {"guidance_scale": [2.0, 2]}}, r"grid.guidance_scale\[1\]: value 2 is listed twice"),
        ({"grid": {"zigzag_steps": {"range": [3, 3]}}}, r"grid.zigzag_steps.range \[3, 3\] is empty"),
        ({"grid": {"lambda": [1]}}, r"unknown key grid.'lambda'; allowed keys of grid: num_inference_steps"),
        ({"metrics": ["alignment"]}, r"metrics\[0\]: unknown metric 'alignment' for model 'analytic'; allowed: "
                                     r"posterior"),
        ({"trace": {"keep": ["latents", "everything"]}}, r"trace.keep must be 'all' or a list from"),
        ({"trace": {"step_metrics": ["nope"]}}, r"trace.step_metrics\[0\]: unknown per-sample metric"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"output_type": "pil"}, r"output_type must be one of 'pt', 'latent'"),
        ({"noise": "random"}, r"noise must be one of 'seed_prompt', 'seed'"),
        ({"branches": "some"}, r"branches must be one of 'needed', 'both'"),
        ({"model": ...}, r"missing required key 'model'"),
    ],
)
def test_bad_spec_names_the_key_and_what_is_allowed(changes, match):
    with pytest.raises(SpecError, match=match):
        spec(**changes)


def test_tiny_models_have_no_builtin_metrics():
    with pytest.raises(SpecError, match=r"metrics\[0\]: unknown metric 'posterior' for model 'tiny-sd'; "
                                        r"allowed: none"):
        spec(model="tiny-sd", prompts=["a cat"])


def test_registered_set_metric_needs_two_samples(monkeypatch):
    monkeypatch.setitem(sweep_models.METRICS, "spread", sweep_models.MetricEntry(
        "spread", "set", ("analytic",), lambda model: None, higher_is_better=True))
    assert spec(metrics=["spread"]).metrics == ("spread",)
    with pytest.raises(SpecError, match=r"set-level metrics .* need at least 2 samples per cell"):
        spec(metrics=["spread"], prompts=["0"], seeds=[0])


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("0\n\n1\n2\n")
    (tmp_path / "p.csv").write_text("id,Prompt\n1,0\n2,2\n")
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\n1\tx\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "2", "tag": "a"}\n{"prompt": "0", "tag": "b"}\n')
    (tmp_path / "q.csv").write_text("id,text2\n1,0\n")

    def load(prompts):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({**BASE, "prompts": prompts}))
        return load_spec(path)

    assert load({"file": "p.txt"}).prompts == ("0", "1", "2")
    assert load({"file": "p.txt", "limit": 2}).prompts == ("0", "1")
    assert load({"file": "p.csv"}).prompts == ("0", "2")
    assert load({"file": "p.tsv"}).prompts == ("1",)
    assert load({"file": "p.jsonl"}).prompts == ("2", "0")
    assert load({"file": str(tmp_path / "p.csv"), "column": "id"}).prompts == ("1", "2")
    with pytest.raises(SpecError,
                       match=r"prompts.file: .*no prompt column .*found columns: id, text2; give prompts.column"):
        load({"file": "q.csv"})
    with pytest.raises(SpecError,
                       match=r"prompts.file: prompt file .*missing.txt' does not exist, and it names no shipped"):
        load({"file": "missing.txt"})
    # the file's content, not its path, is what the hash sees
    assert load({"file": "p.txt"}).hash == load(["0", "1", "2"]).hash


def test_prompt_files_read_through_load_prompts(tmp_path):
    """Benchmark formats as load_prompts reads them: PartiPrompts keeps its quotes, text skips # comments."""
    base = {**BASE, "model": "tiny-sd", "metrics": []}
    (tmp_path / "PartiPrompts.tsv").write_text(
        'Prompt\tCategory\tChallenge\tNote\n"G I G G L E" painted in thick colorful lettering\tArts\tx\t\n'
        'a cat\tAnimals\tSimple\t\n')
    (tmp_path / "p.txt").write_text("# a comment\na red cube\n\n  # indented comment\na tree\n")
    (tmp_path / "drawbench.csv").write_text("Prompts,Category\na,Colors\nb,Counting\nc,Text\n")
    (tmp_path / "hpd").mkdir()
    (tmp_path / "hpd" / "anime.json").write_text('["x", "y"]')

    def load(prompts):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({**base, "prompts": prompts}))
        return load_spec(path)

    parti = load({"file": "PartiPrompts.tsv"})
    assert parti.prompts == ('"G I G G L E" painted in thick colorful lettering', "a cat")
    assert load({"file": "PartiPrompts.tsv", "column": "Category"}).prompts == ("Arts", "Animals")
    assert load({"file": "p.txt"}).prompts == ("a red cube", "a tree")
    assert load({"file": "drawbench.csv", "limit": 2}).prompts == ("a", "b")
    assert load({"file": "drawbench.csv", "column": "Category"}).prompts == ("Colors", "Counting", "Text")
    assert load({"file": "hpd"}).prompts == ("x", "y")
    assert load({"file": "drawbench.csv"}).prompt_source == str(tmp_path / "drawbench.csv")
    with pytest.raises(SpecError, match=r"prompts.column applies to tables .* not .txt"):
        load({"file": "p.txt", "column": "prompt"})
    with pytest.raises(SpecError,
                       match=r"prompts.column 'nope' is not a column of the file: .*found columns: Prompts, Category"):
        load({"file": "drawbench.csv", "column": "nope"})
    with pytest.raises(SpecError, match=r"prompts.limit must be an integer >= 1"):
        load({"file": "p.txt", "limit": 0})


def test_toml_json_and_syntax_errors(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('model = "analytic"\nprompts = ["0"]\nseeds = [0]\n[grid]\nnum_inference_steps = [4]\n'
                    'zigzag_steps = [0, 3]\n')
    assert [c.zigzag_steps for c in expand_cells(load_spec(toml))] == [0, 3]
    js = tmp_path / "s.json"
    js.write_text(json.dumps(BASE))
    assert load_spec(js).hash == spec().hash
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: analytic\nprompts: [0, 1\n")
    with pytest.raises(SpecError, match=r"bad.yaml: cannot parse YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"does not exist"):
        load_spec(tmp_path / "none.yaml")
    other = tmp_path / "s.ini"
    other.write_text("")
    with pytest.raises(SpecError, match=r"must end in .yaml, .yml, .toml or .json"):
        load_spec(other)


def test_demo_model_spec_checks_prompts_and_files(tmp_path):
    data = {**BASE, "model": {"name": "demo", "options": {"model_dir": str(tmp_path)}}, "prompts": ["3"],
            "metrics": []}
    with pytest.raises(SpecError, match=r"model 'demo': .*weights.safetensors is missing"):
        parse_spec(data)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"scheduler": {"num_train_timesteps": 1000}}))
    with pytest.raises(SpecError, match=r"prompts\[0\]: unknown demo prompt 'cat'"):
        parse_spec({**data, "prompts": ["cat"]})
    with pytest.raises(SpecError, match=r"metrics: the demo metrics need .*metrics.safetensors"):
        parse_spec({**data, "metrics": ["alignment"]})
    assert parse_spec(data).prompts == ("3",)


def test_bad_spec_fails_before_any_model_loads(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sweep_models, "load_model", boom)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "grid": {"guidance_scale": ["high"]}}))
    with pytest.raises(SpecError, match=r"grid.guidance_scale\[0\]"):
        run_sweep(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
