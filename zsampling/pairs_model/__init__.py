"""Vocabulary, grammar and data of the shipped compositional "pairs" world.

The pairs world is a text-conditioned diffusion model of two-digit images:
two scikit-learn digits (8x8 each) side by side, 8x16 pixels in [-1, 1]. A
slot is either a digit or blank (every pixel -1). Prompts name digits and
their relation:

- ``"3 left of 7"`` / ``"7 right of 3"``: 3 in the left slot, 7 in the right;
- ``"3 and 7"``: both digits, in either order;
- ``"3"``: one slot holds a 3, the other is blank (either side);
- ``"left of 7"`` / ``"right of 3"``: the relation without its subject (the
  named digit in its slot, any digit in the other), so that removing the
  subject from a relation prompt (prompt-part attribution) stays in the
  grammar;
- ``""``: the empty prompt, the unconditional branch of classifier-free
  guidance (it is what the 12% prompt dropout trains).

This module is dependency-free (no torch) so that the denoiser adapter
(``zsampling.denoisers.pairs``), the metrics (``zsampling.metrics.pairs``) and
the training script share one parser. ``scripts/train_pairs_model.py``
rebuilds the files of this directory; ``TRAINING.md`` records how.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PAIRS_MODEL_DIR: Path = Path(__file__).resolve().parent
"""Directory holding the shipped pairs model files."""

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.safetensors"

SLOT_SIZE = 8
"""Each slot is one 8x8 digit."""

HEIGHT, WIDTH = SLOT_SIZE, 2 * SLOT_SIZE
"""Image (and latent) size: 8 x 16."""

BLANK = 10
"""Slot label of a blank slot (digits are 0-9)."""

ANY = -1
"""Slot requirement "any digit" (partial relation prompts)."""

PAD = "<pad>"
VOCABULARY: tuple[str, ...] = (PAD, *(str(d) for d in range(10)), "left", "right", "of", "and")
"""Token vocabulary of the text encoder; index 0 pads (and is the whole empty prompt)."""

MAX_WORDS = 4
"""Longest prompt ("3 left of 7"): the tokenizer pads every prompt to this length."""

GRAMMAR: tuple[str, ...] = (
    '"<d> left of <d>"',
    '"<d> right of <d>"',
    '"<d> and <d>"',
    '"<d>"',
    '"left of <d>"',
    '"right of <d>"',
    '"" (empty: unconditional)',
)
"""Accepted prompt forms; <d> is one of 0-9. Case and extra spaces are ignored."""


@dataclass(frozen=True)
class PairPrompt:
    """A parsed prompt: what the two slots must hold.

    Attributes:
        form: "left", "right", "and", "single", "left_of", "right_of" or "empty".
        left, right: required slot labels for ordered forms (digit 0-9, ``BLANK``
            or ``ANY``); for order-free forms ("and", "single") the two labels in
            canonical order (the image may hold them either way round).
        ordered: whether the slot order is part of the prompt.
    """

    form: str
    left: int
    right: int
    ordered: bool

    @property
    def digits(self) -> tuple[int, ...]:
        """The digits the prompt names (with multiplicity)."""
        return tuple(d for d in (self.left, self.right) if 0 <= d <= 9)


def _grammar_error(prompt: object) -> ValueError:
    return ValueError(
        f"unknown pairs prompt {prompt!r}; the vocabulary is {', '.join(repr(w) for w in VOCABULARY[1:])} "
        f"and the grammar is {', '.join(GRAMMAR)} with <d> a digit 0-9"
    )


def normalise(prompt: str) -> list[str]:
    """Lower-cased words of a prompt."""
    return prompt.strip().lower().split()


def parse_prompt(prompt: str) -> PairPrompt:
    """Parse a prompt of the pairs grammar.

    Raises:
        ValueError: for anything outside the grammar; the message lists the
            vocabulary and the grammar.
    """
    if not isinstance(prompt, str):
        raise _grammar_error(prompt)
    w = normalise(prompt)

    def digit(word: str) -> int:
        if len(word) == 1 and word.isdigit():
            return int(word)
        raise _grammar_error(prompt)

    if not w:
        return PairPrompt("empty", ANY, ANY, ordered=False)
    if len(w) == 1:
        d = digit(w[0])
        return PairPrompt("single", d, BLANK, ordered=False)
    if len(w) == 3 and w[1] == "and":
        a, b = sorted((digit(w[0]), digit(w[2])))
        return PairPrompt("and", a, b, ordered=False)
    if len(w) == 3 and w[0] in ("left", "right") and w[1] == "of":
        d = digit(w[2])
        if w[0] == "left":
            return PairPrompt("left_of", ANY, d, ordered=True)
        return PairPrompt("right_of", d, ANY, ordered=True)
    if len(w) == 4 and w[1] in ("left", "right") and w[2] == "of":
        a, b = digit(w[0]), digit(w[3])
        if w[1] == "left":
            return PairPrompt("left", a, b, ordered=True)
        return PairPrompt("right", b, a, ordered=True)
    raise _grammar_error(prompt)


def tokenize(prompt: str) -> list[int]:
    """Token ids of a prompt (validated by ``parse_prompt``), padded to ``MAX_WORDS``."""
    parse_prompt(prompt)
    ids = [VOCABULARY.index(word) for word in normalise(prompt)]
    return ids + [0] * (MAX_WORDS - len(ids))
