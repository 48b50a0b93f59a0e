"""Resolve what a user names as input (files, folders, globs, fsspec URLs) into a sorted file list.

Checked before any work starts, so a typo or an unreadable file stops the run with its name.
"""

from __future__ import annotations

import posixpath

import fsspec

INPUT_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".jsonl", ".jsonl.gz", ".json.gz")


class InputError(ValueError):
    """An input path is missing, unreadable or holds no crawl files."""


def _url(fs, path: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if proto in ("file", "local") else f"{proto}://{path.lstrip('/')}"


def is_input_file(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return name.endswith(INPUT_SUFFIXES) and ".wat." not in name


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Expand each entry to files; raise InputError naming the first bad one."""
    if not inputs:
        raise InputError("no inputs given: name WARC/WET/JSONL files, folders or globs")
    files: list[str] = []
    for entry in inputs:
        fs, path = fsspec.core.url_to_fs(entry)
        if any(ch in path for ch in "*?["):
            found = sorted(p for p in fs.glob(path) if fs.isfile(p) and is_input_file(p))
            if not found:
                raise InputError(f"input glob matches no WARC/WET/JSONL files: {entry}")
        elif not fs.exists(path):
            raise InputError(f"input not found: {entry}")
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if is_input_file(p))
            if not found:
                raise InputError(f"input folder holds no WARC/WET/JSONL files: {entry}")
        elif not is_input_file(path):
            raise InputError(f"input is not a WARC/WET/JSONL file (by its name; expected one of "
                             f"{', '.join(INPUT_SUFFIXES)}): {entry}")
        else:
            found = [path]
        for p in found:
            try:
                with fs.open(p, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise InputError(f"input file is not readable: {_url(fs, p)} ({e.strerror or e})") from e
            files.append(_url(fs, p))
    return list(dict.fromkeys(files))
