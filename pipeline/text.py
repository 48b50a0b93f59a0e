"""Word splitting and text normalization shared by the dedup and quality stages.

Regex passes in C: quality calls them once per document and shares the result; dedup normalizes
a whole Arrow column at once.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Punctuation and symbols (RE2, Unicode-aware): anything not a letter, digit, mark, "_" or space.
_PUNCT_RE2 = r"[^\pL\pN\pM_\s]+"
# A word: from the first to the last letter or digit of a whitespace-separated token, so
# "(hello," -> "hello" and "don't" -> "don't"; tokens with no letter or digit ("|", "--") give none.
_WORD = re.compile(r"[^\W_](?:\S*[^\W_])?")
# A whitespace token holding a letter (not a digit or "_").
_TOKEN_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")


def normalize_texts(
    texts: pa.Array, lowercase: bool = True, strip_punctuation: bool = True, fold_whitespace: bool = True
) -> tuple[pa.Array, pa.ListArray]:
    """Canonical forms for duplicate detection, a whole column at once (Arrow kernels, no Python
    loop per document), and each form's words. Texts that differ only in case, punctuation or
    spacing get the same form. Punctuation and symbols become a space, so "end.Start" stays two
    words; letters, digits, combining marks and "_" are kept."""
    if lowercase:
        texts = pc.utf8_lower(texts)
    if strip_punctuation:
        texts = pc.replace_substring_regex(texts, _PUNCT_RE2, " ")
    # after strip_punctuation only ASCII spaces are left (RE2's \s), and Arrow's ASCII split is faster
    ws = split_whitespace(texts, ascii_only=strip_punctuation)
    if fold_whitespace:
        texts = pc.binary_join(ws, " ")  # the words joined by single spaces: same as folding runs
    return texts, ws


def split_whitespace(texts: pa.Array, ascii_only: bool = False) -> pa.ListArray:
    """Each text's whitespace-separated tokens, like str.split() (Arrow's kernel gives an empty
    token at every extra whitespace character; they are dropped here). `ascii_only` when the
    texts hold no other whitespace than ASCII's."""
    parts = (pc.ascii_split_whitespace if ascii_only else pc.utf8_split_whitespace)(texts)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    flat = parts.flatten()
    keep = pc.not_equal(pc.binary_length(flat), 0)
    kept_before = np.concatenate([[0], np.cumsum(keep.to_numpy(zero_copy_only=False), dtype=np.int64)])
    offsets = kept_before[parts.offsets.to_numpy()]
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat.filter(keep))


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = True, fold_whitespace: bool = True) -> str:
    """normalize_texts for one text."""
    return normalize_texts(pa.array([text], pa.string()), lowercase, strip_punctuation, fold_whitespace)[0][0].as_py()


def tokens(text: str) -> list[str]:
    """Whitespace-separated tokens, symbols and numbers included."""
    return text.split()


def words(text: str) -> list[str]:
    """Tokens holding at least one letter or digit, with leading and trailing punctuation cut."""
    return _WORD.findall(text)


def count_tokens_with_letter(text: str) -> int:
    """Whitespace tokens holding at least one letter, counted in one regex pass."""
    return len(_TOKEN_WITH_LETTER.findall(text))


def word_ngrams(ws: list[str], n: int) -> list[str]:
    """Word n-grams joined by a space; a text shorter than n words is one shingle (none if empty)."""
    if len(ws) < n:
        return [" ".join(ws)] if ws else []
    return [" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)]
