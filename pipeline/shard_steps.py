"""The skeleton every shard step shares: read a committed upstream shard, write outputs atomically,
write the shard's stats file last as its commit point, and skip a shard already committed.

Steps take plain, picklable arguments (store URL, fingerprints, config) so they run in a worker
process. A shard whose stats file exists is not recomputed while its files are what the stats
record (storage/verify.py); a damaged one is done again, with a warning. Each stage's steps live
in their own module (ingest_steps, filter_step, dedup_steps, tokenize_steps), so that a change to
one stage's code changes only that stage's fingerprint.
"""

from __future__ import annotations

import logging
from typing import Callable

from pipeline.failpoints import failpoint
from pipeline.stage import ShardResult
from storage import StageDir, Store
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
    return commit_stats(out, index, docs_parts(index), counts, seconds, **extra)


def commit_stats(out: StageDir, index: int, outputs: dict, counts: dict, seconds: float, **extra) -> dict:
    """A shard's stats (storage.manifest.ShardStats), the one place they are made, committed."""
    stats = {"index": index, "outputs": outputs, "counts": counts, "seconds": round(seconds, 3), **extra}
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
