"""What the crawler and ingest both read from an HTTP response: its content type and charset, and a
gzip-encoded body inflated no further than a size limit (a small gzip bomb must not exhaust a worker)."""

from __future__ import annotations

import zlib


def content_type(value: str) -> tuple[str, str | None]:
    """(lower-case MIME type, charset or None) of a Content-Type header value."""
    mime, *params = [p.strip() for p in value.split(";")]
    charset = None
    for p in params:
        key, _, val = p.partition("=")
        if key.strip().lower() == "charset" and val.strip(" \"'"):
            charset = val.strip(" \"'")
    return mime.lower(), charset


def gunzip(body: bytes, limit: int) -> tuple[bytes, str | None]:
    """(gzip-decoded body, None), or (b"", why not): too_large past `limit`, else bad_content_encoding;
    a body cut short gives its readable part and "truncated_content_encoding" (as browsers show it)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b"", "bad_content_encoding"
    if len(out) > limit:
        return b"", "too_large"
    if not inflater.eof:
        return (out, "truncated_content_encoding") if out else (b"", "bad_content_encoding")
    return out, None
