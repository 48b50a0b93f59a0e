"""Gopher quality rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights
from Training Gopher", appendix A), with the published thresholds as defaults (the same as
datatrove's GopherQualityFilter).

Rules run in this fixed order, cheap ones first, and a document is removed by the first one it
fails (its reason); a rule left out of `QualityConfig.rules` is off:

    gopher_word_count        50 <= words <= 100,000
    gopher_mean_word_length  3 <= mean characters per word <= 10
    gopher_hash_ratio        '#' per word <= 0.1
    gopher_ellipsis_ratio    ('...' or '…') per word <= 0.1
    gopher_bullet_lines      <= 90% of lines start with a bullet point
    gopher_ellipsis_lines    <= 30% of lines end with an ellipsis
    gopher_alpha_words       >= 80% of whitespace tokens hold a letter
    gopher_stop_words        >= 2 occurrences of the, be, to, of, and, that, have, with
    fineweb_line_punct       >= 12% of lines end with terminal punctuation (. ! ? " ')
    fineweb_short_lines      <= 67% of lines are 30 characters or shorter
    fineweb_dup_line_chars   lines that repeat an earlier line hold <= 1% of the characters
    fineweb_newline_ratio    <= 0.3 line breaks per word
    gopher_dup_paragraphs    <= 30% of paragraphs repeat an earlier one, and they hold <= 20% of the characters
    gopher_dup_lines         <= 30% of lines repeat an earlier line, and they hold <= 20% of the characters
    gopher_top_ngrams        the most frequent word 2/3/4-gram covers <= 20/18/16% of the characters
    gopher_dup_ngrams        word 5..10-grams that repeat cover <= 15/14/13/12/11/10% of the characters

The fineweb_ rules are FineWeb's own (Penedo et al. 2024; datatrove's FineWebQualityFilter
defaults), off by default (QualityConfig.rules) because hard-wrapped text fails them; the last four are Gopher's repetition rules (table A1), cheapest first. Paragraphs are separated by
blank lines. Character shares are of the whole text: a repeated line or paragraph counts its own
length; an n-gram counts its words' characters (spaces left out), once per occurrence for the top
n-gram and, for repeated n-grams, once per repeated occurrence that does not overlap the previous
counted one (so a long repeated passage is not counted n times).

A "word" is a whitespace token holding a letter or digit, trimmed of leading and trailing
punctuation (pipeline.text.words); symbol-only tokens ("|", "--") are not words, but they are
tokens, so they count against gopher_alpha_words. Lines are non-blank lines. Words are split once
per document and shared by every rule.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cached_property
from typing import Callable, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from pipeline.stage import ShardResult, StageConfig, split_by_reason
from pipeline.text import has_letter, tokens, words

Rule = Literal["gopher_word_count", "gopher_mean_word_length", "gopher_hash_ratio", "gopher_ellipsis_ratio",
               "gopher_bullet_lines", "gopher_ellipsis_lines", "gopher_alpha_words", "gopher_stop_words",
               "fineweb_line_punct", "fineweb_short_lines", "fineweb_dup_line_chars", "fineweb_newline_ratio",
               "gopher_dup_paragraphs", "gopher_dup_lines", "gopher_top_ngrams", "gopher_dup_ngrams"]
RULES: tuple[str, ...] = Rule.__args__  # the evaluation order
GOPHER_REPETITION = ("gopher_dup_paragraphs", "gopher_dup_lines", "gopher_top_ngrams", "gopher_dup_ngrams")
FINEWEB = ("fineweb_line_punct", "fineweb_short_lines", "fineweb_dup_line_chars", "fineweb_newline_ratio")
GOPHER_QUALITY = tuple(r for r in RULES if r not in GOPHER_REPETITION + FINEWEB)
TERMINAL_PUNCTUATION = [".", "!", "?", '"', "'"]
# FineWeb's line rules remove hard-wrapped prose (a Gutenberg window has ~10% of its lines ending a
# sentence): off until they are switched on for web text.
DEFAULT_RULES = tuple(r for r in RULES if r not in FINEWEB)

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ["•", "●", "○", "◦", "▪", "‣", "·", "-", "*"]
ELLIPSES = ("...", "…")
TOP_NGRAM_MAX_CHARS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_MAX_CHARS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class QualityConfig(StageConfig):
    rules: list[Rule] = Field(default_factory=lambda: list(DEFAULT_RULES),
                              description="Rules to apply; leave a rule out to switch it off. They always run in "
                                          "the documented order (" + ", ".join(RULES) + "). FineWeb's rules are "
                                          "off by default: they judge lines, and hard-wrapped text (books, "
                                          "mail) fails them.")
    min_words: int = Field(50, ge=0, description="gopher_word_count: fewest words a document may have.")
    max_words: int = Field(100_000, ge=0, description="gopher_word_count: most words a document may have.")
    min_mean_word_length: float = Field(3.0, ge=0, description="gopher_mean_word_length: lowest mean word "
                                                                "length, in characters.")
    max_mean_word_length: float = Field(10.0, ge=0, description="gopher_mean_word_length: highest mean word "
                                                                 "length, in characters.")
    max_hash_ratio: float = Field(0.1, ge=0, description="gopher_hash_ratio: most '#' characters per word.")
    max_ellipsis_ratio: float = Field(0.1, ge=0, description="gopher_ellipsis_ratio: most ellipses ('...' or "
                                                              "'…') per word.")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="gopher_bullet_lines: largest share of "
                                                                        "lines that may start with a bullet.")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="gopher_ellipsis_lines: largest share "
                                                                          "of lines that may end with an ellipsis.")
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="gopher_alpha_words: smallest share of "
                                                                       "tokens that must hold a letter.")
    min_stop_words: int = Field(2, ge=0, description="gopher_stop_words: fewest occurrences of stop words.")
    stop_words: list[str] = Field(default_factory=lambda: list(GOPHER_STOP_WORDS),
                                  description="gopher_stop_words: the words counted (matched lowercased).")
    min_line_punct_ratio: float = Field(0.12, ge=0, le=1, description="fineweb_line_punct: smallest share of lines "
                                                                      "that must end with terminal punctuation.")
    terminal_punctuation: list[str] = Field(default_factory=lambda: list(TERMINAL_PUNCTUATION),
                                            description="fineweb_line_punct: what a line may end with.")
    max_short_lines_ratio: float = Field(0.67, ge=0, le=1, description="fineweb_short_lines: largest share of "
                                                                       "short lines.")
    short_line_chars: int = Field(30, ge=0, description="fineweb_short_lines: a line this long or shorter is short.")
    max_dup_line_chars: float = Field(0.01, ge=0, le=1, description="fineweb_dup_line_chars: largest share of the "
                                                                    "characters lines repeating an earlier line "
                                                                    "may hold.")
    max_newline_ratio: float = Field(0.3, ge=0, description="fineweb_newline_ratio: most line breaks per word.")
    max_dup_lines_ratio: float = Field(0.3, ge=0, le=1, description="gopher_dup_lines: largest share of lines "
                                                                    "that may repeat an earlier line.")
    max_dup_lines_chars: float = Field(0.2, ge=0, le=1, description="gopher_dup_lines: largest share of the "
                                                                    "characters repeated lines may hold.")
    max_dup_paragraphs_ratio: float = Field(0.3, ge=0, le=1, description="gopher_dup_paragraphs: largest share of "
                                                                         "paragraphs that may repeat an earlier one.")
    max_dup_paragraphs_chars: float = Field(0.2, ge=0, le=1, description="gopher_dup_paragraphs: largest share of "
                                                                         "the characters repeated paragraphs may hold.")
    max_top_ngram_chars: dict[int, float] = Field(default_factory=lambda: dict(TOP_NGRAM_MAX_CHARS),
                                                  description="gopher_top_ngrams: n -> largest share of the characters "
                                                              "the most frequent word n-gram may cover.")
    max_dup_ngram_chars: dict[int, float] = Field(default_factory=lambda: dict(DUP_NGRAM_MAX_CHARS),
                                                  description="gopher_dup_ngrams: n -> largest share of the characters "
                                                              "repeated word n-grams may cover.")
    bullets: list[str] = Field(default_factory=lambda: list(BULLETS),
                               description="gopher_bullet_lines: prefixes that mark a bullet line "
                                           "(after leading spaces).")

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"rules lists a rule twice: {v}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "QualityConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"min_mean_word_length {self.min_mean_word_length} > "
                             f"max_mean_word_length {self.max_mean_word_length}")
        if any(not b for b in self.bullets):
            raise ValueError("bullets must not hold an empty string (every line would be a bullet)")
        return self


class Doc:
    """One document's text, split lazily and at most once, shared by all rules."""

    def __init__(self, text: str):
        self.text = text

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
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _PARAGRAPH_BREAK.split(self.text) if p.strip()]

    @cached_property
    def line_repeats(self) -> tuple[int, int]:
        """(lines repeating an earlier line, their characters): two rules read it."""
        return _repeats(self.lines)


def _ratio(n: int, d: int) -> float:
    return n / d if d else 0.0


# Each rule: (doc, config) -> detail string when it fails, None when it passes.

def _word_count(d: Doc, c: QualityConfig) -> str | None:
    n = len(d.words)
    if n < c.min_words:
        return f"words={n} < min_words={c.min_words}"
    if n > c.max_words:
        return f"words={n} > max_words={c.max_words}"
    return None


def _mean_word_length(d: Doc, c: QualityConfig) -> str | None:
    mean = _ratio(sum(map(len, d.words)), len(d.words))
    if mean < c.min_mean_word_length:
        return f"mean_word_length={mean:.3f} < min_mean_word_length={c.min_mean_word_length}"
    if mean > c.max_mean_word_length:
        return f"mean_word_length={mean:.3f} > max_mean_word_length={c.max_mean_word_length}"
    return None


def _symbol_ratio(d: Doc, count: int, limit: float, name: str) -> str | None:
    ratio = count / max(len(d.words), 1)
    return f"{name}={ratio:.3f} > max_{name}={limit}" if ratio > limit else None


def _hash_ratio(d: Doc, c: QualityConfig) -> str | None:
    return _symbol_ratio(d, d.text.count("#"), c.max_hash_ratio, "hash_ratio")


def _ellipsis_ratio(d: Doc, c: QualityConfig) -> str | None:
    return _symbol_ratio(d, sum(d.text.count(e) for e in ELLIPSES), c.max_ellipsis_ratio, "ellipsis_ratio")


def _bullet_lines(d: Doc, c: QualityConfig) -> str | None:
    marks = tuple(c.bullets)
    ratio = _ratio(sum(line.startswith(marks) for line in d.lines), len(d.lines))
    if ratio > c.max_bullet_lines_ratio:
        return f"bullet_lines_ratio={ratio:.3f} > max_bullet_lines_ratio={c.max_bullet_lines_ratio}"
    return None


def _ellipsis_lines(d: Doc, c: QualityConfig) -> str | None:
    ratio = _ratio(sum(line.endswith(ELLIPSES) for line in d.lines), len(d.lines))
    if ratio > c.max_ellipsis_lines_ratio:
        return f"ellipsis_lines_ratio={ratio:.3f} > max_ellipsis_lines_ratio={c.max_ellipsis_lines_ratio}"
    return None


def _alpha_words(d: Doc, c: QualityConfig) -> str | None:
    ratio = _ratio(sum(map(has_letter, d.tokens)), len(d.tokens))
    if ratio < c.min_alpha_words_ratio:
        return f"alpha_words_ratio={ratio:.3f} < min_alpha_words_ratio={c.min_alpha_words_ratio}"
    return None


def _stop_words(d: Doc, c: QualityConfig) -> str | None:
    stop, n = frozenset(c.stop_words), 0
    for w in d.words:
        if w.lower() in stop:
            n += 1
            if n >= c.min_stop_words:
                return None
    return f"stop_words={n} < min_stop_words={c.min_stop_words}" if n < c.min_stop_words else None


def _line_punct(d: Doc, c: QualityConfig) -> str | None:
    ratio = _ratio(sum(line.endswith(tuple(c.terminal_punctuation)) for line in d.lines), len(d.lines))
    if ratio < c.min_line_punct_ratio:
        return f"line_punct_ratio={ratio:.3f} < min_line_punct_ratio={c.min_line_punct_ratio}"
    return None


def _short_lines(d: Doc, c: QualityConfig) -> str | None:
    ratio = _ratio(sum(len(line) <= c.short_line_chars for line in d.lines), len(d.lines))
    if ratio > c.max_short_lines_ratio:
        return f"short_lines_ratio={ratio:.3f} > max_short_lines_ratio={c.max_short_lines_ratio}"
    return None


def _dup_line_chars(d: Doc, c: QualityConfig) -> str | None:
    share = _ratio(d.line_repeats[1], len(d.text))
    return f"dup_line_chars={share:.3f} > max_dup_line_chars={c.max_dup_line_chars}" if share > c.max_dup_line_chars \
        else None


def _newline_ratio(d: Doc, c: QualityConfig) -> str | None:
    ratio = d.text.count("\n") / max(len(d.words), 1)
    return f"newline_ratio={ratio:.3f} > max_newline_ratio={c.max_newline_ratio}" if ratio > c.max_newline_ratio \
        else None


def _repeats(parts: list[str]) -> tuple[int, int]:
    """How many parts repeat an earlier part, and their characters."""
    seen: set[str] = set()
    n = chars = 0
    for part in parts:
        if part in seen:
            n, chars = n + 1, chars + len(part)
        else:
            seen.add(part)
    return n, chars


def _dup_parts(repeats: tuple[int, int], parts: int, text: str, max_ratio: float, max_chars: float,
               name: str) -> str | None:
    n, chars = repeats
    ratio, share = _ratio(n, parts), _ratio(chars, len(text))
    if ratio > max_ratio:
        return f"dup_{name}_ratio={ratio:.3f} > max_dup_{name}_ratio={max_ratio}"
    if share > max_chars:
        return f"dup_{name}_chars={share:.3f} > max_dup_{name}_chars={max_chars}"
    return None


def _dup_lines(d: Doc, c: QualityConfig) -> str | None:
    return _dup_parts(d.line_repeats, len(d.lines), d.text, c.max_dup_lines_ratio, c.max_dup_lines_chars, "lines")


def _dup_paragraphs(d: Doc, c: QualityConfig) -> str | None:
    return _dup_parts(_repeats(d.paragraphs), len(d.paragraphs), d.text, c.max_dup_paragraphs_ratio,
                      c.max_dup_paragraphs_chars, "paragraphs")


def _ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(ws[i:] for i in range(n))))


def _top_ngrams(d: Doc, c: QualityConfig) -> str | None:
    for n, limit in sorted(c.max_top_ngram_chars.items()):
        grams = _ngrams(d.words, n)
        if not grams:
            continue
        top, count = Counter(grams).most_common(1)[0]
        share = _ratio(sum(map(len, top)) * count, len(d.text))
        if share > limit:
            return f"top_{n}gram_chars={share:.3f} > max={limit}"
    return None


def _dup_ngrams(d: Doc, c: QualityConfig) -> str | None:
    for n, limit in sorted(c.max_dup_ngram_chars.items()):
        grams, seen, chars, i = _ngrams(d.words, n), set(), 0, 0
        while i < len(grams):
            if grams[i] in seen:  # count this occurrence, then skip past it (no overlapping counts)
                chars += sum(map(len, grams[i]))
                i += n
            else:
                seen.add(grams[i])
                i += 1
        share = _ratio(chars, len(d.text))
        if share > limit:
            return f"dup_{n}gram_chars={share:.3f} > max={limit}"
    return None


CHECKS: dict[str, Callable[[Doc, QualityConfig], str | None]] = {
    "gopher_word_count": _word_count,
    "gopher_mean_word_length": _mean_word_length,
    "gopher_hash_ratio": _hash_ratio,
    "gopher_ellipsis_ratio": _ellipsis_ratio,
    "gopher_bullet_lines": _bullet_lines,
    "gopher_ellipsis_lines": _ellipsis_lines,
    "gopher_alpha_words": _alpha_words,
    "gopher_stop_words": _stop_words,
    "fineweb_line_punct": _line_punct,
    "fineweb_short_lines": _short_lines,
    "fineweb_dup_line_chars": _dup_line_chars,
    "fineweb_newline_ratio": _newline_ratio,
    "gopher_dup_paragraphs": _dup_paragraphs,
    "gopher_dup_lines": _dup_lines,
    "gopher_top_ngrams": _top_ngrams,
    "gopher_dup_ngrams": _dup_ngrams,
}
assert tuple(CHECKS) == RULES


def enabled(config: QualityConfig) -> list[str]:
    """The configured rules, in evaluation order."""
    on = set(config.rules)
    return [r for r in RULES if r in on]


def evaluate(text: str, config: QualityConfig) -> dict[str, str | None]:
    """Every enabled rule's verdict on one text (failure detail, or None when it passes), without
    stopping at the first failure: for reports and for tuning thresholds."""
    doc = Doc(text)
    return {rule: CHECKS[rule](doc, config) for rule in enabled(config)}


def filter_quality(table: pa.Table, config: QualityConfig) -> ShardResult:
    """Remove documents failing a rule; reason = the first failing rule, detail = value vs threshold.

    Extra counts: rules[rule] = {checked: documents that reached the rule, failed: removed by it}.
    """
    if "text" not in table.column_names:
        raise ValueError(f"filter_quality: the table has no 'text' column (columns: {table.column_names})")
    rules = enabled(config)
    checked, failed = dict.fromkeys(rules, 0), dict.fromkeys(rules, 0)
    reasons, details = [], []
    for text in table.column("text").to_pylist():
        doc, reason, detail = Doc(text or ""), None, None
        for rule in rules:
            checked[rule] += 1
            detail = CHECKS[rule](doc, config)
            if detail is not None:
                reason = rule
                failed[rule] += 1
                break
        reasons.append(reason)
        details.append(detail)
    counts = {"rules": {r: {"checked": checked[r], "failed": failed[r]} for r in rules}}
    return split_by_reason(table, reasons, details, counts)
