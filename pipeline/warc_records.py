"""WARC records out of possibly damaged files, for ingest's WARC/WET reader (pipeline/ingest_readers.py).

fastwarc parses the records; this module decides where reading resumes after damage (the next gzip
member that inflates to a WARC record, or the next "WARC/1." line of an uncompressed file), reads
the byte range [start, end) that pipeline/ingest_plan.py cuts a big file into, and reads the
LF-only WARCs fastwarc cannot. It knows nothing of documents or configs: it yields
(record, offset, block) and notes damage in a DamageLog.

pipeline/warc.py is the other direction: the crawler's WARC writer.
"""

from __future__ import annotations

import gzip
import re
import zlib

from pipeline.damage import DamageLog
from pipeline.remote import is_transient
from pipeline.zstd_frames import find_magic

GZIP_MAGIC = b"\x1f\x8b\x08"
# Longest header line we read (an LF-only WARC's, or an ARC record's: a URL, an IP address, a date,
# a MIME type and a length).
MAX_HEADER_LINE = 1 << 16


def warc_records(f, damaged: DamageLog, max_block: int, resync: bool = True, span: tuple[int, int | None] = (0, None)):
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
                at, rid = last, warc_record_id(reading)
            elif last < start:
                at, rid = start, None
            elif not resync:
                at, rid = None, None
            else:
                at, rid = (next_member(f, last + 1) if gzipped else _record_end(f, last)), None
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


def lf_only(f) -> bool:
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


def lf_records(f, damaged: DamageLog, max_block: int):
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
            line = stream.readline(MAX_HEADER_LINE)
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
                line = stream.readline(MAX_HEADER_LINE)
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
                discard(stream, record.content_length)
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
        found = next_member(f, position)
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


def next_member(f, position: int) -> int | None:
    """Offset of the next gzip member header at or after `position`, or None at end of file."""
    return find_magic(f, position, GZIP_MAGIC)


def discard(stream, size: int) -> None:
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return
        size -= len(chunk)


def target_uri(record) -> str:
    return (record.headers.get("WARC-Target-URI") or "").strip("<>")


def warc_record_id(record) -> str:
    return (record.headers.get("WARC-Record-ID") or "").strip().strip("<>").removeprefix("urn:uuid:")
