"""The dedup benchmarks' corpus: real Gutenberg prose cut into documents, and near copies of some
with known edits. Shared by dedup_signatures.py and dedup_quality.py."""

from __future__ import annotations

import random
from pathlib import Path

from common import DATA

from tests.fixtures.corpora import GUTENBERG as GUTENBERG_FILE
from tests.fixtures.corpora import gutenberg_windows

GUTENBERG = Path(DATA) / GUTENBERG_FILE
EDITS = ("substitute", "insert", "delete", "reorder_lines")


def windows(path: Path = GUTENBERG, words_per_doc: int = 200) -> list[dict]:
    """Every book's body (PG header and footer cut) in windows of whole paragraphs of about
    `words_per_doc` words, one document each, in book order (the dedup tests' corpus, all books)."""
    if not path.exists():
        raise SystemExit(
            f"real data not found: {path} (the shared/data folder beside the project, or set CRAWL2LLM_DATA)"
        )
    books = gutenberg_windows(path, books=None, words_per_doc=words_per_doc)
    return [d for book in books for d in book if not d["id"].endswith("/footer")]


def edit(text: str, kind: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    """A near copy: `rate` of the words substituted, inserted or deleted, or of the lines swapped
    with their neighbour (reorder_lines)."""
    if kind == "reorder_lines":
        lines = text.split("\n")
        for i in rng.sample(range(len(lines) - 1), max(1, int(rate * (len(lines) - 1)))) if len(lines) > 1 else []:
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return "\n".join(lines)
    words = text.split(" ")
    picks = set(rng.sample(range(len(words)), max(1, round(rate * len(words)))))
    out = []
    for i, w in enumerate(words):
        if i not in picks:
            out.append(w)
        elif kind == "substitute":
            out.append(rng.choice(vocabulary))
        elif kind == "insert":
            out += [w, rng.choice(vocabulary)]
        # delete: nothing
    return " ".join(out)
