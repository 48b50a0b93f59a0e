"""Word splitting and text normalization shared by the dedup and quality stages.

Both are single regex passes in C: the stages call them once per document and share the result.
"""

from __future__ import annotations

import re

# Anything that is neither a word character nor whitespace: punctuation and symbols (Unicode-aware).
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
# A word: from the first to the last letter or digit of a whitespace-separated token, so
# "(hello," -> "hello" and "don't" -> "don't"; tokens with no letter or digit ("|", "--") give none.
_WORD = re.compile(r"[^\W_](?:\S*[^\W_])?")
_LETTER = re.compile(r"[^\W\d_]")


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = True,
              fold_whitespace: bool = True) -> str:
    """Canonical form for duplicate detection: texts that differ only in case, punctuation or
    spacing compare equal. Punctuation becomes a space, so "end.Start" stays two words."""
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    if fold_whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text


def tokens(text: str) -> list[str]:
    """Whitespace-separated tokens, symbols and numbers included."""
    return text.split()


def words(text: str) -> list[str]:
    """Tokens holding at least one letter or digit, with leading and trailing punctuation cut."""
    return _WORD.findall(text)


def has_letter(token: str) -> bool:
    return _LETTER.search(token) is not None


def word_ngrams(ws: list[str], n: int) -> list[str]:
    """Word n-grams joined by a space; a text shorter than n words is one shingle (none if empty)."""
    if len(ws) < n:
        return [" ".join(ws)] if ws else []
    return [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]
