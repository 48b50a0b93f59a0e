"""datatrove's side of benchmarks/quality_datatrove.py; runs inside the datatrove venv, not the project's.

    /work/dt-venv/bin/python benchmarks/datatrove_filters.py agree --corpus C --jobs J --out O [--part k --parts n]
    /work/dt-venv/bin/python benchmarks/datatrove_filters.py time --corpus C --chain J [--repeats 3]

Imports only datatrove, pyarrow and the standard library. Documents come in as a Parquet file (id, text).

agree: each job is a chain of datatrove filters built from (class name, keyword arguments); each
document runs through every job, the filters' own .filter(Document) called directly, and the output
Parquet holds per job keep_<job> and reason_<job> (the first failing filter's reason string) and, for
jobs that rewrite the text (C4), text_<job>. A document is tokenized once for all jobs: datatrove's
spaCy word tokenizer is wrapped in a one-entry cache keyed by the text (same output, computed once),
so the agreement run costs about one tokenization per document instead of one per job. It also
writes, per document, the values datatrove's rules compare with their thresholds (dt_* columns), for
the examples the benchmark prints.

time: the chain's .filter calls over prebuilt Document objects, the process pinned to one core, no
cache and no file IO in the timed loop, best of --repeats; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION, split_into_words
from datatrove.utils.word_tokenizers import load_word_tokenizer

FILTERS = {c.__name__: c for c in (GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter, FineWebQualityFilter)}


def build(chain: list) -> list:
    return [
        FILTERS[name](
            **{k: (tuple(map(tuple, v)) if k in ("top_n_grams", "dup_n_grams") else v) for k, v in kwargs.items()}
        )
        for name, kwargs in chain
    ]


def run_chain(filters: list, doc: Document) -> tuple[bool, str | None]:
    """(kept, reason of the first filter that dropped it); doc.text holds the rewritten text."""
    for f in filters:
        try:
            res = f.filter(doc)
        except ZeroDivisionError:  # a datatrove filter divides by the word count of a wordless text
            return False, f"{type(f).__name__}: ZeroDivisionError"
        ok, reason = res if isinstance(res, tuple) else (res, None)
        if not ok:
            return False, reason or type(f).__name__
    return True, None


def cache_tokenizer() -> None:
    tok = load_word_tokenizer("en")
    plain, last = tok.word_tokenize, {}

    def word_tokenize(text: str) -> list[str]:
        if last.get("text") is not text and last.get("text") != text:
            last["text"], last["words"] = text, plain(text)
        return list(last["words"])

    tok.word_tokenize = word_tokenize


def values(text: str) -> dict:
    """What datatrove's rules compare with their thresholds, for the benchmark's examples."""
    words = split_into_words(text)
    n = max(len(words), 1)
    non_symbol = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
    lines = text.splitlines() or [""]
    nonblank = [line for line in text.split("\n") if line.strip()] or [""]
    paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()] or [""]
    split_lines = [line for line in re.split("\n+", text) if line.strip()] or [""]
    return {
        "dt_tokens": len(words),
        "dt_words": len(non_symbol),
        "dt_mean_word_length": sum(map(len, non_symbol)) / max(len(non_symbol), 1),
        "dt_hash_ratio": text.count("#") / n,
        "dt_ellipsis_ratio": (text.count("...") + text.count("…")) / n,
        "dt_bullet_lines": sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines),
        "dt_ellipsis_lines": sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines),
        "dt_alpha_words": sum(any(c.isalpha() for c in w) for w in words) / n,
        # the same with punctuation-only tokens left out of the denominator
        "dt_alpha_words_no_punct": sum(any(c.isalpha() for c in w) for w in words) / max(len(non_symbol), 1),
        "dt_stop_words": len(set(STOP_WORDS) & set(words)),
        "dt_stop_words_lower": len(set(STOP_WORDS) & {w.lower() for w in words}),
        # repeated paragraphs / lines with whitespace-only ones left out
        "dt_dup_paragraphs_nonblank": find_duplicates(paragraphs)[0] / len(paragraphs),
        "dt_dup_lines_nonblank": find_duplicates(split_lines)[0] / len(split_lines),
        "dt_line_punct": sum(line.endswith(tuple(TERMINAL_PUNCTUATION)) for line in nonblank) / len(nonblank),
        "dt_short_lines": sum(len(line) <= 30 for line in nonblank) / len(nonblank),
        "dt_dup_line_chars": find_duplicates(nonblank)[1] / max(len(text.replace("\n", "")), 1),
        "dt_newline_ratio": text.count("\n") / n,
    }


def agree(args) -> None:
    table = pq.read_table(args.corpus, columns=["id", "text"])
    rows = table.slice(args.part * -(-table.num_rows // args.parts), -(-table.num_rows // args.parts)).to_pylist()
    jobs = json.loads(open(args.jobs).read())
    chains = [(job["name"], build(job["filters"]), job.get("text", False)) for job in jobs]
    cache_tokenizer()
    out: dict[str, list] = {"id": []}
    for name, _, text in chains:
        out[f"keep_{name}"], out[f"reason_{name}"] = [], []
        if text:
            out[f"text_{name}"] = []
    for row in rows:
        out["id"].append(row["id"])
        for k, v in values(row["text"]).items():
            out.setdefault(k, []).append(v)
        for name, filters, text in chains:
            doc = Document(text=row["text"], id=row["id"])
            kept, reason = run_chain(filters, doc)
            out[f"keep_{name}"].append(kept)
            out[f"reason_{name}"].append(reason)
            if text:
                out[f"text_{name}"].append(doc.text if kept else None)
    pq.write_table(
        pa.table({k: pa.array(v, pa.string()) if k.startswith(("reason_", "text_")) else v for k, v in out.items()}),
        args.out,
    )


def timing(args) -> None:
    os.sched_setaffinity(0, {args.core})
    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()
    filters = build(json.loads(open(args.chain).read()))
    run_chain(filters, Document(text=texts[0], id="warm-up"))  # loads spaCy outside the timed loop
    times, kept = [], 0
    for _ in range(args.repeats):
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        kept = sum(run_chain(filters, d)[0] for d in docs)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "times": times,
                "best_s": min(times),
                "docs": len(texts),
                "kept": kept,
                "bytes": sum(len(t.encode()) for t in texts),
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agree")
    a.add_argument("--corpus", required=True)
    a.add_argument("--jobs", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--part", type=int, default=0)
    a.add_argument("--parts", type=int, default=1)
    t = sub.add_parser("time")
    t.add_argument("--corpus", required=True)
    t.add_argument("--chain", required=True)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--core", type=int, default=0)
    args = ap.parse_args()
    agree(args) if args.cmd == "agree" else timing(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
