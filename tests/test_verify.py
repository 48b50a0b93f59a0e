"""A committed shard whose file was deleted, truncated or bit-flipped is noticed when a run reuses it,
done again with a warning, and the data end byte-identical to an untouched run's; `crawl2llm verify`
finds every damage and names the files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.flow_inputs import tiny_config

DOC_STAGES = ("ingest", "dedup", "quality", "pii", "tokenize")
INPUTS = ["warc/dolma-sample-0000.warc.gz"]


def _files(store: Path) -> dict[str, bytes]:
    """Every committed file but the shard stats (they hold seconds) and lock files."""
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and "/stats/" not in p.as_posix() and ".lock" not in p.name
    }


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # one bit flipped in the middle: the size stays
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


def _data_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "data").rglob("part-*") if p.is_file())


def _stats_of(data_file: Path, out: Path) -> Path:
    return out / "stats" / (data_file.stem + ".json")


@pytest.mark.slow
def test_damaged_shards_are_redone_byte_identical(prefect_api, tmp_path, shared_data):
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    store = tmp_path / "store"
    config = PipelineConfig.model_validate(
        tiny_config(
            str(store),
            [str(shared_data(r)) for r in INPUTS],
            stop_after="tokenize",
            workers=0,
            ingest={"shard_bytes": 75_000},
        )
    )
    first = pipeline(config)
    untouched = _files(store)
    damaged: dict[str, list[tuple[Path, str]]] = {}
    for stage in DOC_STAGES:  # every stage at once: its first three data files, one damage each
        out = Path(first[stage]["url"])
        files = _data_files(out)
        assert len(files) >= 3, (stage, files)
        damaged[stage] = list(zip(files, ("delete", "truncate", "flip")))
    before = {p: _stats_of(p, Path(first[s]["url"])).stat().st_mtime_ns for s in damaged for p, _ in damaged[s]}
    for stage in damaged:
        for path, how in damaged[stage]:
            damage(path, how)

    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    flow_log = logging.getLogger("prefect.flow_runs")  # what get_run_logger() writes to in a flow
    flow_log.addHandler(handler)
    try:
        again = pipeline(config)
    finally:
        flow_log.removeHandler(handler)
    assert not any(again[s]["cached"] for s in DOC_STAGES)  # each redid shards
    for stage in damaged:
        out = Path(first[stage]["url"])
        for path, how in damaged[stage]:
            what = {"delete": "is missing", "truncate": "bytes, committed with", "flip": "has CRC-32"}[how]
            assert any(f"{path} " in m and what in m and m.startswith(f"{stage} ") for m in warned), (path, how, warned)
            assert _stats_of(path, out).stat().st_mtime_ns != before[path], path  # the shard was committed again
    assert _files(store) == untouched  # the same bytes, every stage's data, removed documents and manifests
    assert not [m for m in warned if "other bytes" in m]  # each redone shard matched what its stats recorded


def test_verify_command_names_every_damage(tmp_path, shared_data, capsys):
    """Two real ingest shards; a clean store passes, then each damage is found and named."""
    from flows.cli import main
    from pipeline.ingest import IngestConfig
    from pipeline.ingest_steps import ingest_shard

    store = tmp_path / "store"
    for i, rel in enumerate(["warc/resiliparse-warcfile.warc.gz", "warc/cc-whirlwind.warc.gz"]):
        url = str(shared_data(rel))
        ingest_shard(str(store), "fp", i, [{"url": url, "start": 0, "end": None, "name": rel}], IngestConfig())
    out = store / "ingest" / "fp"
    assert main(["verify", str(store)]) == 0
    assert "ingest/fp" in capsys.readouterr().out
    kept, removed = out / "data" / "part-00000.parquet", out / "removed" / "part-00001.parquet"
    other = out / "data" / "part-00001.parquet"
    damage(kept, "flip")
    damage(removed, "truncate")
    damage(other, "delete")
    assert main(["verify", str(out)]) == 1  # one stage output named, as a store is
    text = capsys.readouterr().out
    for path, what in [(kept, "has CRC-32"), (removed, "bytes, committed with"), (other, "is missing")]:
        assert any(f"{path} " in line and what in line for line in text.splitlines()), text
    assert "3 damaged" in text, text
    assert main(["verify", str(tmp_path / "nope")]) == 2  # a mistyped store is an error, not a clean one
    assert "no such store" in capsys.readouterr().err


def test_object_store_reuse_checks_sizes_and_verify_reads_everything(shared_data, caplog):
    """On an object store (memory://) a shard job that finds its shard committed checks sizes only:
    a truncated file is redone with a warning, a flipped bit is left to `verify`, which finds it."""
    import fsspec

    from pipeline.ingest import IngestConfig
    from pipeline.ingest_steps import ingest_shard
    from storage import Store
    from storage.verify import redone_differently, stage_outputs, verify_outputs

    url, rel = "memory://c2l-verify", "warc/resiliparse-warcfile.warc.gz"
    piece = [{"url": str(shared_data(rel)), "start": 0, "end": None, "name": rel}]
    first = ingest_shard(url, "fp", 0, piece, IngestConfig())
    fs, sd = fsspec.filesystem("memory"), Store(url).stage("ingest", "fp")
    kept, removed = sd.abspath("data/part-00000.parquet"), sd.abspath("removed/part-00000.parquet")
    good = fs.cat_file(kept)
    fs.pipe_file(kept, good[:-100])
    with caplog.at_level(logging.WARNING, logger="pipeline.shard_steps"):
        again = ingest_shard(url, "fp", 0, piece, IngestConfig())
    assert any(
        f"{sd.url('data/part-00000.parquet')} has {len(good) - 100} bytes" in r.getMessage() for r in caplog.records
    ), caplog.text
    assert fs.cat_file(kept) == good and again["files"] == first["files"]
    said: list[str] = []
    assert redone_differently(sd, {0: {"files": first["files"]}}, {0: again}, said.append) == [] and not said
    other = {**first["files"], "data/part-00000.parquet": {"size": 1, "crc32": "00000000"}}
    assert redone_differently(sd, {0: {"files": other}}, {0: again}, said.append) == [0] and "stale" in said[0]

    flipped = bytearray(fs.cat_file(removed))
    flipped[len(flipped) // 2] ^= 0x80
    fs.pipe_file(removed, bytes(flipped))
    caplog.clear()
    ingest_shard(url, "fp", 0, piece, IngestConfig())  # reused as it is: same size
    assert not caplog.records and fs.cat_file(removed) == bytes(flipped)
    [row] = verify_outputs(stage_outputs(url))
    assert row["shards"] == 1 and len(row["problems"]) == 1 and "has CRC-32" in row["problems"][0], row
    fs.rm(f"/{url.removeprefix('memory://')}", recursive=True)
