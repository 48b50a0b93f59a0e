"""Fingerprints name a stage's output by everything that determines it.

fingerprint = hash(stage name, stage code version, canonical config, upstream fingerprint or the
identity of the input files). Same fingerprint means same bytes, which is what lets a re-run skip
work and lets two concurrent writers of one stage produce identical files.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
from typing import Any

import fsspec

from storage.locations import public_name

SAMPLE_BYTES = 1 << 20  # bytes hashed at each end of an input file for its identity


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}")


def fingerprint(stage: str, code: str, config: Any, upstream: Any) -> str:
    """Hex digest (20 chars) naming one stage output."""
    payload = canonical_json({"stage": stage, "code": code, "config": config, "upstream": upstream})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# Packages whose source decides what a stage writes. storage/ is left out: its file layout is
# tested on its own, and hashing it would invalidate every cache on any change to this module;
# except the token contract, whose encoding is what the tokenize stage writes.
CODE_PACKAGES = ("pipeline", "model")
CODE_MODULES = ("storage.tokens",)


@functools.lru_cache(maxsize=None)  # a process runs the code it loaded: its source does not change
def code_version(*modules: str) -> str:
    """Hash of the code of the modules a stage's output depends on (code_text: docstrings and
    comments left out), and of every project module they import at module level (transitively), so
    editing a shared helper invalidates its users.

    Imports inside functions are not followed. Each stage declares its modules (pipeline/stage_table.py)
    and the shard skeleton (pipeline/shard_steps.py) imports no stage, so a change to one stage leaves
    the others cached. Prefect's TASK_SOURCE would only see the thin task wrapper, not pipeline/.
    """
    h = hashlib.sha256()
    for name in sorted(module_closure(modules)):
        h.update(name.encode())
        h.update(code_text(inspect.getsource(importlib.import_module(name))).encode())
    return h.hexdigest()[:16]


def code_text(source: str) -> str:
    """The source as its syntax tree reads back, without docstrings: comments, docstrings, blank
    lines, quotes and line breaks do not change a stage's results, so they do not change its cache key.
    ast.unparse, not ast.dump: its text is the same across Python versions where the dump is not."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def module_closure(modules: tuple[str, ...] | list[str]) -> set[str]:
    """The modules and the project modules (CODE_PACKAGES) they import at module level."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        for node in tree.body:
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if _ours(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
                todo.append(node.module)
                if _is_package(node.module):  # `from pipeline import warc` names a module too
                    todo += [
                        f"{node.module}.{a.name}"
                        for a in node.names
                        if importlib.util.find_spec(f"{node.module}.{a.name}")
                    ]
    return seen


def _ours(module: str) -> bool:
    return module.split(".")[0] in CODE_PACKAGES or module in CODE_MODULES


def _is_package(module: str) -> bool:
    return hasattr(importlib.import_module(module), "__path__")


def file_identity(url: str, name: str | None = None) -> dict:
    """What identifies an input file cheaply: its recorded name (storage.locations.public_name unless
    given: never a password, a presigned query or this machine's absolute path), its size and the
    server's ETag when it gives one (S3, HTTP), else a hash of its first and last MiB.

    Reading whole multi-GB crawl files just to name them would cost as much as ingesting them.
    Raises FileNotFoundError naming the file when it is missing.
    """
    name = public_name(url) if name is None else name
    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {public_name(url)}") from None
    size = info.get("size")
    etag = info.get("ETag") or info.get("etag")
    if etag and size is not None:
        return {"url": name, "size": size, "etag": str(etag).strip('"')}
    if size is None:
        size = fs.size(path)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
            h.update(f.read(SAMPLE_BYTES))
        elif size > SAMPLE_BYTES:
            h.update(f.read())
    return {"url": name, "size": size, "sample_sha256": h.hexdigest()}
