"""One document as every recipe's rules read it: split lazily and at most once, shared by all rules."""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from pipeline.quality.c4 import C4_LINE_RULES, C4Lines, c4_lines
from pipeline.quality.checks import repeats
from pipeline.text import tokens, words

if TYPE_CHECKING:
    from pipeline.quality import QualityConfig

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class Doc:
    """One document's text, split lazily and at most once, shared by all rules."""

    def __init__(self, text: str, config: QualityConfig, on: frozenset[str]):
        self.text, self.config, self.on = text, config, on

    @cached_property
    def words(self) -> list[str]:
        return words(self.text)

    @cached_property
    def tokens(self) -> list[str]:
        return tokens(self.text)

    @cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines() if line.strip()]

    @cached_property
    def raw_lines(self) -> list[str]:
        """Non-blank lines as they are, for FineWeb's rules."""
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _PARAGRAPH_BREAK.split(self.text) if p.strip()]

    @cached_property
    def line_repeats(self) -> tuple[int, int]:
        return repeats(self.lines)

    @cached_property
    def word_chars(self) -> np.ndarray:
        """Characters of words [0, i): an n-gram's characters are a difference of two entries."""
        return np.concatenate(([0], np.cumsum(np.fromiter(map(len, self.words), np.int64, len(self.words)))))

    @cached_property
    def vocabulary(self) -> dict[str, int]:
        """Each distinct word's id, in order of first use."""
        return {w: i for i, w in enumerate(dict.fromkeys(self.words))}

    @cached_property
    def _grams(self) -> dict[int, np.ndarray]:
        return {1: np.fromiter(map(self.vocabulary.__getitem__, self.words), np.int64, len(self.words))}

    def grams(self, n: int) -> np.ndarray:
        """Word n-grams as dense integer ids, position by position (equal ids: equal n-grams).
        Built from the (n-1)-grams, so the 2..10-grams of Gopher's rules cost one pass each."""
        if n not in self._grams:
            shorter, words_ = self.grams(n - 1), self._grams[1]
            pairs = shorter[:-1] * (len(words_) + 1) + words_[n - 1 :]
            self._grams[n] = np.unique(pairs, return_inverse=True)[1].astype(np.int64)
        return self._grams[n]

    @cached_property
    def c4(self) -> C4Lines:
        return c4_lines(self.text, self.config.c4, self.on)

    @cached_property
    def after_c4(self) -> "Doc":
        """The document the rules after C4 judge: C4's kept lines when a line rule is on."""
        if not self.on.intersection(C4_LINE_RULES):
            return self
        return Doc(self.c4.text, self.config, self.on)
