"""The artifact store: fingerprints, atomic writes, commit points, fsspec URLs, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os

import pyarrow as pa
import pytest

from storage import Store, StoreError, canonical_json, file_identity, fingerprint


def test_fingerprint_depends_on_every_part():
    base = fingerprint("quality", "code1", {"a": 1, "b": [1, 2]}, "up")
    assert base == fingerprint("quality", "code1", {"b": [1, 2], "a": 1}, "up")  # key order is irrelevant
    assert base != fingerprint("dedup", "code1", {"a": 1, "b": [1, 2]}, "up")
    assert base != fingerprint("quality", "code2", {"a": 1, "b": [1, 2]}, "up")
    assert base != fingerprint("quality", "code1", {"a": 2, "b": [1, 2]}, "up")
    assert base != fingerprint("quality", "code1", {"a": 1, "b": [1, 2]}, "other")


def test_code_version_follows_shared_helpers_not_lazy_imports():
    from storage.fingerprint import code_version, module_closure

    # quality and dedup share pipeline/text.py: editing it must invalidate both
    assert "pipeline.text" in module_closure(["pipeline.quality"]) & module_closure(["pipeline.dedup"])
    assert "pipeline.warc" in module_closure(["pipeline.crawl"])  # `from pipeline import warc`
    # a stage split into a package: every module of it decides the stage's output
    recipes = {f"pipeline.quality.{m}" for m in ("gopher", "c4", "fineweb", "checks", "doc")}
    assert recipes <= module_closure(["pipeline.quality"])
    assert "pipeline.pii.recognizers" in module_closure(["pipeline.pii"])
    assert {"model.gpt", "model.data"} <= module_closure(["model.train"])
    # the shard skeleton imports no stage: a change to one stage leaves the others cached
    glue = module_closure(["pipeline.shard_steps"])
    assert not glue & {"pipeline.quality", "pipeline.dedup", "pipeline.pii", "pipeline.tokenize", "pipeline.ingest"}
    assert code_version("pipeline.quality", "pipeline.filter_step") != code_version(
        "pipeline.pii", "pipeline.filter_step"
    )
    assert code_version("pipeline.quality") == code_version("pipeline.quality", "pipeline.text")


def test_code_version_ignores_docstrings_comments_and_layout():
    """A docstring or comment edit of a stage module leaves its cache key; a code edit does not."""
    import inspect

    import pipeline.quality
    from storage.fingerprint import code_text

    source = inspect.getsource(pipeline.quality)
    first_def = source.index("\ndef ")
    edited = (
        '"""Another module docstring."""\n# a new comment\n'
        + source[source.index("from __future__") : first_def]
        + "\n\n# more comment\n"
        + source[first_def:].replace('"""', '"""Reworded. ', 1)
    )
    assert edited != source and code_text(edited) == code_text(source)
    assert code_text(source.replace("(\n", "(", 1)) == code_text(source)  # a line break inside brackets
    assert code_text(source.replace('f"signal_{name}"', 'f"signals_{name}"')) != code_text(source)  # a string in code
    assert code_text("def f():\n    'doc'\n    return 1\n") == code_text("def f():\n    return 1  # one\n")


def test_canonical_json_handles_pydantic_models():
    from pipeline.stage import StageConfig

    class C(StageConfig):
        x: int = 1

    assert canonical_json({"c": C()}) == '{"c":{"x":1}}'


def test_file_identity(tmp_path):
    f = tmp_path / "a.warc.gz"
    f.write_bytes(b"x" * 3_000_000)
    ident = file_identity(str(f))
    assert ident["size"] == 3_000_000
    f.write_bytes(b"x" * 2_999_999 + b"y")  # a change in the tail changes the identity
    assert file_identity(str(f))["sample_sha256"] != ident["sample_sha256"]
    with pytest.raises(FileNotFoundError, match="missing.warc"):
        file_identity(str(tmp_path / "missing.warc"))


@pytest.mark.parametrize("url", ["memory://c2l-test", "file://{tmp}", "{tmp}"])
def test_stage_roundtrip_on_fsspec_urls(url, tmp_path):
    store = Store(url.format(tmp=tmp_path / "store"))
    sd = store.stage("quality", "abc")
    table = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    assert not sd.is_committed() and not sd.shard_done(0)
    sd.write_parquet("data/part-00000.parquet", table)
    assert not sd.shard_done(0)  # data alone is not a committed shard
    sd.commit_shard(0, {"index": 0, "counts": {"docs_in": 2}})
    assert sd.shard_done(0)
    assert sd.read_parquet("data/part-00000.parquet").equals(table)
    sd.write_arrow("data/tokens.arrow", table)
    assert sd.read_arrow("data/tokens.arrow").equals(table)
    manifest = sd.commit({"counts": {"docs_in": 2}})
    assert sd.is_committed() and sd.read_manifest() == manifest
    assert sd.list("data") == ["data/part-00000.parquet", "data/tokens.arrow"]


def test_missing_shard_file_names_the_file(tmp_path):
    sd = Store(str(tmp_path)).stage("dedup", "f00")
    with pytest.raises(StoreError, match="part-00003.parquet"):
        sd.read_parquet("data/part-00003.parquet")
    with pytest.raises(StoreError, match="never committed"):
        sd.read_manifest()


def test_temporary_files_are_invisible_and_never_trusted(tmp_path):
    sd = Store(str(tmp_path)).stage("pii", "f01")
    os.makedirs(sd.abspath("data"))
    open(sd.abspath("data/part-00000.parquet.tmp-deadbeef"), "wb").write(b"half a file")  # a killed writer
    assert sd.list("data") == []
    assert not sd.shard_done(0)


def _writer(root: str, n: int) -> None:
    sd = Store(root).stage("tokenize", "same")
    table = pa.table({"tokens": [list(range(i, i + 50)) for i in range(2000)]})
    for _ in range(n):
        sd.write_arrow("data/part-00000.arrow", table)
        sd.commit_shard(0, {"index": 0, "counts": {"rows": 2000}})
    sd.commit({"counts": {"rows": 2000}})


def test_two_concurrent_writers_leave_a_valid_stage(tmp_path):
    """Every file is put in place whole and once, so two runs writing the same stage at once (here
    without the stage lock) leave complete files, the first writer's, and no partial ones."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 20)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    sd = Store(str(tmp_path)).stage("tokenize", "same")
    assert sd.read_arrow("data/part-00000.arrow").num_rows == 2000
    assert sd.read_manifest()["counts"] == {"rows": 2000}
    leftovers = [f for f in os.listdir(sd.abspath("data")) if ".tmp-" in f]
    assert leftovers == []


def test_parquet_writer_commits_only_a_finished_file(tmp_path):
    sd = Store(str(tmp_path)).stage("ingest", "fp")
    schema = pa.schema([("x", pa.int64())])
    with sd.parquet_writer("data/part-00000.parquet", schema) as w:
        w.write_table(pa.table({"x": [1, 2]}, schema=schema))
        w.write_table(pa.table({"x": [3]}, schema=schema))
        assert sd.list("data") == []  # nothing visible while writing
    assert sd.read_parquet("data/part-00000.parquet").column("x").to_pylist() == [1, 2, 3]
    with pytest.raises(RuntimeError, match="worker died"):
        with sd.parquet_writer("data/part-00001.parquet", schema) as w:
            w.write_table(pa.table({"x": [4]}, schema=schema))
            raise RuntimeError("worker died")
    assert sd.list("data") == ["data/part-00000.parquet"]
    assert not list((tmp_path / "ingest" / "fp" / "data").glob("*.tmp-*"))


def test_paths_from_manifests_stay_inside_the_store(tmp_path):
    """A forged manifest cannot make a stage read (or write) files outside the store: shard paths,
    another output's files and stage names read from manifests are all checked."""
    store = Store(str(tmp_path / "store"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jsonl").write_text('{"text": "not for the store"}\n')
    tok = store.stage("tokenize", "b")
    tok.write_bytes("data/train/part-00000.arrow", b"x")
    union = store.stage("tokenize", "a")
    assert union.abspath("../b/data/train/part-00000.arrow") == tok.abspath("data/train/part-00000.arrow")
    assert union.read_bytes("../b/data/train/part-00000.arrow") == b"x"  # a union of increments: allowed
    for rel in ("../../../outside/secret.jsonl", "/etc/passwd", "data/../../../../outside/secret.jsonl"):
        with pytest.raises(StoreError, match=rf"store/tokenize/a/manifest.json names '{rel}', which leaves the store"):
            union.read_bytes(rel)
    with pytest.raises(StoreError, match="leaves the store"):
        union.write_bytes("../../../outside/planted.txt", b"x")
    assert not (tmp_path / "outside" / "planted.txt").exists()
    with pytest.raises(StoreError, match=r"stage output 'tokenizer/\.\./\.\./\.\./outside', named in a manifest"):
        store.stage("tokenizer", "../../../outside").read_bytes("secret.jsonl")


def test_ingest_of_a_forged_crawl_output_reads_nothing_outside_the_store(tmp_path):
    from flows.stages import _ingest_sources

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jsonl").write_text('{"text": "not for the store"}\n')
    crawl = Store(str(tmp_path / "store")).stage("crawl", "f00")
    crawl.commit({"shards": [{"index": 0, "data": "../../../outside/secret.jsonl"}]})
    with pytest.raises(StoreError, match=r"crawl/f00/manifest.json names '\.\./\.\./\.\./outside/secret.jsonl'"):
        _ingest_sources([crawl.url()], None, "https://data.commoncrawl.org/")
