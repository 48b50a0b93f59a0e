"""Resolve what a user names as input into a file list: files, folders, globs, fsspec URLs, and
Common Crawl listings (`CC-MAIN-2024-51`, `CC-MAIN-2024-51/wet`, or any `*.paths.gz` file).

Checked before any work starts, so a typo or an unreadable file stops the run with its name. Files
from a listing are not each opened up front (a crawl lists ~100,000): only the first one, so a wrong
base URL fails at once.
"""

from __future__ import annotations

import gzip
import posixpath
import re

import fsspec

from pipeline.ingest import INPUT_SUFFIXES  # what ingest can read decides what counts as an input

CC_BASE_URL = "https://data.commoncrawl.org/"
# A crawl's name, optionally with the kind of files to list (Common Crawl publishes warc, wet, wat).
CC_CRAWL = re.compile(r"^(CC-MAIN-\d{4}-\d{2})(?:/(warc|wet))?$")


class InputError(ValueError):
    """An input path is missing, unreadable or holds no crawl files."""


def _url(fs, path: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local") or "://" in path:  # http(s) paths are whole URLs already
        return path
    return f"{proto}://{path.lstrip('/')}"


def is_input_file(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return name.endswith(INPUT_SUFFIXES) and ".wat." not in name


def resolve_inputs(inputs: list[str], limit: int | None = None, cc_base_url: str = CC_BASE_URL) -> list[str]:
    """Expand each entry to files, in order, without repeats; keep the first `limit` of them.

    Raises InputError naming the first bad entry."""
    if not inputs:
        raise InputError("no inputs given: name WARC/WET/ARC/JSONL/Parquet files, folders, globs or a Common "
                         "Crawl listing")
    files: list[str] = []
    for entry in inputs:
        if limit is not None and len(files) >= limit:
            break
        crawl = CC_CRAWL.match(entry)
        if crawl:
            entry = f"{cc_base_url.rstrip('/')}/crawl-data/{crawl.group(1)}/{crawl.group(2) or 'warc'}.paths.gz"
        if entry.endswith(".paths.gz"):
            listed = read_listing(entry, cc_base_url, None if limit is None else limit - len(files))
            _check_readable(*fsspec.core.url_to_fs(listed[0]))
            files += listed
        else:
            files += _expand(entry)
    files = list(dict.fromkeys(files))
    return files if limit is None else files[:limit]


def read_listing(url: str, cc_base_url: str = CC_BASE_URL, limit: int | None = None) -> list[str]:
    """The files a Common Crawl `*.paths.gz` listing names, as URLs under cc_base_url (relative
    lines) or as written (absolute ones)."""
    try:
        with fsspec.open(url, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            lines = []
            for line in f:
                if line.strip():
                    lines.append(line.strip())
                    if limit is not None and len(lines) >= limit:
                        break
    except FileNotFoundError:
        raise InputError(f"Common Crawl listing not found: {url}") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"Common Crawl listing is not a readable gzip text file: {url} ({e})") from e
    if not lines:
        raise InputError(f"Common Crawl listing names no files: {url}")
    base = cc_base_url.rstrip("/") + "/"
    return [line if "://" in line or line.startswith("/") else base + line.lstrip("/") for line in lines]


def _expand(entry: str) -> list[str]:
    """The input files one entry (a file, folder or glob) names, checked readable."""
    fs, path = fsspec.core.url_to_fs(entry)
    if any(ch in path for ch in "*?["):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p) and is_input_file(p))
        if not found:
            raise InputError(f"input glob matches no WARC/WET/ARC/JSONL/Parquet files: {entry}")
    elif not fs.exists(path):
        raise InputError(f"input not found: {entry}")
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path) if is_input_file(p))
        if not found:
            raise InputError(f"input folder holds no WARC/WET/ARC/JSONL/Parquet files: {entry}")
    elif not is_input_file(path):
        raise InputError(f"input is not a WARC/WET/ARC/JSONL/Parquet file (by its name; expected one of "
                         f"{', '.join(INPUT_SUFFIXES)}): {entry}")
    else:
        found = [path]
    return [_check_readable(fs, p) for p in found]


def _check_readable(fs, path: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise InputError(f"input not found: {_url(fs, path)}") from None
    except OSError as e:
        raise InputError(f"input file is not readable: {_url(fs, path)} ({e.strerror or e})") from e
    return _url(fs, path)
