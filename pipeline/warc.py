"""A small WARC/1.1 writer: just what the crawler records (warcinfo, request, response).

Each record is compressed as its own gzip member, as Common Crawl does, so a reader can seek to
any record and a damaged member costs one record, not the rest of the file. Members are written
with mtime=0 and record ids are uuid5 of what the caller names, so the same records always give the
same bytes; only the dates the caller passes vary between crawls.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import uuid
from datetime import datetime, timezone

# Namespace of our record ids, so they never collide with another tool's uuid5 ids.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/crawl2llm/warc-record")
SOFTWARE = "crawl2llm/0.1"


def record_id(*parts: object) -> str:
    """A deterministic WARC-Record-ID, `<urn:uuid:...>`, from whatever identifies the record."""
    name = "\n".join(str(p) for p in parts)
    return f"<urn:uuid:{uuid.uuid5(ID_NAMESPACE, name)}>"


def warc_date(when: datetime | float) -> str:
    """ISO 8601 UTC to the second (`2024-05-01T12:00:00Z`), as WARC-Date wants."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha1_digest(data: bytes) -> str:
    """`sha1:BASE32`, the digest form Common Crawl and most WARC tools write."""
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def record(
    warc_type: str,
    rec_id: str,
    date: str,
    block: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """One WARC record as one gzip member. `headers` are extra named fields, in order."""
    fields = [("WARC-Type", warc_type), ("WARC-Record-ID", rec_id), ("WARC-Date", date)]
    fields += headers or []
    fields += [
        ("WARC-Block-Digest", sha1_digest(block)),
        ("Content-Type", content_type),
        ("Content-Length", str(len(block))),
    ]
    head = "WARC/1.1\r\n" + "".join(f"{k}: {_one_line(v)}\r\n" for k, v in fields) + "\r\n"
    return gzip.compress(head.encode("utf-8") + block + b"\r\n\r\n", compresslevel=6, mtime=0)


def warcinfo_record(filename: str, date: str, fields: dict[str, str] | None = None) -> bytes:
    """The record that opens a WARC file and says what made it; its id is `warcinfo_id(filename)`."""
    body = {
        "software": SOFTWARE,
        "format": "WARC File Format 1.1",
        "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
        **(fields or {}),
    }
    block = "".join(f"{k}: {_one_line(v)}\r\n" for k, v in body.items()).encode("utf-8")
    return record(
        "warcinfo", warcinfo_id(filename), date, block, "application/warc-fields", [("WARC-Filename", filename)]
    )


def warcinfo_id(filename: str) -> str:
    """Known before the file is written, so every record can point at its file's warcinfo."""
    return record_id("warcinfo", filename)


def request_record(url: str, http_request: bytes, date: str, rec_id: str, warcinfo: str | None = None) -> bytes:
    """The HTTP request as sent (request line and headers)."""
    extra = [("WARC-Target-URI", url)] + ([("WARC-Warcinfo-ID", warcinfo)] if warcinfo else [])
    return record("request", rec_id, date, http_request, "application/http; msgtype=request", extra)


def response_record(
    url: str,
    http_response: bytes,
    date: str,
    rec_id: str,
    concurrent_to: str | None = None,
    warcinfo: str | None = None,
    truncated: str | None = None,
) -> bytes:
    """The HTTP response (status line, headers, body); `truncated` names why the body was cut
    (WARC-Truncated: "length" when it hit the size limit)."""
    _, _, payload = http_response.partition(b"\r\n\r\n")
    extra = [("WARC-Target-URI", url)]
    if concurrent_to:
        extra.append(("WARC-Concurrent-To", concurrent_to))
    if warcinfo:
        extra.append(("WARC-Warcinfo-ID", warcinfo))
    extra.append(("WARC-Payload-Digest", sha1_digest(payload)))
    if truncated:
        extra.append(("WARC-Truncated", truncated))
    return record("response", rec_id, date, http_response, "application/http; msgtype=response", extra)


def _one_line(value: str) -> str:
    """Header values must not break the record's header block."""
    return " ".join(str(value).split())
