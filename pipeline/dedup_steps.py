"""Dedup's four steps over the store (pipeline/dedup.py holds the logic): signatures and bucket keys
per shard, verified pairs per bucket partition, clusters once, then apply per shard; and the bucket
index of a finished increment that later increments look their keys up in."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.dedup import (
    KEYS_SCHEMA,
    Corpus,
    Increment,
    SignatureLookup,
    apply_duplicates,
    bucket_index,
    bucket_keys,
    candidate_pairs,
    cluster_counts,
    clusters,
    doc_keys,
    earlier_pairs,
    pairs_table,
    partition_bounds,
    shard_duplicates,
    signatures,
    verify_pairs,
)
from pipeline.shard_steps import commit_docs, commit_stats, read_docs, run_if_needed, stage_dir
from storage import StageDir


def signature_shard(store_url: str, fp: str, index: int, upstream: tuple[str, str], config: Any) -> dict:
    """Dedup step 1 on one document shard: its signatures and bucket keys."""
    out = stage_dir(store_url, "dedup-signatures", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        return commit_signatures(out, index, signatures(table, config), config, t0)

    return run_if_needed(out, index, work)


def commit_signatures(out: StageDir, index: int, sigs, config: Any, t0: float) -> dict:
    """Write a shard's signatures, then its bucket keys sorted by key (then document), so that step
    2 reads one key range of each shard's file whatever the partition count; then the stats file."""
    out.write_arrow(signature_part(index), sigs)
    keys, docs = bucket_keys(sigs, index, config)
    order = np.lexsort((docs, keys))
    out.write_arrow(keys_part(index), pa.table([keys[order], docs[order]], schema=KEYS_SCHEMA))
    return commit_stats(
        out,
        index,
        {"data": signature_part(index)},
        {"docs_in": sigs.num_rows, "bucket_keys": int(len(keys))},
        time.perf_counter() - t0,
    )


def signature_part(index: int) -> str:
    return StageDir.part("data", index, "arrow")


def keys_part(index: int) -> str:
    return StageDir.part("keys", index, "arrow")


def partition_keys(sig_dir: StageDir, shard_indexes, partition: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, doc) of one key-range partition over the shards, documents ascending within a key (as
    candidate_pairs needs): a slice of each shard's sorted keys file, found by binary search."""
    lo, hi = partition_bounds(partition, partitions)
    keys, docs = [np.empty(0, np.uint64)], [np.empty(0, np.uint64)]
    for i in shard_indexes:
        table = sig_dir.map_arrow(keys_part(i))
        key = table.column("key").to_numpy()
        a = int(np.searchsorted(key, np.uint64(lo))) if lo < 2**64 else len(key)
        b = int(np.searchsorted(key, np.uint64(hi))) if hi < 2**64 else len(key)
        keys.append(key[a:b].copy())
        docs.append(table.column("doc").to_numpy()[a:b].copy())
    return np.concatenate(keys), np.concatenate(docs)


def signature_lookup(sig_dir: StageDir):
    """Stored signatures of any document, memory-mapped (pipeline.dedup.SignatureLookup)."""
    return SignatureLookup(lambda shard: sig_dir.map_arrow(signature_part(shard)))


def pairs_shard(
    store_url: str,
    fp: str,
    partition: int,
    partitions: int,
    signatures_fp: str,
    shard_indexes: list[int],
    config: Any,
    earlier: list[dict] = (),
) -> dict:
    """Dedup step 2 on one key-range partition of `partitions`: candidate pairs from every shard's
    keys, verified; and with `earlier` increments (incremental runs), pairs with the documents they kept."""
    out = stage_dir(store_url, "dedup-pairs", fp)
    sig_dir = stage_dir(store_url, "dedup-signatures", signatures_fp)

    def work():
        t0 = time.perf_counter()
        key, doc = partition_keys(sig_dir, shard_indexes, partition, partitions)
        a, b = candidate_pairs(key, doc)
        lookup = signature_lookup(sig_dir)
        keep = verify_pairs(a, b, lookup, config)
        outputs = {"data": StageDir.part("data", partition, "arrow")}
        out.write_arrow(outputs["data"], pairs_table(a[keep], b[keep]))
        counts = {"candidate_pairs": int(len(a)), "duplicate_pairs": int(keep.sum())}
        if earlier:
            found, checked = earlier_pairs(key, doc, lookup, [earlier_increment(store_url, e) for e in earlier], config)
            outputs["earlier"] = StageDir.part("earlier", partition, "arrow")
            out.write_arrow(outputs["earlier"], found)
            counts.update(earlier_candidate_pairs=checked, earlier_duplicate_pairs=found.num_rows)
        return commit_stats(out, partition, outputs, counts, time.perf_counter() - t0, partitions=partitions)

    return run_if_needed(out, partition, work)


def earlier_increment(store_url: str, entry: dict):
    """An earlier increment (an entry of a dedup manifest's `increments`, with its index built) as
    pipeline.dedup.Increment: files are opened only when a lookup needs them."""
    index = stage_dir(store_url, "dedup-index", entry["index"])
    return Increment(
        entry["offset"],
        lambda: Corpus(dict(index.read_manifest()["rows"])),
        signature_lookup(stage_dir(store_url, "dedup-signatures", entry["signatures"])),
        entry["partitions"],
        lambda p: index.map_arrow(StageDir.part("data", p, "arrow")),
    )


def cluster_shard(
    store_url: str,
    fp: str,
    pairs_fp: str,
    signatures_fp: str,
    shard_indexes: list[int],
    config: Any,
    earlier: list[dict] = (),
    offset: int = 0,
) -> dict:
    """Dedup step 3, the one corpus-wide step: union-find over all pairs, then each shard's
    duplicates with their cluster written to their own file. Positions count from `offset`, after
    the documents of `earlier` increments."""
    out = stage_dir(store_url, "dedup-clusters", fp)
    sig_dir = stage_dir(store_url, "dedup-signatures", signatures_fp)
    pairs_dir = stage_dir(store_url, "dedup-pairs", pairs_fp)

    def work():
        t0 = time.perf_counter()
        corpus = Corpus(shard_rows(sig_dir, shard_indexes))
        pair_shards = pairs_dir.read_manifest()["shards"]
        found = [pairs_dir.read_arrow(s["earlier"]) for s in pair_shards if "earlier" in s]
        roots = clusters(corpus, (pairs_dir.read_arrow(s["data"]) for s in pair_shards), config, found, offset)
        lookup = signature_lookup(sig_dir)
        before = [earlier_increment(store_url, e) for e in earlier]
        by_reason: dict = {}
        for i in shard_indexes:
            dups = shard_duplicates(corpus, roots, i, lookup, config, before, offset)
            out.write_parquet(StageDir.part("data", i, "parquet"), dups)
            for r in dups.column("reason").to_pylist():
                by_reason[r] = by_reason.get(r, 0) + 1
        counts = {**cluster_counts(corpus, roots, offset), "by_reason": dict(sorted(by_reason.items()))}
        return commit_stats(out, 0, {"data": "data"}, counts, time.perf_counter() - t0)

    return run_if_needed(out, 0, work)


def shard_rows(sig_dir: StageDir, shard_indexes: list[int]) -> dict[int, int]:
    """Documents per shard of a signatures output (from its shard stats)."""
    return {i: sig_dir.read_shard_stats(i)["counts"]["docs_in"] for i in shard_indexes}


def index_shard(
    store_url: str,
    fp: str,
    partition: int,
    partitions: int,
    signatures_fp: str,
    clusters_fp: str,
    rows: list[list[int]],
    offset: int,
) -> dict:
    """One partition of a finished increment's bucket index (pipeline.dedup.bucket_index), which
    later increments look their keys up in."""
    out = stage_dir(store_url, "dedup-index", fp)
    sig_dir = stage_dir(store_url, "dedup-signatures", signatures_fp)
    clu_dir = stage_dir(store_url, "dedup-clusters", clusters_fp)

    def work():
        t0 = time.perf_counter()
        corpus = Corpus(dict(rows))
        key, doc = partition_keys(sig_dir, [i for i, _ in rows], partition, partitions)
        positions, kept = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for i, _ in rows:  # sorted by the caller: positions ascending, as bucket_index needs
            dups = clu_dir.read_parquet(StageDir.part("data", i, "parquet"), ["row", "cluster_id"])
            positions.append(offset + corpus.position(doc_keys(i, dups.column("row").to_numpy())))
            kept.append(dups.column("cluster_id").to_numpy())
        table = bucket_index(
            key,
            doc,
            corpus,
            offset,
            np.concatenate(positions),
            np.concatenate(kept),
        )
        rel = StageDir.part("data", partition, "arrow")
        out.write_arrow(rel, table)
        return commit_stats(out, partition, {"data": rel}, {"index_keys": table.num_rows}, time.perf_counter() - t0)

    return run_if_needed(out, partition, work)


def dedup_apply_shard(
    store_url: str, fp: str, index: int, upstream: tuple[str, str], clusters_fp: str, config: Any
) -> dict:
    """Dedup step 4 on one shard: drop its duplicates, write them aside with their cluster."""
    out = stage_dir(store_url, "dedup", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        dups = stage_dir(store_url, "dedup-clusters", clusters_fp).read_parquet(StageDir.part("data", index, "parquet"))
        result = apply_duplicates(table, dups)
        return commit_docs(out, index, result, time.perf_counter() - t0)

    return run_if_needed(out, index, work)
