"""Gopher's quality and repetition rules (Rae et al. 2021, appendix A; datatrove's
GopherQualityFilter and GopherRepetitionFilter for what the paper leaves open), with the paper's
thresholds as defaults. The rules and their limits are listed in pipeline/quality/__init__.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Callable

import numpy as np
from pydantic import Field, model_validator

from pipeline.quality.checks import Checks, at_least, at_most, ratio, repeats
from pipeline.stage import StageConfig
from pipeline.text import count_tokens_with_letter

if TYPE_CHECKING:
    from pipeline.quality.doc import Doc

# Evaluation order: the cheap counts, then the repetition rules.
GOPHER_QUALITY = (
    "gopher_word_count",
    "gopher_mean_word_length",
    "gopher_hash_ratio",
    "gopher_ellipsis_ratio",
    "gopher_bullet_lines",
    "gopher_ellipsis_lines",
    "gopher_alpha_words",
    "gopher_stop_words",
)
GOPHER_REPETITION = ("gopher_dup_paragraphs", "gopher_dup_lines", "gopher_top_ngrams", "gopher_dup_ngrams")
GOPHER = GOPHER_QUALITY + GOPHER_REPETITION

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ["•", "●", "○", "◦", "▪", "‣", "·", "-", "*"]
ELLIPSES = ("...", "…")
TOP_NGRAM_MAX_CHARS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_MAX_CHARS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
# n -> a share of the characters, in the two n-gram rules
NgramShares = dict[Annotated[int, Field(ge=1, le=100)], Annotated[float, Field(ge=0, le=1)]]


class GopherConfig(StageConfig):
    """Thresholds of Gopher's rules (quality.gopher); which rules run is quality.rules."""

    min_words: int = Field(50, ge=0, description="gopher_word_count: fewest words a document may have.")
    max_words: int = Field(100_000, ge=0, description="gopher_word_count: most words a document may have.")
    min_mean_word_length: float = Field(
        3.0, ge=0, description="gopher_mean_word_length: lowest mean word length, in characters."
    )
    max_mean_word_length: float = Field(
        10.0, ge=0, description="gopher_mean_word_length: highest mean word length, in characters."
    )
    max_hash_ratio: float = Field(0.1, ge=0, description="gopher_hash_ratio: most '#' characters per word.")
    max_ellipsis_ratio: float = Field(
        0.1, ge=0, description="gopher_ellipsis_ratio: most ellipses ('...' or '…') per word."
    )
    max_bullet_lines_ratio: float = Field(
        0.9, ge=0, le=1, description="gopher_bullet_lines: largest share of lines that may start with a bullet."
    )
    max_ellipsis_lines_ratio: float = Field(
        0.3, ge=0, le=1, description="gopher_ellipsis_lines: largest share of lines that may end with an ellipsis."
    )
    min_alpha_words_ratio: float = Field(
        0.8, ge=0, le=1, description="gopher_alpha_words: smallest share of tokens that must hold a letter."
    )
    min_stop_words: int = Field(
        2,
        ge=0,
        description="gopher_stop_words: fewest distinct stop words a document "
        "must hold (Gopher: 'at least two of' them).",
    )
    stop_words: list[str] = Field(
        default_factory=lambda: list(GOPHER_STOP_WORDS),
        description="gopher_stop_words: the words counted (matched lowercased).",
    )
    max_dup_lines_ratio: float = Field(
        0.3, ge=0, le=1, description="gopher_dup_lines: largest share of lines that may repeat an earlier line."
    )
    max_dup_lines_chars: float = Field(
        0.2, ge=0, le=1, description="gopher_dup_lines: largest share of the characters repeated lines may hold."
    )
    max_dup_paragraphs_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description="gopher_dup_paragraphs: largest share of paragraphs that may repeat an earlier one.",
    )
    max_dup_paragraphs_chars: float = Field(
        0.2,
        ge=0,
        le=1,
        description="gopher_dup_paragraphs: largest share of the characters repeated paragraphs may hold.",
    )
    max_top_ngram_chars: NgramShares = Field(
        default_factory=lambda: dict(TOP_NGRAM_MAX_CHARS),
        description="gopher_top_ngrams: n -> largest share of the characters the most frequent word n-gram may cover.",
    )
    max_dup_ngram_chars: NgramShares = Field(
        default_factory=lambda: dict(DUP_NGRAM_MAX_CHARS),
        description="gopher_dup_ngrams: n -> largest share of the characters repeated word n-grams may cover.",
    )
    bullets: list[str] = Field(
        default_factory=lambda: list(BULLETS),
        description="gopher_bullet_lines: prefixes that mark a bullet line (after leading spaces).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> "GopherConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(
                f"min_mean_word_length {self.min_mean_word_length} > max_mean_word_length {self.max_mean_word_length}"
            )
        if any(not s for s in self.bullets):
            raise ValueError("bullets must not hold an empty string (it would match every line)")
        return self


def _word_count(d: Doc, c: GopherConfig) -> Checks:
    n = len(d.words)
    yield at_least("words", n, "min_words", c.min_words)
    yield at_most("words", n, "max_words", c.max_words)


def _mean_word_length(d: Doc, c: GopherConfig) -> Checks:
    mean = ratio(sum(map(len, d.words)), len(d.words))
    yield at_least("mean_word_length", mean, "min_mean_word_length", c.min_mean_word_length)
    yield at_most("mean_word_length", mean, "max_mean_word_length", c.max_mean_word_length)


def _hash_ratio(d: Doc, c: GopherConfig) -> Checks:
    yield at_most("hash_ratio", d.text.count("#") / max(len(d.words), 1), "max_hash_ratio", c.max_hash_ratio)


def _ellipsis_ratio(d: Doc, c: GopherConfig) -> Checks:
    value = sum(d.text.count(e) for e in ELLIPSES) / max(len(d.words), 1)
    yield at_most("ellipsis_ratio", value, "max_ellipsis_ratio", c.max_ellipsis_ratio)


def _bullet_lines(d: Doc, c: GopherConfig) -> Checks:
    marks = tuple(c.bullets)
    value = ratio(sum(line.startswith(marks) for line in d.lines), len(d.lines))
    yield at_most("bullet_lines_ratio", value, "max_bullet_lines_ratio", c.max_bullet_lines_ratio)


def _ellipsis_lines(d: Doc, c: GopherConfig) -> Checks:
    value = ratio(sum(line.endswith(ELLIPSES) for line in d.lines), len(d.lines))
    yield at_most("ellipsis_lines_ratio", value, "max_ellipsis_lines_ratio", c.max_ellipsis_lines_ratio)


def _alpha_words(d: Doc, c: GopherConfig) -> Checks:
    value = ratio(count_tokens_with_letter(d.text), len(d.tokens))
    yield at_least("alpha_words_ratio", value, "min_alpha_words_ratio", c.min_alpha_words_ratio)


def _stop_words(d: Doc, c: GopherConfig) -> Checks:
    stop = frozenset(c.stop_words)
    n = len(stop.intersection(w.lower() for w in d.vocabulary))
    yield at_least("stop_words", n, "min_stop_words", c.min_stop_words)


def _dup_parts(found: tuple[int, int], parts: int, text: str, max_ratio: float, max_chars: float, name: str) -> Checks:
    n, chars = found
    yield at_most(f"dup_{name}_ratio", ratio(n, parts), f"max_dup_{name}_ratio", max_ratio)
    yield at_most(f"dup_{name}_chars", ratio(chars, len(text)), f"max_dup_{name}_chars", max_chars)


def _dup_lines(d: Doc, c: GopherConfig) -> Checks:
    return _dup_parts(d.line_repeats, len(d.lines), d.text, c.max_dup_lines_ratio, c.max_dup_lines_chars, "lines")


def _dup_paragraphs(d: Doc, c: GopherConfig) -> Checks:
    return _dup_parts(
        repeats(d.paragraphs),
        len(d.paragraphs),
        d.text,
        c.max_dup_paragraphs_ratio,
        c.max_dup_paragraphs_chars,
        "paragraphs",
    )


def _top_ngrams(d: Doc, c: GopherConfig) -> Checks:
    for n, limit in sorted(c.max_top_ngram_chars.items()):
        grams, share = d.grams(n), 0.0
        if len(grams):
            counts = np.bincount(grams)
            first = np.full(len(counts), len(grams))
            np.minimum.at(first, grams, np.arange(len(grams)))
            tied = np.flatnonzero(counts == counts.max())
            at = int(first[tied].min())  # of equally frequent n-grams, the one seen first
            share = ratio(int(d.word_chars[at + n] - d.word_chars[at]) * int(counts.max()), len(d.text))
        yield at_most(f"top_{n}gram_chars", share, f"max_top_ngram_chars[{n}]", limit)


def repeated_ngram_chars(grams: np.ndarray, n: int, word_chars: np.ndarray) -> int:
    """Characters of repeated n-grams, scanning left to right: an n-gram seen before counts, and the
    scan jumps past it (the n-grams it jumps over are neither counted nor remembered). Only the
    positions whose n-gram occurred earlier are visited: such an n-gram was seen unless its first
    occurrence was jumped over and no later one was remembered."""
    if len(grams) == 0:
        return 0
    first = np.full(int(grams.max()) + 1, len(grams))
    np.minimum.at(first, grams, np.arange(len(grams)))
    later = np.flatnonzero(first[grams] < np.arange(len(grams)))
    chars, resume, jumped, remembered = 0, 0, set(), set()
    for i, k in zip(later.tolist(), grams[later].tolist()):
        if i < resume:
            continue
        if k in remembered or int(first[k]) not in jumped:
            chars += int(word_chars[i + n] - word_chars[i])
            jumped.update(range(i, i + n))
            resume = i + n
        else:
            remembered.add(k)
    return chars


def _dup_ngrams(d: Doc, c: GopherConfig) -> Checks:
    for n, limit in sorted(c.max_dup_ngram_chars.items()):
        chars = repeated_ngram_chars(d.grams(n), n, d.word_chars)
        yield at_most(f"dup_{n}gram_chars", ratio(chars, len(d.text)), f"max_dup_ngram_chars[{n}]", limit)


CHECKS: dict[str, Callable[[Doc, GopherConfig], Checks]] = {
    "gopher_word_count": _word_count,
    "gopher_mean_word_length": _mean_word_length,
    "gopher_hash_ratio": _hash_ratio,
    "gopher_ellipsis_ratio": _ellipsis_ratio,
    "gopher_bullet_lines": _bullet_lines,
    "gopher_ellipsis_lines": _ellipsis_lines,
    "gopher_alpha_words": _alpha_words,
    "gopher_stop_words": _stop_words,
    "gopher_dup_paragraphs": _dup_paragraphs,
    "gopher_dup_lines": _dup_lines,
    "gopher_top_ngrams": _top_ngrams,
    "gopher_dup_ngrams": _dup_ngrams,
}
assert tuple(CHECKS) == GOPHER
