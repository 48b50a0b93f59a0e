"""The ingest stage's step: the documents of a shard's input pieces."""

from __future__ import annotations

import time
from typing import Any

from pipeline.damage import merge_listed
from pipeline.ingest import IngestError, ingest_batches
from pipeline.remote import is_transient, with_retries
from pipeline.schema import DOC_SCHEMA, REMOVED_SCHEMA
from pipeline.shard_steps import commit_docs_stats, docs_parts, run_if_needed, stage_dir
from pipeline.stage import merge_counts
from storage.locations import public_name


def ingest_shard(store_url: str, fp: str, index: int, pieces: list[dict], config: Any) -> dict:
    """The documents of a shard's input pieces (whole files or byte ranges, pipeline/ingest_plan.py),
    written batch by batch so memory does not grow with the input. A piece's `url` reads it and may
    hold a presigned query; its `name` is what rows, stats and log lines say.

    A file that cannot be read at all (IngestError: no readable record, not its format; or gone) costs
    only itself: the other pieces are committed, and the stats' `unreadable` names it with the error
    (the flow then fails naming it). `damaged_records` lists the first damaged records by place."""
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
