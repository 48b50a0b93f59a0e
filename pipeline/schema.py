"""The document schema every text stage reads and writes, and the schema of removed documents."""

from __future__ import annotations

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable: WARC-Record-ID, or a hash of source+offset
        pa.field("url", pa.string()),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string()),  # input file the record came from
        pa.field("offset", pa.int64()),  # byte offset of the record (line number for JSONL, row for Parquet)
        pa.field("date", pa.string()),  # crawl date, ISO 8601 as the archive gives it
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
    ]
)

# Removed documents keep every column plus why they were removed.
REMOVED_SCHEMA = DOC_SCHEMA.append(pa.field("reason", pa.string(), nullable=False)).append(
    pa.field("detail", pa.string())
)


def empty_docs() -> pa.Table:
    return DOC_SCHEMA.empty_table()


def docs_from_rows(rows: list[dict]) -> pa.Table:
    """Build a document table from dicts, filling absent optional columns with nulls."""
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
