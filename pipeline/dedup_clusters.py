"""Dedup step 3, once per corpus: union-find over all verified pairs into clusters, each keeping its
first document in corpus order, and each shard's duplicates with their cluster and kept document.
Also what a finished increment leaves for later ones: its bucket index, each key once with its
bucket's first document and that document's kept one.

Corpus maps packed document positions (pipeline/dedup_signatures.py) to dense corpus positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline import minhash
from pipeline.dedup_pairs import Increment, Increments, SignatureLookup
from pipeline.dedup_signatures import ROW_BITS, doc_keys, split_doc
from pipeline.union_find import DisjointSets

if TYPE_CHECKING:
    from pipeline.dedup import DedupConfig

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),  # row of the document in its shard
        pa.field("id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # exact_duplicate | near_duplicate
        pa.field("cluster_id", pa.int64(), nullable=False),  # corpus position of the kept document
        pa.field("duplicate_of", pa.string(), nullable=False),  # id of the kept document
        pa.field("similarity", pa.float64(), nullable=False),  # estimated Jaccard with it; 1.0 for exact
    ]
)


# An increment's bucket index: each key once, sorted; its bucket's first document and that document's
# kept one (itself unless it was a duplicate), as positions in the corpus of all increments.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.uint64(), nullable=False),
        pa.field("first", pa.int64(), nullable=False),
        pa.field("kept", pa.int64(), nullable=False),
    ]
)


class Corpus:
    """Dense corpus positions (0..docs-1, corpus order) of packed document positions."""

    def __init__(self, rows_per_shard: dict[int, int]):
        self.shards = sorted(rows_per_shard)
        self.rows = np.array([rows_per_shard[s] for s in self.shards], np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)
        self.docs = int(self.rows.sum())
        self._slot = np.full(max(self.shards, default=-1) + 1, -1, np.int64)
        self._slot[self.shards] = np.arange(len(self.shards))

    def position(self, docs: np.ndarray) -> np.ndarray:
        shard, row = split_doc(docs)
        return self.start[self._slot[shard]] + row

    def doc(self, position: np.ndarray) -> np.ndarray:
        slot = np.searchsorted(self.start, position, side="right") - 1
        return (np.array(self.shards, np.uint64)[slot] << ROW_BITS) | (position - self.start[slot]).astype(np.uint64)


def cluster_memory_mb(docs: int) -> float:
    """What union-find over `docs` documents needs: the parent array and one rebuilt copy."""
    return docs * 8 * 2 / 2**20


def clusters(
    corpus: Corpus, pair_tables, config: DedupConfig, earlier_tables: list[pa.Table] = (), offset: int = 0
) -> np.ndarray:
    """Union-find over all pairs: the corpus position of each document's kept representative.
    Positions count from `offset` (the documents of earlier increments); `earlier_tables` pair
    documents with earlier kept ones (EARLIER_SCHEMA), which come first in corpus order and so
    stay the representative of any cluster they are in."""
    kept = (
        np.unique(np.concatenate([t.column("kept").to_numpy() for t in earlier_tables]))
        if earlier_tables
        else np.empty(0, np.int64)
    )
    m = len(kept)  # earlier documents are elements 0..m-1, in corpus order, before this increment's
    need = cluster_memory_mb(corpus.docs + m)
    if need > config.memory_mb / 2:
        raise MemoryError(
            f"clustering {corpus.docs + m} documents needs about {need:.0f} MiB, over half the "
            f"memory budget (dedup.memory_mb = {config.memory_mb}): raise memory_mb"
        )
    sets = DisjointSets(m + corpus.docs)
    for pairs in pair_tables:
        sets.union(m + corpus.position(pairs.column("a").to_numpy()), m + corpus.position(pairs.column("b").to_numpy()))
    for t in earlier_tables:
        sets.union(m + corpus.position(t.column("doc").to_numpy()), np.searchsorted(kept, t.column("kept").to_numpy()))
    roots = sets.roots()[m:]
    if not m:
        return roots + offset
    return np.where(roots < m, kept[np.minimum(roots, m - 1)], roots - m + offset)


def shard_duplicates(
    corpus: Corpus,
    roots: np.ndarray,
    shard: int,
    lookup: SignatureLookup,
    config: DedupConfig,
    earlier: list[Increment] = (),
    offset: int = 0,
) -> pa.Table:
    """The duplicates among one shard's documents, with their cluster and kept document (which
    may belong to an `earlier` increment; this increment's documents count from `offset`)."""
    slot = corpus.shards.index(shard)
    lo, n = corpus.start[slot], corpus.rows[slot]
    rows = np.flatnonzero(roots[lo : lo + n] != np.arange(lo, lo + n) + offset)
    kept = roots[lo + rows]
    me = doc_keys(shard, rows)
    every = Increments([*earlier, Increment(offset, corpus, lookup)])
    same = (lookup.gather(me, "hash") == every.gather(kept, "hash")).all(axis=1) if len(rows) else np.zeros(0, bool)
    sim = (
        minhash.jaccard(lookup.gather(me, "minhash"), every.gather(kept, "minhash"))
        if config.near and len(rows)
        else np.zeros(len(rows))
    )
    sim = np.where(same, 1.0, sim)
    reason = np.where(same & config.exact, "exact_duplicate", "near_duplicate")
    return pa.table(
        [
            pa.array(rows, pa.int64()),
            pa.array(lookup.gather(me, "id"), pa.string()),
            pa.array(reason.tolist(), pa.string()),
            pa.array(kept, pa.int64()),
            pa.array(every.gather(kept, "id"), pa.string()),
            pa.array(sim, pa.float64()),
        ],
        schema=DUPLICATES_SCHEMA,
    )


def cluster_counts(corpus: Corpus, roots: np.ndarray, offset: int = 0) -> dict:
    """Clusters with a duplicate in this increment; a cluster's size counts its kept document,
    also when an earlier increment holds it (duplicates_of_earlier counts those duplicates)."""
    dup = roots != np.arange(corpus.docs) + offset
    reps, members = np.unique(roots[dup], return_counts=True)
    return {
        "docs": corpus.docs,
        "clusters": int(len(reps)),
        "largest_cluster": int((members + 1).max(initial=0)),
        "duplicates": int(dup.sum()),
        "duplicates_of_earlier": int((roots[dup] < offset).sum()),
    }


def bucket_index(
    keys: np.ndarray, docs: np.ndarray, corpus: Corpus, offset: int, dup_positions: np.ndarray, dup_kept: np.ndarray
) -> pa.Table:
    """Each distinct key of one partition of an increment once, sorted (INDEX_SCHEMA): its bucket's
    first document and that document's kept one, as corpus positions. `dup_positions` (sorted)
    and `dup_kept` are the increment's duplicates and their kept documents."""
    order = np.lexsort((docs, keys))
    keys, docs = keys[order], docs[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.empty(0, bool)
    keys, pos = keys[first], corpus.position(docs[first]) + offset
    at = np.minimum(np.searchsorted(dup_positions, pos), max(len(dup_positions) - 1, 0))
    is_dup = dup_positions[at] == pos if len(dup_positions) else np.zeros(len(pos), bool)
    kept = np.where(is_dup, dup_kept[at] if len(dup_kept) else pos, pos)
    return pa.table(
        [pa.array(keys, pa.uint64()), pa.array(pos, pa.int64()), pa.array(kept, pa.int64())], schema=INDEX_SCHEMA
    )
