"""Run one stage step over one stored shard and commit its outputs.

These are the units of work a flow maps over shards. Each takes plain, picklable arguments (store
URL, fingerprints, config) so it can run in a worker process, reads its input from the store,
writes its outputs atomically, and writes the shard's stats file last as the shard's commit point.
A shard whose stats file exists is not recomputed while its files are what the stats record
(storage/verify.py); a damaged one is done again, with a warning.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pyarrow as pa

from pipeline.damage import merge_listed
from pipeline.failpoints import failpoint
from pipeline.remote import is_transient, with_retries
from pipeline.schema import DOC_SCHEMA, REMOVED_SCHEMA
from pipeline.stage import ShardResult, merge_counts
from storage import StageDir, Store
from storage.locations import public_name
from storage.verify import shard_intact


def stage_dir(store_url: str, stage: str, fp: str) -> StageDir:
    return Store(store_url).stage(stage, fp)


def read_docs(upstream: StageDir, index: int, columns: list[str] | None = None):
    """The documents of one committed upstream shard (only `columns` when given)."""
    return upstream.read_parquet(StageDir.part("data", index, "parquet"), columns)


def docs_parts(index: int) -> dict:
    """Where a document stage writes shard `index`: kept documents and removed ones."""
    return {"data": StageDir.part("data", index, "parquet"), "removed": StageDir.part("removed", index, "parquet")}


def commit_docs(out: StageDir, index: int, result: ShardResult, seconds: float) -> dict:
    """Write kept and removed documents, then the stats file that marks the shard done."""
    parts = docs_parts(index)
    out.write_parquet(parts["data"], result.kept)
    out.write_parquet(parts["removed"], result.removed)
    return commit_docs_stats(out, index, result.counts, seconds)


def commit_docs_stats(out: StageDir, index: int, counts: dict, seconds: float, **extra) -> dict:
    """The stats file of a document shard whose files are written: the shard's commit point."""
    stats = {"index": index, "outputs": docs_parts(index), "counts": counts, "seconds": round(seconds, 3), **extra}
    return commit_shard(out, index, stats)


def commit_shard(out: StageDir, index: int, stats: dict) -> dict:
    """The stats as committed: with the size and CRC-32 of each file written (StageDir.commit_shard)."""
    failpoint(f"{out.name}:{index}")
    return out.commit_shard(index, stats)


def run_if_needed(out: StageDir, index: int, work: Callable[[], dict]) -> dict:
    """Skip a shard already committed (a resumed or concurrent run did it) whose files are intact."""
    if out.shard_done(index) and shard_intact(out, index, logging.getLogger(__name__).warning):
        return out.read_shard_stats(index)
    return work()


# -- the steps --------------------------------------------------------------------------------


def ingest_shard(store_url: str, fp: str, index: int, pieces: list[dict], config: Any) -> dict:
    """The documents of a shard's input pieces (whole files or byte ranges, pipeline/ingest_plan.py),
    written batch by batch so memory does not grow with the input. A piece's `url` reads it and may
    hold a presigned query; its `name` is what rows, stats and log lines say.

    A file that cannot be read at all (IngestError: no readable record, not its format; or gone) costs
    only itself: the other pieces are committed, and the stats' `unreadable` names it with the error
    (the flow then fails naming it). `damaged_records` lists the first damaged records by place."""
    from pipeline.ingest import IngestError, ingest_batches

    out = stage_dir(store_url, "ingest", fp)
    parts = docs_parts(index)

    def attempt() -> tuple[dict, list, list]:
        counts: dict = {"sources": sum(p["start"] == 0 for p in pieces)}  # files, counted once however cut
        damaged: list[dict] = []
        unreadable: list[dict] = []
        with (
            out.parquet_writer(parts["data"], DOC_SCHEMA) as kept_out,
            out.parquet_writer(parts["removed"], REMOVED_SCHEMA) as removed_out,
        ):
            for piece in pieces:
                try:  # an unreadable file raises before any of its documents (it has no record) is written
                    for batch in ingest_batches(
                        piece["url"], config, start=piece["start"], end=piece["end"], name=piece.get("name")
                    ):
                        kept_out.write_table(batch.kept)
                        removed_out.write_table(batch.removed)
                        counts = merge_counts(counts, batch.counts)
                        damaged = merge_listed(damaged, batch.damaged_records)
                except (IngestError, FileNotFoundError) as e:
                    if is_transient(e):  # throttled (fsspec says FileNotFoundError from a 503): try again
                        raise
                    unreadable.append({"file": piece.get("name") or public_name(piece["url"]), "error": str(e)})
        if unreadable:
            counts = merge_counts(counts, {"unreadable_files": len(unreadable)})
        return counts, damaged, unreadable

    def work():
        t0 = time.perf_counter()
        what = ", ".join(p.get("name") or public_name(p["url"]) for p in pieces)
        (counts, damaged, unreadable), retries = with_retries(attempt, what)  # throttled: all again
        return commit_docs_stats(
            out,
            index,
            counts,
            time.perf_counter() - t0,
            retries=retries,
            damaged_records=damaged,
            unreadable=unreadable,
        )

    return run_if_needed(out, index, work)


def filter_shard(store_url: str, stage: str, fp: str, index: int, upstream: tuple[str, str], config: Any) -> dict:
    """quality or pii over one shard of the upstream stage's documents."""
    out = stage_dir(store_url, stage, fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        result = FILTERS[stage]()(table, config)
        return commit_docs(out, index, result, time.perf_counter() - t0)

    return run_if_needed(out, index, work)


def _quality():
    from pipeline.quality import filter_quality

    return filter_quality


def _pii():
    from pipeline.pii import scrub

    return scrub


FILTERS = {"quality": _quality, "pii": _pii}


def signature_shard(
    store_url: str, fp: str, index: int, upstream: tuple[str, str], config: Any, partitions: int
) -> dict:
    """Dedup step 1 on one document shard: its signatures and bucket keys."""
    from pipeline.dedup import signatures

    out = stage_dir(store_url, "dedup-signatures", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        return commit_signatures(out, index, signatures(table, config), config, partitions, t0)

    return run_if_needed(out, index, work)


def commit_signatures(out: StageDir, index: int, sigs, config: Any, partitions: int, t0: float) -> dict:
    """Write a shard's signatures, then its bucket keys in one file per partition (every partition
    gets a file, maybe empty, so step 2 reads a fixed set), then the stats file."""
    from pipeline.dedup import KEYS_SCHEMA, bucket_keys, partition_of

    out.write_arrow(signature_part(index), sigs)
    keys, docs = bucket_keys(sigs, index, config)
    part = partition_of(keys, partitions)
    for p in range(partitions):
        mine = part == p
        out.write_arrow(bucket_part(p, index), pa.table([keys[mine], docs[mine]], schema=KEYS_SCHEMA))
    stats = {
        "index": index,
        "outputs": {"data": signature_part(index)},
        "counts": {"docs_in": sigs.num_rows, "bucket_keys": int(len(keys))},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return commit_shard(out, index, stats)


def signature_part(index: int) -> str:
    return StageDir.part("data", index, "arrow")


def bucket_part(partition: int, index: int) -> str:
    return StageDir.part(f"buckets/p-{partition:05d}", index, "arrow")


def signature_lookup(sig_dir: StageDir):
    """Stored signatures of any document, memory-mapped (pipeline.dedup.SignatureLookup)."""
    from pipeline.dedup import SignatureLookup

    return SignatureLookup(lambda shard: sig_dir.map_arrow(signature_part(shard)))


def pairs_shard(
    store_url: str,
    fp: str,
    partition: int,
    signatures_fp: str,
    shard_indexes: list[int],
    config: Any,
    earlier: list[dict] = (),
) -> dict:
    """Dedup step 2 on one bucket partition: candidate pairs from every shard's keys, verified; and
    with `earlier` increments (incremental runs), pairs with the documents they kept."""
    from pipeline.dedup import candidate_pairs, earlier_pairs, pairs_table, verify_pairs

    out = stage_dir(store_url, "dedup-pairs", fp)
    sig_dir = stage_dir(store_url, "dedup-signatures", signatures_fp)

    def work():
        t0 = time.perf_counter()
        keys = pa.concat_tables([sig_dir.read_arrow(bucket_part(partition, i)) for i in shard_indexes])
        key, doc = keys.column("key").to_numpy(), keys.column("doc").to_numpy()
        del keys
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
        stats = {
            "index": partition,
            "outputs": outputs,
            "counts": counts,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return commit_shard(out, partition, stats)

    return run_if_needed(out, partition, work)


def earlier_increment(store_url: str, entry: dict):
    """An earlier increment (an entry of a dedup manifest's `increments`, with its index built) as
    pipeline.dedup.Increment: files are opened only when a lookup needs them."""
    from pipeline.dedup import Corpus, Increment

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
    from pipeline.dedup import Corpus, cluster_counts, clusters, shard_duplicates

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
        stats = {
            "index": 0,
            "outputs": {"data": "data"},
            "counts": counts,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return commit_shard(out, 0, stats)

    return run_if_needed(out, 0, work)


def shard_rows(sig_dir: StageDir, shard_indexes: list[int]) -> dict[int, int]:
    """Documents per shard of a signatures output (from its shard stats)."""
    return {i: sig_dir.read_shard_stats(i)["counts"]["docs_in"] for i in shard_indexes}


def index_shard(
    store_url: str, fp: str, partition: int, signatures_fp: str, clusters_fp: str, rows: list[list[int]], offset: int
) -> dict:
    """One partition of a finished increment's bucket index (pipeline.dedup.bucket_index), which
    later increments look their keys up in."""
    import numpy as np

    from pipeline.dedup import Corpus, bucket_index, doc_keys

    out = stage_dir(store_url, "dedup-index", fp)
    sig_dir = stage_dir(store_url, "dedup-signatures", signatures_fp)
    clu_dir = stage_dir(store_url, "dedup-clusters", clusters_fp)

    def work():
        t0 = time.perf_counter()
        corpus = Corpus(dict(rows))
        keys = pa.concat_tables([sig_dir.read_arrow(bucket_part(partition, i)) for i, _ in rows])
        positions, kept = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for i, _ in rows:  # sorted by the caller: positions ascending, as bucket_index needs
            dups = clu_dir.read_parquet(StageDir.part("data", i, "parquet"), ["row", "cluster_id"])
            positions.append(offset + corpus.position(doc_keys(i, dups.column("row").to_numpy())))
            kept.append(dups.column("cluster_id").to_numpy())
        table = bucket_index(
            keys.column("key").to_numpy(),
            keys.column("doc").to_numpy(),
            corpus,
            offset,
            np.concatenate(positions),
            np.concatenate(kept),
        )
        rel = StageDir.part("data", partition, "arrow")
        out.write_arrow(rel, table)
        stats = {
            "index": partition,
            "outputs": {"data": rel},
            "counts": {"index_keys": table.num_rows},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return commit_shard(out, partition, stats)

    return run_if_needed(out, partition, work)


def dedup_apply_shard(
    store_url: str, fp: str, index: int, upstream: tuple[str, str], clusters_fp: str, config: Any
) -> dict:
    """Dedup step 4 on one shard: drop its duplicates, write them aside with their cluster."""
    from pipeline.dedup import apply_duplicates

    out = stage_dir(store_url, "dedup", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        dups = stage_dir(store_url, "dedup-clusters", clusters_fp).read_parquet(StageDir.part("data", index, "parquet"))
        result = apply_duplicates(table, dups)
        return commit_docs(out, index, result, time.perf_counter() - t0)

    return run_if_needed(out, index, work)


def tokenizer_shard(store_url: str, fp: str, upstream: tuple[str, str], shard_indexes: list[int], config: Any) -> dict:
    """Train the BPE on a deterministic sample of the cleaned corpus; save tokenizer.json and the
    files that make its folder loadable by transformers. Also fix the corpus-wide validation
    cut-off (val_cut), so every encode shard splits by the same rule."""
    from pipeline.tokenize import sample_texts, train_tokenizer, transformers_files, val_cut

    out = stage_dir(store_url, "tokenizer", fp)
    up = stage_dir(store_url, *upstream)

    def work():
        t0 = time.perf_counter()
        tables = (read_docs(up, i) for i in shard_indexes)
        tok = train_tokenizer(sample_texts(tables, config), config)
        rel = "data/tokenizer.json"
        out.write_bytes(rel, tok.to_str(pretty=True).encode())
        for name, data in transformers_files().items():
            out.write_bytes(f"data/{name}", data)
        ids = (i for index in shard_indexes for i in read_docs(up, index, ["id"]).column("id").to_pylist())
        counts = {"vocab_size": tok.get_vocab_size(), "val_cut": val_cut(ids, config)}
        stats = {"index": 0, "outputs": {"data": rel}, "counts": counts, "seconds": round(time.perf_counter() - t0, 3)}
        return commit_shard(out, 0, stats)

    return run_if_needed(out, 0, work)


def encode_shard(
    store_url: str,
    fp: str,
    index: int,
    upstream: tuple[str, str],
    tokenizer_fp: str,
    config: Any,
    parallel: bool = True,
) -> dict:
    """Encode one document shard to train and val token files. `parallel`: whether HF tokenizers
    may use a thread per core in this process (off when there is a worker process per core)."""
    from tokenizers import Tokenizer

    from pipeline.tokenize import encode_table, encode_threads

    out = stage_dir(store_url, "tokenize", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        tok_dir = stage_dir(store_url, "tokenizer", tokenizer_fp)
        tok = Tokenizer.from_str(tok_dir.read_bytes("data/tokenizer.json").decode())
        cut = tok_dir.read_manifest()["counts"]["val_cut"]
        with encode_threads(parallel):
            train, val, counts = encode_table(table, tok, config, cut)
        outputs = {
            "train": StageDir.part("data/train", index, "arrow"),
            "val": StageDir.part("data/val", index, "arrow"),
        }
        out.write_arrow(outputs["train"], train)
        out.write_arrow(outputs["val"], val)
        stats = {"index": index, "outputs": outputs, "counts": counts, "seconds": round(time.perf_counter() - t0, 3)}
        return commit_shard(out, index, stats)

    return run_if_needed(out, index, work)
