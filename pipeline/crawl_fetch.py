"""One fetch of the crawler: a GET under the per-fetch deadline (pipeline/deadline.py) that does not
follow redirects, and the request and response bytes exactly as they go into the WARC file.

Apart from the crawl loop (pipeline/crawl.py) so what is sent, and how a response is recorded
(Transfer-Encoding and Content-Length as Common Crawl records them), is in one place.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from pipeline.deadline import Deadline, build_opener

# What a failed fetch raises: socket errors, timeouts and the deadline, bad URLs, broken HTTP.
FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """3xx comes back as an HTTPError, so the crawler records it and decides about Location itself."""

    def http_error_302(self, req, fp, code, msg, headers):
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class Fetched:
    """One HTTP exchange, as it goes into the WARC file."""

    def __init__(self, status: int, request: bytes, response: bytes, body: bytes, headers, truncated: bool):
        self.status, self.request, self.response, self.body = status, request, response, body
        self.headers, self.truncated = headers, truncated


def fetch(url: str, user_agent: str, timeout_s: float, deadline_s: float, max_bytes: int) -> Fetched:
    """GET one URL, its body cut at max_bytes. Any HTTP status is a response (3xx included: its
    Location is not followed); one of FETCH_ERRORS is raised when no HTTP response came back."""
    headers = {
        "User-Agent": user_agent,
        "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
        "Accept-Encoding": "identity",
    }
    request = urllib.request.Request(url, headers=headers)
    opener = build_opener(Deadline(url, deadline_s), NoRedirect)
    try:
        resp = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:  # 3xx, 4xx, 5xx: still a response to record
        resp = e
    raw = resp.fp if isinstance(resp, urllib.error.HTTPError) else resp  # http.client's response
    with resp:
        body = resp.read(max_bytes + 1) if raw is not None else b""
        status, reason, resp_headers = resp.status, resp.reason, resp.headers
        version = getattr(raw, "version", 11)
    truncated = len(body) > max_bytes
    body = body[:max_bytes]
    return Fetched(
        status,
        request_bytes(url, headers),
        response_bytes(version, status, reason, resp_headers, body),
        body,
        resp_headers,
        truncated,
    )


def error_reason(error: Exception) -> str:
    """A failed fetch's error in a few words, for the crawl's error notes."""
    return str(getattr(error, "reason", None) or error) or type(error).__name__


def request_bytes(url: str, headers: dict) -> bytes:
    """The request as urllib sends it: request line, Host, our headers, Connection: close."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


def response_bytes(version: int, status: int, reason: str, headers, body: bytes) -> bytes:
    """Status line, headers and body as recorded. urllib has already undone chunking, so the
    Transfer-Encoding header is kept under X-Crawler-Transfer-Encoding (Common Crawl's convention)
    and Content-Length states the body actually recorded."""
    lines = [f"HTTP/{'1.0' if version == 10 else '1.1'} {status} {' '.join(str(reason or '').split())}"]
    declared = None
    for name, value in headers.items():
        value = " ".join(str(value).split())
        if name.lower() == "transfer-encoding":
            name = "X-Crawler-Transfer-Encoding"
        elif name.lower() == "content-length":
            declared = value
            if value == str(len(body)):
                lines.append(f"{name}: {value}")
                continue
            name = "X-Crawler-Content-Length"
        lines.append(f"{name}: {value}")
    if declared != str(len(body)):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + body
