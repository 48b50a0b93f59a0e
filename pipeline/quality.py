"""Quality rules from the published recipes, with their published thresholds as defaults:
Gopher's quality and repetition rules (Rae et al. 2021, appendix A; datatrove's
GopherQualityFilter and GopherRepetitionFilter), C4's rules (Raffel et al. 2020; datatrove's
C4QualityFilter) and FineWeb's own rules (Penedo et al. 2024; datatrove's FineWebQualityFilter).

Rules run in this fixed order: a size guard, then Gopher's cheap counts, Gopher's repetition rules,
C4, FineWeb (FineWeb's recipe runs C4 after Gopher and FineWeb last). A document is removed by the
first rule it fails (its reason); a rule left out of `QualityConfig.rules` is off:

    doc_max_chars            <= 2,000,000 characters (a guard: bounds the work one document costs)
    gopher_word_count        50 <= words <= 100,000
    gopher_mean_word_length  3 <= mean characters per word <= 10
    gopher_hash_ratio        '#' per word <= 0.1
    gopher_ellipsis_ratio    ('...' or '…') per word <= 0.1
    gopher_bullet_lines      <= 90% of lines start with a bullet point
    gopher_ellipsis_lines    <= 30% of lines end with an ellipsis
    gopher_alpha_words       >= 80% of whitespace tokens hold a letter
    gopher_stop_words        >= 2 of the words the, be, to, of, and, that, have, with (any case)
    gopher_dup_paragraphs    <= 30% of paragraphs repeat an earlier one, and they hold <= 20% of the characters
    gopher_dup_lines         <= 30% of lines repeat an earlier line, and they hold <= 20% of the characters
    gopher_top_ngrams        the most frequent word 2/3/4-gram covers <= 20/18/16% of the characters
    gopher_dup_ngrams        word 5..10-grams that repeat cover <= 15/14/13/12/11/10% of the characters
    c4_line_word_length      line cleaning: drop lines holding a word over 1,000 characters
    c4_citations             line cleaning: strip Wikipedia citation marks ([1], [edit], [citation needed])
    c4_line_punct            line cleaning: drop lines not ending in . ? ! " ' (or ending in '...')
    c4_line_words            line cleaning: drop lines of fewer than 3 words
    c4_lorem_ipsum           remove documents where a kept line says "lorem ipsum"
    c4_line_javascript       line cleaning: drop lines that mention javascript
    c4_curly_bracket         remove documents where a kept line holds '{' (code)
    c4_line_policy           line cleaning: drop lines about cookies, terms of use, privacy policy
    c4_min_sentences         >= 5 sentences left in the kept lines
    fineweb_line_punct       >= 12% of lines end with a sentence terminal (Unicode Sentence_Terminal)
    fineweb_short_lines      <= 67% of lines are 30 characters or shorter
    fineweb_dup_line_chars   lines that repeat an earlier line hold <= 1% of the characters
    fineweb_newline_ratio    <= 0.3 line breaks per word

C4's line rules rewrite the text in one pass over its lines (in the order above, as C4 does) and
the rules after them judge the rewritten text, which is what a kept document holds; each line rule
counts the lines it dropped. A document left with no line is removed by the last C4 line rule
switched on (its detail lists what each one dropped). C4's and FineWeb's rules are off by default:
they judge lines, and hard-wrapped text (books, mail) fails them; FineWeb's recipe switches
c4_line_punct off and the rest on (`FINEWEB_RECIPE`).

Character shares are of the whole text: a repeated line or paragraph counts its own length; an
n-gram counts its words' characters (spaces left out), once per occurrence for the top n-gram and,
for repeated n-grams, once per repeated occurrence that does not overlap the previous counted one
(so a long repeated passage is not counted n times). FineWeb's line rules read the lines as they
are (not stripped) and divide by the characters other than line breaks, as datatrove does.

A "word" is a whitespace token holding a letter or digit, trimmed of leading and trailing
punctuation (pipeline.text.words); symbol-only tokens ("|", "--") are not words, but they are
tokens, so they count against gopher_alpha_words. Gopher's lines are stripped non-blank lines;
paragraphs are separated by blank lines. Words are split once per document and shared by all rules.

Every rule measures named signals (words, mean_word_length, ...). With `signals=True` nothing is
removed: every document is kept with its first failing rule (quality_reason, quality_detail) and
every signal of every enabled rule as a column (signal_<name>), RedPajama-v2 style, to filter later
in DuckDB or pandas: the rows whose quality_reason is null are exactly what filtering keeps (C4's
line cleaning included), the others exactly what it removes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import cached_property
from typing import Annotated, Callable, Iterator, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import regex
from pydantic import Field, field_validator, model_validator

from pipeline.stage import ShardResult, StageConfig, split_by_reason, text_kinds
from pipeline.text import count_tokens_with_letter, tokens, words

Rule = Literal[
    "doc_max_chars",
    "gopher_word_count",
    "gopher_mean_word_length",
    "gopher_hash_ratio",
    "gopher_ellipsis_ratio",
    "gopher_bullet_lines",
    "gopher_ellipsis_lines",
    "gopher_alpha_words",
    "gopher_stop_words",
    "gopher_dup_paragraphs",
    "gopher_dup_lines",
    "gopher_top_ngrams",
    "gopher_dup_ngrams",
    "c4_line_word_length",
    "c4_citations",
    "c4_line_punct",
    "c4_line_words",
    "c4_lorem_ipsum",
    "c4_line_javascript",
    "c4_curly_bracket",
    "c4_line_policy",
    "c4_min_sentences",
    "fineweb_line_punct",
    "fineweb_short_lines",
    "fineweb_dup_line_chars",
    "fineweb_newline_ratio",
]
RULES: tuple[str, ...] = Rule.__args__  # the evaluation order
GOPHER_REPETITION = ("gopher_dup_paragraphs", "gopher_dup_lines", "gopher_top_ngrams", "gopher_dup_ngrams")
GOPHER_QUALITY = tuple(r for r in RULES if r.startswith("gopher_") and r not in GOPHER_REPETITION)
C4 = tuple(r for r in RULES if r.startswith("c4_"))
C4_LINE_RULES = (
    "c4_line_word_length",
    "c4_citations",
    "c4_line_punct",
    "c4_line_words",
    "c4_line_javascript",
    "c4_line_policy",
)
FINEWEB = tuple(r for r in RULES if r.startswith("fineweb_"))
# What runs by default: C4's and FineWeb's line rules would cut hard-wrapped books to pieces.
DEFAULT_RULES = ("doc_max_chars",) + GOPHER_QUALITY + GOPHER_REPETITION
# FineWeb's recipe (datatrove's FineWeb example): Gopher, C4 without its line punctuation rule, FineWeb.
FINEWEB_RECIPE = DEFAULT_RULES + tuple(r for r in C4 if r != "c4_line_punct") + FINEWEB

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ["•", "●", "○", "◦", "▪", "‣", "·", "-", "*"]
ELLIPSES = ("...", "…")
TOP_NGRAM_MAX_CHARS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_MAX_CHARS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
# n -> a share of the characters, in the two n-gram rules
NgramShares = dict[Annotated[int, Field(ge=1, le=100)], Annotated[float, Field(ge=0, le=1)]]
C4_END_PUNCTUATION = [".", "?", "!", '"', "'"]
C4_POLICY_PHRASES = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"]
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
# A sentence ends at Unicode sentence-terminal punctuation (with closing quotes or brackets) followed
# by a space and more text; spaCy's sentencizer, which datatrove counts C4 sentences with, does the
# same except after abbreviations its tokenizer knows ("Mr.", "U.S.").
_SENTENCE_BREAK = regex.compile(r"\p{Sentence_Terminal}+[\"'”’)\]]*\s+(?=\S)")
_STERM = regex.compile(r"\p{Sentence_Terminal}")


class QualityConfig(StageConfig):
    rules: list[Rule] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="Rules to apply; leave a rule out to switch it off. They always run in "
        "the documented order (" + ", ".join(RULES) + "). C4's and FineWeb's "
        "rules are off by default: they judge lines, and hard-wrapped text "
        "(books, mail) fails them.",
    )
    signals: bool = Field(
        False,
        description="Keep every document and write each enabled rule's signals as "
        "columns (signal_<name>) plus quality_reason/quality_detail (the first "
        "failing rule), to filter later; nothing is removed.",
    )
    max_doc_chars: int = Field(
        2_000_000,
        ge=1,
        description="doc_max_chars: longest text, in characters, that is "
        "judged at all (longer ones are removed unread).",
    )
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
    c4_max_word_length: int = Field(
        1000, ge=1, description="c4_line_word_length: longest word a kept line may hold, in characters."
    )
    c4_end_punctuation: list[str] = Field(
        default_factory=lambda: list(C4_END_PUNCTUATION),
        description="c4_line_punct: what a kept line must end with ('...' never counts).",
    )
    c4_min_words_per_line: int = Field(
        3, ge=0, description="c4_line_words: fewest whitespace-separated words a kept line may have."
    )
    c4_policy_phrases: list[str] = Field(
        default_factory=lambda: list(C4_POLICY_PHRASES),
        description="c4_line_policy: lowercase phrases that mark a boilerplate line.",
    )
    c4_min_sentences: int = Field(5, ge=0, description="c4_min_sentences: fewest sentences the kept lines must hold.")
    min_line_punct_ratio: float = Field(
        0.12,
        ge=0,
        le=1,
        description="fineweb_line_punct: smallest share of lines that must end with a sentence terminal.",
    )
    max_short_lines_ratio: float = Field(
        0.67, ge=0, le=1, description="fineweb_short_lines: largest share of short lines."
    )
    short_line_chars: int = Field(30, ge=0, description="fineweb_short_lines: a line this long or shorter is short.")
    max_dup_line_chars: float = Field(
        0.01,
        ge=0,
        le=1,
        description="fineweb_dup_line_chars: largest share of the characters lines repeating an earlier line may hold.",
    )
    max_newline_ratio: float = Field(0.3, ge=0, description="fineweb_newline_ratio: most line breaks per word.")

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
            raise ValueError(
                f"min_mean_word_length {self.min_mean_word_length} > max_mean_word_length {self.max_mean_word_length}"
            )
        for name in ("bullets", "c4_end_punctuation", "c4_policy_phrases"):
            if any(not s for s in getattr(self, name)):
                raise ValueError(f"{name} must not hold an empty string (it would match every line)")
        return self


class Check(NamedTuple):
    """One measured signal against its limit: `upper` limits must not be exceeded, lower ones reached."""

    signal: str
    value: float
    limit: float
    field: str
    upper: bool
    note: str = ""

    def failed(self) -> bool:
        return self.value > self.limit if self.upper else self.value < self.limit

    def detail(self) -> str:
        value = f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)
        text = f"{self.signal}={value} {'>' if self.upper else '<'} {self.field}={self.limit}"
        return f"{text} ({self.note})" if self.note else text


def _at_most(signal: str, value: float, field: str, limit: float) -> Check:
    return Check(signal, value, limit, field, True)


def _at_least(signal: str, value: float, field: str, limit: float) -> Check:
    return Check(signal, value, limit, field, False)


def _count(signal: str, value: int) -> Check:
    """A signal with no limit: measured and reported, never failing."""
    return Check(signal, value, math.inf, "", True)


class C4Lines(NamedTuple):
    """What C4's line pass left of a document and why."""

    text: str
    lines_in: int
    lines_kept: int
    dropped: dict[str, int]  # line rule -> lines it dropped
    citations: int
    lorem_ipsum: bool
    curly_bracket: bool
    sentences: int


def c4_lines(text: str, c: QualityConfig, on: frozenset[str]) -> C4Lines:
    """One pass over the lines in C4's order: each line is stripped, dropped by the first line rule
    it fails, otherwise kept (citation marks cut); document flags are read off kept lines only."""
    dropped = dict.fromkeys((r for r in C4_LINE_RULES if r in on and r != "c4_citations"), 0)
    end = tuple(c.c4_end_punctuation)
    kept, citations, sentences, lorem, curly = [], 0, 0, False, False
    lines = text.splitlines()
    for line in lines:
        line = line.strip()
        ws = line.split()
        if "c4_line_word_length" in on and any(len(w) > c.c4_max_word_length for w in ws):
            dropped["c4_line_word_length"] += 1
            continue
        if "c4_citations" in on:
            line, n = _CITATION.subn("", line)
            citations += n
        if "c4_line_punct" in on and (not line.endswith(end) or line.endswith("...")):
            dropped["c4_line_punct"] += 1
            continue
        if "c4_line_words" in on and len(ws) < c.c4_min_words_per_line:
            dropped["c4_line_words"] += 1
            continue
        low = line.lower()
        lorem = lorem or "lorem ipsum" in low
        if "c4_line_javascript" in on and "javascript" in low:
            dropped["c4_line_javascript"] += 1
            continue
        curly = curly or "{" in line
        if "c4_line_policy" in on and any(p in low for p in c.c4_policy_phrases):
            dropped["c4_line_policy"] += 1
            continue
        sentences += len(_SENTENCE_BREAK.findall(line)) + 1 if line else 0
        kept.append(line)
    return C4Lines("\n".join(kept).strip(), len(lines), len(kept), dropped, citations, lorem, curly, sentences)


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
        return _repeats(self.lines)

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
        return c4_lines(self.text, self.config, self.on)

    @cached_property
    def after_c4(self) -> "Doc":
        """The document the rules after C4 judge: C4's kept lines when a line rule is on."""
        if not self.on.intersection(C4_LINE_RULES):
            return self
        return Doc(self.c4.text, self.config, self.on)


def _ratio(n: float, d: float) -> float:
    return n / d if d else 0.0


# Each rule: (doc, config) -> its checks, measured lazily so the filter can stop at the first failure.
Checks = Iterator[Check]


def _doc_max_chars(d: Doc, c: QualityConfig) -> Checks:
    yield _at_most("chars", len(d.text), "max_doc_chars", c.max_doc_chars)


def _word_count(d: Doc, c: QualityConfig) -> Checks:
    n = len(d.words)
    yield _at_least("words", n, "min_words", c.min_words)
    yield _at_most("words", n, "max_words", c.max_words)


def _mean_word_length(d: Doc, c: QualityConfig) -> Checks:
    mean = _ratio(sum(map(len, d.words)), len(d.words))
    yield _at_least("mean_word_length", mean, "min_mean_word_length", c.min_mean_word_length)
    yield _at_most("mean_word_length", mean, "max_mean_word_length", c.max_mean_word_length)


def _hash_ratio(d: Doc, c: QualityConfig) -> Checks:
    yield _at_most("hash_ratio", d.text.count("#") / max(len(d.words), 1), "max_hash_ratio", c.max_hash_ratio)


def _ellipsis_ratio(d: Doc, c: QualityConfig) -> Checks:
    ratio = sum(d.text.count(e) for e in ELLIPSES) / max(len(d.words), 1)
    yield _at_most("ellipsis_ratio", ratio, "max_ellipsis_ratio", c.max_ellipsis_ratio)


def _bullet_lines(d: Doc, c: QualityConfig) -> Checks:
    marks = tuple(c.bullets)
    ratio = _ratio(sum(line.startswith(marks) for line in d.lines), len(d.lines))
    yield _at_most("bullet_lines_ratio", ratio, "max_bullet_lines_ratio", c.max_bullet_lines_ratio)


def _ellipsis_lines(d: Doc, c: QualityConfig) -> Checks:
    ratio = _ratio(sum(line.endswith(ELLIPSES) for line in d.lines), len(d.lines))
    yield _at_most("ellipsis_lines_ratio", ratio, "max_ellipsis_lines_ratio", c.max_ellipsis_lines_ratio)


def _alpha_words(d: Doc, c: QualityConfig) -> Checks:
    ratio = _ratio(count_tokens_with_letter(d.text), len(d.tokens))
    yield _at_least("alpha_words_ratio", ratio, "min_alpha_words_ratio", c.min_alpha_words_ratio)


def _stop_words(d: Doc, c: QualityConfig) -> Checks:
    stop = frozenset(c.stop_words)
    n = len(stop.intersection(w.lower() for w in d.vocabulary))
    yield _at_least("stop_words", n, "min_stop_words", c.min_stop_words)


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


def _dup_parts(
    repeats: tuple[int, int], parts: int, text: str, max_ratio: float, max_chars: float, name: str
) -> Checks:
    n, chars = repeats
    yield _at_most(f"dup_{name}_ratio", _ratio(n, parts), f"max_dup_{name}_ratio", max_ratio)
    yield _at_most(f"dup_{name}_chars", _ratio(chars, len(text)), f"max_dup_{name}_chars", max_chars)


def _dup_lines(d: Doc, c: QualityConfig) -> Checks:
    return _dup_parts(d.line_repeats, len(d.lines), d.text, c.max_dup_lines_ratio, c.max_dup_lines_chars, "lines")


def _dup_paragraphs(d: Doc, c: QualityConfig) -> Checks:
    return _dup_parts(
        _repeats(d.paragraphs),
        len(d.paragraphs),
        d.text,
        c.max_dup_paragraphs_ratio,
        c.max_dup_paragraphs_chars,
        "paragraphs",
    )


def _top_ngrams(d: Doc, c: QualityConfig) -> Checks:
    for n, limit in sorted(c.max_top_ngram_chars.items()):
        grams, share = d.grams(n), 0.0
        if len(grams):
            counts = np.bincount(grams)
            first = np.full(len(counts), len(grams))
            np.minimum.at(first, grams, np.arange(len(grams)))
            tied = np.flatnonzero(counts == counts.max())
            at = int(first[tied].min())  # of equally frequent n-grams, the one seen first
            share = _ratio(int(d.word_chars[at + n] - d.word_chars[at]) * int(counts.max()), len(d.text))
        yield _at_most(f"top_{n}gram_chars", share, f"max_top_ngram_chars[{n}]", limit)


def _repeated_ngram_chars(grams: np.ndarray, n: int, word_chars: np.ndarray) -> int:
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


def _dup_ngrams(d: Doc, c: QualityConfig) -> Checks:
    for n, limit in sorted(c.max_dup_ngram_chars.items()):
        chars = _repeated_ngram_chars(d.grams(n), n, d.word_chars)
        yield _at_most(f"dup_{n}gram_chars", _ratio(chars, len(d.text)), f"max_dup_ngram_chars[{n}]", limit)


def _c4_line_rule(rule: str) -> Callable[[Doc, QualityConfig], Checks]:
    """A C4 line rule: how many lines it dropped, and (for the last one switched on) whether any
    line is left at all."""

    def checks(d: Doc, c: QualityConfig) -> Checks:
        r = d.c4
        if rule == "c4_citations":
            yield _count("c4_citations", r.citations)
        else:
            yield _count(f"{rule}_lines", r.dropped[rule])
        if rule == [x for x in C4_LINE_RULES if x in d.on][-1]:
            note = ", ".join(f"{k} dropped {v}" for k, v in r.dropped.items())
            yield Check("lines_kept", r.lines_kept, 1, "a line", False, f"of {r.lines_in}: {note}")

    return checks


def _c4_lorem_ipsum(d: Doc, c: QualityConfig) -> Checks:
    yield _at_most("lorem_ipsum", int(d.c4.lorem_ipsum), "allowed", 0)


def _c4_curly_bracket(d: Doc, c: QualityConfig) -> Checks:
    yield _at_most("curly_bracket", int(d.c4.curly_bracket), "allowed", 0)


def _c4_min_sentences(d: Doc, c: QualityConfig) -> Checks:
    yield _at_least("sentences", d.c4.sentences, "c4_min_sentences", c.c4_min_sentences)


def _line_punct(d: Doc, c: QualityConfig) -> Checks:
    ratio = _ratio(sum(_STERM.match(line[-1]) is not None for line in d.raw_lines), len(d.raw_lines))
    yield _at_least("line_punct_ratio", ratio, "min_line_punct_ratio", c.min_line_punct_ratio)


def _short_lines(d: Doc, c: QualityConfig) -> Checks:
    ratio = _ratio(sum(len(line) <= c.short_line_chars for line in d.raw_lines), len(d.raw_lines))
    yield _at_most("short_lines_ratio", ratio, "max_short_lines_ratio", c.max_short_lines_ratio)


def _dup_line_chars(d: Doc, c: QualityConfig) -> Checks:
    share = _ratio(_repeats(d.raw_lines)[1], len(d.text) - d.text.count("\n"))
    yield _at_most("dup_line_chars", share, "max_dup_line_chars", c.max_dup_line_chars)


def _newline_ratio(d: Doc, c: QualityConfig) -> Checks:
    ratio = d.text.count("\n") / max(len(d.words), 1)
    yield _at_most("newline_ratio", ratio, "max_newline_ratio", c.max_newline_ratio)


CHECKS: dict[str, Callable[[Doc, QualityConfig], Checks]] = {
    "doc_max_chars": _doc_max_chars,
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
    **{rule: _c4_line_rule(rule) for rule in C4_LINE_RULES},
    "c4_lorem_ipsum": _c4_lorem_ipsum,
    "c4_curly_bracket": _c4_curly_bracket,
    "c4_min_sentences": _c4_min_sentences,
    "fineweb_line_punct": _line_punct,
    "fineweb_short_lines": _short_lines,
    "fineweb_dup_line_chars": _dup_line_chars,
    "fineweb_newline_ratio": _newline_ratio,
}
CHECKS = {rule: CHECKS[rule] for rule in RULES}  # evaluation order
assert tuple(CHECKS) == RULES


def enabled(config: QualityConfig) -> list[str]:
    """The configured rules, in evaluation order."""
    on = set(config.rules)
    return [r for r in RULES if r in on]


def _judge(doc: Doc, rules: list[str], config: QualityConfig, every: bool):
    """Run the rules on one document. Yields (rule, check) in order; stops after the first failing
    check unless `every`. The rules after C4 see C4's kept lines."""
    for rule in rules:
        target = doc.after_c4 if rule.startswith("fineweb_") else doc
        for check in CHECKS[rule](target, config):
            yield rule, check
            if check.failed() and not every:
                return


def evaluate(text: str, config: QualityConfig) -> dict[str, str | None]:
    """Every enabled rule's verdict on one text (its first failure detail, or None when it passes),
    without stopping at a failing rule: for reports and for tuning thresholds."""
    rules = enabled(config)
    verdicts: dict[str, str | None] = dict.fromkeys(rules)
    for rule, check in _judge(Doc(text, config, frozenset(rules)), rules, config, every=True):
        if check.failed() and verdicts[rule] is None:
            verdicts[rule] = check.detail()
    return verdicts


def signal_names(config: QualityConfig) -> list[str]:
    """The signal columns the enabled rules write, in rule order (the same for every document)."""
    rules = enabled(config)
    checks = _judge(Doc("", config, frozenset(rules)), rules, config, every=True)
    return list(dict.fromkeys(check.signal for _, check in checks))


def filter_quality(table: pa.Table, config: QualityConfig) -> ShardResult:
    """Remove documents failing a rule; reason = the first failing rule, detail = value vs limit.
    With config.signals keep them all, with the reason, detail and signals as columns instead.

    Extra counts: rules[rule] = {checked: documents that reached the rule, failed: removed by it
    (flagged, with signals)}; c4_lines = lines read and dropped per C4 line rule, over the documents
    that reached C4; docs_non_english and docs_binary_like (pipeline.stage.text_kinds), which go
    through the rules like any text.
    """
    if "text" not in table.column_names:
        raise ValueError(f"filter_quality: the table has no 'text' column (columns: {table.column_names})")
    rules = enabled(config)
    on = frozenset(rules)
    checked, failed = dict.fromkeys(rules, 0), dict.fromkeys(rules, 0)
    rewrites = bool(on.intersection(C4_LINE_RULES))
    c4: Counter = Counter()
    names = signal_names(config) if config.signals else []
    columns: dict[str, list] = {name: [] for name in names}
    reasons, details, texts = [], [], []
    for text in table.column("text").to_pylist():
        doc, reason, detail, values, last = Doc(text or "", config, on), None, None, {}, None
        for rule, check in _judge(doc, rules, config, every=config.signals):
            if rule != last:
                checked[rule], last = checked[rule] + 1, rule
            values[check.signal] = check.value
            if reason is None and check.failed():
                reason, detail = rule, check.detail()
                failed[rule] += 1
        if rewrites and "c4" in doc.__dict__:  # C4's line pass ran on this document
            c4.update(lines_in=doc.c4.lines_in, c4_citations=doc.c4.citations, **doc.c4.dropped)
            if reason is None:  # removed (flagged) documents keep the text that was judged
                text = doc.c4.text
        reasons.append(reason)
        details.append(detail)
        texts.append(text or "")
        for name in names:
            columns[name].append(values.get(name))
    counts = {"rules": {r: {"checked": checked[r], "failed": failed[r]} for r in rules}, **text_kinds(table)}
    if rewrites:
        counts["c4_lines"] = {k: c4[k] for k in ("lines_in", *C4_LINE_RULES) if k == "lines_in" or k in on}
    table = table.set_column(table.column_names.index("text"), "text", pa.array(texts, pa.string()))
    if not config.signals:
        return split_by_reason(table, reasons, details, counts)
    counts["flagged"] = dict(sorted(Counter(r for r in reasons if r is not None).items()))
    result = split_by_reason(table, [None] * len(reasons), None, counts)
    kept = result.kept.append_column("quality_reason", pa.array(reasons, pa.string()))
    kept = kept.append_column("quality_detail", pa.array(details, pa.string()))
    for name in names:
        kept = kept.append_column(f"signal_{name}", pa.array(columns[name], pa.float64()))
    result.kept = kept
    return result
