"""MinHash signature throughput per core: crawl2llm's dedup signatures vs datasketch, same run.

    .venv/bin/python benchmarks/dedup_signatures.py            # all ~35k Gutenberg windows, about 2 minutes
    .venv/bin/python benchmarks/dedup_signatures.py --docs 3000 --repeat 1   # for development

Corpus: the Gutenberg books in ../shared/data/text cut into ~200-word windows of whole paragraphs
(benchmarks/dedup_corpus.py). Every method starts from the same document texts and the same
normalization (pipeline.text.normalize_texts: lowercase, punctuation to spaces, split on
whitespace), and computes a 112-permutation MinHash of each document's word 5-grams, datasketch's
default affine32 scheme, seed 1:

- datasketch update: one MinHash per document, `update(shingle.encode())` per shingle (SHA-1 each).
- datasketch bulk: `MinHash.bulk(list of each document's encoded shingles)`.
- crawl2llm: `pipeline.dedup.signatures(table, DedupConfig())`, which also hashes each normalized
  text (blake2b) for exact dedup; the baselines do not.

Before timing, crawl2llm's signatures are checked equal, bit for bit, to datasketch's MinHash
with `hashfunc=pipeline.minhash.shingle_hash` on a sample (the only difference from the baselines
is the shingle hash function). The process is pinned to one core with Arrow's thread pools set to
one thread; CPU seconds (user + system) are measured, best of --repeat runs (update runs once).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa
from common import cpu_seconds, machine, pin
from datasketch import MinHash
from dedup_corpus import windows

from pipeline import minhash
from pipeline.dedup import DedupConfig, signature_matrix, signatures
from pipeline.schema import docs_from_rows
from pipeline.text import normalize_texts, word_ngrams


def words_of(table: pa.Table) -> list[list[str]]:
    return normalize_texts(table.column("text").combine_chunks())[1].to_pylist()


def datasketch_update(table: pa.Table, config: DedupConfig) -> int:
    n = 0
    for ws in words_of(table):
        m = MinHash(num_perm=config.num_perm, seed=config.seed)
        for shingle in word_ngrams(ws, config.ngram):
            m.update(shingle.encode("utf-8"))
        n += len(m.hashvalues)
    return n


def datasketch_bulk(table: pa.Table, config: DedupConfig) -> int:
    sets = [[s.encode("utf-8") for s in word_ngrams(ws, config.ngram)] for ws in words_of(table)]
    return sum(len(m.hashvalues) for m in MinHash.bulk(sets, num_perm=config.num_perm, seed=config.seed))


def ours(table: pa.Table, config: DedupConfig) -> int:
    return signatures(table, config).num_rows * config.num_perm


def check_equal(table: pa.Table, config: DedupConfig, sample: int = 200) -> None:
    part = table.slice(0, sample)
    got = signature_matrix(signatures(part, config))
    for i, ws in enumerate(words_of(part)):
        m = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=minhash.shingle_hash)
        for shingle in word_ngrams(ws, config.ngram):
            m.update(shingle)
        if not np.array_equal(m.hashvalues, got[i]):
            raise SystemExit(f"signature of document {i} differs from datasketch's: benchmark void")


def measure(fn, table, config, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        c0, w0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
        fn(table, config)
        cpu, wall = cpu_seconds(resource.RUSAGE_SELF) - c0, time.perf_counter() - w0
        if best is None or cpu < best["cpu_s"]:
            best = {"cpu_s": cpu, "wall_s": wall}
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=0, help="use the first N windows (0: all)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of bulk and ours; the best CPU time counts")
    ap.add_argument("--core", type=int, default=None, help="core to pin to (default: the last one allowed)")
    args = ap.parse_args()

    pinned = pin(args.core if args.core is not None else max(os.sched_getaffinity(0)))
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    docs = windows()
    if args.docs:
        docs = docs[: args.docs]
    table = docs_from_rows(docs)
    config = DedupConfig()
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    words = sum(len(ws) for ws in words_of(table))
    check_equal(table, config)
    rows = {
        "datasketch update": measure(datasketch_update, table, config, 1),
        "datasketch bulk": measure(datasketch_bulk, table, config, args.repeat),
        "crawl2llm": measure(ours, table, config, args.repeat),
    }
    m = machine()
    print(
        f"corpus: {len(docs)} documents, {words} words, {mb:.1f} MB of text; num_perm {config.num_perm}, "
        f"{config.ngram}-grams; pinned to one core: {pinned}"
    )
    print(f"machine: {m['cores']} x {m['cpu']}, {m['memory']}, Python {m['python']}\n")
    print("| method | CPU s | wall s | docs/s per core | MB/s per core | crawl2llm is |")
    print("|---|---|---|---|---|---|")
    ours_cpu = rows["crawl2llm"]["cpu_s"]
    for name, r in rows.items():
        ratio = "" if name == "crawl2llm" else f"{r['cpu_s'] / ours_cpu:.1f}x faster"
        print(
            f"| {name} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {len(docs) / r['cpu_s']:.0f} | "
            f"{mb / r['cpu_s']:.2f} | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
