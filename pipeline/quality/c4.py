"""C4's rules (Raffel et al. 2020; datatrove's C4QualityFilter for what the paper leaves open):
line cleaning in one pass over the lines, then document rules on the kept lines.

The line rules rewrite the text (in C4's order) and the rules after them judge the rewritten text,
which is what a kept document holds; each line rule counts the lines it dropped. A document left
with no line is removed by the last C4 line rule switched on (its detail lists what each dropped).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, NamedTuple

import regex
from pydantic import Field, model_validator

from pipeline.quality.checks import Check, Checks, at_least, at_most, count
from pipeline.stage import StageConfig

if TYPE_CHECKING:
    from pipeline.quality.doc import Doc

# Evaluation order.
C4 = (
    "c4_line_word_length",
    "c4_citations",
    "c4_line_punct",
    "c4_line_words",
    "c4_lorem_ipsum",
    "c4_line_javascript",
    "c4_curly_bracket",
    "c4_line_policy",
    "c4_min_sentences",
)
C4_LINE_RULES = (
    "c4_line_word_length",
    "c4_citations",
    "c4_line_punct",
    "c4_line_words",
    "c4_line_javascript",
    "c4_line_policy",
)
C4_END_PUNCTUATION = [".", "?", "!", '"', "'"]
C4_POLICY_PHRASES = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"]
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
# A sentence ends at Unicode sentence-terminal punctuation (with closing quotes or brackets) followed
# by a space and more text; spaCy's sentencizer, which datatrove counts C4 sentences with, does the
# same except after abbreviations its tokenizer knows ("Mr.", "U.S.").
_SENTENCE_BREAK = regex.compile(r"\p{Sentence_Terminal}+[\"'”’)\]]*\s+(?=\S)")


class C4Config(StageConfig):
    """Thresholds of C4's rules (quality.c4); which rules run is quality.rules."""

    max_word_length: int = Field(
        1000, ge=1, description="c4_line_word_length: longest word a kept line may hold, in characters."
    )
    end_punctuation: list[str] = Field(
        default_factory=lambda: list(C4_END_PUNCTUATION),
        description="c4_line_punct: what a kept line must end with ('...' never counts).",
    )
    min_words_per_line: int = Field(
        3, ge=0, description="c4_line_words: fewest whitespace-separated words a kept line may have."
    )
    policy_phrases: list[str] = Field(
        default_factory=lambda: list(C4_POLICY_PHRASES),
        description="c4_line_policy: lowercase phrases that mark a boilerplate line.",
    )
    min_sentences: int = Field(5, ge=0, description="c4_min_sentences: fewest sentences the kept lines must hold.")

    @model_validator(mode="after")
    def _no_empty_strings(self) -> "C4Config":
        for name in ("end_punctuation", "policy_phrases"):
            if any(not s for s in getattr(self, name)):
                raise ValueError(f"{name} must not hold an empty string (it would match every line)")
        return self


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


def c4_lines(text: str, c: C4Config, on: frozenset[str]) -> C4Lines:
    """One pass over the lines in C4's order: each line is stripped, dropped by the first line rule
    it fails, otherwise kept (citation marks cut); document flags are read off kept lines only."""
    dropped = dict.fromkeys((r for r in C4_LINE_RULES if r in on and r != "c4_citations"), 0)
    end = tuple(c.end_punctuation)
    kept, citations, sentences, lorem, curly = [], 0, 0, False, False
    lines = text.splitlines()
    for line in lines:
        line = line.strip()
        ws = line.split()
        if "c4_line_word_length" in on and any(len(w) > c.max_word_length for w in ws):
            dropped["c4_line_word_length"] += 1
            continue
        if "c4_citations" in on:
            line, n = _CITATION.subn("", line)
            citations += n
        if "c4_line_punct" in on and (not line.endswith(end) or line.endswith("...")):
            dropped["c4_line_punct"] += 1
            continue
        if "c4_line_words" in on and len(ws) < c.min_words_per_line:
            dropped["c4_line_words"] += 1
            continue
        low = line.lower()
        lorem = lorem or "lorem ipsum" in low
        if "c4_line_javascript" in on and "javascript" in low:
            dropped["c4_line_javascript"] += 1
            continue
        curly = curly or "{" in line
        if "c4_line_policy" in on and any(p in low for p in c.policy_phrases):
            dropped["c4_line_policy"] += 1
            continue
        sentences += len(_SENTENCE_BREAK.findall(line)) + 1 if line else 0
        kept.append(line)
    return C4Lines("\n".join(kept).strip(), len(lines), len(kept), dropped, citations, lorem, curly, sentences)


def _line_rule(rule: str) -> Callable[[Doc, C4Config], Checks]:
    """A C4 line rule: how many lines it dropped, and (for the last one switched on) whether any
    line is left at all."""

    def checks(d: Doc, c: C4Config) -> Checks:
        r = d.c4
        if rule == "c4_citations":
            yield count("c4_citations", r.citations)
        else:
            yield count(f"{rule}_lines", r.dropped[rule])
        if rule == [x for x in C4_LINE_RULES if x in d.on][-1]:
            note = ", ".join(f"{k} dropped {v}" for k, v in r.dropped.items())
            yield Check("lines_kept", r.lines_kept, 1, "a line", False, f"of {r.lines_in}: {note}")

    return checks


def _lorem_ipsum(d: Doc, c: C4Config) -> Checks:
    yield at_most("lorem_ipsum", int(d.c4.lorem_ipsum), "allowed", 0)


def _curly_bracket(d: Doc, c: C4Config) -> Checks:
    yield at_most("curly_bracket", int(d.c4.curly_bracket), "allowed", 0)


def _min_sentences(d: Doc, c: C4Config) -> Checks:
    # "c4_min_sentences": the name removal details have always shown
    yield at_least("sentences", d.c4.sentences, "c4_min_sentences", c.min_sentences)


CHECKS: dict[str, Callable[[Doc, C4Config], Checks]] = {
    **{rule: _line_rule(rule) for rule in C4_LINE_RULES},
    "c4_lorem_ipsum": _lorem_ipsum,
    "c4_curly_bracket": _curly_bracket,
    "c4_min_sentences": _min_sentences,
}
CHECKS = {rule: CHECKS[rule] for rule in C4}  # evaluation order
