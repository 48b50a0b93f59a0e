"""Input resolution: files, folders, globs, and Common Crawl listings read over HTTP from a server on
127.0.0.1 laid out like data.commoncrawl.org (nothing else is ever contacted)."""

from __future__ import annotations

import gzip
import hashlib
import shutil

import pytest

from pipeline.inputs import InputError, read_listing, resolve_inputs
from storage import file_identity
from tests.object_store import object_store

CRAWL = "CC-MAIN-2099-01"
REAL = ["warc/resiliparse-warcfile.warc.gz", "warc/dolma-sample-0000.warc.gz", "warc/dolma-sample-0001.warc.gz"]


@pytest.fixture(scope="module")
def cc_mirror(tmp_path_factory, request):
    """Base URL of a mirror holding CRAWL's warc.paths.gz and the real WARC files it lists."""
    from tests.conftest import require_data

    root = tmp_path_factory.mktemp("cc")
    lines = []
    for i, rel in enumerate(REAL):
        path = f"crawl-data/{CRAWL}/segments/1/warc/{CRAWL}-{i:05d}.warc.gz"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(require_data(rel), root / path)
        lines.append(path)
    with gzip.open(root / "crawl-data" / CRAWL / "warc.paths.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    with object_store(root) as base:
        yield base, lines


def test_crawl_name_expands_to_its_listing_with_a_limit(cc_mirror):
    base, lines = cc_mirror
    assert resolve_inputs([CRAWL], cc_base_url=base) == [base + line for line in lines]
    assert resolve_inputs([CRAWL], limit=2, cc_base_url=base) == [base + line for line in lines[:2]]
    listing = f"{base}crawl-data/{CRAWL}/warc.paths.gz"
    assert read_listing(listing, "s3://commoncrawl", limit=1) == ["s3://commoncrawl/" + lines[0]]


def test_limit_counts_files_across_entries(cc_mirror, shared_data):
    base, lines = cc_mirror
    local = str(shared_data("warc/cc-whirlwind.warc.gz"))
    assert resolve_inputs([local, CRAWL], limit=2, cc_base_url=base) == [local, base + lines[0]]
    assert resolve_inputs([local, CRAWL], limit=1, cc_base_url=base) == [local]


def test_listing_errors_name_the_problem(cc_mirror, tmp_path):
    base, _ = cc_mirror
    with pytest.raises(InputError, match="listing not found: .*CC-MAIN-2099-02/wet.paths.gz"):
        resolve_inputs(["CC-MAIN-2099-02/wet"], cc_base_url=base)
    with pytest.raises(InputError, match=f"input not found: {base}elsewhere/crawl-data"):
        resolve_inputs([f"{base}crawl-data/{CRAWL}/warc.paths.gz"], cc_base_url=base + "elsewhere/")
    bad = tmp_path / "bad.paths.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(InputError, match="not a readable gzip text file: .*bad.paths.gz"):
        resolve_inputs([str(bad)])
    empty = tmp_path / "empty.paths.gz"
    empty.write_bytes(gzip.compress(b"\n"))
    with pytest.raises(InputError, match="names no files"):
        resolve_inputs([str(empty)])


def test_remote_file_identity_uses_the_etag(cc_mirror, shared_data):
    base, lines = cc_mirror
    ident = file_identity(base + lines[0])
    data = shared_data(REAL[0]).read_bytes()
    assert ident == {"url": base + lines[0], "size": len(data), "etag": hashlib.md5(data).hexdigest()}
    local = file_identity(str(shared_data(REAL[0])))
    assert local["size"] == len(data) and "sample_sha256" in local
    with pytest.raises(FileNotFoundError, match="input file not found"):
        file_identity(base + "nope.warc.gz")


def test_remote_warc_ingests_like_the_local_copy(cc_mirror, shared_data):
    from pipeline.ingest import IngestConfig, ingest_file

    base, lines = cc_mirror
    remote = ingest_file(base + lines[0], IngestConfig())
    local = ingest_file(str(shared_data(REAL[0])), IngestConfig())
    assert remote.kept.num_rows > 0
    columns = [c for c in local.kept.column_names if c != "source"]
    assert remote.kept.select(columns).equals(local.kept.select(columns))
    assert remote.counts == local.counts


@pytest.mark.slow
def test_ingest_flow_from_a_crawl_name(prefect_api, cc_mirror, tmp_path):
    from flows.stages import ingest

    base, lines = cc_mirror
    r = ingest([CRAWL], store=str(tmp_path / "store"), limit=2, cc_base_url=base)
    assert r["counts"]["sources"] == 2 and r["counts"]["docs_in"] > 0
    again = ingest([CRAWL], store=str(tmp_path / "store"), limit=2, cc_base_url=base)
    assert again["cached"] and again["url"] == r["url"]
    more = ingest([CRAWL], store=str(tmp_path / "store"), limit=3, cc_base_url=base)
    assert not more["cached"] and more["counts"]["sources"] == 3
