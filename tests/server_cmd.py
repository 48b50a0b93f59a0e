"""The real `crawl2llm server` command in a subprocess, for the tests that drive it through the API or
a browser: a free port, a temp PREFECT_HOME, and a clean stop (SIGTERM, as a service manager sends)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

READY = "ready: Prefect UI "
AUTH: dict[str, str] = {}  # API URL -> the auth string of the server crawl2llm_server started there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def crawl2llm_server(home: Path, start_s: float = 180, args: tuple[str, ...] = (), extra_env: dict | None = None):
    """Yields (ui_url, api_url, log_path) once the command says it is ready; stops it after. `args`:
    more options of `crawl2llm server` (--allow ...); `extra_env`: more environment for it and its worker."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CRAWL2LLM_FAILPOINT"))}
    env.update(
        PREFECT_HOME=str(home),
        CRAWL2LLM_WORKERS=os.environ.get("CRAWL2LLM_WORKERS", "2"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PYTHONUNBUFFERED="1",
        PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",
    )  # a 503 (busy database...) leaves its traceback in server.log
    env.update(extra_env or {})
    from flows.prefect_env import auth_string

    AUTH[api] = auth_string(home)  # what the command will use: it reads the same file
    log_path = home / "crawl2llm-server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "server", "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + start_s
        while READY not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"crawl2llm server did not get ready:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield api.removesuffix("/api"), api, log_path
    finally:
        from flows.server import alive, descendants

        tree = descendants(proc.pid)  # server, worker, flow runs and their shard processes
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        log.close()
    assert code == 0, f"crawl2llm server did not stop cleanly ({code}):\n{log_path.read_text()[-3000:]}"
    left = [pid for pid in tree if alive(pid)]
    assert not left, f"processes left behind by crawl2llm server: {left}"


@contextlib.contextmanager
def api_client(api: str):
    """A sync Prefect client for that server, whatever server this test process was set up with."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH.get(api)}),
        get_client(sync_client=True) as client,
    ):
        yield client


def ui_headers(api: str) -> dict:
    """The headers the UI sends with a write: the password (of the server crawl2llm_server started
    there, else the one Prefect's settings hold now), and a CSRF token fetched with it."""
    import base64
    import json
    import urllib.request
    import uuid

    from prefect.settings import PREFECT_API_AUTH_STRING

    password = AUTH.get(api) or PREFECT_API_AUTH_STRING.value()
    auth = {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()}
    client = str(uuid.uuid4())
    with urllib.request.urlopen(urllib.request.Request(f"{api}/csrf-token?client={client}", headers=auth)) as r:
        token = json.loads(r.read())["token"]
    return {**auth, "Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client}


def wait_final(client, flow_run_id, timeout_s: float = 300):
    """The flow run once it is in a final state (Completed, Failed, Crashed, Cancelled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run still {run.state.name} after {timeout_s} s"
        time.sleep(1)
