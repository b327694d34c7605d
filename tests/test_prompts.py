"""Prompt-set loaders: real PartiPrompts / GenEval files and small written files of every format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from zsampling.prompts import (
    PROMPT_COLUMNS,
    SHIPPED_PROMPTS,
    PromptFileError,
    detect_format,
    load_prompts,
    release_initial_latents,
    seed_generators,
)

PARTI = SHIPPED_PROMPTS["parti"]
GENEVAL = SHIPPED_PROMPTS["geneval"]
GENEVAL_TXT = GENEVAL.parent / "generation_prompts.txt"


def _check_shape(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == PROMPT_COLUMNS
    assert frame["index"].dtype == "int64" and frame["seed"].dtype == "int64"
    assert all(isinstance(p, str) and p for p in frame["prompt"])


# ------------------------------------------------------------------ real files (the copies the package ships)
def test_partiprompts_real_file() -> None:
    frame = load_prompts(PARTI)
    _check_shape(frame)
    assert frame.attrs["format"] == "parti" and len(frame) == 1632
    assert frame["category"].nunique() == 12 and "Animals" in set(frame["category"])
    assert frame["index"].tolist() == list(range(1632)) and frame["seed"].tolist() == list(range(1632))
    assert frame.loc[0, "prompt"] == "bond" and frame.loc[0, "tags"] == ["Basic"]
    # a prompt that opens with a quote keeps it (TSV is read without CSV quoting)
    assert frame["prompt"].str.startswith('"G I G G L E"').sum() == 1
    assert load_prompts(PARTI, limit=5)["prompt"].tolist() == frame["prompt"][:5].tolist()


def test_geneval_real_file_and_directory() -> None:
    frame = load_prompts(GENEVAL)
    _check_shape(frame)
    assert frame.attrs["format"] == "geneval" and len(frame) == 553
    assert set(frame["category"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert frame.loc[0, "prompt"] == "a photo of a bench"
    assert frame.loc[0, "metadata"]["include"] == [{"class": "bench", "count": 1}]
    assert load_prompts(GENEVAL.parent)["prompt"].tolist() == frame["prompt"].tolist()
    text = load_prompts(GENEVAL_TXT, seed_offset=1000)
    assert text.attrs["format"] == "text" and text["prompt"].tolist() == frame["prompt"].tolist()
    assert text["seed"].tolist() == list(range(1000, 1553))


# ---------------------------------------------------------------- written files
def test_drawbench_csv(tmp_path: Path) -> None:
    path = tmp_path / "db.csv"
    rows = [(f'prompt {i}, with "quotes"', f"Cat{i % 11}") for i in range(22)]
    pd.DataFrame(rows, columns=["Prompts", "Category"]).to_csv(path, index=False, encoding="utf-8-sig")
    frame = load_prompts(path)
    _check_shape(frame)
    assert frame.attrs["format"] == "drawbench" and len(frame) == 22
    assert frame.loc[3, "prompt"] == 'prompt 3, with "quotes"' and frame.loc[3, "category"] == "Cat3"
    assert frame["category"].nunique() == 11 and frame["tags"].isna().all()


def test_pickapic_csv_parquet_and_shards(tmp_path: Path) -> None:
    captions = [f"caption {i}" for i in range(120)]
    table = pd.DataFrame({"caption": captions, "jpg_0": [b"\x00" * 8] * 120, "label_0": [0.5] * 120})
    table.to_parquet(tmp_path / "test_unique.parquet", index=False)
    table[["caption"]].to_csv(tmp_path / "captions.csv", index=False)
    for name in ("test_unique.parquet", "captions.csv"):
        frame = load_prompts(tmp_path / name, limit=100)
        _check_shape(frame)
        assert frame.attrs["format"] == "pickapic"
        assert frame["prompt"].tolist() == captions[:100] and frame["seed"].tolist() == list(range(100))
        assert frame["category"].isna().all()
    shards = tmp_path / "shards"
    shards.mkdir()
    table[:70].to_parquet(shards / "test_unique-00000-of-00002.parquet", index=False)
    table[70:].to_parquet(shards / "test_unique-00001-of-00002.parquet", index=False)
    assert load_prompts(shards)["prompt"].tolist() == captions


def test_hpdv2_directory_and_file(tmp_path: Path) -> None:
    styles = ["anime", "concept-art", "paintings", "photo"]
    for style in styles:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt {i}" for i in range(3)]))
    frame = load_prompts(tmp_path)
    _check_shape(frame)
    assert frame.attrs["format"] == "hpdv2" and len(frame) == 12
    assert frame["category"].tolist() == [s for s in styles for _ in range(3)]
    assert frame["index"].tolist() == list(range(12)) and frame.loc[4, "prompt"] == "concept-art prompt 1"
    one = load_prompts(tmp_path / "photo.json")
    assert one.attrs["format"] == "hpdv2" and set(one["category"]) == {"photo"} and len(one) == 3


def test_text_table_and_jsonl(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("# a comment\na cat\n\n  a dog  \n#another\na fox\n")
    frame = load_prompts(text)
    assert frame["prompt"].tolist() == ["a cat", "a dog", "a fox"]
    assert [m["line"] for m in frame["metadata"]] == [2, 4, 6]

    csv_path = tmp_path / "mine.csv"
    pd.DataFrame({"prompt": ["a", "b"], "category": ["x", ""], "tags": ["t1, t2", ""],
                  "seed": [7, 9]}).to_csv(csv_path, index=False)
    table = load_prompts(csv_path, seed_column="seed")
    assert table.attrs["format"] == "table" and table["seed"].tolist() == [7, 9]
    assert table["category"].tolist() == ["x", None] and table.loc[0, "tags"] == ["t1", "t2"]

    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"text": "a red cube", "id": 3}\n\n{"text": "a blue ball", "id": 4}\n')
    frame = load_prompts(jsonl)
    assert frame.attrs["format"] == "table" and frame["prompt"].tolist() == ["a red cube", "a blue ball"]
    assert frame.loc[1, "metadata"] == {"id": 4}


def test_detect_format_by_name_and_columns(tmp_path: Path) -> None:
    (tmp_path / "x.tsv").write_text("Prompt\tCategory\tChallenge\tNote\na\tb\tc\t\n")
    assert detect_format(tmp_path / "x.tsv") == "parti"
    (tmp_path / "geneval_meta.jsonl").write_text('{"prompt": "a", "tag": "t"}\n')
    assert detect_format(tmp_path / "geneval_meta.jsonl") == "geneval"
    (tmp_path / "drawbench_sub.csv").write_text("prompt\na\n")
    assert detect_format(tmp_path / "drawbench_sub.csv") == "drawbench"  # the name decides; columns are checked next


# ------------------------------------------------------------------------ errors
def test_bad_files_name_expected_columns(tmp_path: Path) -> None:
    path = tmp_path / "drawbench.csv"
    path.write_text("Text,Kind\na,b\n")
    with pytest.raises(PromptFileError, match=r"Prompts, Category.*found columns: Text, Kind"):
        load_prompts(path)
    parti = tmp_path / "parti.tsv"
    parti.write_text("Prompt\tCategory\na\tb\n")
    with pytest.raises(PromptFileError, match=r"Prompt, Category, Challenge, Note; missing Challenge"):
        load_prompts(parti, format="parti")
    geneval = tmp_path / "meta.jsonl"
    geneval.write_text('{"prompt": "a"}\n')
    with pytest.raises(PromptFileError, match=r"keys prompt, tag; found keys: prompt"):
        load_prompts(geneval, format="geneval")
    hpd = tmp_path / "anime.json"
    hpd.write_text('[{"prompt": "a"}]')
    with pytest.raises(PromptFileError, match=r"JSON list of prompt strings"):
        load_prompts(hpd, format="hpdv2")
    pick = tmp_path / "pick.parquet"
    pd.DataFrame({"text2": ["a"]}).to_parquet(pick)
    with pytest.raises(PromptFileError, match=r"caption column.*missing caption"):
        load_prompts(pick, format="pickapic")
    table = tmp_path / "t.csv"
    table.write_text("words\na\n")
    with pytest.raises(PromptFileError, match=r"no prompt column.*found columns: words"):
        load_prompts(table)


def test_other_errors(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(tmp_path / "missing.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(PromptFileError, match="unsupported prompt file extension"):
        load_prompts(tmp_path / "a.xlsx")
    empty = tmp_path / "db.csv"
    empty.write_text("Prompts,Category\nok,c\n,c\n")
    with pytest.raises(PromptFileError, match="prompt 1 .*empty"):
        load_prompts(empty)
    with pytest.raises(PromptFileError, match="format must be one of"):
        load_prompts(empty, format="drawbnch")
    with pytest.raises(ValueError, match="limit"):
        load_prompts(empty, limit=0)
    seeds = tmp_path / "s.csv"
    seeds.write_text("prompt,seed\na,x\n")
    with pytest.raises(PromptFileError, match="seed 'x'"):
        load_prompts(seeds, seed_column="seed")
    with pytest.raises(PromptFileError, match="seed_column 'nope' is not a column"):
        load_prompts(seeds, seed_column="nope")
    (tmp_path / "p.txt").write_text("a\n")
    with pytest.raises(PromptFileError, match="seed_column needs a tabular file"):
        load_prompts(tmp_path / "p.txt", seed_column="seed")


# ------------------------------------------------------------------------- seeds
def test_seed_generators_and_release_latents() -> None:
    a = [g.initial_seed() for g in seed_generators([0, 5, 2**40])]
    assert a == [0, 5, 2**40]
    first, second = seed_generators([3, 3])
    assert torch.equal(torch.randn(4, generator=first), torch.randn(4, generator=second))
    with pytest.raises(ValueError, match="seeds"):
        seed_generators([-1])
    latents = release_initial_latents(42, (1, 4, 8, 8))
    assert latents.dtype == torch.float16
    assert torch.equal(latents, torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42),
                                            dtype=torch.float16))


# -------------------------------------------------------------------------- shipped lists by name
def test_shipped_lists_load_by_name_with_category_filters() -> None:
    parti = load_prompts("parti")
    assert len(parti) == 1632 and parti.attrs["format"] == "parti"
    animals = load_prompts("parti:Animals")
    assert set(animals["category"]) == {"Animals"} and 0 < len(animals) < 1632
    # a filtered list keeps each prompt's index and seed in the whole file
    assert animals["index"].tolist() == parti.index[parti["category"] == "Animals"].tolist()
    two = load_prompts("geneval:two_object", limit=5)
    assert len(two) == 5 and set(two["category"]) == {"two_object"}
    for name in ("parti", "geneval"):
        assert (SHIPPED_PROMPTS[name].parent / "LICENSE").is_file()


def test_unknown_names_and_categories_list_what_is_shipped() -> None:
    with pytest.raises(PromptFileError, match="shipped: parti, geneval"):
        load_prompts("drawbench")
    with pytest.raises(PromptFileError, match="no prompt has category 'Nope'; categories: Abstract, Animals"):
        load_prompts("parti:Nope")


def test_cli_and_sweeps_take_shipped_names(tmp_path: Path) -> None:
    from zsampling.sweep import parse_spec

    spec = parse_spec({"model": "tiny-sd", "prompts": {"file": "geneval:colors", "limit": 3}, "seeds": [0]},
                      base_dir=tmp_path)
    assert spec.prompts == tuple(load_prompts("geneval:colors", limit=3)["prompt"])
