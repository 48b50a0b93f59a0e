"""Where flow runs started from the Prefect API may read and write: the folders and URL prefixes the
server's operator allowed, nothing else.

Anyone who may create a flow run names its paths (store, inputs, sources, seed URLs, blocklists,
evaluation files). `crawl2llm server` sets CRAWL2LLM_ALLOWED_ROOTS for its worker (the project
folder, Common Crawl, and what `--allow` adds), and every flow checks each path it is given against
it before any work, so a run cannot ingest /etc or write a store into another user's home. Local
paths are compared after resolving symlinks and `..`; URLs by scheme, host and path prefix (their
userinfo and query are ignored). Without the variable (the CLI, run by the user as themselves)
nothing is restricted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

ENV = "CRAWL2LLM_ALLOWED_ROOTS"
COMMON_CRAWL = ("https://data.commoncrawl.org/", "s3://commoncrawl/")
GLOB_CHARS = "*?["


class AccessError(PermissionError):
    """A flow run names a path or URL outside the server's allowed roots."""


def default_roots(project_dir: Path) -> list[str]:
    return [str(Path(project_dir).resolve()), *COMMON_CRAWL]


def absolute(root: str) -> str:
    """A root as the policy keeps it: URLs as given, local folders resolved."""
    return root if _is_url(root) else str(Path(root).expanduser().resolve())


def encode(roots: list[str]) -> str:
    return json.dumps(roots)


def allowed_roots() -> list[str] | None:
    raw = os.environ.get(ENV)
    if raw is None:
        return None
    try:
        roots = json.loads(raw)
    except ValueError:
        roots = None
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise AccessError(f"{ENV} must be a JSON list of folders and URL prefixes, got {raw!r}")
    return roots


def check(named: dict[str, object]) -> None:
    """Raise AccessError naming the first field whose path (a string, or the strings of a list or of a
    dict's values) lies outside the allowed roots. Empty values are skipped."""
    roots = allowed_roots()
    if roots is None:
        return
    for field, value in named.items():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for target in values:
            if target and not is_allowed(str(target), roots):
                raise AccessError(
                    f"{field}: {_public(str(target))!r} is outside what this server lets flow runs "
                    f"read and write ({', '.join(roots)}); its operator can add it with "
                    f"`crawl2llm server --allow PATH_OR_URL_PREFIX`"
                )


def check_pipeline(config) -> None:
    """Every path a PipelineConfig names (the stage flows it starts check theirs again)."""
    from pipeline.inputs import CC_CRAWL

    check(
        {
            "store": config.store,
            "cc_base_url": config.cc_base_url,
            "inputs": [i for i in config.inputs if not CC_CRAWL.match(i)],
            "crawl.seeds": config.crawl.seeds if config.crawl else [],
            "ingest.url_blocklist_files": config.ingest.url_blocklist_files,
            "evaluate.text_files": config.evaluate.text_files,
            "evaluate.tasks": config.evaluate.tasks,
            "evaluate.data": config.evaluate.data,
            "dask_address": config.dask_address,
        }
    )


def is_allowed(target: str, roots: list[str]) -> bool:
    if _is_url(target):
        return any(_is_url(r) and _url_under(target, r) for r in roots)
    path = _local(target)
    return any(not _is_url(r) and (path == Path(r) or Path(r) in path.parents) for r in roots)


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _local(target: str) -> Path:
    """The real location of a local path; for a glob, of the folder before its first wildcard."""
    p = target.removeprefix("file://")
    cut = min((p.index(c) for c in GLOB_CHARS if c in p), default=None)
    if cut is not None:
        p = p[:cut].rpartition("/")[0] or "/"
    return Path(p).expanduser().resolve()


def _url_under(target: str, root: str) -> bool:
    t, r = urlsplit(target), urlsplit(root)
    if t.scheme.lower() != r.scheme.lower():
        return False
    if r.netloc and (t.hostname or "", t.port) != (r.hostname or "", r.port):
        return False
    prefix = r.path if r.path.endswith("/") or not r.path else r.path + "/"
    return not r.netloc or (t.path or "/").startswith(prefix or "/") or t.path == r.path


def _public(target: str) -> str:
    """A URL without its userinfo and query (they may hold secrets) for messages."""
    if not _is_url(target):
        return target
    parts = urlsplit(target)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
