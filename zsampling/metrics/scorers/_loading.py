"""Loading helpers shared by the scorers: local path or hub, clear errors, no pickle."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from zsampling.metrics.base import MissingWeightsError

T = TypeVar("T")


def _hint(scorer: str, hub_id: str, argument: str, filename: str | None = None) -> str:
    what = f"the file {filename!r} of the hub repo {hub_id!r}" if filename else f"the hub repo {hub_id!r}"
    download = (
        f"huggingface-cli download {hub_id} {filename} --local-dir /path/to/dir"
        if filename
        else f"huggingface-cli download {hub_id} --local-dir /path/to/dir"
    )
    return (
        f"{scorer} needs {what}. On a machine with internet access run `{download}`, then pass the local copy: "
        f"{scorer}.from_pretrained({argument}='/path/to/dir'"
        + (f" or '/path/to/dir/{filename}'" if filename else "")
        + f"), or build the scorer from objects you loaded yourself ({scorer}(model, ...))."
    )


def load_or_explain(
    loader: Callable[[], T],
    *,
    scorer: str,
    what: str,
    source: str,
    hub_id: str,
    argument: str,
    filename: str | None = None,
) -> T:
    """Run ``loader``; turn an ``OSError`` (not found locally, hub unreachable)
    into :class:`MissingWeightsError` naming ``source``, the hub id and the fix."""
    try:
        return loader()
    except MissingWeightsError:
        raise
    except OSError as error:
        raise MissingWeightsError(
            f"could not load the {what} from {source!r} ({type(error).__name__}: {str(error).strip()[:300]}). "
            + _hint(scorer, hub_id, argument, filename)
        ) from error


def load_tokenizer(
    tokenizer: Any,
    *,
    scorer: str,
    what: str,
    hub_id: str,
    argument: str,
    local_files_only: bool = False,
) -> Any:
    """``tokenizer`` itself, or ``AutoTokenizer.from_pretrained`` of it when it
    is a local directory or hub id (a ``str`` or ``Path``).

    The scorers take a tokenizer object or where to load one; loading goes
    through :func:`load_or_explain`, so an unavailable one raises
    :class:`MissingWeightsError` naming ``hub_id`` and the ``argument`` to pass.
    """
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    source = str(tokenizer)
    return load_or_explain(
        lambda: AutoTokenizer.from_pretrained(source, local_files_only=local_files_only),
        scorer=scorer, what=what, source=source, hub_id=hub_id, argument=argument,
    )


def resolve_file(
    source: str | Path,
    filename: str,
    *,
    scorer: str,
    what: str,
    hub_id: str,
    argument: str,
    local_files_only: bool = False,
) -> Path:
    """A local file for ``source``: the file itself, ``filename`` inside a
    directory, or ``filename`` downloaded from the hub repo ``source``.

    Raises:
        MissingWeightsError: no such local file and the hub download failed
            (offline, or ``local_files_only`` without a cached copy).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        raise MissingWeightsError(
            f"the directory {str(path)!r} has no {filename!r} (the {what}). "
            + _hint(scorer, hub_id, argument, filename)
        )
    looks_local = str(source).startswith((".", "/", "~")) or str(source).count("/") != 1
    if looks_local:
        raise MissingWeightsError(f"no such file or directory {str(source)!r} (the {what}). "
                                  + _hint(scorer, hub_id, argument, filename))

    def download() -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(source), filename, local_files_only=local_files_only))

    return load_or_explain(download, scorer=scorer, what=what, source=f"{source}/{filename}", hub_id=str(source),
                           argument=argument, filename=filename)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``torch.save`` file read with
    ``weights_only=True`` (never unpickling code); a nested ``"state_dict"``
    entry is unwrapped and a ``module.`` prefix (DataParallel) stripped.

    Raises:
        ValueError: the file holds something other than a mapping of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for non-tensor payloads
            raise ValueError(
                f"{str(path)!r} is not a plain tensor checkpoint readable with torch.load(weights_only=True): {error}"
            ) from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    state = dict(state)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def build_with_state_dict(factory: Callable[[], torch.nn.Module], state_dict: Mapping[str, torch.Tensor]) -> Any:
    """Build ``factory()`` without initialising weights (on the meta device)
    and assign ``state_dict`` to it; every parameter and persistent buffer
    must be present. Non-persistent ``position_ids`` buffers are recreated.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches.
    """
    with torch.device("meta"):
        model = factory()
    try:
        result = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    except RuntimeError as error:  # size mismatches
        raise ValueError(f"the converted weights do not fit {type(model).__name__}: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the converted weights do not fit {type(model).__name__}: missing {sorted(result.missing_keys)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            if attr != "position_ids":
                raise ValueError(f"buffer {name!r} of {type(model).__name__} is not in the weights")
            owner._buffers[attr] = torch.arange(buffer.shape[-1]).expand(tuple(buffer.shape)).clone()
    return model
