"""Stage outputs opened from the Prefect UI: a read-only listing of an output folder and its files.

A link artifact whose target is a local path opens the UI's 404 page, and a browser will not follow a
file:// link from a web page. So an output's link points at this server instead:
/crawl2llm-store/<token>/<output>/<path inside it>, relative to the UI's own origin (it works behind
a reverse proxy too). The token is an HMAC of the output's URL under the installation's auth string:
whoever was shown the link by the authenticated API may open that output and what lies below it,
nothing else, and the link does not carry the auth string itself.

Files are sent as plain text (JSON, logs, Markdown) or as downloads, never as HTML: a page from the
store must not run script on the UI's origin, where the browser keeps the API password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import os
from urllib.parse import quote

PREFIX = "/crawl2llm-store"
TEXT = (".json", ".jsonl", ".txt", ".md", ".yaml", ".yml", ".log", ".csv", ".tsv")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def token(root: str, auth: str) -> str:
    return hmac.new(auth.encode(), b"crawl2llm-store\0" + root.encode(), hashlib.sha256).hexdigest()[:32]


def link(root: str, path: str = "", auth: str | None = None) -> str | None:
    """The UI-relative link that opens `path` inside the output at `root` (a folder or fsspec URL), or
    None without an auth string to sign it (a Prefect server that is not `crawl2llm server`'s)."""
    auth = auth if auth is not None else os.environ.get("PREFECT_API_AUTH_STRING", "")
    if not auth:
        return None
    encoded = base64.urlsafe_b64encode(root.encode()).decode().rstrip("=")
    return f"{PREFIX}/{token(root, auth)}/{encoded}/{quote(path.lstrip('/'))}"


def route(auth: str | None):
    """The Starlette route serving PREFIX (mounted by flows/prefect_server.py)."""
    from starlette.routing import Route

    return Route(PREFIX + "/{rest:path}", lambda request: _serve(request, auth or ""), methods=["GET", "HEAD"])


def _serve(request, auth: str):
    from starlette.responses import PlainTextResponse

    parts = request.path_params["rest"].split("/", 2)
    if not auth or len(parts) < 2:
        return PlainTextResponse("not found\n", 404, headers=HEADERS)
    given, encoded, inner = parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    try:
        root = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return PlainTextResponse("not found\n", 404, headers=HEADERS)
    if not hmac.compare_digest(given, token(root, auth)):
        return PlainTextResponse("this link was not made by this server\n", 403, headers=HEADERS)
    segments = [s for s in inner.split("/") if s]
    if any(s in (".", "..") or "\\" in s for s in segments):
        return PlainTextResponse("not found\n", 404, headers=HEADERS)
    try:
        return _answer(request, root, segments)
    except FileNotFoundError:
        return PlainTextResponse(
            f"{'/'.join(segments) or root}: not found (deleted from the store?)\n", 404, headers=HEADERS
        )
    except PermissionError as e:
        return PlainTextResponse(f"{e}\n", 403, headers=HEADERS)


def _answer(request, root: str, segments: list[str]):
    import fsspec
    from starlette.responses import HTMLResponse, Response, StreamingResponse

    fs, base = fsspec.core.url_to_fs(root)
    target = "/".join([base.rstrip("/"), *segments]) if segments else base
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):  # links may lead out
        real_base, real = os.path.realpath(base), os.path.realpath(target)
        if real != real_base and not real.startswith(real_base.rstrip(os.sep) + os.sep):
            raise PermissionError(f"{'/'.join(segments)}: leads outside the output (a link?): refused")
    info = fs.info(target)  # one stat (or HEAD) for what it is and its size; FileNotFoundError when gone
    if info["type"] == "directory":
        if not request.url.path.endswith("/"):  # relative links in the listing need the slash
            return Response(status_code=307, headers={**HEADERS, "Location": request.url.path + "/"})
        return HTMLResponse(_listing(fs, root, target, segments), headers=HEADERS)
    name = segments[-1] if segments else os.path.basename(base)
    size = info.get("size") or 0
    text = name.endswith(TEXT)
    kind = "text/plain; charset=utf-8" if text else "application/octet-stream"
    headers = {**HEADERS, "Content-Length": str(size)}
    if not text:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"

    def chunks():
        with fs.open(target, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    if request.method == "HEAD":
        return Response(b"", media_type=kind, headers=headers)
    return StreamingResponse(chunks(), media_type=kind, headers=headers)


def _listing(fs, root: str, target: str, segments: list[str]) -> str:
    entries = sorted(fs.ls(target, detail=True), key=lambda e: (e["type"] != "directory", e["name"]))
    where = "/".join([root.rstrip("/"), *segments])
    rows = []
    if segments:
        rows.append('<tr><td><a href="../">../</a></td><td></td></tr>')
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        is_dir = e["type"] == "directory"
        href = quote(name) + ("/" if is_dir else "")
        size = "" if is_dir else f"{e.get('size') or 0:,}"
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(name)}{"/" if is_dir else ""}</a></td>'
            f'<td style="text-align:right">{size}</td></tr>'
        )
    return (
        f'<!doctype html><meta charset="utf-8"><title>{html.escape(where)}</title>'
        '<body style="font-family:sans-serif;margin:2em">'
        f'<h1 style="font-size:1.2em">{html.escape(where)}</h1>'
        "<p>Copy this path to read the files where they are; files open here read-only.</p>"
        '<table style="border-collapse:collapse"><tr><th align="left">name</th><th align="right">bytes</th></tr>'
        + "".join(rows)
        + "</table></body>"
    )
