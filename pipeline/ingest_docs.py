"""Records into document rows, the same for every input format: what WARC/WET, ARC, JSONL and
Parquet readers (pipeline/ingest_readers.py) share once they hold one record's bytes.

An HTTP response (a WARC response block or an ARC record) becomes a page only when it is a 200 of a
wanted MIME type whose body can be read: de-chunked, gzip content-encoding undone no further than
max_record_bytes, digests checked, then HTML turned into text (pipeline/extract.py). Every row gets its
language (pipeline/langid.py). What is skipped or damaged along the way is counted in one ReadStats
per file, handed to every reader once.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.damage import DamageLog
from pipeline.digests import digest_ok
from pipeline.extract import ExtractTimeout, HtmlTooDeep, html_to_text
from pipeline.http_message import content_type, gunzip
from pipeline.langid import detect_language, utf8_safe
from pipeline.warc_records import GZIP_MAGIC, target_uri, warc_record_id

if TYPE_CHECKING:
    from pipeline.ingest import IngestConfig


@dataclass
class ReadStats:
    """What reading one input file counted: records seen, records that could become documents
    (`responses`: WARC responses and conversions, ARC pages, JSONL lines and Parquet rows with
    text), those skipped by reason, and damage with its places."""

    damaged: DamageLog
    records: int = 0
    responses: int = 0
    skipped: Counter = field(default_factory=Counter)


def doc_row(
    url: str, offset: int, record_id: str | None, target: str | None, date: str | None, title: str | None, text: str
) -> dict:
    """A document row of every format; records without an id get one from the file name and offset.
    Lone surrogates (valid in JSON, not in UTF-8) become U+FFFD: fastText and Arrow take only UTF-8."""
    record_id, target, title, text = (utf8_safe(v) for v in (record_id, target, title, text))
    lang, score = detect_language(text)
    return {
        "id": record_id or _fallback_id(url, offset),
        "url": target or None,
        "title": title,
        "text": text,
        "source": url,
        "offset": offset,
        "date": date,
        "language": lang,
        "language_score": score,
    }


def _fallback_id(url: str, offset: int) -> str:
    """From the file name (never its folder or query), as ids were before names were recorded."""
    return hashlib.sha1(f"{posixpath.basename(url)}:{offset}".encode()).hexdigest()


def _payload(record, offset: int, block: bytes | None, config: IngestConfig, stats: ReadStats) -> bytes | None:
    """The record's block, or None when it is too large or truncated (counted)."""
    if record.content_length > config.max_record_bytes:
        stats.skipped["too_large"] += 1
        return None
    if block is None or len(block) < record.content_length:
        stats.damaged.note("truncated_record", offset, warc_record_id(record))
        return None
    return block


def _digest_passes(record, offset: int, block: bytes, config: IngestConfig, stats: ReadStats) -> bool:
    """Whether a record about to become a document may (digests checked only then: most records of a
    crawl are images and other pages that are skipped anyway); a mismatch is counted either way."""
    if not config.check_digests or _digests_ok(record, block):
        return True
    stats.damaged.note("digest_mismatch", offset, warc_record_id(record))
    return config.digest_mismatch == "keep"


def _digests_ok(record, block: bytes) -> bool:
    """False when WARC-Block-Digest, or WARC-Payload-Digest (over the HTTP body as recorded, or
    de-chunked), is present and does not match."""
    if digest_ok(record.headers.get("WARC-Block-Digest"), block) is False:
        return False
    payload_digest = record.headers.get("WARC-Payload-Digest")
    if not payload_digest or str(record.record_type) != "response":
        return True
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
    return digest_ok(payload_digest, body) is not False or digest_ok(payload_digest, _dechunk(body)) is not False


def response_doc(
    record, offset: int, block: bytes | None, url: str, config: IngestConfig, stats: ReadStats
) -> dict | None:
    target = target_uri(record)
    if not is_http(target):
        stats.skipped["not_http"] += 1
        return None
    block = _payload(record, offset, block, config, stats)
    page = (
        None
        if block is None
        else http_page(
            block,
            config,
            stats,
            offset,
            warc_record_id(record),
            lambda: _digest_passes(record, offset, block, config, stats),
        )
    )
    if page is None:
        return None
    return doc_row(url, offset, warc_record_id(record), target, record.headers.get("WARC-Date"), *page)


def conversion_doc(
    record, offset: int, block: bytes | None, url: str, config: IngestConfig, stats: ReadStats
) -> dict | None:
    block = _payload(record, offset, block, config, stats)
    if block is None or not _digest_passes(record, offset, block, config, stats):
        return None
    return doc_row(
        url,
        offset,
        warc_record_id(record),
        target_uri(record),
        record.headers.get("WARC-Date"),
        None,
        block.decode("utf-8", errors="replace").strip(),
    )


def is_http(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def http_page(
    block: bytes,
    config: IngestConfig,
    stats: ReadStats,
    offset: int,
    record_id: str | None = None,
    verify=None,
) -> tuple[str | None, str] | None:
    """(title, text) of an HTTP response (a WARC response block or an ARC record), or None when it is
    not a 200 page of a wanted type or cannot be read (counted). Shared so both formats judge alike."""
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
    if not sep:
        stats.damaged.note("bad_http", offset, record_id)
        return None
    status, headers = _http_head(head)
    if status is None:
        stats.damaged.note("bad_http", offset, record_id)
        return None
    if status != 200:
        stats.skipped["status"] += 1
        return None
    mime, charset = content_type(headers.get("content-type", ""))
    if mime not in config.mime_types:
        stats.skipped["mime"] += 1
        return None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip") and body.startswith(GZIP_MAGIC):
        body, problem = gunzip(body, config.max_record_bytes)
        if problem == "too_large":
            stats.skipped["too_large"] += 1  # a gzip bomb would otherwise get past max_record_bytes
            return None
        if problem == "truncated_content_encoding":
            stats.damaged.note(problem, offset, record_id)  # counted, and the readable part kept
        elif problem:
            stats.damaged.note(problem, offset, record_id)
            return None
    elif headers.get("content-encoding", "").lower() in ("br", "deflate", "zstd"):
        stats.skipped["content_encoding"] += 1  # rare in archives: crawlers ask for identity or gzip
        return None
    if verify is not None and not verify():  # the record's digests, once it is known to be a wanted page
        return None
    try:
        return html_to_text(body, charset, config)
    except ExtractTimeout:
        stats.skipped["extract_timeout"] += 1
        return None
    except HtmlTooDeep:
        stats.skipped["html_too_deep"] += 1
        return None


def _http_head(head: bytes) -> tuple[int | None, dict]:
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(None, 2) if lines else []
    if len(parts) < 2 or not parts[0].upper().startswith("HTTP/") or not parts[1].isdigit():
        return None, {}
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding (some crawlers record it verbatim); best effort."""
    if not re.match(rb"[0-9a-fA-F]+[ \t;]*[^\r\n]*\r\n", body[:64]):
        return body  # the archiver already removed the chunking and kept the header
    out, pos = io.BytesIO(), 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            return body  # not really chunked
        if size == 0:
            break
        out.write(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return out.getvalue()


def text_doc(obj, size: int, offset: int, url: str, config: IngestConfig, stats: ReadStats) -> dict | None:
    """The document of one JSONL line or Parquet row (`size` bytes), or None (counted). Besides `text`
    it takes `id`, `url`, `title` and `date`, or dolma's `created` and `metadata.url`/`metadata.date`."""
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        stats.damaged.note("no_text", offset)
        return None
    if size > config.max_record_bytes:
        stats.skipped["too_large"] += 1
        return None
    stats.responses += 1
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return doc_row(
        url,
        offset,
        str(obj.get("id") or "") or None,
        _string(obj.get("url") or meta.get("url")),
        _string(obj.get("date") or obj.get("created") or meta.get("date")),
        _string(obj.get("title")),
        text,
    )


def _string(value) -> str | None:
    return value if isinstance(value, str) else None
