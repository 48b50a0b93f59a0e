"""Corpus-wide exact and MinHash-LSH near-duplicate removal, in bounded memory.

Four steps, each cached and resumable on its own (flows/stages.py runs them, pipeline/dedup_steps.py
stores them):

1. signatures, per document shard (parallel): the hash of each document's normalized text and the
   MinHash of its word n-grams (pipeline/minhash.py), stored as Arrow; and its bucket keys, one
   per LSH band plus one for its exact text, spread over `partitions` files by key.
2. pairs, per partition (parallel): documents with the same key are candidates, each paired with
   the bucket's first document. A candidate pair is kept when both texts are identical after
   normalization (`exact`), or their estimated Jaccard similarity reaches `threshold` (`near`).
3. clusters, once: union-find over all kept pairs. The rule: each cluster keeps its FIRST document
   in corpus order (shard order, then row order). Every other member is a duplicate, written per
   shard with its cluster id (the kept document's corpus position), the kept document's id, and
   its estimated similarity to it. Clusters are transitive: A~B and B~C put C with A even when
   A and C are further apart than `threshold`; the similarity column shows it.
4. apply, per shard (parallel): drop the listed documents and write them aside.

Incremental runs (an increment = the documents of new input files) check the new documents against
earlier increments too: each finished increment gets a bucket index (every bucket key once, sorted,
with the bucket's first document and that document's kept one), which step 2 looks the new keys up
in (np.searchsorted on the memory-mapped file). Documents of all increments are numbered in one
corpus order, earlier increments first, so a cluster still keeps its first document: an earlier
one when it has one, and earlier outputs never change.

A document is named by its position: shard << 32 | row ("doc" below; ids need not be unique).
Memory: step 1 holds one batch of documents; step 2 one partition's keys and pairs (about
`_BYTES_PER_KEY` per key); step 3 eight bytes per corpus document plus one shard's duplicates.
`memory_mb` picks the partitions so that step 2 fits, and step 3 checks its share.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline import minhash
from pipeline.schema import REMOVED_SCHEMA
from pipeline.stage import ShardResult, StageConfig, split_by_reason
from pipeline.text import normalize_texts
from pipeline.union_find import DisjointSets

# Documents per batch of the signature step: bounds its memory whatever the shard size.
BATCH_DOCS = 4096
# Candidate pairs verified at once: two signatures each are gathered (num_perm * 4 bytes).
VERIFY_PAIRS = 65536
# Working memory of the pairs step per bucket key: the key and doc as read (16) and as arrays (16),
# the sort order (8), sorted copies (16), each bucket's first doc (8) and slack; 85 measured on
# 2M synthetic signatures (benchmarks/dedup_memory.py).
_BYTES_PER_KEY = 96
_ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64(0xFFFFFFFF)

KEYS_SCHEMA = pa.schema([pa.field("key", pa.uint64(), nullable=False), pa.field("doc", pa.uint64(), nullable=False)])
PAIRS_SCHEMA = pa.schema([pa.field("a", pa.uint64(), nullable=False), pa.field("b", pa.uint64(), nullable=False)])
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
# Verified pairs of a new document and an earlier increment's kept document (its corpus position).
EARLIER_SCHEMA = pa.schema([pa.field("doc", pa.uint64(), nullable=False), pa.field("kept", pa.int64(), nullable=False)])
# Removed documents of the dedup stage: the usual columns plus their cluster.
DEDUP_REMOVED_SCHEMA = pa.schema(
    list(REMOVED_SCHEMA) + [DUPLICATES_SCHEMA.field(c) for c in ("cluster_id", "duplicate_of", "similarity")]
)


class DedupConfig(StageConfig):
    exact: bool = Field(True, description="Remove documents whose normalized text equals an earlier one's.")
    near: bool = Field(
        True,
        description="Remove documents whose MinHash-estimated Jaccard similarity with "
        "another document of their cluster reaches `threshold`.",
    )
    lowercase: bool = Field(True, description="Normalize: compare texts case-insensitively.")
    strip_punctuation: bool = Field(True, description="Normalize: replace punctuation and symbols by spaces.")
    fold_whitespace: bool = Field(
        True,
        description="Normalize: collapse runs of whitespace into one space and "
        "trim (word shingles always split on whitespace, so this "
        "only matters for exact duplicates).",
    )
    ngram: int = Field(5, ge=1, le=64, description="Words per shingle (word n-grams) for near-dedup.")
    num_perm: int = Field(112, ge=2, le=1024, description="MinHash permutations (signature length).")
    bands: int = Field(14, ge=1, description="LSH bands; candidates share all rows of at least one band.")
    rows: int = Field(8, ge=1, description="LSH rows per band; bands * rows must be <= num_perm.")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (fixed: signatures are reproducible).")
    threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Estimated Jaccard similarity a candidate pair must reach to count as near duplicates.",
    )
    memory_mb: int = Field(
        2048,
        ge=64,
        description="Memory budget of the clustering steps (pairs per partition, "
        "union-find); sets how many partitions the buckets use.",
    )
    partitions: int = Field(
        0,
        ge=0,
        le=2**20,
        description="Key-range partitions of the pairs step; 0: chosen from "
        "the corpus size and memory_mb. Results do not depend on it.",
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> "DedupConfig":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands * rows = {self.bands} * {self.rows} = {self.bands * self.rows} "
                f"exceeds num_perm = {self.num_perm}"
            )
        return self

    def signature_fields(self) -> dict:
        """The settings steps 1 depends on (threshold is not one: changing it keeps signatures)."""
        return self.model_dump(exclude={"threshold"})

    def key_fields(self) -> dict:
        """The settings that decide signatures and bucket keys: increments checked against each
        other must share them."""
        return self.model_dump(exclude={"threshold", "memory_mb", "partitions"})


def implied_threshold(bands: int, rows: int) -> float:
    """Jaccard similarity at which a pair becomes an LSH candidate with probability ~1/2
    (the S-curve's midpoint), for reports: pairs well below it are rarely even compared."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int):
    """The LSH S-curve: chance that two documents of this Jaccard similarity share a band."""
    return 1.0 - (1.0 - np.asarray(similarity, float) ** rows) ** bands


def partitions_for(docs: int, config: DedupConfig) -> int:
    """Bucket partitions so that one partition's pairs step fits in half the memory budget."""
    if config.partitions:
        return config.partitions
    keys = docs * (config.bands * config.near + config.exact)
    return min(2**20, max(1, math.ceil(keys * _BYTES_PER_KEY / (config.memory_mb * 2**20 / 2))))


def doc_keys(shard: int, rows: np.ndarray) -> np.ndarray:
    return (np.uint64(shard) << _ROW_BITS) | rows.astype(np.uint64)


def split_doc(doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of packed document positions."""
    return (doc >> _ROW_BITS).astype(np.int64), (doc & _ROW_MASK).astype(np.int64)


# -- step 1: signatures and bucket keys per shard ---------------------------------------------


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("content_hash", pa.binary(16), nullable=False),  # blake2b-128 of the normalized text
            pa.field("shingles", pa.int32(), nullable=False),  # 0: no words, no near-dedup keys
            pa.field("minhash", pa.list_(pa.uint32(), num_perm), nullable=False),  # datasketch affine32 values
        ]
    )


def signatures(table: pa.Table, config: DedupConfig) -> pa.Table:
    """id, content hash, shingle count and MinHash of every document in `table`, in row order."""
    _require(table, ("id", "text"), "signatures")
    parts = [_signature_batch(batch, config) for batch in table.select(["id", "text"]).to_batches(BATCH_DOCS)]
    return pa.concat_tables(parts).combine_chunks() if parts else signature_schema(config.num_perm).empty_table()


def _signature_batch(batch: pa.RecordBatch, config: DedupConfig) -> pa.Table:
    norm, words = normalize_texts(
        batch.column("text"), config.lowercase, config.strip_punctuation, config.fold_whitespace
    )
    hashes = np.frombuffer(
        b"".join(hashlib.blake2b(_utf8_view(norm, i), digest_size=16).digest() for i in range(len(norm))), np.uint8
    )
    n = len(norm)
    if config.near:
        counts = np.diff(words.offsets.to_numpy())
        shingle, doc_of = minhash.shingle_hashes(minhash.word_hashes(words.flatten()), counts, config.ngram)
        sigs = minhash.signatures(shingle, doc_of, n, config.num_perm, config.seed)
        shingles = np.bincount(doc_of, minlength=n).astype(np.int32)
    else:
        sigs = np.full((n, config.num_perm), minhash.EMPTY, np.uint32)
        shingles = np.zeros(n, np.int32)
    return pa.table(
        [
            batch.column("id"),
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(hashes)]),
            pa.array(shingles),
            pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1)), config.num_perm),
        ],
        schema=signature_schema(config.num_perm),
    )


def _utf8_view(strings: pa.Array, i: int) -> memoryview:
    """The UTF-8 bytes of strings[i], without a Python str in between."""
    offsets = np.frombuffer(strings.buffers()[1], np.int32 if pa.types.is_string(strings.type) else np.int64)
    lo, hi = offsets[strings.offset + i], offsets[strings.offset + i + 1]
    return memoryview(strings.buffers()[2])[lo:hi]


def bucket_keys(sigs: pa.Table, shard: int, config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(key, doc) for every document's LSH bands and exact text, documents in row order. Keys of
    different bands never meet: the band number is hashed in."""
    n = sigs.num_rows
    rows = np.arange(n)
    keys, docs = [], []
    if config.exact:
        keys.append(content_hashes(sigs)[:, :8].copy().view(np.uint64).reshape(-1))
        docs.append(rows)
    if config.near:
        has = np.flatnonzero(sigs.column("shingles").to_numpy() > 0)
        sig = signature_matrix(sigs)[has]
        for band in range(config.bands):
            h = np.full(len(has), minhash.fmix64(np.array([band + 1], np.uint64))[0], np.uint64)
            for col in sig[:, band * config.rows : (band + 1) * config.rows].T:
                h = minhash.fmix64(h ^ col.astype(np.uint64))
            keys.append(h)
            docs.append(has)
    if not keys:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    key, row = np.concatenate(keys), np.concatenate(docs)
    order = np.argsort(row, kind="stable")  # documents in row order: pairs step relies on it
    return key[order], doc_keys(shard, row[order])


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Key-range partitions (by the top 32 bits): each partition's keys are one contiguous range, so
    a shard's keys file sorted by key is read as one slice (partition_bounds) for any count."""
    top = keys.astype(np.uint64) >> np.uint64(32)
    return ((top * np.uint64(partitions)) >> np.uint64(32)).astype(np.int64)


def partition_bounds(partition: int, partitions: int) -> tuple[int, int]:
    """The keys [lo, hi) of one partition (hi may be 2**64)."""
    lo = -(-(partition << 32) // partitions)
    hi = -(-((partition + 1) << 32) // partitions)
    return lo << 32, hi << 32


def content_hashes(sigs: pa.Table) -> np.ndarray:
    col = _one_chunk(sigs.column("content_hash"))
    return np.frombuffer(col.buffers()[1], np.uint8)[col.offset * 16 : (col.offset + len(col)) * 16].reshape(-1, 16)


def signature_matrix(sigs: pa.Table) -> np.ndarray:
    col = _one_chunk(sigs.column("minhash"))
    width = col.type.list_size
    return col.values.to_numpy()[col.offset * width : (col.offset + len(col)) * width].reshape(-1, width)


def _one_chunk(col):
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


# -- step 2: candidate pairs per partition ----------------------------------------------------


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
            ks = _one_chunk(index.column("key")).to_numpy()
            if not len(ks):
                continue
            at = np.minimum(np.searchsorted(ks, keys[sel]), len(ks) - 1)
            hit = ks[at] == keys[sel]
            doc.append(docs[sel[hit]])
            first.append(_one_chunk(index.column("first")).to_numpy()[at[hit]])
            kept.append(_one_chunk(index.column("kept")).to_numpy()[at[hit]])
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


# -- step 3: clusters ---------------------------------------------------------------------------


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
        return (np.array(self.shards, np.uint64)[slot] << _ROW_BITS) | (position - self.start[slot]).astype(np.uint64)


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


# -- incremental runs: an increment's bucket index -----------------------------------------------


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


# -- step 4: apply per shard --------------------------------------------------------------------


def apply_duplicates(table: pa.Table, duplicates: pa.Table) -> ShardResult:
    """Drop this shard's documents listed in `duplicates` (rows of this shard); the removed ones
    keep their cluster id, kept document and similarity."""
    _require(table, ("id",), "apply_duplicates documents")
    _require(duplicates, DUPLICATES_SCHEMA.names, "apply_duplicates duplicates")
    duplicates = duplicates.sort_by("row")
    rows = duplicates.column("row").to_numpy()
    if len(rows) and (
        rows.max() >= table.num_rows
        or duplicates.column("id").to_pylist() != table.column("id").take(pa.array(rows)).to_pylist()
    ):
        raise ValueError(
            "duplicates list does not match this shard's documents (row or id differ): "
            "was it made from another upstream output?"
        )
    reasons: list[str | None] = [None] * table.num_rows
    details: list[str | None] = [None] * table.num_rows
    for r, reason, cid, of, sim in zip(
        rows.tolist(),
        *(duplicates.column(c).to_pylist() for c in ("reason", "cluster_id", "duplicate_of", "similarity")),
    ):
        reasons[r], details[r] = reason, f"cluster={cid} duplicate_of={of} similarity={sim:.4f}"
    result = split_by_reason(table, reasons, details)
    removed = result.removed
    for c in ("cluster_id", "duplicate_of", "similarity"):
        removed = removed.append_column(DUPLICATES_SCHEMA.field(c), duplicates.column(c))
    result.removed = removed.cast(DEDUP_REMOVED_SCHEMA)
    return result


def _require(table: pa.Table, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; the table has {table.column_names}")
