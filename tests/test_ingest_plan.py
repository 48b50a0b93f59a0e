"""Ingest shards of a target size: big gzip WARCs cut into byte ranges, small files grouped, and the
pieces of a cut file give exactly the documents of the whole file."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipeline.ingest import IngestConfig, ingest_batches, ingest_file
from pipeline.ingest_plan import plan_shards
from pipeline.stage import merge_counts


def test_plan_cuts_big_gzip_warcs_and_groups_small_files():
    files = [("a.warc.gz", 1000), ("b.jsonl.gz", 100), ("c.warc.gz", 120), ("d.jsonl", 2500), ("e.wet.gz", 90)]
    plan = plan_shards(files, 300)
    pieces = [(p["url"], p["start"], p["end"]) for shard in plan for p in shard]
    # a: 1000 bytes in round(1000/300) = 3 ranges; d is not gzip per record, so it stays whole
    assert pieces == [
        ("a.warc.gz", 0, 334),
        ("a.warc.gz", 334, 668),
        ("a.warc.gz", 668, None),
        ("b.jsonl.gz", 0, None),
        ("c.warc.gz", 0, None),
        ("d.jsonl", 0, None),
        ("e.wet.gz", 0, None),
    ]
    assert [len(s) for s in plan] == [1, 1, 1, 2, 1, 1]  # b and c share a shard
    assert plan == plan_shards(files, 300)
    assert plan_shards(files, 10**9) == [[{"url": u, "start": 0, "end": None} for u, _ in files]]
    with pytest.raises(ValueError, match="shard_bytes"):
        plan_shards(files, 0)


@pytest.mark.parametrize(
    "name", ["ukwa-govuk-BL-20140325121225068.warc.gz", "aut-example.warc.gz", "pywb-iana.warc.gz"]
)
def test_pieces_of_a_cut_file_give_the_whole_file(shared_data, name):
    path = str(shared_data(f"warc/{name}"))
    whole = ingest_file(path, IngestConfig())
    plan = plan_shards([(path, os.path.getsize(path))], 50_000)
    assert len(plan) >= 4
    kept, removed, counts = [], [], {}
    for shard in plan:
        for piece in shard:
            for batch in ingest_batches(path, IngestConfig(), start=piece["start"], end=piece["end"]):
                kept.append(batch.kept)
                removed.append(batch.removed)
                counts = merge_counts(counts, batch.counts)
    assert pa.concat_tables(kept).equals(whole.kept)
    assert pa.concat_tables(removed).equals(whole.removed)
    assert counts == merge_counts({}, whole.counts)


@pytest.mark.slow
def test_ingest_stage_output_does_not_depend_on_the_shard_size(prefect_api, shared_data, tmp_path):
    import pyarrow.parquet as pq

    from flows.stages import ingest

    inputs = [
        str(shared_data(rel))
        for rel in (
            "warc/ukwa-govuk-BL-20140325121225068.warc.gz",
            "warc/cc-whirlwind.warc.gz",
            "text/dolma-ccnet-cc_en_head-0091.jsonl.gz",
        )
    ]
    outputs = {}
    for shard_bytes in (200_000, 1 << 30):
        r = ingest(inputs, IngestConfig(shard_bytes=shard_bytes), store=str(tmp_path / str(shard_bytes)))
        parts = sorted((tmp_path / str(shard_bytes)).glob("ingest/*/data/part-*.parquet"))
        outputs[shard_bytes] = (len(parts), pa.concat_tables([pq.read_table(p) for p in parts]), r["counts"])
    (n_small, small, c_small), (n_big, big, c_big) = outputs[200_000], outputs[1 << 30]
    assert n_small == 5 and n_big == 1  # the 785 KB WARC cut in 4; whirlwind and the JSONL together
    assert small.equals(big) and c_small == c_big and c_small["sources"] == 3
