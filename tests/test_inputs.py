"""Input resolution: files, folders, globs, and Common Crawl listings read over HTTP from a server on
127.0.0.1 laid out like data.commoncrawl.org (nothing else is ever contacted); inputs behind a password
or a presigned query, and what of them is recorded."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil

import pytest

from pipeline.inputs import InputError, read_listing, resolve_inputs
from storage import file_identity
from tests.fixtures.object_store import object_store, presigned

CRAWL = "CC-MAIN-2099-01"
REAL = ["warc/resiliparse-warcfile.warc.gz", "warc/dolma-sample-0000.warc.gz", "warc/dolma-sample-0001.warc.gz"]


@pytest.fixture(scope="module")
def cc_mirror(tmp_path_factory, request):
    """Base URL of a mirror holding CRAWL's warc.paths.gz and the real WARC files it lists."""
    from tests.fixtures.data import require_data

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


def _urls(files) -> list[str]:
    return [f.url for f in files]


def test_crawl_name_expands_to_its_listing_with_a_limit(cc_mirror):
    base, lines = cc_mirror
    assert resolve_inputs([CRAWL], cc_base_url=base) == [(base + line, base + line) for line in lines]
    assert _urls(resolve_inputs([CRAWL], limit=2, cc_base_url=base)) == [base + line for line in lines[:2]]
    listing = f"{base}crawl-data/{CRAWL}/warc.paths.gz"
    assert read_listing(listing, "s3://commoncrawl", limit=1) == ["s3://commoncrawl/" + lines[0]]


def test_limit_counts_files_across_entries(cc_mirror, shared_data):
    base, lines = cc_mirror
    local = str(shared_data("warc/cc-whirlwind.warc.gz"))
    assert _urls(resolve_inputs([local, CRAWL], limit=2, cc_base_url=base)) == [local, base + lines[0]]
    assert resolve_inputs([local, CRAWL], limit=1, cc_base_url=base) == [(local, "cc-whirlwind.warc.gz")]


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


def test_local_files_are_named_below_what_the_user_named(tmp_path, shared_data):
    """Rows and identities name a local file by its path under the folder or glob prefix given, never by
    this machine's absolute path; document ids come from the file name, as before."""
    data = tmp_path / "data"
    for rel in ("a.warc.gz", "2024/b.warc.gz"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data("warc/cc-whirlwind.warc.gz"), data / rel)
    by_folder = resolve_inputs([str(data)])
    assert by_folder == [(str(data / "2024/b.warc.gz"), "2024/b.warc.gz"), (str(data / "a.warc.gz"), "a.warc.gz")]
    assert [f.name for f in resolve_inputs([f"{data}/*/*.warc.gz"])] == ["2024/b.warc.gz"]
    assert [f.name for f in resolve_inputs([str(data / "2024/b.warc.gz")])] == ["b.warc.gz"]
    assert file_identity(*by_folder[0])["url"] == "2024/b.warc.gz"
    assert file_identity(str(data / "a.warc.gz"))["url"] == "a.warc.gz"  # named on its own: by its file name


def test_a_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    from pydantic import ValidationError

    from pipeline.ingest import IngestConfig

    secret = "http://alice:s3cret-pw@127.0.0.1:9/a.warc.gz"
    with pytest.raises(InputError, match=r"user name or password: http://127.0.0.1:9/a.warc.gz; .*~/.netrc") as e:
        resolve_inputs([secret])
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="cc_base_url holds a user name or password"):
        resolve_inputs([CRAWL], cc_base_url="https://u:p@mirror.example/")
    with pytest.raises(ValidationError, match="URL blocklist file holds a user name or password") as e:
        IngestConfig(url_blocklist_files=["https://u:s3cret-pw@127.0.0.1:9/ut1.txt"])
    assert "s3cret" not in e.value.errors()[0]["msg"]  # what the CLI shows (pydantic's repr echoes the input)


def test_listing_lines_must_stay_under_the_mirror(tmp_path):
    """A *.paths.gz from a mirror names files under cc_base_url only: not this machine's files, not
    another server."""
    for n, bad in enumerate(
        [
            "/etc/passwd.warc.gz",
            "http://elsewhere.example/x.warc.gz",
            "crawl-data/../../x.warc.gz",
            "s3://other-bucket/x.warc.gz",
        ]
    ):
        listing = tmp_path / f"bad{n}.paths.gz"
        listing.write_bytes(gzip.compress(f"crawl-data/ok.warc.gz\n{bad}\n".encode()))
        with pytest.raises(
            InputError,
            match=rf"listing .*bad{n}.paths.gz line 2: .* is not a path relative to "
            r"https://mirror.example/",
        ):
            read_listing(str(listing), "https://mirror.example/")
    assert read_listing(str(listing), "https://mirror.example/", limit=1) == [
        "https://mirror.example/crawl-data/ok.warc.gz"
    ]


@pytest.fixture
def private_bucket(tmp_path, shared_data):
    """(base URL, server) of a bucket on 127.0.0.1 holding one real WARC, answering only requests that
    are presigned (server.signed) or authenticated (server.auth)."""
    site = tmp_path / "bucket"
    site.mkdir()
    shutil.copy(shared_data("warc/cc-whirlwind.warc.gz"), site / "file.warc.gz")
    servers: list = []
    with object_store(site, servers) as base:
        yield base, servers[0]


def test_a_presigned_url_is_one_input_named_without_its_query(private_bucket):
    base, server = private_bucket
    server.signed = {"sig-one", "sig-two"}
    with pytest.raises(InputError, match="input not found: .*file.warc.gz$"):  # unsigned: refused (403)
        resolve_inputs([base + "file.warc.gz"])
    signed = presigned(base + "file.warc.gz", "sig-one")
    (f,) = resolve_inputs([signed])  # `?` starts the query: no glob
    assert f == (signed, base + "file.warc.gz")
    ident = file_identity(*f)
    assert ident["url"] == base + "file.warc.gz" and ident["size"] > 0 and ident["etag"]
    assert file_identity(presigned(base + "file.warc.gz", "sig-two")) == ident  # re-signed: the same file
    with pytest.raises(InputError, match=r"input not found: http://127.0.0.1:\d+/file.warc.gz$") as e:
        resolve_inputs([presigned(base + "file.warc.gz", "expired")])
    assert "expired" not in str(e.value)


def _everything_stored(root) -> tuple[str, list[dict]]:
    """(every non-Parquet file under root as text, every Parquet row under root)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    text, rows = [], []
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.suffix == ".parquet":
            rows += pq.read_table(p).to_pylist()
        elif p.is_file():
            text.append(p.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(text), rows


def _prefect_records(api: str, flow_run_id) -> tuple[dict, str]:
    """(the flow run's parameters as the Prefect server stored them, everything else it stored about
    the run as text: its state, logs, task runs and artifacts), read from its REST API."""
    import urllib.request

    from prefect.logging.handlers import APILogWorker

    from tests.fixtures.server_cmd import ui_headers

    APILogWorker.drain_all(timeout=10)
    headers = {"Content-Type": "application/json", **ui_headers(api)}

    def call(path: str, body: dict | None = None):
        data = None if body is None else json.dumps({**body, "limit": 200, "offset": 0}).encode()
        request = urllib.request.Request(f"{api}/{path}", data, headers)
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)

    run = call(f"flow_runs/{flow_run_id}")
    ours = {"any_": [str(flow_run_id)]}
    logs = call("logs/filter", {"logs": {"flow_run_id": ours}})
    tasks = call("task_runs/filter", {"flow_runs": {"id": ours}})
    artifacts = call("artifacts/filter", {"artifacts": {"flow_run_id": ours}})
    assert logs and tasks and artifacts  # what is checked is there
    return run.pop("parameters"), json.dumps([run, logs, tasks, artifacts])


@pytest.mark.slow
def test_presigned_url_ingests_end_to_end_and_records_no_query(prefect_api, private_bucket, tmp_path):
    """The ingest flow reads a presigned URL; rows, manifest, stats, identities, logs, task runs and
    artifacts carry neither its query nor its signature, and a re-signed URL hits the cache."""
    from flows.stages import ingest

    base, server = private_bucket
    server.signed = {"sig-one", "sig-two"}
    store = tmp_path / "store"
    state = ingest([presigned(base + "file.warc.gz", "sig-one")], store=str(store), workers_n=1, return_state=True)
    r = state.result()
    assert r["counts"]["sources"] == 1 and r["counts"]["docs_in"] > 0
    text, rows = _everything_stored(store)
    assert rows and {row["source"] for row in rows} == {base + "file.warc.gz"}
    assert "sig-one" not in text and "X-Amz" not in text
    manifest = json.load(open(f"{r['url']}/manifest.json"))
    assert manifest["sources"] == [base + "file.warc.gz"] and manifest["upstream"][0]["url"] == base + "file.warc.gz"
    parameters, others = _prefect_records(prefect_api, state.state_details.flow_run_id)
    assert "sig-one" not in others and "X-Amz" not in others
    assert "sig-one" in parameters["inputs"][0]  # the residual risk docs/INGEST.md states: Prefect keeps it
    again = ingest([presigned(base + "file.warc.gz", "sig-two")], store=str(store), workers_n=1)
    assert again["cached"] and again["url"] == r["url"]


@pytest.mark.slow
def test_http_credentials_from_netrc_stay_out_of_prefect(prefect_api, private_bucket, tmp_path, monkeypatch):
    """The documented way for a password-protected server: ~/.netrc (here $NETRC). The flow run's
    stored parameters, everything else Prefect keeps, and the store hold no password."""
    from flows.stages import ingest

    base, server = private_bucket
    server.auth = "alice:s3cret-pw"
    url = base + "file.warc.gz"
    with pytest.raises(InputError, match="input not found"):  # the server refuses without credentials
        resolve_inputs([url])
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    # workers_n=0: the shared worker pool may predate $NETRC (a real run sets it before it starts)
    state = ingest([url], store=str(tmp_path / "store"), workers_n=0, return_state=True)
    assert state.result()["counts"]["docs_in"] > 0
    parameters, others = _prefect_records(prefect_api, state.state_details.flow_run_id)
    text, rows = _everything_stored(tmp_path / "store")
    assert parameters["inputs"] == [url]
    assert not any("s3cret" in blob for blob in (json.dumps(parameters), others, text, json.dumps(rows)))
