"""The trace schema's names: what a trace file is, and its event columns.

Below both :mod:`zsampling.trace.data` (the in-memory :class:`Trace`) and
:mod:`zsampling.trace.storage` (the file format), so each can name them
without importing the other.
"""

from __future__ import annotations

SCHEMA = "zsampling.trace"
SCHEMA_VERSION = 1

OPS: tuple[str, ...] = ("zig", "zag", "step")
"""Operation names; an event's op code is its index here."""

EVENT_COLUMNS: tuple[str, ...] = (
    "op", "step", "round", "t_eval", "t_from", "t_to", "a_from", "a_to", "guidance", "c",
)
"""Per-event columns. ``t_from``/``t_to`` are the nominal timesteps the move
goes between (zig/step: t_i -> t_{i+1}; zag: t_{i+1} -> t_i; -1 stands for
the scheduler's final alpha after the last step; float timesteps on flow
matching); ``a_from``/``a_to`` are the noise levels the move actually used
(alpha_bar for DDIM, sigma for flow matching: the trace's
``meta["schedule"]["family"]`` says which; they differ from the nominal ones
for the "official" zag, which is one schedule level off); ``c`` is the
reflection coefficient c_i = B / A of the event's step."""
