"""Shared pytest fixtures. Tests that need ../shared/data skip when it is absent, unless
CRAWL2LLM_REQUIRE_DATA=1 (set by .ci/run), where they fail instead (tests/fixtures/data.py).
Helpers that are not fixtures live in tests/fixtures/."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.fixtures.data import require_data


@pytest.fixture
def shared_data():
    """Call with a relative path: shared_data('warc/cc-whirlwind.warc.gz')."""
    return require_data


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Real Gutenberg tokens, a tokenizer and its files (tests.fixtures.train.build_corpus), built once."""
    from tests.fixtures.train import GUTENBERG, build_corpus

    return build_corpus(require_data(GUTENBERG), tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="session")
def baseline(corpus, tmp_path_factory):
    """One uninterrupted 40-step run of tests.fixtures.train.CONFIG, for the tests that compare against it."""
    from tests.fixtures.train import run

    out = tmp_path_factory.mktemp("baseline")
    summary, events = run(corpus, out)
    return {"out": out, "summary": summary, "events": events}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (SQLite in a temp PREFECT_HOME) shared by every flow test.

    Yields (api_url, env) where env is the environment a subprocess needs to use it."""
    import subprocess

    from flows.prefect_env import auth_string, start_server, wait_healthy
    from tests.fixtures.server_cmd import free_port

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    proc = start_server(home, port, env)
    try:
        wait_healthy(url, proc, home, 120)
    except RuntimeError:
        proc.kill()
        pytest.fail(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
    yield url, {**env, "PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth_string(home)}
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
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    url, env = prefect_server
    # The CLI (flows.cli.main called in-process) reads the environment, not Prefect's settings: without
    # these it would reuse or start a server on 127.0.0.1:4200, whatever else runs there.
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", env["PREFECT_API_AUTH_STRING"])
    with temporary_settings(
        {
            PREFECT_API_URL: url,
            PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
            PREFECT_HOME: str(tmp_path / "prefect"),
            PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "prefect" / "storage"),
        }
    ):
        yield url


@pytest.fixture
def screenshots(tmp_path):
    """A folder for a browser test's screenshots, copied to $CRAWL2LLM_SCREENSHOTS (CI's artifacts) after."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    target = os.environ.get("CRAWL2LLM_SCREENSHOTS")
    if target:
        shutil.copytree(folder, target, dirs_exist_ok=True)
