"""`python -m flows.prefect_server server start ...`: Prefect's own CLI, with SQLite write transactions
that wait for the database lock instead of failing.

Prefect 3.8.8 opens its SQLite transactions DEFERRED. A transaction that reads and then writes fails
at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, answered as a 503) when another connection
wrote in between; waiting cannot help it. The UI does not retry: a click on a deployment's Submit
then shows "Something went wrong trying to create a flow run". With a worker polling, 3 and 4 in 100
create calls failed so here, and 0 in 100 with BEGIN IMMEDIATE, which takes the write lock first and
so waits (busy_timeout, 60 s) for the other writer (benchmarks/prefect_sqlite.py; task runs are
recorded no slower). tests/test_server.py reproduces the interleaving.
A server on PostgreSQL is not touched.

It also refuses any request whose Host header names another host than the ones in
CRAWL2LLM_SERVER_HOSTS (set by flows/prefect_env.start_server: the loopback names, or a reverse
proxy's), so a web page cannot reach the API through DNS rebinding; and it serves the page behind the
login link `crawl2llm server` prints (/crawl2llm-login#<auth string>), which hands the auth string to
the UI the way its own login form does; and the read-only store browser that output links open.
"""

from __future__ import annotations

import base64
import hmac
import os
import sys
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

# The UI keeps the password base64-encoded under this localStorage key (its own login form does so).
LOGIN_PAGE = b"""<!doctype html><meta charset="utf-8"><title>crawl2llm: signing in</title>
<script>
const auth = decodeURIComponent(location.hash.slice(1));
history.replaceState(null, "", location.pathname);
if (auth) localStorage.setItem("prefect-password", btoa(auth));
location.replace("/");
</script>
<p>Signing in to the Prefect UI&hellip;</p>
"""


def immediate_sqlite_transactions() -> None:
    """Make every SQLite transaction Prefect's server begins take the write lock first."""
    from prefect.server.database import configurations

    @asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    configurations.AioSqliteConfiguration.begin_transaction = begin_transaction


class Gate:
    """ASGI middleware in front of everything: a request (HTTP or websocket) whose Host header names a
    host outside `hosts` is refused (421), and an API request without the auth string gets 401 before
    any other layer (Prefect's CSRF check would answer a write 403 first, its own auth check sits
    behind it). Open: the UI's files, /api/health and /api/ready, and CORS preflights, which carry no
    credentials by design. Websockets authenticate inside their protocol (Prefect checks that)."""

    def __init__(self, app, hosts: list[str], auth: str | None):
        self.app, self.hosts = app, {h.strip().lower().strip("[]") for h in hosts if h.strip()}
        self.token = f"Basic {base64.b64encode(auth.encode()).decode()}".encode() if auth else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if _host(scope) not in self.hosts:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _refuse(send, 421, "unknown Host header: refused")
        if scope["type"] == "http" and self.token and _needs_auth(scope):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                return await _refuse(send, 401, '{"exception_message": "Unauthorized"}', "application/json")
        await self.app(scope, receive, send)


def _needs_auth(scope) -> bool:
    path, method = scope["path"], scope["method"]
    if not (path == "/api" or path.startswith("/api/")) or method == "OPTIONS":
        return False
    return not (path in ("/api/health", "/api/ready") and method in ("GET", "HEAD"))


async def _refuse(send, status: int, body: str, kind: str = "text/plain; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind.encode())]})
    await send({"type": "http.response.body", "body": body.encode() + b"\n"})


def _host(scope) -> str | None:
    raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    try:
        return (urlsplit(f"//{raw}").hostname or "").lower() or None
    except ValueError:
        return None


def locked_down_app() -> None:
    """Wrap Prefect's app factory: the Host check around everything, the login page and the store
    browser (flows/store_browser.py) that output links open."""
    from prefect.server.api import server
    from starlette.responses import Response
    from starlette.routing import Route

    from flows import store_browser

    create_app = server.create_app

    def create(*args, **kwargs):
        app = create_app(*args, **kwargs)
        if not getattr(app, "_crawl2llm_locked", False):
            hosts = os.environ.get("CRAWL2LLM_SERVER_HOSTS", "127.0.0.1,localhost,::1").split(",")
            app.add_middleware(Gate, hosts=hosts, auth=os.environ.get("PREFECT_SERVER_API_AUTH_STRING"))
            app.router.routes.insert(0, store_browser.route(os.environ.get("PREFECT_SERVER_API_AUTH_STRING")))
            app.router.routes.insert(
                0,
                Route(
                    "/crawl2llm-login",
                    lambda request: Response(LOGIN_PAGE, media_type="text/html", headers={"Cache-Control": "no-store"}),
                ),
            )
            app._crawl2llm_locked = True
        return app

    server.create_app = create


if __name__ == "__main__":
    immediate_sqlite_transactions()
    locked_down_app()
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()
