"""Near-duplicate detection quality: precision and recall at Jaccard 0.7 / 0.8 / 0.9, and the
measured LSH S-curve beside the theoretical one, on real Gutenberg prose with injected copies.

    .venv/bin/python benchmarks/dedup_quality.py              # about 1 minute
    .venv/bin/python benchmarks/dedup_quality.py --pairs 600  # fewer injected copies

Corpus (benchmarks/dedup_corpus.py): every Gutenberg book in ../shared/data/text cut into ~200-word
windows of whole paragraphs (about 24k documents). --pairs windows are picked at random; each gets
one near copy made with one kind of edit at a random rate: words substituted (by a random word of
the corpus), inserted, deleted (0.2% to 8% of the words), or lines swapped with their neighbour
(5% to 60% of the lines). --exact more windows get an exact copy after normalization (upper case,
doubled spaces, punctuation changed). The copies form the last shard, so the original comes first
in corpus order and is the one a correct run keeps.

Truth is the exact Jaccard similarity of the two documents' word 5-gram sets (same normalization
as the stage). The stage runs in memory (pipeline.dedup_run.find_duplicates, the same steps as the
flow) with the default settings (num_perm 112, 14 bands x 8 rows) at threshold t, and again with
the bands x rows datasketch's MinHashLSH would pick for t (its _optimal_param, equal weights).

- recall at t: of the injected copies whose true Jaccard with their original is >= t (exact copies
  included), the share put in their original's cluster;
- precision at t: of all documents the stage removed (natural duplicates in the books included),
  the share whose true Jaccard with the document kept for their cluster is >= t.

S-curve: per bin of true Jaccard, the share of injected pairs that share at least one band
(measured on the signatures) beside 1 - (1 - s^r)^b averaged over the pairs in the bin, and the
share detected beside the candidate probability times P(estimate >= t) (a binomial tail).
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from datasketch.lsh import _optimal_param  # noqa: E402
from dedup_corpus import EDITS, edit, windows  # noqa: E402
from ingest_throughput import machine  # noqa: E402
from scipy.stats import binom  # noqa: E402

from pipeline.dedup import (
    DedupConfig,
    candidate_probability,
    implied_threshold,  # noqa: E402
    signature_matrix,
    signatures,
)
from pipeline.dedup_run import find_duplicates
from pipeline.schema import docs_from_rows  # noqa: E402
from pipeline.text import normalize, word_ngrams  # noqa: E402

RATES = {"substitute": (0.002, 0.08), "insert": (0.002, 0.08), "delete": (0.002, 0.08), "reorder_lines": (0.05, 0.6)}


@functools.lru_cache(maxsize=None)
def shingle_set(text: str, n: int = 5) -> frozenset[str]:
    """Cached: each of the six runs judges mostly the same removed documents."""
    return frozenset(word_ngrams(normalize(text).split(), n))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def build(pairs: int, exact: int, seed: int) -> tuple[list[dict], list[dict], list[tuple[int, int, str, float]]]:
    """Originals, copies (the last shard) and (original index, copy index, kind, true Jaccard)."""
    docs = windows()
    rng = random.Random(seed)
    vocabulary = sorted({w for d in docs[:2000] for w in d["text"].split()})
    picked = rng.sample(range(len(docs)), pairs + exact)
    copies, truth = [], []
    for k, i in enumerate(picked):
        text = docs[i]["text"]
        if k < pairs:
            kind = EDITS[k % len(EDITS)]
            lo, hi = RATES[kind]
            copy = edit(text, kind, rng.uniform(lo, hi), rng, vocabulary)
        else:
            kind = "exact"
            copy = [text.upper(), "  " + text.replace(" ", "  "), text.replace(",", ";").replace(".", "!")][k % 3]
        copies.append({"id": f"copy-{k}", "text": copy})
        truth.append((i, len(copies) - 1, kind, jaccard(shingle_set(text), shingle_set(copy))))
    return docs, copies, truth


def run(docs, copies, truth, config: DedupConfig) -> dict:
    """Recall and precision at config.threshold, and which injected pairs were detected."""
    dups = find_duplicates([docs_from_rows(docs), docs_from_rows(copies)], config)
    n0 = len(docs)
    cluster = np.arange(n0 + len(copies))
    for shard, table in enumerate(dups):
        rows = table.column("row").to_numpy() + shard * n0
        cluster[rows] = table.column("cluster_id").to_numpy()
    texts = [d["text"] for d in docs] + [c["text"] for c in copies]
    detected = np.array([cluster[n0 + c] == cluster[o] for o, c, _, _ in truth])
    true_j = np.array([j for *_, j in truth])
    positive = true_j >= config.threshold
    removed = [
        (int(r) + s * n0, int(k))
        for s, t in enumerate(dups)
        for r, k in zip(t.column("row").to_numpy(), t.column("cluster_id").to_numpy())
    ]
    good = sum(jaccard(shingle_set(texts[r]), shingle_set(texts[k])) >= config.threshold for r, k in removed)
    return {
        "recall": detected[positive].mean() if positive.any() else float("nan"),
        "positives": int(positive.sum()),
        "removed": len(removed),
        "precision": good / len(removed) if removed else float("nan"),
        "false_removals": len(removed) - good,
        "detected": detected,
    }


def s_curve(docs, copies, truth, config: DedupConfig, detected: np.ndarray) -> list[str]:
    originals = signature_matrix(signatures(docs_from_rows([docs[o] for o, *_ in truth]), config))
    copied = signature_matrix(signatures(docs_from_rows(copies), config))
    r = config.rows
    band_hit = np.zeros(len(truth), bool)
    for b in range(config.bands):
        band_hit |= (originals[:, b * r : (b + 1) * r] == copied[:, b * r : (b + 1) * r]).all(axis=1)
    true_j = np.array([j for *_, j in truth])
    est_ok = binom.sf(np.ceil(config.threshold * config.num_perm) - 1, config.num_perm, true_j)
    lines = [
        "| true Jaccard | pairs | candidates measured | S-curve theory | detected measured | theory (candidate x estimate >= t) |",
        "|---|---|---|---|---|---|",
    ]
    edges = np.round(np.arange(0.30, 1.0001, 0.05), 2)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (true_j >= lo) & ((true_j < hi) if hi < 1 else (true_j <= hi))
        if not inside.any():
            continue
        theory = candidate_probability(true_j[inside], config.bands, config.rows)
        lines.append(
            f"| {lo:.2f}-{hi:.2f} | {inside.sum()} | {band_hit[inside].mean():.3f} | {theory.mean():.3f} | "
            f"{detected[inside].mean():.3f} | {(theory * est_ok[inside]).mean():.3f} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2400, help="injected near copies")
    ap.add_argument("--exact", type=int, default=300, help="injected exact copies")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    docs, copies, truth = build(args.pairs, args.exact, args.seed)
    m = machine()
    kinds = {k: sum(1 for t in truth if t[2] == k) for k in (*EDITS, "exact")}
    print(
        f"corpus: {len(docs)} Gutenberg windows + {len(copies)} injected copies {kinds}; "
        f"machine: {m['cores']} x {m['cpu']}\n"
    )
    print(
        "| threshold t | bands x rows | implied threshold | positives (true J >= t) | recall | removed | precision | removed with true J < t |"
    )
    print("|---|---|---|---|---|---|---|---|")
    default_run = None
    for t in (0.7, 0.8, 0.9):
        for bands, rows in [(14, 8), _optimal_param(t, 112, 0.5, 0.5)]:
            config = DedupConfig(threshold=t, bands=bands, rows=rows)
            res = run(docs, copies, truth, config)
            if t == 0.8 and (bands, rows) == (14, 8):
                default_run = (config, res)
            print(
                f"| {t} | {bands} x {rows}{' (default)' if (bands, rows) == (14, 8) else ' (datasketch optimal)'} | "
                f"{implied_threshold(bands, rows):.3f} | {res['positives']} | {res['recall']:.3f} | {res['removed']} | "
                f"{res['precision']:.3f} | {res['false_removals']} |"
            )
    config, res = default_run
    print(f"\nS-curve, default settings (14 x 8, threshold {config.threshold}):\n")
    print("\n".join(s_curve(docs, copies, truth, config, res["detected"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
