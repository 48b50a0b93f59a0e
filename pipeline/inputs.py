"""Resolve what a user names as input into a file list: files, folders, globs, fsspec URLs, and
Common Crawl listings (`CC-MAIN-2024-51`, `CC-MAIN-2024-51/wet`, or any `*.paths.gz` file).

Checked before any work starts, so a typo or an unreadable file stops the run with its name. Files
from a listing are not each opened up front (a crawl lists ~100,000): only the first one, so a wrong
base URL fails at once.

Each file comes with the name it is recorded under (storage/locations.py): a URL without userinfo,
query or fragment, or a local file's path below the folder (or glob prefix) the user named, so rows
and manifests hold neither secrets nor this machine's layout. A URL with a user name or password is
refused: the credentials go in ~/.netrc or the AWS environment instead, out of the flow parameters
Prefect stores. In a URL with a scheme `?` starts a query (a presigned URL), not a glob.
"""

from __future__ import annotations

import gzip
import posixpath
import re
from typing import NamedTuple
from urllib.parse import urlsplit

import fsspec

from pipeline.ingest import INPUT_SUFFIXES  # what ingest can read decides what counts as an input
from storage.locations import has_scheme, has_userinfo, is_local_url, redact, strip_secrets, userinfo_error

CC_BASE_URL = "https://data.commoncrawl.org/"
# A crawl's name, optionally with the kind of files to list (Common Crawl publishes warc, wet, wat).
CC_CRAWL = re.compile(r"^(CC-MAIN-\d{4}-\d{2})(?:/(warc|wet))?$")
GLOB_CHARS = "*?["


class InputError(ValueError):
    """An input path is missing, unreadable or holds no crawl files."""


class NoInputFiles(InputError):
    """A glob or folder that holds no crawl files (yet): for a series of incremental runs over a folder
    that files land in, nothing to do rather than a mistake."""


class InputFile(NamedTuple):
    """An input file: `url` reads it (it may hold a presigned query: never write it down), `name` is
    what rows, manifests and identities record."""

    url: str
    name: str


def _url(fs, path: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local") or "://" in path:  # http(s) paths are whole URLs already
        return path
    return f"{proto}://{path.lstrip('/')}"


def is_input_file(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return name.endswith(INPUT_SUFFIXES) and ".wat." not in name


def resolve_inputs(inputs: list[str], limit: int | None = None, cc_base_url: str = CC_BASE_URL) -> list[InputFile]:
    """Expand each entry to files, in order, without repeats; keep the first `limit` of them.

    Raises InputError naming the first bad entry."""
    if not inputs:
        raise InputError(
            "no inputs given: name WARC/WET/ARC/JSONL/Parquet files, folders, globs or a Common Crawl listing"
        )
    refuse_credentials(inputs, cc_base_url)
    files: list[InputFile] = []
    for entry in inputs:
        if limit is not None and len(files) >= limit:
            break
        crawl = CC_CRAWL.match(entry)
        if crawl:
            entry = f"{cc_base_url.rstrip('/')}/crawl-data/{crawl.group(1)}/{crawl.group(2) or 'warc'}.paths.gz"
        if strip_secrets(entry).endswith(".paths.gz"):
            listed = read_listing(entry, cc_base_url, None if limit is None else limit - len(files))
            _check_readable(*fsspec.core.url_to_fs(listed[0]))
            files += [InputFile(url, strip_secrets(url)) for url in listed]
        else:
            files += _expand(entry)
    first: dict[str, InputFile] = {}
    for f in files:  # each file once, where it first came
        first.setdefault(f.url, f)
    files = list(first.values())
    return files if limit is None else files[:limit]


def refuse_credentials(inputs: list[str], cc_base_url: str = CC_BASE_URL) -> None:
    """InputError for a URL holding a user name or password: checked before a flow run is created,
    since Prefect stores its parameters as given (storage/locations.py says where they go instead)."""
    for url, what in [*((i, "input URL") for i in inputs), (cc_base_url, "cc_base_url")]:
        if has_userinfo(url):
            raise InputError(userinfo_error(url, what))


def read_listing(url: str, cc_base_url: str = CC_BASE_URL, limit: int | None = None) -> list[str]:
    """The files a Common Crawl `*.paths.gz` listing names, as URLs under cc_base_url.

    Every line must be a path relative to cc_base_url: a listing from a mirror must not send us to
    another server or, through `/...` or `..`, to this machine's files. Raises InputError naming the
    listing and the line."""
    shown = strip_secrets(url)
    try:
        with fsspec.open(url, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            lines = []
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    lines.append(_listed_path(line.strip(), shown, line_no, cc_base_url))
                    if limit is not None and len(lines) >= limit:
                        break
    except FileNotFoundError:
        raise InputError(f"Common Crawl listing not found: {shown}") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"Common Crawl listing is not a readable gzip text file: {shown} ({redact(str(e))})") from e
    if not lines:
        raise InputError(f"Common Crawl listing names no files: {shown}")
    base = cc_base_url.rstrip("/") + "/"
    return [base + line for line in lines]


def _listed_path(line: str, listing: str, line_no: int, cc_base_url: str) -> str:
    """A listing line, checked to be a plain relative path (no scheme, no leading /, no `..`)."""
    if has_scheme(line) or line.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", line):
        raise InputError(
            f"Common Crawl listing {listing} line {line_no}: {redact(line)!r} is not a path relative "
            f"to {strip_secrets(cc_base_url)} (a listing may only name files under it)"
        )
    return line


def _expand(entry: str) -> list[InputFile]:
    """The input files one entry (a file, folder or glob) names, checked readable."""
    fs, path = fsspec.core.url_to_fs(entry)
    shown = strip_secrets(entry)
    query = has_scheme(entry) and bool(urlsplit(entry).query)  # a presigned URL: `?` is no glob there
    if not query and any(ch in path for ch in GLOB_CHARS):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p) and is_input_file(p))
        if not found:
            raise NoInputFiles(f"input glob matches no WARC/WET/ARC/JSONL/Parquet files: {shown}")
        root = _glob_root(path)
    elif not fs.exists(path):
        raise InputError(f"input not found: {shown}")
    elif not query and fs.isdir(path):
        found = sorted(p for p in fs.find(path) if is_input_file(p))
        if not found:
            raise NoInputFiles(f"input folder holds no WARC/WET/ARC/JSONL/Parquet files: {shown}")
        root = path.rstrip("/")
    elif not is_input_file(strip_secrets(path)):
        raise InputError(
            f"input is not a WARC/WET/ARC/JSONL/Parquet file (by its name; expected one of "
            f"{', '.join(INPUT_SUFFIXES)}): {shown}"
        )
    else:
        found, root = [path], posixpath.dirname(path)
    local = is_local_url(entry)
    return [
        InputFile(url, posixpath.relpath(p, root) if local else strip_secrets(url))
        for p, url in ((p, _check_readable(fs, p)) for p in found)
    ]


def _glob_root(pattern: str) -> str:
    """The folder a glob's matches are named relative to: the part before its first wildcard."""
    first = min(i for i, ch in enumerate(pattern) if ch in GLOB_CHARS)
    return posixpath.dirname(pattern[:first]) or "/"


def _check_readable(fs, path: str) -> str:
    url = _url(fs, path)
    try:
        with fs.open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise InputError(f"input not found: {strip_secrets(url)}") from None
    except OSError as e:
        raise InputError(f"input file is not readable: {strip_secrets(url)} ({redact(str(e.strerror or e))})") from e
    return url
