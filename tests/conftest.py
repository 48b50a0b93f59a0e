"""Shared fixtures. Tests that need ../shared/data skip when it is absent, unless
CRAWL2LLM_REQUIRE_DATA=1 (set by .ci/run), where they fail instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CRAWL2LLM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def require_data(rel: str) -> Path:
    """Path of a file or folder under shared/data; skip (or fail in CI) when it is missing."""
    path = SHARED_DATA / rel
    if not path.exists():
        msg = f"real data not found: {path} (set CRAWL2LLM_DATA to the shared/data folder)"
        if os.environ.get("CRAWL2LLM_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data():
    """Call with a relative path: shared_data('warc/cc-whirlwind.warc.gz')."""
    return require_data


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (SQLite in a temp PREFECT_HOME) shared by every flow test.

    Yields (api_url, env) where env is the environment a subprocess needs to use it."""
    import subprocess
    import sys
    import time

    from flows.prefect_env import api_healthy

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flows.prefect_server", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not api_healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, {**env, "PREFECT_API_URL": url}
    # Send the logs and events flows left queued while the server still answers, not at exit.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def prefect_api(prefect_server, tmp_path, monkeypatch):
    """Point in-process flows at the shared server; results and cache records under tmp_path."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    url, _ = prefect_server
    with temporary_settings({PREFECT_API_URL: url, PREFECT_HOME: str(tmp_path / "prefect"),
                             PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "prefect" / "storage")}):
        yield url
