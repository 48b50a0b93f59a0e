"""Ingest shards of a target input size, whatever the sizes of the input files.

A Common Crawl WARC is ~1 GB while a crawl of a small site gives files of a few hundred KB; one shard
per file would give a few huge tasks or thousands of tiny ones. The plan cuts big files into byte
ranges and groups small files (and ranges) until a shard holds about `shard_bytes` of input.

Only files whose records are separate gzip members (.warc.gz, .wet.gz) are cut: a reader of the range
[start, end) begins at the first record whose gzip member starts at or after `start` and stops at the
first record at or after `end`, so every record falls in exactly one range. The plan depends only on
the ordered file list and sizes, so a re-run (or a resumed run) makes the same shards.
"""

from __future__ import annotations

import math

from storage.locations import strip_secrets

SPLITTABLE_SUFFIXES = (".warc.gz", ".wet.gz")


def splittable(url: str) -> bool:
    return strip_secrets(url).lower().endswith(SPLITTABLE_SUFFIXES)  # a presigned URL's name ends before `?`


def plan_shards(files: list[tuple[str, int]], shard_bytes: int) -> list[list[dict]]:
    """Shards as lists of pieces {"url", "start", "end"} (end None: to the end of the file), in order."""
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be at least 1, got {shard_bytes}")
    pieces = []
    for url, size in files:
        n = max(1, round(size / shard_bytes)) if splittable(url) else 1
        step = math.ceil(size / n) if size else 0
        for i in range(n):
            pieces.append(
                {
                    "url": url,
                    "start": i * step,
                    "end": None if i == n - 1 else (i + 1) * step,
                    "bytes": size - i * step if i == n - 1 else step,
                }
            )
    shards: list[list[dict]] = []
    current, current_bytes = [], 0
    for piece in pieces:
        if current and current_bytes + piece["bytes"] > shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append({k: piece[k] for k in ("url", "start", "end")})
        current_bytes += piece["bytes"]
    if current:
        shards.append(current)
    return shards
