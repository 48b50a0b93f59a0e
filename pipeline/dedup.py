"""Corpus-wide exact and MinHash-LSH near-duplicate removal, in bounded memory.

Four steps, each cached and resumable on its own (flows/stages.py runs them, pipeline/shards.py
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

This module holds the config, the sizing rules, step 4 and the in-memory run of steps 1-3
(find_duplicates); every name of the steps stays importable from here (pipeline/shards.py does so).
The steps live in pipeline/dedup_signatures.py (step 1, and the packed document positions),
pipeline/dedup_pairs.py (step 2, and the lookups into earlier increments) and
pipeline/dedup_clusters.py (step 3, and an increment's bucket index).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline.dedup_clusters import (
    DUPLICATES_SCHEMA,
    INDEX_SCHEMA,
    Corpus,
    bucket_index,
    cluster_counts,
    cluster_memory_mb,
    clusters,
    shard_duplicates,
)
from pipeline.dedup_pairs import (
    EARLIER_SCHEMA,
    PAIRS_SCHEMA,
    VERIFY_PAIRS,
    Increment,
    Increments,
    SignatureLookup,
    candidate_pairs,
    earlier_pairs,
    pairs_table,
    verify_pairs,
)
from pipeline.dedup_signatures import (
    BATCH_DOCS,
    KEYS_SCHEMA,
    bucket_keys,
    content_hashes,
    doc_keys,
    partition_bounds,
    partition_of,
    require_columns,
    signature_matrix,
    signature_schema,
    signatures,
    split_doc,
)
from pipeline.schema import REMOVED_SCHEMA
from pipeline.stage import ShardResult, StageConfig, split_by_reason

# Importable from here as before the split (pipeline/shards.py, flows, tests and benchmarks use them).
__all__ = [
    "BATCH_DOCS",
    "DEDUP_REMOVED_SCHEMA",
    "DUPLICATES_SCHEMA",
    "EARLIER_SCHEMA",
    "INDEX_SCHEMA",
    "KEYS_SCHEMA",
    "PAIRS_SCHEMA",
    "VERIFY_PAIRS",
    "Corpus",
    "DedupConfig",
    "Increment",
    "Increments",
    "SignatureLookup",
    "apply_duplicates",
    "bucket_index",
    "bucket_keys",
    "candidate_pairs",
    "candidate_probability",
    "cluster_counts",
    "cluster_memory_mb",
    "clusters",
    "content_hashes",
    "doc_keys",
    "earlier_pairs",
    "implied_threshold",
    "pairs_table",
    "partition_bounds",
    "partition_of",
    "partitions_for",
    "shard_duplicates",
    "signature_matrix",
    "signature_schema",
    "signatures",
    "split_doc",
    "verify_pairs",
]

# Working memory of the pairs step per bucket key: the key and doc as read (16) and as arrays (16),
# the sort order (8), sorted copies (16), each bucket's first doc (8) and slack; 85 measured on
# 2M synthetic signatures (benchmarks/dedup_memory.py).
_BYTES_PER_KEY = 96


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


def apply_duplicates(table: pa.Table, duplicates: pa.Table) -> ShardResult:
    """Drop this shard's documents listed in `duplicates` (rows of this shard); the removed ones
    keep their cluster id, kept document and similarity."""
    require_columns(table, ("id",), "apply_duplicates documents")
    require_columns(duplicates, DUPLICATES_SCHEMA.names, "apply_duplicates duplicates")
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
