"""Benchmark prompt sets in one shape, and the per-prompt seeds of the paper's protocol.

Why: the Z-Sampling paper evaluates on Pick-a-Pic, DrawBench, HPD v2,
GenEval and PartiPrompts, each distributed in its own format. Users bring
their own copies (several licences are unclear, so nothing is shipped);
every later stage -- sampling, scoring, per-category tables -- wants one
shape.

What: :func:`load_prompts` reads any of these files and returns a
``pandas.DataFrame`` with the columns :data:`PROMPT_COLUMNS`:

* ``prompt`` (str): the prompt, verbatim (text files: the stripped line);
* ``index`` (int): the prompt's position in the file (0-based, counted over
  prompts, before ``limit``; across the files of a directory in file-name
  order);
* ``category`` (str or None): DrawBench ``Category``, PartiPrompts
  ``Category``, GenEval ``tag``, the HPD v2 style (file name);
* ``tags`` (list of str or None): PartiPrompts ``[Challenge]``; a generic
  table's ``tags`` column;
* ``seed`` (int): ``index + seed_offset``, or the file's ``seed_column``;
* ``metadata`` (dict or None): the rest of the record (GenEval ``include`` /
  ``exclude``, PartiPrompts ``Note``, a text file's line number).

Formats (``format=``; auto-detected from the columns, then the file name,
then the extension when omitted):

========== ============================================== ==========================================
format     file                                           columns / content
========== ============================================== ==========================================
drawbench  ``.csv``                                       ``Prompts``, ``Category`` (200 prompts, 11 categories)
pickapic   ``.csv`` / ``.parquet`` (or a directory of     ``caption`` (the paper: first 100 of test_unique,
           parquet shards)                                ``limit=100``); only this column is read
hpdv2      ``.json`` (a list of prompt strings), or a     category = style from the file name
           directory of them (anime, concept-art,
           paintings, photo)
geneval    ``evaluation_metadata.jsonl``                  one JSON object a line with ``prompt``, ``tag``
parti      ``PartiPrompts.tsv``                           ``Prompt``, ``Category``, ``Challenge``, ``Note``
text       ``.txt``                                       one prompt a line; blank lines and ``#`` comments skipped
table      ``.csv`` / ``.tsv`` / ``.parquet`` /           a prompt column (``prompt``, ``Prompt``, ``prompts``,
           ``.jsonl`` / ``.json`` (list of objects)       ``Prompts``, ``caption``, ``text``; or ``prompt_column``),
                                                          optional ``category`` / ``tags`` columns
========== ============================================== ==========================================

Seeds: the paper pairs prompt i with seed i, so by default ``seed = index``;
``seed_offset`` shifts that, ``seed_column`` reads seeds from the file.
:func:`seed_generators` turns seeds into one ``torch.Generator`` per sample
(what ``zsampling.sample(..., generator=[...])`` and diffusers take), and
:func:`release_initial_latents` draws x_T exactly as the released code does.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROMPT_COLUMNS",
    "PROMPT_FORMATS",
    "PromptFileError",
    "detect_format",
    "load_prompts",
    "release_initial_latents",
    "seed_generators",
]

PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "index", "category", "tags", "seed", "metadata")
"""The columns of every loaded prompt set, in this order."""

PROMPT_FORMATS: tuple[str, ...] = ("drawbench", "pickapic", "hpdv2", "geneval", "parti", "text", "table")
"""The formats :func:`load_prompts` reads."""

EXPECTED: dict[str, str] = {
    "drawbench": "a CSV with columns Prompts, Category",
    "pickapic": "a CSV or Parquet file (or a directory of Parquet shards) with a caption column",
    "hpdv2": "a JSON list of prompt strings per style (anime.json, concept-art.json, paintings.json, photo.json), "
             "or a directory of them",
    "geneval": "a JSONL file (evaluation_metadata.jsonl) with one object a line holding keys prompt, tag",
    "parti": "a TSV with columns Prompt, Category, Challenge, Note",
    "text": "a .txt file with one prompt a line (blank lines and # comments skipped)",
    "table": "a CSV/TSV/Parquet/JSONL/JSON table with a prompt column (prompt, Prompt, prompts, Prompts, caption, "
             "text, or prompt_column=)",
}
"""What each format expects (quoted by every error)."""

_GENERIC_PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "Prompt", "prompts", "Prompts", "caption", "text")
_GENERIC_CATEGORY_COLUMNS: tuple[str, ...] = ("category", "Category")
_GENERIC_TAGS_COLUMNS: tuple[str, ...] = ("tags", "Tags")
_TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".parquet", ".jsonl", ".json")
_SUFFIXES: tuple[str, ...] = (".txt", *_TABLE_SUFFIXES)
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("drawbench", "drawbench"),
    ("partiprompts", "parti"),
    ("parti", "parti"),
    ("pickapic", "pickapic"),
    ("pick-a-pic", "pickapic"),
    ("pick_a_pic", "pickapic"),
    ("evaluation_metadata", "geneval"),
    ("geneval", "geneval"),
    ("hpdv2", "hpdv2"),
    ("hpd", "hpdv2"),
)


class PromptFileError(ValueError):
    """A prompt file is missing, unreadable or not in the expected format.

    The message names the file, the format, the columns (or keys) that format
    expects and the ones the file has.
    """


# ------------------------------------------------------------------------- entry
PROMPT_DATA_DIR = Path(__file__).resolve().parent / "prompt_data"
SHIPPED_PROMPTS: dict[str, Path] = {
    "parti": PROMPT_DATA_DIR / "partiprompts" / "PartiPrompts.tsv",
    "geneval": PROMPT_DATA_DIR / "geneval" / "evaluation_metadata.jsonl",
}
"""Prompt lists shipped with the package (licences beside them), addressable by name:
PartiPrompts (Apache-2.0, 12 categories) and GenEval (MIT, 6 tags)."""


def resolve_prompt_source(source: str | Path) -> tuple[Path, str | None]:
    """(file, category filter) of a prompt source: a path, or a shipped list's name
    with an optional ``:category`` ("parti", "parti:Animals", "geneval:two_object").

    A path that exists always wins over a name.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    name, _, category = str(source).partition(":")
    if name in SHIPPED_PROMPTS:
        return SHIPPED_PROMPTS[name], category or None
    raise PromptFileError(f"prompt file {str(source)!r} does not exist, and it names no shipped prompt list "
                          f"(shipped: {', '.join(SHIPPED_PROMPTS)}, e.g. 'parti' or 'geneval:two_object')")


def load_prompts(
    path: str | Path,
    format: str | None = None,
    limit: int | None = None,
    *,
    seed_offset: int = 0,
    seed_column: str | None = None,
    prompt_column: str | None = None,
) -> pd.DataFrame:
    """Load a benchmark prompt set as a DataFrame with columns :data:`PROMPT_COLUMNS`.

    Args:
        path: the file (or, for HPD v2 and Parquet shards, the directory), or
            the name of a shipped list with an optional category filter
            (:data:`SHIPPED_PROMPTS`: ``"parti"``, ``"parti:Animals"``,
            ``"geneval:two_object"``); a filtered list keeps each prompt's
            index (and seed) in the whole file.
        format: one of :data:`PROMPT_FORMATS`; None detects it
            (:func:`detect_format`).
        limit: keep the first ``limit`` prompts in file order (Pick-a-Pic in
            the paper: 100); None keeps all.
        seed_offset: ``seed = index + seed_offset`` (the paper: prompt i with
            seed i, offset 0). Ignored when ``seed_column`` is given.
        seed_column: a column of the file holding each prompt's seed
            (tabular formats only).
        prompt_column: the prompt column of a generic ``table`` (default: the
            first of prompt, Prompt, prompts, Prompts, caption, text).

    Returns:
        One row per prompt; ``df.attrs`` holds ``format`` and ``source``.

    Raises:
        PromptFileError: missing file, unknown format, a file that does not
            match its format (the message names the expected columns), an
            empty prompt, or a bad seed.
        ValueError: a bad ``limit`` or ``seed_offset``.
    """
    path, category = resolve_prompt_source(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, numbers.Integral) or seed_offset < 0:
        raise ValueError(f"seed_offset must be an integer >= 0, got {seed_offset!r}")
    if not path.exists():
        raise PromptFileError(f"prompt file {str(path)!r} does not exist")
    fmt = detect_format(path) if format is None else _check_format(format)
    if prompt_column is not None and fmt != "table":
        raise PromptFileError(f"prompt_column applies to format 'table', not {fmt!r} ({EXPECTED[fmt]})")
    loader = _LOADERS[fmt]
    rows = loader(path, seed_column) if fmt != "table" else _load_table(path, seed_column, prompt_column)
    if not rows:
        raise PromptFileError(f"{path}: holds no prompts (expected {EXPECTED[fmt]})")
    for index, row in enumerate(rows):
        row["index"] = index
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{path}: prompt {index} ({_where(row)}) is empty or not a string: {prompt!r}")
        if row.get("seed") is None:
            row["seed"] = index + int(seed_offset)
    if category is not None:
        categories = sorted({str(row.get("category")) for row in rows if row.get("category") is not None})
        rows = [row for row in rows if row.get("category") == category]
        if not rows:
            raise PromptFileError(f"{path}: no prompt has category {category!r}; categories: {', '.join(categories)}")
    if limit is not None:
        rows = rows[: int(limit)]
    frame = pd.DataFrame(
        {
            "prompt": pd.Series([r["prompt"] for r in rows], dtype=object),
            "index": pd.Series([r["index"] for r in rows], dtype="int64"),
            "category": pd.Series([r.get("category") for r in rows], dtype=object),
            "tags": pd.Series([r.get("tags") for r in rows], dtype=object),
            "seed": pd.Series([r["seed"] for r in rows], dtype="int64"),
            "metadata": pd.Series([r.get("metadata") for r in rows], dtype=object),
        },
        columns=list(PROMPT_COLUMNS),
    )
    frame.attrs["format"] = fmt
    frame.attrs["source"] = str(path)
    return frame


def detect_format(path: str | Path) -> str:
    """The format of a prompt file, from its columns, then its name, then its extension.

    Columns decide when they match a known format (``Prompts`` + ``Category``:
    DrawBench; ``Prompt`` + ``Category`` + ``Challenge``: PartiPrompts;
    ``caption``: Pick-a-Pic; objects with ``prompt`` + ``tag``: GenEval; a
    JSON list of strings: HPD v2). Otherwise a name hint (``drawbench``,
    ``parti``, ``pickapic``, ``geneval``, ``hpd``) picks the format, whose
    loader then reports the missing columns; otherwise ``.txt`` is text and
    other tables are the generic ``table``.

    Raises:
        PromptFileError: a missing path or an unsupported extension.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptFileError(f"prompt file {str(path)!r} does not exist")
    hint = _name_hint(path)
    if path.is_dir():
        if _dir_files(path, ".json"):
            return "hpdv2"
        if (path / "evaluation_metadata.jsonl").is_file():
            return "geneval"
        if _dir_files(path, ".parquet"):
            return "pickapic" if "caption" in _parquet_columns(_dir_files(path, ".parquet")[0]) else "table"
        raise PromptFileError(
            f"{path} is a directory without prompt files; a directory must hold HPD v2 JSON lists (*.json), "
            "evaluation_metadata.jsonl (GenEval) or Parquet shards with a caption column (Pick-a-Pic)"
        )
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise PromptFileError(f"{path}: unsupported prompt file extension {suffix or '(none)'!r}; supported: "
                              f"{', '.join(_SUFFIXES)}, or a directory (HPD v2 JSON files, Parquet shards)")
    if suffix == ".txt":
        return "text"
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
            return "hpdv2"
        return hint or "table"
    columns = set(_columns(path))
    if suffix == ".jsonl" and {"prompt", "tag"} <= columns:
        return "geneval"
    if {"Prompts", "Category"} <= columns:
        return "drawbench"
    if {"Prompt", "Category", "Challenge"} <= columns:
        return "parti"
    if "caption" in columns and suffix in (".csv", ".parquet"):
        return "pickapic"
    return hint or "table"


def _check_format(format: str) -> str:
    if format not in PROMPT_FORMATS:
        raise PromptFileError(f"format must be one of {', '.join(PROMPT_FORMATS)} (or None to detect), "
                              f"got {format!r}")
    return format


def _name_hint(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for word, fmt in _NAME_HINTS if word in name), None)


def _where(row: Mapping[str, Any]) -> str:
    meta = row.get("metadata") or {}
    if isinstance(meta, Mapping) and "line" in meta:
        return f"line {meta['line']}"
    if isinstance(meta, Mapping) and "file" in meta:
        return f"{meta['file']} item {meta.get('item')}"
    return f"row {row.get('_row', row.get('index'))}"


# ----------------------------------------------------------------------- reading
def _dir_files(path: Path, suffix: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == suffix)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read JSON: {error}") from error


def _read_jsonl(path: Path) -> list[Any]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read: {error}") from error
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path} line {number}: invalid JSON: {error}") from error
    return records


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise PromptFileError(f"{path}: cannot read Parquet: {error}") from error


def _columns(path: Path) -> list[str]:
    """Column names of a table file, reading as little as possible."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_columns(path)
    if suffix == ".jsonl":
        records = _read_jsonl(path)
        return list(records[0]) if records and isinstance(records[0], Mapping) else []
    if suffix == ".json":
        data = _read_json(path)
        return list(data[0]) if isinstance(data, list) and data and isinstance(data[0], Mapping) else []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = handle.readline()
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read: {error}") from error
    delimiter = "\t" if suffix == ".tsv" else ","
    return [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]


def _read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A table file (or a directory of Parquet shards) as strings; only ``columns`` for Parquet."""
    if path.is_dir():
        shards = _dir_files(path, ".parquet")
        if not shards:
            raise PromptFileError(f"{path}: a directory of tables must hold Parquet shards (*.parquet)")
        return pd.concat([_read_table(shard, columns) for shard in shards], ignore_index=True)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            available = _parquet_columns(path)
            wanted = [c for c in columns if c in available] if columns is not None else None
            return pq.read_table(path, columns=wanted).to_pandas()
        if suffix in (".csv", ".tsv"):
            frame = pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                encoding="utf-8-sig",
                # TSV prompt files do not quote: keep quotes that open a prompt ("G I G G L E" painted ...)
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            )
            frame.columns = [str(c).strip() for c in frame.columns]
            return frame
        if suffix == ".jsonl":
            records = _read_jsonl(path)
        else:
            records = _read_json(path)
    except PromptFileError:
        raise
    except Exception as error:  # pandas / pyarrow parser errors
        raise PromptFileError(f"{path}: cannot read {suffix[1:].upper()}: {error}") from error
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise PromptFileError(f"{path}: expected a list of JSON objects (one per prompt)")
    return pd.DataFrame.from_records(records)


def _require(path: Path, fmt: str, frame_columns: Iterable[str], required: Sequence[str]) -> None:
    have = [str(c) for c in frame_columns]
    missing = [c for c in required if c not in have]
    if missing:
        raise PromptFileError(
            f"{path}: not a {_TITLES[fmt]} file: expected {EXPECTED[fmt]}; missing {', '.join(missing)}; "
            f"found columns: {', '.join(have) or '(none)'}"
        )


def _text(value: Any) -> str | None:
    """A cell as a string, None for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _seeds(path: Path, frame: pd.DataFrame, seed_column: str | None) -> list[int | None]:
    if seed_column is None:
        return [None] * len(frame)
    if seed_column not in frame.columns:
        raise PromptFileError(f"{path}: seed_column {seed_column!r} is not a column; found columns: "
                              f"{', '.join(map(str, frame.columns))}")
    seeds: list[int | None] = []
    for row, value in enumerate(frame[seed_column].tolist()):
        try:
            seed = int(str(value).strip())
        except ValueError:
            seed = -1
        if seed < 0 or seed >= 2**63:
            raise PromptFileError(f"{path} row {row}: seed {value!r} in column {seed_column!r} must be an integer "
                                  "in 0..2**63-1")
        seeds.append(seed)
    return seeds


def _no_seed_column(path: Path, fmt: str, seed_column: str | None) -> None:
    if seed_column is not None:
        raise PromptFileError(f"{path}: seed_column needs a tabular file; {_TITLES[fmt]} files hold prompts only "
                              "(use seed_offset)")


# ----------------------------------------------------------------------- loaders
def _load_drawbench(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    frame = _read_table(path)
    _require(path, "drawbench", frame.columns, ("Prompts", "Category"))
    seeds = _seeds(path, frame, seed_column)
    return [{"prompt": _text(p), "category": _text(c) or None, "seed": s, "_row": r}
            for r, (p, c, s) in enumerate(zip(frame["Prompts"], frame["Category"], seeds, strict=True))]


def _load_pickapic(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    if not path.is_dir() and path.suffix.lower() not in (".csv", ".parquet"):
        raise PromptFileError(f"{path}: not a Pick-a-Pic file: expected {EXPECTED['pickapic']}")
    frame = _read_table(path, ["caption", *([seed_column] if seed_column else [])])
    _require(path, "pickapic", frame.columns, ("caption",))
    seeds = _seeds(path, frame, seed_column)
    return [{"prompt": _text(p), "seed": s, "_row": r}
            for r, (p, s) in enumerate(zip(frame["caption"], seeds, strict=True))]


def _load_hpdv2(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    _no_seed_column(path, "hpdv2", seed_column)
    files = _dir_files(path, ".json") if path.is_dir() else [path]
    if not files:
        raise PromptFileError(f"{path}: no HPD v2 JSON files; expected {EXPECTED['hpdv2']}")
    rows: list[dict[str, Any]] = []
    for file in files:
        data = _read_json(file)
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            kind = type(data).__name__ if not isinstance(data, list) else "a list with non-string items"
            raise PromptFileError(f"{file}: not an HPD v2 prompt file: expected {EXPECTED['hpdv2']}; got {kind}")
        style = file.stem
        rows += [{"prompt": prompt, "category": style, "metadata": {"file": file.name, "item": item}}
                 for item, prompt in enumerate(data)]
    return rows


def _load_geneval(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    if path.is_dir():
        path = path / "evaluation_metadata.jsonl"
    records = _read_jsonl(path)
    rows = []
    for number, record in enumerate(records):
        if not isinstance(record, Mapping) or "prompt" not in record or "tag" not in record:
            keys = ", ".join(map(str, record)) if isinstance(record, Mapping) else type(record).__name__
            raise PromptFileError(f"{path} object {number}: not GenEval metadata: expected {EXPECTED['geneval']}; "
                                  f"found keys: {keys or '(none)'}")
        seed = None
        if seed_column is not None:
            if seed_column not in record:
                raise PromptFileError(f"{path} object {number}: seed_column {seed_column!r} is not a key")
            seed = _seeds(path, pd.DataFrame({seed_column: [record[seed_column]]}), seed_column)[0]
        metadata = {k: v for k, v in record.items() if k not in ("prompt", "tag")}
        rows.append({"prompt": record["prompt"], "category": _text(record["tag"]), "seed": seed,
                     "metadata": metadata or None, "_row": number})
    return rows


def _load_parti(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    frame = _read_table(path)
    _require(path, "parti", frame.columns, ("Prompt", "Category", "Challenge"))
    seeds = _seeds(path, frame, seed_column)
    notes = frame["Note"].tolist() if "Note" in frame.columns else [None] * len(frame)
    rows = []
    for r, (prompt, category, challenge, note, seed) in enumerate(
            zip(frame["Prompt"], frame["Category"], frame["Challenge"], notes, seeds, strict=True)):
        challenge = _text(challenge) or None
        rows.append({"prompt": _text(prompt), "category": _text(category) or None,
                     "tags": [challenge] if challenge else None, "seed": seed,
                     "metadata": {"challenge": challenge, "note": _text(note) or None}, "_row": r})
    return rows


def _load_text(path: Path, seed_column: str | None) -> list[dict[str, Any]]:
    _no_seed_column(path, "text", seed_column)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read: {error}") from error
    return [{"prompt": line.strip(), "metadata": {"line": number}}
            for number, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]


def _load_table(path: Path, seed_column: str | None, prompt_column: str | None) -> list[dict[str, Any]]:
    if not path.is_dir() and path.suffix.lower() not in _TABLE_SUFFIXES:
        raise PromptFileError(f"{path}: a generic table must end in {', '.join(_TABLE_SUFFIXES)}")
    frame = _read_table(path)
    columns = [str(c) for c in frame.columns]
    column = prompt_column or next((c for c in _GENERIC_PROMPT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        wanted = repr(prompt_column) if prompt_column else ", ".join(_GENERIC_PROMPT_COLUMNS)
        raise PromptFileError(f"{path}: no prompt column ({wanted}); expected {EXPECTED['table']}; "
                              f"found columns: {', '.join(columns) or '(none)'}")
    category = next((c for c in _GENERIC_CATEGORY_COLUMNS if c in columns), None)
    tags = next((c for c in _GENERIC_TAGS_COLUMNS if c in columns), None)
    seeds = _seeds(path, frame, seed_column)
    used = {column, category, tags, seed_column}
    rest = [c for c in columns if c not in used]
    rows = []
    for r, record in enumerate(frame.to_dict("records")):
        metadata = {c: record[c] for c in rest}
        rows.append({"prompt": _text(record[column]),
                     "category": _text(record[category]) or None if category else None,
                     "tags": _tags(record[tags]) if tags else None, "seed": seeds[r],
                     "metadata": metadata or None, "_row": r})
    return rows


def _tags(value: Any) -> list[str] | None:
    """A tags cell: a list, or a string split on commas/semicolons."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.replace(";", ",").split(",")]
    else:
        items = [str(item).strip() for item in value]
    items = [item for item in items if item]
    return items or None


_TITLES: dict[str, str] = {
    "drawbench": "DrawBench", "pickapic": "Pick-a-Pic", "hpdv2": "HPD v2", "geneval": "GenEval",
    "parti": "PartiPrompts", "text": "plain-text", "table": "prompt table",
}
_LOADERS: dict[str, Any] = {
    "drawbench": _load_drawbench,
    "pickapic": _load_pickapic,
    "hpdv2": _load_hpdv2,
    "geneval": _load_geneval,
    "parti": _load_parti,
    "text": _load_text,
    "table": _load_table,
}


# ------------------------------------------------------------------------- seeds
def seed_generators(seeds: Iterable[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per sample on ``device``, seeded with its seed.

    Pass the list as ``generator=`` to :func:`zsampling.sample` (or a
    diffusers pipeline): diffusers' ``randn_tensor`` then draws sample b's
    noise from generator b alone, so a sample's x_T depends only on its seed,
    not on the batch it runs in. A CUDA generator gives different numbers
    from a CPU one with the same seed; the released Z-Sampling code draws on
    the CPU (see :func:`release_initial_latents`).
    """
    import torch

    generators = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise ValueError(f"seeds must be integers in 0..2**63-1, got {seed!r}")
        generators.append(torch.Generator(device=device).manual_seed(int(seed)))
    return generators


def release_initial_latents(seed: int, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    """x_T as the released Z-Sampling code draws it (``infer.py``'s ``get_init_latents``).

    That code calls ``torch.randn(shape, generator=torch.manual_seed(seed),
    dtype=torch.float16)`` on the CPU and moves the result to the GPU; a fresh
    CPU generator seeded with ``seed`` gives the same numbers without touching
    the global RNG. ``shape`` is the full latent shape, e.g. (1, 4, 128, 128)
    for SDXL at 1024 px; ``dtype`` defaults to float16 (the released code's).
    Pass the result as ``latents=`` (it is in units of the unit Gaussian;
    :func:`zsampling.sample` multiplies by ``init_noise_sigma``, 1 for DDIM).
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=dtype or torch.float16)
