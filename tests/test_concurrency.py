"""Two writers into one store at once (issue 14, part 3): two crawls, two ingests and two whole runs,
started together, several trials each. In every trial each committed file is written once (its
mtime and inode, recorded as soon as it is committed, are the same at the end), no page is fetched
twice, and the store holds the same bytes as a single run's.

Crawls and ingests run as two threads of this process, each a real flow run on the test server;
whole runs as two `crawl2llm run` processes. Whole runs are slow: CRAWL2LLM_WHOLE_RUN_TRIALS sets
their trials (default 2; 5 for the full check)."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.fixtures.flow_inputs import tiny_config

pytestmark = pytest.mark.slow

TRIALS = 5
WHOLE_RUN_TRIALS = int(os.environ.get("CRAWL2LLM_WHOLE_RUN_TRIALS", "2"))
SHARD_FILE = re.compile(r"^[^/]+/[^/]+/(manifest\.json|model\.pt|(data|removed|stats)/.+)$")


# -- watching the store ---------------------------------------------------------------------------


class Watch:
    """Polls a store and records each file's (mtime_ns, inode) as soon as it is committed: a shard
    file, a manifest or model.pt when it appears (each is renamed or linked into place whole), any
    other file of a stage folder (the crawl's state.json, training checkpoints) once the folder's
    manifest exists. Also notes any change it sees to a recorded file."""

    def __init__(self, root: Path, every_s: float = 0.01):
        self.root, self.every_s = root, every_s
        self.first: dict[str, tuple[int, int]] = {}
        self.changed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._scan()

    def _scan(self) -> None:
        for rel, st in _files(self.root).items():
            parts = rel.split("/")
            if not SHARD_FILE.match(rel) and (
                len(parts) < 3 or not (self.root / parts[0] / parts[1] / "manifest.json").exists()
            ):
                continue
            seen = self.first.setdefault(rel, st)
            if seen != st:
                self.changed.add(rel)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` that is not temporary: relative path -> (mtime_ns, inode)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if ".tmp-" in name:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            out[os.path.relpath(path, root).replace(os.sep, "/")] = (st.st_mtime_ns, st.st_ino)
    return out


def _check_written_once(watch: Watch, root: Path) -> None:
    final = _files(root)
    assert not [rel for rel in final if rel.endswith(".lock") or ".lock." in rel], "a lock file was left behind"
    assert watch.changed == set(), f"committed files rewritten: {sorted(watch.changed)}"
    gone = sorted(set(watch.first) - set(final))
    assert gone == [], f"committed files removed: {gone}"
    assert {rel: final[rel] for rel in watch.first} == watch.first


def _contents(root: Path) -> dict[str, bytes]:
    """What a store holds, less what differs between two runs by design: the seconds in shard stats,
    and training's resume state and note of the store's path (checkpoints/, upstream.json)."""
    out = {}
    for rel in sorted(_files(root)):
        data = (root / rel).read_bytes()
        if "/stats/" in rel:
            data = json.dumps({k: v for k, v in json.loads(data).items() if k != "seconds"}).encode()
        elif rel.startswith("train/") and not SHARD_FILE.match(rel):
            data = b""  # checkpoints/ (resume state) and upstream.json (the store's path): names only
        out[rel] = data
    return out


def _together(*calls):
    """Run the calls in threads released at the same instant, each in a copy of this thread's
    context (the Prefect settings that point at the test server live there); their results (or
    exceptions raised here), and each call's (start, end) time."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    spans: list = [None] * len(calls)
    contexts = [contextvars.copy_context() for _ in calls]

    def run(i, call):
        barrier.wait()
        t0 = time.monotonic()
        try:
            results[i] = contexts[i].run(call)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            results[i] = e
        spans[i] = (t0, time.monotonic())

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results, spans


class _Waits(logging.Handler):
    """Counts the flows' 'waiting for lock' log lines. Attach it after a first flow run: Prefect
    sets up its loggers then, dropping handlers added before."""

    def __init__(self):
        super().__init__()
        self.waits = 0

    def emit(self, record):
        if "waiting for lock" in record.getMessage():
            self.waits += 1

    def __enter__(self) -> "_Waits":
        logging.getLogger("prefect.flow_runs").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("prefect.flow_runs").removeHandler(self)


# -- two crawls -----------------------------------------------------------------------------------


class _Site(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def date_time_string(self, timestamp=None):  # a fixed Date header: two crawls record the same bytes
        return "Mon, 01 Jan 2024 00:00:00 GMT"

    def do_GET(self):
        with self.server.lock:
            self.server.fetched[self.path] += 1
        time.sleep(0.03)  # a crawl lasts about a second, so two started together overlap
        super().do_GET()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    for i in range(20):
        links = " ".join(f'<a href="p{j}.html">page {j}</a>' for j in (2 * i + 1, 2 * i + 2) if j < 20)
        (root / f"p{i}.html").write_text(f"<html><body><p>Page {i} of the test site.</p> {links}</body></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Site, directory=str(root)))
    server.fetched, server.lock = Counter(), threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/p0.html"
    server.shutdown()
    server.server_close()


def test_two_crawls_into_one_store(prefect_api, tmp_path, site, monkeypatch):
    from flows.stages import crawl
    from pipeline import warc
    from pipeline.crawl import CrawlConfig

    # WARC-Date is the time of the fetch; fixed here (and the site's Date header), two crawls of
    # the same site write the same bytes
    monkeypatch.setattr(warc, "warc_date", lambda t: "2024-01-01T00:00:00Z")
    server, seed = site
    config = CrawlConfig(seeds=[seed], pages_per_file=4)
    server.fetched.clear()
    single = crawl(config, str(tmp_path / "single"))
    pages = dict(server.fetched)
    assert single["counts"]["pages"] == 20 and len(pages) == 21 and set(pages.values()) == {1}  # and robots.txt
    expected = _contents(tmp_path / "single")
    assert sum(rel.endswith(".warc.gz") for rel in expected) == 5

    t0, overlapped = time.monotonic(), 0
    with _Waits() as waits:
        for trial in range(TRIALS):
            store = tmp_path / f"trial{trial}"
            server.fetched.clear()
            with Watch(store) as watch:
                results, spans = _together(
                    functools.partial(crawl, config, str(store)), functools.partial(crawl, config, str(store))
                )
            assert dict(server.fetched) == pages, f"trial {trial}: pages fetched more than once"
            assert sorted(r["cached"] for r in results) == [False, True]
            _check_written_once(watch, store)
            assert _contents(store) == expected
            overlapped += max(s[0] for s in spans) < min(s[1] for s in spans)
    assert overlapped == TRIALS and waits.waits >= 1
    print(
        f"\ncrawl: {TRIALS} trials in {time.monotonic() - t0:.0f} s, {len(pages)} requests each, "
        f"{waits.waits} waited for the lock"
    )


# -- two ingests ----------------------------------------------------------------------------------


def test_two_ingests_into_one_store(prefect_api, tmp_path, shared_data):
    from flows.stages import ingest
    from pipeline.ingest import IngestConfig

    warc = str(shared_data("warc/dolma-sample-0000.warc.gz"))
    config = IngestConfig(shard_bytes=65_536)  # several shards
    single = ingest([warc], config, str(tmp_path / "single"), 1)
    expected = _contents(tmp_path / "single")
    assert sum("/data/" in rel for rel in expected) >= 3 and single["counts"]["docs_kept"] > 5

    t0 = time.monotonic()
    with _Waits() as waits:
        for trial in range(TRIALS):
            store = tmp_path / f"trial{trial}"
            with Watch(store) as watch:
                results, _ = _together(
                    functools.partial(ingest, [warc], config, str(store), 1),
                    functools.partial(ingest, [warc], config, str(store), 1),
                )
            assert sorted(r["cached"] for r in results) == [False, True]
            _check_written_once(watch, store)
            assert _contents(store) == expected
    assert waits.waits >= 1
    print(f"\ningest: {TRIALS} trials in {time.monotonic() - t0:.0f} s, {waits.waits} waited for the lock")


# -- two whole runs -------------------------------------------------------------------------------


def _start(config_path: Path, env: dict, log: Path) -> tuple[subprocess.Popen, Path]:
    """`crawl2llm run` in the background, its output to a file (a pipe nobody reads while waiting
    on the other run could fill and stall the run that holds a lock)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", str(config_path)],
            cwd=config_path.parent,
            env={**env, "CRAWL2LLM_WORKERS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _finish(run: tuple[subprocess.Popen, Path]) -> str:
    proc, log = run
    proc.wait(timeout=600)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_whole_runs_into_one_store(prefect_server, tmp_path, shared_data):
    _, env = prefect_server
    inputs = [str(shared_data("warc/dolma-sample-0000.warc.gz")), str(shared_data("warc/dolma-sample-0001.warc.gz"))]

    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        cfg = tiny_config(
            str(tmp_path / name),
            inputs,
            train={"schedule": {"max_steps": 10}, "eval": {"interval": 5}, "checkpoint": {"interval": 5}},
        )
        path.write_text(yaml.safe_dump(cfg))
        return path

    t0 = time.monotonic()
    _finish(_start(config("single"), env, tmp_path / "single.log"))
    single_s = time.monotonic() - t0
    expected = _contents(tmp_path / "single")
    assert any(rel.endswith("model.pt") for rel in expected)

    waited, times = 0, []
    for trial in range(WHOLE_RUN_TRIALS):
        store, path = tmp_path / f"trial{trial}", config(f"trial{trial}")
        t0 = time.monotonic()
        with Watch(store, every_s=0.05) as watch:
            procs = [_start(path, env, tmp_path / f"trial{trial}-{i}.log") for i in range(2)]
            logs = [_finish(p) for p in procs]
        times.append(time.monotonic() - t0)
        waited += sum("waiting for lock" in log for log in logs)
        _check_written_once(watch, store)
        assert _contents(store) == expected
    assert waited >= 1
    print(
        f"\nwhole runs: a single run {single_s:.0f} s; {WHOLE_RUN_TRIALS} trials of two at once, "
        f"{', '.join(f'{t:.0f}' for t in times)} s; {waited} runs waited for a lock"
    )
