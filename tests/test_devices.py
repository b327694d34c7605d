"""One device resolver and one dtype map for presets, sweeps, scorers and reproduce."""

from __future__ import annotations

import pytest
import torch

from zsampling.devices import DTYPE_NAMES, resolve_device, torch_dtype


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("fp16", torch.float16),
                                             ("Half", torch.float16), ("bf16", torch.bfloat16),
                                             ("torch.float64", torch.float64), (torch.bfloat16, torch.bfloat16)])
def test_every_dtype_name_resolves(name, dtype):
    assert torch_dtype(name) is dtype


def test_unknown_dtypes_list_the_allowed_names():
    with pytest.raises(ValueError, match="dtype must be one of float32, fp32, float, float16"):
        torch_dtype("int8")
    with pytest.raises(ValueError, match="floating dtype"):
        torch_dtype(torch.int64)
    assert set(DTYPE_NAMES.values()) == {torch.float32, torch.float16, torch.bfloat16, torch.float64}


def test_devices():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None) == auto
    assert resolve_device("auto", torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda'"):
        resolve_device("gpu!")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_presets_and_sweeps_use_the_same_names():
    from zsampling.presets import get_preset, resolve_dtype
    from zsampling.sweep import models

    assert resolve_dtype("bf16", get_preset("sdxl"), torch.device("cpu")) is torch.bfloat16
    from zsampling.sweep import runner

    assert models.torch_dtype is torch_dtype and runner.resolve_device is resolve_device
