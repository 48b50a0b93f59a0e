"""Prefect settings for a local, offline install, and a local Prefect server when none is named.

Imported before Prefect itself: Prefect reads its settings from the environment at import.
Without PREFECT_API_URL every process would start a throwaway server (~15 s) whose runs vanish;
a persistent local server keeps every run, artifact and cache record for the UI.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

HOST, PORT = "127.0.0.1", 4200
AUTH_FILE = "api-auth-string"  # in PREFECT_HOME: this installation's API password (docs/OPERATIONS.md, Security)
# Host names the server answers to (a request naming any other is refused: DNS rebinding).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def configure(home: str | Path | None = None) -> Path:
    """Offline defaults; PREFECT_HOME inside the project (git-ignored) unless the user set one."""
    home = Path(os.environ.get("PREFECT_HOME") or home or Path.cwd() / ".prefect").resolve()
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_API_AUTH_STRING", auth_string(home))
    return home


def auth_string(home: Path) -> str:
    """The API password of the server kept in this PREFECT_HOME: made once (random, 256 bits) in
    home/api-auth-string, readable by its owner only. Every client of ours sends it; the UI asks for
    it once (or takes it from the login link `crawl2llm server` prints)."""
    path = Path(home) / AUTH_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{AUTH_FILE}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)  # the first process to make one wins; the others read it
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def login_url(ui_url: str, auth: str) -> str:
    """A link that signs the browser in to the UI: the password travels in the fragment, which the
    browser never sends to a server or writes to a log (flows/prefect_server.py serves the page)."""
    return f"{ui_url.rstrip('/')}/crawl2llm-login#{auth}"


def api_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return json.loads(r.read() or b"false") is True
    except (OSError, ValueError):
        return False


def api_refuses_us(url: str, timeout: float = 5.0) -> bool:
    """Whether the server answers 401 to our auth string (PREFECT_API_AUTH_STRING) on a route that needs it."""
    import base64

    auth = os.environ.get("PREFECT_API_AUTH_STRING", "")
    request = urllib.request.Request(f"{url.rstrip('/')}/version")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        return e.code == 401
    except OSError:
        pass
    return False


class ServerUnreachable(RuntimeError):
    """PREFECT_API_URL names a server that does not answer, or a server refuses our auth string."""


def find_or_start_server(
    home: Path, port: int = PORT, wait_s: float = 90.0, public_url: str = ""
) -> tuple[str, subprocess.Popen | None]:
    """(API URL, the server process when started here): PREFECT_API_URL if set (it must answer), else
    the server answering on 127.0.0.1:port, else a new one there."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not api_healthy(url):
            raise ServerUnreachable(f"PREFECT_API_URL={url} does not answer: start that server or unset the variable")
        _check_auth(url, f"PREFECT_API_URL={url}")
        return url, None
    url = api_url(port)
    if api_healthy(url):
        _check_auth(url, f"the Prefect server on 127.0.0.1:{port}")
        return url, None
    proc = start_server(home, port, public_url=public_url)
    try:
        wait_healthy(url, proc, home, wait_s)
    except RuntimeError:
        proc.kill()
        raise
    return url, proc


def _check_auth(url: str, what: str) -> None:
    if api_refuses_us(url):
        raise ServerUnreachable(
            f"{what} refuses this installation's auth string: set PREFECT_API_AUTH_STRING to "
            "that server's (its PREFECT_HOME/api-auth-string), or use another --port"
        )


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


def start_server(home: Path, port: int = PORT, env: dict | None = None, public_url: str = "") -> subprocess.Popen:
    """`prefect server start` in its own session (a terminal's Ctrl-C is ours to pass on), logging to
    home/server.log, with `env` (default: ours). The UI asks the API at PREFECT_UI_API_URL, which
    follows the port only when told. Started through flows/prefect_server.py, whose SQLite writes
    wait for the lock and which refuses requests naming another host.

    Locked down (docs/OPERATIONS.md, Security): every API route but /health asks for home's auth
    string, CORS answers only the UI's own origin, write requests need Prefect's CSRF token, and the
    Host header must name this machine's loopback (or `public_url`'s host, for a reverse proxy)."""
    log = open(home / "server.log", "ab")
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    hosts = list(LOCAL_HOSTS)
    ui_api = api_url(port)
    if public_url:
        origins.append(public_url.rstrip("/"))
        hosts.append(urlsplit(public_url).hostname)
        ui_api = public_url.rstrip("/") + "/api"
    auth = auth_string(home)
    env = {
        **(os.environ if env is None else env),
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": ui_api,
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ",".join(origins),
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "CRAWL2LLM_SERVER_HOSTS": ",".join(hosts),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flows.prefect_server", "server", "start", "--host", HOST, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


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
