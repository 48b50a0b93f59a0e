"""Remote reads: which errors are worth another try, and an ingest shard that rides out a
throttling server (503 Slow Down) on 127.0.0.1 while a missing file fails at once."""

from __future__ import annotations

import errno
import shutil

import pytest

from pipeline import remote
from pipeline.remote import is_transient, with_retries
from tests.object_store import object_store


def _wrapped(inner: BaseException) -> Exception:
    """An error raised while handling `inner`, as fsspec re-raises aiohttp's."""
    try:
        try:
            raise inner
        except BaseException:
            raise OSError("read failed")
    except OSError as outer:
        return outer


def _whole(url: str) -> dict:
    return {"url": url, "start": 0, "end": None}


def test_transient_errors():
    from aiohttp import ClientResponseError, ServerDisconnectedError
    from aiohttp.client_reqrep import RequestInfo

    def http(status):
        return ClientResponseError(RequestInfo("http://x/", "GET", {}, "http://x/"), (), status=status)

    assert is_transient(http(503)) and is_transient(http(429)) and is_transient(_wrapped(http(500)))
    assert not is_transient(http(403)) and not is_transient(http(400))
    assert is_transient(ServerDisconnectedError()) and is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNRESET, "Connection reset by peer"))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(ValueError("bad record"))


def test_with_retries_backs_off_then_gives_up(monkeypatch):
    delays = []
    monkeypatch.setattr(remote.time, "sleep", delays.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("dropped")
        return "done"

    assert with_retries(flaky, "x") == ("done", 2)
    assert len(delays) == 2 and 1.0 <= delays[0] <= 3.0 and 2.0 <= delays[1] <= 6.0

    def always():
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        with_retries(always, "x", tries=3)
    with pytest.raises(ValueError):  # not transient: no second try
        with_retries(lambda: (_ for _ in ()).throw(ValueError("bad")), "x")
    assert len(delays) == 4


def test_ingest_shard_retries_a_throttled_file(shared_data, tmp_path, monkeypatch):
    from pipeline.ingest import IngestConfig
    from pipeline.ingest_steps import ingest_shard

    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(shared_data("warc/resiliparse-warcfile.warc.gz"), site / "a.warc.gz")
    servers: list = []
    with object_store(site, servers) as base:
        (server,) = servers
        local = ingest_shard(str(tmp_path / "s1"), "fp", 0, [_whole(str(site / "a.warc.gz"))], IngestConfig())
        server.throttle = 2
        stats = ingest_shard(str(tmp_path / "s2"), "fp", 0, [_whole(base + "a.warc.gz")], IngestConfig())
        # fsspec asks for the size with HEAD, then with GET: one try meets both 503s
        assert server.throttled == 2 and stats["retries"] == 1
        assert stats["counts"] == local["counts"]
        # a file that is not there (404, not throttled) costs only itself: named, not retried
        gone = ingest_shard(str(tmp_path / "s3"), "fp", 0, [_whole(base + "missing.warc.gz")], IngestConfig())
        assert [u["file"] for u in gone["unreadable"]] == [base + "missing.warc.gz"] and gone["retries"] == 0
    # the throttled tries left nothing behind but the finished shard
    leftovers = [p for p in (tmp_path / "s2").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
