"""Corpus-wide exact and MinHash-LSH near-duplicate removal, in three steps a flow caches apart:

1. `signatures(table)` per shard (parallel): a hash of the normalized text and a MinHash of its
   word n-grams.
2. `find_duplicates(tables)` once over all signature tables in corpus order (shard order, then
   row order). The rule: the FIRST occurrence is kept; every later document whose normalized
   text is identical (exact), or whose estimated Jaccard similarity with an already kept document
   reaches `threshold` (near), is a duplicate of that kept document. Duplicates always point at
   a kept document, never at another duplicate, so there are no chains.
3. `apply_duplicates(table, duplicates)` per shard (parallel): drop the listed documents.

Document ids must be unique across the corpus: step 3 removes by id.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import Field, model_validator

from pipeline.stage import ShardResult, StageConfig, split_by_reason
from pipeline.text import normalize, word_ngrams

# datasketch >= 2.0 default: 32-bit affine permutations; stored explicitly so saved signatures
# stay readable if the library default changes.
SCHEME = "affine32"
# Shingles hashed per datasketch update_batch call: bounds the (shingles x num_perm) matrix.
BATCH = 8192

SIGNATURE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("content_hash", pa.binary(16), nullable=False),  # blake2b-128 of the normalized text
    pa.field("minhash", pa.list_(pa.uint32()), nullable=False),  # empty when the text has no words
])

DUPLICATES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),  # exact_duplicate | near_duplicate
    pa.field("duplicate_of", pa.string(), nullable=False),  # id of the kept representative
    pa.field("similarity", pa.float64(), nullable=False),  # 1.0 for exact; estimated Jaccard for near
])


class DedupConfig(StageConfig):
    exact: bool = Field(True, description="Remove documents whose normalized text equals an earlier one's.")
    near: bool = Field(True, description="Remove documents whose MinHash-estimated Jaccard similarity with an "
                                         "earlier kept document reaches `threshold`.")
    lowercase: bool = Field(True, description="Normalize: compare texts case-insensitively.")
    strip_punctuation: bool = Field(True, description="Normalize: replace punctuation and symbols by spaces.")
    fold_whitespace: bool = Field(True, description="Normalize: collapse runs of whitespace into one space and "
                                                    "trim (word shingles always split on whitespace, so this "
                                                    "only matters for exact duplicates).")
    ngram: int = Field(5, ge=1, le=64, description="Words per shingle (word n-grams) for near-dedup.")
    num_perm: int = Field(112, ge=2, le=1024, description="MinHash permutations (signature length).")
    bands: int = Field(14, ge=2, description="LSH bands; candidates share all rows of at least one band.")
    rows: int = Field(8, ge=1, description="LSH rows per band; bands * rows must be <= num_perm.")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (fixed: signatures are reproducible).")
    threshold: float = Field(0.8, ge=0.0, le=1.0, description="Estimated Jaccard similarity an LSH candidate must "
                                                              "reach to count as a near duplicate.")

    @model_validator(mode="after")
    def _bands_fit(self) -> "DedupConfig":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands} * {self.rows} = {self.bands * self.rows} "
                             f"exceeds num_perm = {self.num_perm}")
        return self


def implied_threshold(bands: int, rows: int) -> float:
    """Jaccard similarity at which a pair becomes an LSH candidate with probability ~1/2
    (the S-curve's midpoint), for reports: pairs well below it are rarely even compared."""
    return (1.0 / bands) ** (1.0 / rows)


# -- step 1: signatures per shard -------------------------------------------------------------

def signatures(table: pa.Table, config: DedupConfig) -> pa.Table:
    """id, content_hash and MinHash of every document in `table`, in row order."""
    _require(table, ("id", "text"), "signatures")
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    base = MinHash(num_perm=config.num_perm, seed=config.seed, scheme=SCHEME)
    hashes, sigs = [], []
    for text in texts:
        norm = normalize(text or "", config.lowercase, config.strip_punctuation, config.fold_whitespace)
        hashes.append(hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest())
        shingles = [s.encode("utf-8") for s in word_ngrams(norm.split(), config.ngram)] if config.near else []
        if not shingles:
            sigs.append(np.empty(0, np.uint32))
            continue
        m = base.copy()
        for i in range(0, len(shingles), BATCH):
            m.update_batch(shingles[i:i + BATCH])
        sigs.append(m.hashvalues.astype(np.uint32))
    offsets = np.zeros(len(sigs) + 1, np.int32)
    np.cumsum([len(s) for s in sigs], out=offsets[1:])
    values = np.concatenate(sigs) if sigs else np.empty(0, np.uint32)
    minhash = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint32()))
    return pa.table([pa.array(ids, pa.string()), pa.array(hashes, pa.binary(16)), minhash],
                    schema=SIGNATURE_SCHEMA)


# -- step 2: one corpus-wide pass -------------------------------------------------------------

def find_duplicates(signature_tables: Iterable[pa.Table], config: DedupConfig) -> pa.Table:
    """Duplicates over the whole corpus, in corpus order; first occurrence kept (module docstring).

    Near duplicates: the LSH index holds kept documents only; among a document's candidates the
    most similar one (earliest on ties) is its representative, if it reaches `threshold`.
    """
    lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
    first_with_hash: dict[bytes, str] = {}
    kept: list[tuple[str, np.ndarray]] = []  # LSH key (int, corpus order) -> (id, signature)
    seen_ids: dict[str, tuple[int, int]] = {}
    out_id, out_reason, out_of, out_sim = [], [], [], []

    for t, table in enumerate(signature_tables):
        _require(table, ("id", "content_hash", "minhash"), f"signature table {t}")
        ids = table.column("id").to_pylist()
        hashes = table.column("content_hash").to_pylist()
        col = table.column("minhash").combine_chunks()
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy(zero_copy_only=False)
        for r, doc_id in enumerate(ids):
            if doc_id in seen_ids:
                raise ValueError(f"document id {doc_id!r} occurs twice in the corpus (signature table "
                                 f"{seen_ids[doc_id][0]} row {seen_ids[doc_id][1]}, and table {t} row {r}): "
                                 f"ids must be unique; was the same input ingested twice?")
            seen_ids[doc_id] = (t, r)
            h = hashes[r]
            if config.exact and h in first_with_hash:
                out_id.append(doc_id), out_reason.append("exact_duplicate")
                out_of.append(first_with_hash[h]), out_sim.append(1.0)
                continue
            sig = values[offsets[r]:offsets[r + 1]]
            if not config.near or len(sig) == 0:
                first_with_hash.setdefault(h, doc_id)
                continue
            if len(sig) != config.num_perm:
                raise ValueError(f"signature of {doc_id!r} (table {t} row {r}) has {len(sig)} values, config "
                                 f"num_perm is {config.num_perm}: signatures were made with another config")
            query = LeanMinHash(seed=config.seed, hashvalues=sig, scheme=SCHEME)
            best_key, best_sim = -1, -1.0
            for key in sorted(lsh.query(query)):
                sim = float(np.count_nonzero(kept[key][1] == sig)) / config.num_perm
                if sim > best_sim:
                    best_key, best_sim = key, sim
            if best_key >= 0 and best_sim >= config.threshold:
                out_id.append(doc_id), out_reason.append("near_duplicate")
                out_of.append(kept[best_key][0]), out_sim.append(best_sim)
                continue
            first_with_hash.setdefault(h, doc_id)
            lsh.insert(len(kept), query, check_duplication=False)
            kept.append((doc_id, sig))

    return pa.table([pa.array(out_id, pa.string()), pa.array(out_reason, pa.string()),
                     pa.array(out_of, pa.string()), pa.array(out_sim, pa.float64())], schema=DUPLICATES_SCHEMA)


# -- step 3: apply per shard ------------------------------------------------------------------

def apply_duplicates(table: pa.Table, duplicates: pa.Table) -> ShardResult:
    """Drop this shard's documents listed in `duplicates`; detail names the kept document."""
    _require(table, ("id",), "apply_duplicates documents")
    _require(duplicates, DUPLICATES_SCHEMA.names, "apply_duplicates duplicates")
    mine = duplicates.filter(pc.is_in(duplicates.column("id"), value_set=table.column("id").combine_chunks()))
    found = {i: (reason, of, sim) for i, reason, of, sim in zip(*(mine.column(c).to_pylist()
                                                                   for c in DUPLICATES_SCHEMA.names))}
    reasons, details = [], []
    for doc_id in table.column("id").to_pylist():
        hit = found.get(doc_id)
        reasons.append(hit[0] if hit else None)
        details.append(f"duplicate_of={hit[1]} similarity={hit[2]:.4f}" if hit else None)
    return split_by_reason(table, reasons, details)


def _require(table: pa.Table, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; the table has {table.column_names}")
