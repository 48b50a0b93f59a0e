"""Incremental re-runs through the pipeline flow on real WARC files: a run over two files, then a
third file lands holding near copies of documents the first run kept plus new pages. The re-run
processes only the new file's shards, removes the copies as duplicates of the earlier documents,
keeps the new pages, trains on both increments' tokens and leaves every earlier byte alone; a run
with nothing new is cached throughout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline import warc
from tests.fixtures.flow_inputs import tiny_config
from tests.fixtures.prefect_runs import task_states

pytestmark = pytest.mark.slow

PER_SHARD = ("ingest", "dedup-signatures", "dedup", "quality", "pii", "tokenize")


def _responses(path: Path):
    """(record id, target URL, HTTP block) of each response record, as stored."""
    with open(path, "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
            rid = r.headers.get("WARC-Record-ID").strip("<>").removeprefix("urn:uuid:")
            yield rid, r.headers.get("WARC-Target-URI").strip("<>"), r.reader.read()


def _third_warc(path: Path, copies_of: dict[str, Path], new_pages: Path, new_records: int) -> dict[str, str]:
    """Near copies of earlier documents (a sentence added to two, the third verbatim) under new
    URLs, then the first `new_records` HTML pages (under 60 KB) of another real WARC. Returns copy
    id -> original id."""
    records, origin, date = [], {}, "2024-05-01T00:00:00Z"
    for n, (doc_id, source) in enumerate(copies_of.items()):
        block = next(b for rid, _, b in _responses(source) if rid == doc_id)
        url = next(u for rid, u, _ in _responses(source) if rid == doc_id)
        if n < 2:
            block = block.replace(b"</body>", b"<p>This page was updated with one more sentence.</p></body>", 1)
        new_id = warc.record_id("copy", doc_id)
        records.append(warc.response_record(url + "?copy", block, date, new_id))
        origin[new_id.strip("<>").removeprefix("urn:uuid:")] = doc_id
    pages = [
        (rid, url, block)
        for rid, url, block in _responses(new_pages)
        if b"text/html" in block.split(b"\r\n\r\n", 1)[0].lower() and len(block) < 60_000
    ]
    for rid, url, block in pages[:new_records]:
        records.append(warc.response_record(url, block, date, warc.record_id("new", rid)))
    path.write_bytes(b"".join(records))
    return origin


def test_ledger_records_new_files_once(tmp_path):
    from storage import Store
    from storage.ledger import Ledger

    a, b, c = ({"url": f"/in/{n}.warc.gz", "size": i} for i, n in enumerate("abc"))
    ledger = Ledger(Store(str(tmp_path)), "series")
    assert ledger.add([a, b]) == ([{"index": 0, "files": [a, b]}], [a, b])
    assert ledger.add([b, a]) == ([{"index": 0, "files": [a, b]}], [])
    changed = {**a, "size": 9}  # changed in place: a new identity, so a new file
    records, new = ledger.add([a, b, c, changed])
    assert new == [c, changed] and records[1] == {"index": 1, "files": [c, changed]}
    # a record is created once: a second writer of the same increment does not replace it
    assert not ledger.dir.write_once("records/part-00001.json", b"{}")
    assert Ledger(Store(str(tmp_path)), "series").records() == records


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _read(url: str, rels: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f"{url}/{rel}") for rel in rels])


def test_incremental_rerun_processes_only_new_files(prefect_api, tmp_path, shared_data):

    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    incoming, store = tmp_path / "incoming", tmp_path / "store"
    incoming.mkdir()
    first_files = ["warc/dolma-sample-0000.warc.gz", "warc/dolma-sample-0001.warc.gz"]
    for rel in first_files:
        shutil.copy(shared_data(rel), incoming)
    cfg = tiny_config(str(store), [str(incoming / "*.warc.gz")], incremental=True, stop_after="tokenize")
    first = pipeline(PipelineConfig.model_validate(cfg))
    assert first["increments"] == {"count": 1, "new_files": [Path(r).name for r in first_files], "ran": [0]}
    assert first["corpus"]["url"] == first["tokenize"]["url"]  # one increment: a plain run's output

    # near copies of three long documents the first run kept, and 20 pages of a site not seen yet
    d0 = first["dedup"]["url"]
    kept0 = _read(d0, [s["data"] for s in json.load(open(f"{d0}/manifest.json"))["shards"]])
    long_ids = [
        r["id"]
        for r in kept0.select(["id", "text", "source"]).to_pylist()
        if len(r["text"]) > 2500 and r["source"].endswith("dolma-sample-0000.warc.gz")
    ][:3]
    assert len(long_ids) == 3
    origin = _third_warc(
        incoming / "later.warc.gz",
        {i: incoming / "dolma-sample-0000.warc.gz" for i in long_ids},
        shared_data("warc/ukwa-govuk-BL-20140325121225068.warc.gz"),
        20,
    )
    before = _files(store)

    full = PipelineConfig.model_validate({**cfg, "stop_after": "evaluate"})
    state = pipeline(full, return_state=True)
    second = state.result()
    assert second["increments"] == {"count": 2, "new_files": ["later.warc.gz"], "ran": [1]}
    assert not any(second[s]["cached"] for s in ("ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"))
    summary = _pipeline_summary(state.state_details.flow_run_id)  # the run's own artifact, as a plain run's
    assert "8 stage(s)" in summary and "| corpus | ran |" in summary and "| train | ran |" in summary, summary

    # only the new file's shards ran, in every per-shard stage; no new tokenizer was trained
    ing1 = json.load(open(f"{second['ingest']['url']}/manifest.json"))
    assert ing1["sources"] == ["later.warc.gz"]  # named below the glob's folder: no machine path
    new_shards = {s["index"] for s in ing1["shards"]}
    states = task_states(state.state_details.flow_run_id)
    for stage in PER_SHARD:
        ran = {n for n in states if re.fullmatch(rf"{stage}-\d{{5}}", n)}
        assert ran == {f"{stage}-{i:05d}" for i in new_shards}, (stage, sorted(ran))
    assert not any(n.startswith("tokenizer-") for n in states), sorted(states)
    assert {s for n, s in states.items() if not n.startswith(("train-", "evaluate-"))} == {"Completed"}
    # earlier outputs: not one byte changed, none removed
    after = _files(store)
    assert {k: after.get(k) for k in before} == before

    # the copies are removed as duplicates of the earlier documents; every new page is kept
    d1 = json.load(open(f"{second['dedup']['url']}/manifest.json"))
    offset = json.load(open(f"{d0}/manifest.json"))["counts"]["docs_in"]
    removed = _read(second["dedup"]["url"], [s["removed"] for s in d1["shards"]]).to_pylist()
    assert {r["id"]: r["duplicate_of"] for r in removed} == origin
    assert sorted(r["reason"] for r in removed) == ["exact_duplicate", "near_duplicate", "near_duplicate"]
    assert all(r["cluster_id"] < offset and r["similarity"] > 0.9 for r in removed)
    assert all(f"duplicate_of={r['duplicate_of']}" in r["detail"] for r in removed)
    assert d1["counts"]["docs_kept"] == d1["counts"]["docs_in"] - 3 >= 8
    assert d1["lsh"]["duplicates_of_earlier"] == 3

    # training read both increments' token shards, tokenized alike
    corpus = json.load(open(f"{second['corpus']['url']}/manifest.json"))
    tok0 = json.load(open(f"{first['tokenize']['url']}/manifest.json"))
    tok1 = json.load(open(f"{second['tokenize']['url']}/manifest.json"))
    assert tok1["tokenizer"] == tok0["tokenizer"] == corpus["tokenizer"]
    assert [s["increment"] for s in corpus["shards"]] == [0] * len(tok0["shards"]) + [1] * len(tok1["shards"])
    assert corpus["counts"]["train_tokens"] == tok0["counts"]["train_tokens"] + tok1["counts"]["train_tokens"]
    train = json.load(open(f"{second['train']['url']}/manifest.json"))
    assert train["upstream"]["fingerprint"] == second["corpus"]["fingerprint"]

    # nothing new (the processed files even moved away): nothing runs, all cached, the store unchanged
    shutil.rmtree(incoming)
    state = pipeline(full, return_state=True)
    third = state.result()
    assert third["increments"] == {"count": 2, "new_files": [], "ran": []}
    assert all(
        third[s]["cached"] for s in ("ingest", "dedup", "quality", "pii", "tokenize", "corpus", "train", "evaluate")
    )
    assert set(task_states(state.state_details.flow_run_id).values()) <= {"Cached"}
    assert _files(store) == after


def _pipeline_summary(flow_run_id) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        made = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])), limit=50
        )
    [summary] = [a.data for a in made if (a.key or "").startswith("pipeline-summary-")]
    return summary


def test_failed_increment_is_finished_first_with_identical_bytes(prefect_api, tmp_path, shared_data, monkeypatch):
    """An increment whose run failed half way (in the step that looks up earlier increments) is
    finished by the next run, before the files that landed since, and every output is byte for byte
    what runs that never failed write. The third file is a copy of the second under another name:
    all its documents are exact duplicates of the second increment's."""
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline
    from pipeline.failpoints import FailpointError

    arrivals = [
        ("a.warc.gz", "warc/dolma-sample-0000.warc.gz"),
        ("b.warc.gz", "warc/dolma-sample-0001.warc.gz"),
        ("c.warc.gz", "warc/dolma-sample-0001.warc.gz"),
    ]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # workers=0: shards run in this process, where the failpoint is set
    configs = {
        name: PipelineConfig.model_validate(
            tiny_config(str(tmp_path / name), [str(incoming)], incremental=True, stop_after="dedup", workers=0)
        )
        for name in ("straight", "failed")
    }
    for n, (file, rel) in enumerate(arrivals):
        shutil.copy(shared_data(rel), incoming / file)
        result = pipeline(configs["straight"])
        assert result["increments"]["ran"] == [n]
        if n == 1:
            monkeypatch.setenv("CRAWL2LLM_FAILPOINT", "dedup-pairs:0@raise")
            with pytest.raises(FailpointError):
                pipeline(configs["failed"])
            monkeypatch.delenv("CRAWL2LLM_FAILPOINT")
            assert len(list((tmp_path / "failed" / "dedup").glob("*/manifest.json"))) == 1  # increment 1 unfinished
            continue
        result = pipeline(configs["failed"])
    assert result["increments"] == {"count": 3, "new_files": ["c.warc.gz"], "ran": [1, 2]}
    last = json.load(open(f"{result['dedup']['url']}/manifest.json"))
    assert last["counts"]["docs_kept"] == 0 and last["counts"]["removed"] == {"exact_duplicate": 15}
    straight, failed = _committed(tmp_path / "straight"), _committed(tmp_path / "failed")
    assert any(k.startswith("dedup-index/") for k in straight) and sorted(straight) == sorted(failed)
    assert [k for k in straight if straight[k] != failed[k]] == []


def _committed(store: Path) -> dict[str, bytes]:
    """What outputs hold (manifests, data, removed documents, ledger records), without timings."""
    return {k: v for k, v in _files(store).items() if "/stats/" not in k and ".tmp-" not in k}


def test_cli_incremental_run_after_the_files_moved_away_does_nothing(prefect_api, tmp_path, capsys, shared_data):
    """`crawl2llm run` on an incremental series whose landing folder is empty again (the files were
    moved away after their increment) is not an input error: nothing new, nothing done. Nor is the
    first night of a series whose folder has no file yet: it says so and does nothing; a landing
    folder that does not exist at all is a mistake."""
    import yaml

    from flows.cli import main

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_config(str(tmp_path / "store"), [str(incoming / "*.warc.gz")], incremental=True, stop_after="ingest")
        )
    )
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "matches no" in out.err and "nothing to do yet" in out.err, out.err[-2000:]
    assert json.loads(out.out)["increments"] == {"count": 0, "new_files": [], "ran": []}
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("manifest.json"))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        yaml.safe_dump(
            tiny_config(str(tmp_path / "store"), [str(tmp_path / "nowhere")], incremental=True, stop_after="ingest")
        )
    )
    assert main(["run", str(wrong)]) == 2 and "input not found" in capsys.readouterr().err
    shutil.copy(shared_data("warc/dolma-sample-0001.warc.gz"), incoming)
    assert main(["run", str(cfg)]) == 0
    before = _files(tmp_path / "store")
    (incoming / "dolma-sample-0001.warc.gz").unlink()
    assert main(["run", str(cfg)]) == 0
    assert _files(tmp_path / "store") == before
