"""One reader per input format, each yielding document rows (pipeline/ingest_docs.py) from an open
file and counting into one ReadStats: WARC and WET (records from pipeline/warc_records.py), ARC, JSONL
and Parquet. Which reader a file gets follows from its name (detect_format).

Damage costs only the damaged part: a broken ARC gzip member is skipped to the next one, a cut JSONL
file keeps the lines before the cut, an unreadable Parquet row group is skipped. Only a file that is
not what its name says at all raises IngestError (pipeline/ingest.py adds: or has no readable record).
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import zlib
from datetime import datetime
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

from pipeline.ingest_docs import ReadStats, conversion_doc, doc_row, http_page, is_http, response_doc, text_doc
from pipeline.remote import is_transient
from pipeline.warc_records import MAX_HEADER_LINE, discard, lf_only, lf_records, next_member, warc_records
from pipeline.zstd_frames import ZstdFrames

if TYPE_CHECKING:
    from pipeline.ingest import IngestConfig

# Documents judged and written together: a worker holds one batch, not a whole input file.
BATCH_DOCS = 1000


# Input formats by how the file name ends (.zst: read through a zstd stream). WARC comes before ARC
# because every WARC name also ends in ".arc" or ".arc.gz".
FORMAT_SUFFIXES = {
    "warc": (".warc", ".warc.gz", ".warc.zst", ".wet", ".wet.gz", ".wet.zst"),
    "arc": (".arc", ".arc.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
    "parquet": (".parquet",),
}


INPUT_SUFFIXES = tuple(suffix for suffixes in FORMAT_SUFFIXES.values() for suffix in suffixes)


# Columns of a Parquet text source that become document fields (text_doc); others are not read.
PARQUET_COLUMNS = ("text", "id", "url", "title", "date", "created", "metadata")


class IngestError(ValueError):
    """An input file that cannot be read as what its name says."""


def detect_format(url: str) -> str:
    """'warc' (also WET), 'arc', 'jsonl' or 'parquet', from the file name."""
    name = posixpath.basename(url).lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    raise IngestError(f"{url}: unknown input format (expected one of {', '.join(INPUT_SUFFIXES)})")


def warc_docs(
    f,
    url: str,
    config: IngestConfig,
    stats: ReadStats,
    span: tuple[int, int | None] = (0, None),
) -> Iterator[dict]:
    """WARC response records (pages judged in pipeline/ingest_docs.py) and WET conversion records of one
    file, or of its byte range `span`; other record types are counted only."""
    if url.lower().endswith(".zst"):
        records = warc_records(
            io.BufferedReader(ZstdFrames(f, stats.damaged)), stats.damaged, config.max_record_bytes, resync=False
        )
    elif lf_only(f):  # read whole by the file's first piece: it has no member offsets to cut at
        records = lf_records(f, stats.damaged, config.max_record_bytes) if span[0] == 0 else iter(())
    else:
        records = warc_records(f, stats.damaged, config.max_record_bytes, span=span)
    for record, offset, block in records:
        stats.records += 1
        kind = str(record.record_type)
        if kind == "response":
            stats.responses += 1
            row = response_doc(record, offset, block, url, config, stats)
        elif kind == "conversion":  # WET: text already extracted by the crawler
            stats.responses += 1
            row = conversion_doc(record, offset, block, url, config, stats)
        else:
            if kind == "revisit":
                stats.skipped["revisit"] += 1
            continue
        if row is not None:
            yield row


def arc_docs(f, url: str, config: IngestConfig, stats: ReadStats) -> Iterator[dict]:
    """ARC, the Internet Archive's format before WARC: a filedesc:// record describing the file, then
    one record per fetched URL holding its HTTP response, judged like a WARC response record.

    fastwarc reads only WARC, hence this reader. ARC has no record ids: documents get the fallback id."""
    for start, stream in _arc_parts(f, gzipped=url.lower().endswith(".gz")):
        try:
            yield from _arc_part_docs(stream, start, url, config, stats)
        except (zlib.error, EOFError) as e:  # a broken or cut gzip member: go on at the next one
            stats.damaged.note("truncated_record" if isinstance(e, EOFError) else "gzip_error", start)


def _arc_part_docs(stream, start: int, url: str, config: IngestConfig, stats: ReadStats) -> Iterator[dict]:
    """The documents of one ARC stream (a gzip member, or a whole .arc); returns at damage."""
    while True:
        offset = start + stream.tell()
        line = stream.readline(MAX_HEADER_LINE)
        if not line:
            return
        if not line.strip():
            continue  # the newline that ends each record
        header = _arc_header(line)
        if header is None:
            stats.damaged.note("bad_header", offset)
            return
        target, date, length = header
        stats.records += 1
        if target.startswith("filedesc:"):  # the file's own description, like a warcinfo record
            discard(stream, length)
            continue
        stats.responses += 1
        why = "not_http" if not is_http(target) else "too_large" if length > config.max_record_bytes else None
        if why:
            stats.skipped[why] += 1
            discard(stream, length)
            continue
        block = stream.read(length)
        if len(block) < length:
            stats.damaged.note("truncated_record", offset)
            return
        page = http_page(block, config, stats, offset)
        if page is not None:
            yield doc_row(url, offset, None, target, date, *page)


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
        start = member.end if member.end is not None else next_member(f, start + 1)


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


def jsonl_docs(f, url: str, config: IngestConfig, stats: ReadStats) -> Iterator[dict]:
    """One document per line with a `text` field (dolma, RedPajama, FineWeb exports all have one)."""
    from zstandard import ZstdError

    name = url.lower()
    stream = (
        gzip.open(f)
        if name.endswith(".gz")
        else io.BufferedReader(ZstdFrames(f, stats.damaged, lines=True))
        if name.endswith(".zst")
        else f
    )  # a broken zstd frame costs its lines: reading goes on at the next
    try:
        line_no = 0
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            stats.records += 1
            try:
                obj = json.loads(line)
            except ValueError:
                stats.damaged.note("bad_json", line_no)
                continue
            row = text_doc(obj, len(line), line_no, url, config, stats)
            if row is not None:
                yield row
    except (OSError, EOFError, zlib.error, ZstdError) as e:  # a cut or corrupt file: the lines before it are kept
        if is_transient(e):
            raise
        stats.damaged.note("zstd_error" if isinstance(e, ZstdError) else "gzip_error", line_no + 1)


def parquet_docs(f, url: str, config: IngestConfig, stats: ReadStats) -> Iterator[dict]:
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
                    stats.records += 1
                    text = obj["text"]
                    size = len(text.encode("utf-8", errors="replace")) if isinstance(text, str) else 0
                    row = text_doc(obj, size, row_no, url, config, stats)
                    row_no += 1
                    if row is not None:
                        yield row
        except (pa.ArrowException, OSError):
            stats.damaged.note("bad_parquet", row_no)
        first_row += parquet.metadata.row_group(group).num_rows
