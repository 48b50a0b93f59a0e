"""Dedup step 1, per document shard: each document's signature (the hash of its normalized text and
the MinHash of its word n-grams, pipeline/minhash.py) and its bucket keys (one per LSH band, one for
the exact text), which the pairs step groups by key.

Also how dedup names a document: its position, shard << 32 | row ("doc"), which every later step
(pipeline/dedup_pairs.py, pipeline/dedup_clusters.py) packs and unpacks with doc_keys/split_doc.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline import minhash
from pipeline.text import normalize_texts

if TYPE_CHECKING:
    from pipeline.dedup import DedupConfig

# Documents per batch of the signature step: bounds its memory whatever the shard size.
BATCH_DOCS = 4096
ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64(0xFFFFFFFF)
KEYS_SCHEMA = pa.schema([pa.field("key", pa.uint64(), nullable=False), pa.field("doc", pa.uint64(), nullable=False)])


def doc_keys(shard: int, rows: np.ndarray) -> np.ndarray:
    return (np.uint64(shard) << ROW_BITS) | rows.astype(np.uint64)


def split_doc(doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of packed document positions."""
    return (doc >> ROW_BITS).astype(np.int64), (doc & _ROW_MASK).astype(np.int64)


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
    require_columns(table, ("id", "text"), "signatures")
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
    col = one_chunk(sigs.column("content_hash"))
    return np.frombuffer(col.buffers()[1], np.uint8)[col.offset * 16 : (col.offset + len(col)) * 16].reshape(-1, 16)


def signature_matrix(sigs: pa.Table) -> np.ndarray:
    col = one_chunk(sigs.column("minhash"))
    width = col.type.list_size
    return col.values.to_numpy()[col.offset * width : (col.offset + len(col)) * width].reshape(-1, width)


def one_chunk(col):
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def require_columns(table: pa.Table, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; the table has {table.column_names}")
