"""FineWeb's own rules (Penedo et al. 2024; datatrove's FineWebQualityFilter), which run last and
judge the text C4's line cleaning left. They read the lines as they are (not stripped) and divide
by the characters other than line breaks, as datatrove does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import regex
from pydantic import Field

from pipeline.quality.checks import Checks, at_least, at_most, ratio, repeats
from pipeline.stage import StageConfig

if TYPE_CHECKING:
    from pipeline.quality.doc import Doc

# Evaluation order.
FINEWEB = ("fineweb_line_punct", "fineweb_short_lines", "fineweb_dup_line_chars", "fineweb_newline_ratio")
_STERM = regex.compile(r"\p{Sentence_Terminal}")


class FineWebConfig(StageConfig):
    """Thresholds of FineWeb's rules (quality.fineweb); which rules run is quality.rules."""

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


def _line_punct(d: Doc, c: FineWebConfig) -> Checks:
    value = ratio(sum(_STERM.match(line[-1]) is not None for line in d.raw_lines), len(d.raw_lines))
    yield at_least("line_punct_ratio", value, "min_line_punct_ratio", c.min_line_punct_ratio)


def _short_lines(d: Doc, c: FineWebConfig) -> Checks:
    value = ratio(sum(len(line) <= c.short_line_chars for line in d.raw_lines), len(d.raw_lines))
    yield at_most("short_lines_ratio", value, "max_short_lines_ratio", c.max_short_lines_ratio)


def _dup_line_chars(d: Doc, c: FineWebConfig) -> Checks:
    share = ratio(repeats(d.raw_lines)[1], len(d.text) - d.text.count("\n"))
    yield at_most("dup_line_chars", share, "max_dup_line_chars", c.max_dup_line_chars)


def _newline_ratio(d: Doc, c: FineWebConfig) -> Checks:
    value = d.text.count("\n") / max(len(d.words), 1)
    yield at_most("newline_ratio", value, "max_newline_ratio", c.max_newline_ratio)


CHECKS: dict[str, Callable[[Doc, FineWebConfig], Checks]] = {
    "fineweb_line_punct": _line_punct,
    "fineweb_short_lines": _short_lines,
    "fineweb_dup_line_chars": _dup_line_chars,
    "fineweb_newline_ratio": _newline_ratio,
}
assert tuple(CHECKS) == FINEWEB
