"""Fixtures that several test modules ask for by name (``pytest.mark.usefixtures`` or an argument)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing socket connection raise."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny 8x8 batches: one torch thread is faster and immune to CPU oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
