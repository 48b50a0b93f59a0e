"""Dedup step 2, per bucket partition: candidate pairs (documents sharing a bucket key, each paired
with the bucket's first document) and which of them are duplicates (same normalized text, or
estimated Jaccard similarity >= threshold), reading signatures from the stored shards on demand.

Incremental runs also pair a new document with the first document of its bucket in an earlier
increment, found in that increment's sorted bucket index (earlier_pairs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa

from pipeline import minhash
from pipeline.dedup_signatures import content_hashes, one_chunk, partition_of, signature_matrix, split_doc

if TYPE_CHECKING:
    from pipeline.dedup import DedupConfig
    from pipeline.dedup_clusters import Corpus

# Candidate pairs verified at once: two signatures each are gathered (num_perm * 4 bytes).
VERIFY_PAIRS = 65536
PAIRS_SCHEMA = pa.schema([pa.field("a", pa.uint64(), nullable=False), pa.field("b", pa.uint64(), nullable=False)])
# Verified pairs of a new document and an earlier increment's kept document (its corpus position).
EARLIER_SCHEMA = pa.schema([pa.field("doc", pa.uint64(), nullable=False), pa.field("kept", pa.int64(), nullable=False)])


class SignatureLookup:
    """Signatures of any documents, read from the stored per-shard tables on demand (memory-mapped,
    so only the pages of the documents asked for are read)."""

    def __init__(self, open_shard: Callable[[int], pa.Table]):
        self._open, self._tables = open_shard, {}

    def table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            self._tables[shard] = self._open(shard)
        return self._tables[shard]

    def gather(self, docs: np.ndarray, what: str) -> np.ndarray | list:
        """`what` of each doc, in the order given: "hash" (n x 16 uint8), "minhash" (n x num_perm)
        or "id" (a list of str)."""
        shard, row = split_doc(docs)

        def fetch(s: int, mask: np.ndarray):
            table = self.table(s)
            if what == "id":
                return np.array(table.column("id").take(pa.array(row[mask])).to_pylist(), object)
            return (content_hashes(table) if what == "hash" else signature_matrix(table))[row[mask]]

        return _gather_by(shard, fetch, what)


def _gather_by(group: np.ndarray, fetch: Callable[[int, np.ndarray], np.ndarray], what: str) -> np.ndarray | list:
    """Values fetched group by group (fetch(group, mask)), put back in the order asked."""
    out = None
    for g in np.unique(group):
        mask = group == g
        got = fetch(int(g), mask)
        if out is None:
            out = np.empty((len(group),) + got.shape[1:], got.dtype)
        out[mask] = got
    if out is None:
        return [] if what == "id" else np.empty((0, 16), np.uint8)
    return out.tolist() if what == "id" else out


class Increment:
    """One increment's documents, numbered from `offset` in the corpus of all increments (earlier
    increments first): its signatures and, once it is finished, its bucket index per partition.
    `corpus` may be a function, called the first time a position must be resolved."""

    def __init__(
        self,
        offset: int,
        corpus: "Corpus | Callable[[], Corpus]",
        signatures: SignatureLookup,
        partitions: int = 0,
        index: Callable[[int], pa.Table] | None = None,
    ):
        self.offset, self._corpus, self.signatures = offset, corpus, signatures
        self.partitions, self.index = partitions, index

    @property
    def corpus(self) -> "Corpus":
        if callable(self._corpus):
            self._corpus = self._corpus()
        return self._corpus


class Increments:
    """Signatures of documents of several increments, by corpus position."""

    def __init__(self, parts: list[Increment]):
        self.parts = parts
        self.offsets = np.array([p.offset for p in parts], np.int64)

    def gather(self, positions: np.ndarray, what: str) -> np.ndarray | list:
        positions = np.asarray(positions, np.int64)
        part = np.searchsorted(self.offsets, positions, side="right") - 1

        def fetch(i: int, mask: np.ndarray):
            p = self.parts[i]
            got = p.signatures.gather(p.corpus.doc(positions[mask] - p.offset), what)
            return np.array(got, object) if what == "id" else got

        return _gather_by(part, fetch, what)


def candidate_pairs(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first document of a bucket, other document), each pair once, sorted. `docs` must
    be ascending for equal keys (step 1 writes them so)."""
    order = np.argsort(keys, kind="stable")
    keys, docs = keys[order], docs[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    first = np.repeat(docs[starts], np.diff(np.r_[starts, len(keys)]))
    other = first != docs
    a, b = first[other], docs[other]
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    fresh = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.empty(0, bool)
    return a[fresh], b[fresh]


def verify_pairs(
    a: np.ndarray,
    b: np.ndarray,
    lookup: SignatureLookup,
    config: DedupConfig,
    lookup_b: SignatureLookup | Increments | None = None,
) -> np.ndarray:
    """Which candidate pairs are duplicates: same normalized text, or estimated Jaccard >= threshold.
    `lookup_b` finds the b documents when they live elsewhere (earlier increments)."""
    lookup_b = lookup_b or lookup
    keep = np.zeros(len(a), bool)
    for lo in range(0, len(a), VERIFY_PAIRS):
        x, y = a[lo : lo + VERIFY_PAIRS], b[lo : lo + VERIFY_PAIRS]
        ok = np.zeros(len(x), bool)
        if config.exact:
            ok |= (lookup.gather(x, "hash") == lookup_b.gather(y, "hash")).all(axis=1)
        if config.near:
            ok |= minhash.jaccard(lookup.gather(x, "minhash"), lookup_b.gather(y, "minhash")) >= config.threshold
        keep[lo : lo + VERIFY_PAIRS] = ok
    return keep


def earlier_pairs(
    keys: np.ndarray, docs: np.ndarray, lookup: SignatureLookup, earlier: list[Increment], config: DedupConfig
) -> tuple[pa.Table, int]:
    """This increment's documents that duplicate a document of an earlier increment, with that
    document's kept one (EARLIER_SCHEMA), and how many candidates were checked. A key found in an
    earlier increment's index pairs the document with the bucket's first document there (the
    earliest increment holding the key: the same star as within one corpus)."""
    doc, first, kept = [], [], []
    todo = np.ones(len(keys), bool)
    for part in earlier:
        open_ = np.flatnonzero(todo)
        which = partition_of(keys[open_], part.partitions)
        for p in np.unique(which):
            sel = open_[which == p]
            index = part.index(int(p))
            ks = one_chunk(index.column("key")).to_numpy()
            if not len(ks):
                continue
            at = np.minimum(np.searchsorted(ks, keys[sel]), len(ks) - 1)
            hit = ks[at] == keys[sel]
            doc.append(docs[sel[hit]])
            first.append(one_chunk(index.column("first")).to_numpy()[at[hit]])
            kept.append(one_chunk(index.column("kept")).to_numpy()[at[hit]])
            todo[sel[hit]] = False
    if not doc:
        return EARLIER_SCHEMA.empty_table(), 0
    doc, first, kept = np.concatenate(doc), np.concatenate(first), np.concatenate(kept)
    order = np.lexsort((first, doc))
    doc, first, kept = doc[order], first[order], kept[order]
    fresh = np.r_[True, (doc[1:] != doc[:-1]) | (first[1:] != first[:-1])] if len(doc) else np.empty(0, bool)
    doc, first, kept = doc[fresh], first[fresh], kept[fresh]
    ok = verify_pairs(doc, first, lookup, config, Increments(earlier))
    doc, kept = doc[ok], kept[ok]
    fresh = np.r_[True, (doc[1:] != doc[:-1]) | (kept[1:] != kept[:-1])] if len(doc) else np.empty(0, bool)
    return pa.table([pa.array(doc[fresh], pa.uint64()), pa.array(kept[fresh], pa.int64())], schema=EARLIER_SCHEMA), int(
        len(first)
    )


def pairs_table(a: np.ndarray, b: np.ndarray) -> pa.Table:
    return pa.table([pa.array(a, pa.uint64()), pa.array(b, pa.uint64())], schema=PAIRS_SCHEMA)
