"""Prefect settings for a local, offline install, and a local Prefect server when none is named.

Imported before Prefect itself: Prefect reads its settings from the environment at import.
Without PREFECT_API_URL every process would start a throwaway server (~15 s) whose runs vanish;
a persistent local server keeps every run, artifact and cache record for the UI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST, PORT = "127.0.0.1", 4200


def configure(home: str | Path | None = None) -> Path:
    """Offline defaults; PREFECT_HOME inside the project (git-ignored) unless the user set one."""
    home = Path(os.environ.get("PREFECT_HOME") or home or Path.cwd() / ".prefect").resolve()
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    home.mkdir(parents=True, exist_ok=True)
    return home


def api_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return json.loads(r.read() or b"false") is True
    except (OSError, ValueError):
        return False


class ServerUnreachable(RuntimeError):
    """PREFECT_API_URL names a server that does not answer."""


def find_or_start_server(home: Path, port: int = PORT, wait_s: float = 90.0) -> tuple[str, subprocess.Popen | None]:
    """(API URL, the server process when started here): PREFECT_API_URL if set (it must answer), else
    the server answering on 127.0.0.1:port, else a new one there."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not api_healthy(url):
            raise ServerUnreachable(f"PREFECT_API_URL={url} does not answer: start that server or unset the variable")
        return url, None
    url = api_url(port)
    if api_healthy(url):
        return url, None
    proc = start_server(home, port)
    try:
        wait_healthy(url, proc, home, wait_s)
    except RuntimeError:
        proc.kill()
        raise
    return url, proc


def ensure_server(home: Path, port: int = PORT, wait_s: float = 90.0) -> str:
    """Use PREFECT_API_URL if set; else reuse or start a local server on 127.0.0.1:port (left running:
    its pid in home/server.pid for `crawl2llm server stop`)."""
    url, proc = find_or_start_server(home, port, wait_s)
    if proc is not None:
        (home / "server.pid").write_text(str(proc.pid))
    os.environ["PREFECT_API_URL"] = url
    return url


def api_url(port: int = PORT) -> str:
    return f"http://{HOST}:{port}/api"


def start_server(home: Path, port: int = PORT, env: dict | None = None) -> subprocess.Popen:
    """`prefect server start` in its own session (a terminal's Ctrl-C is ours to pass on), logging to
    home/server.log, with `env` (default: ours). The UI asks the API at PREFECT_UI_API_URL, which
    follows the port only when told. Started through flows/prefect_server.py, whose SQLite writes
    wait for the lock."""
    log = open(home / "server.log", "ab")
    env = {**(os.environ if env is None else env), "PREFECT_API_URL": "", "PREFECT_SERVER_API_HOST": HOST,
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": api_url(port)}
    return subprocess.Popen([sys.executable, "-m", "flows.prefect_server", "server", "start", "--host", HOST,
                             "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def wait_healthy(url: str, proc: subprocess.Popen, home: Path, wait_s: float = 90.0) -> None:
    deadline = time.monotonic() + wait_s
    while not api_healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not start; see {home / 'server.log'}")
        time.sleep(0.5)


def stop_server(home: Path) -> bool:
    """Stop a server this tool started (its pid is in PREFECT_HOME/server.pid)."""
    import signal

    pid_file = home / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    return True
