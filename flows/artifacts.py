"""What a run shows in the Prefect UI: artifact keys, tables and output links, made one way.

A key is the history the UI opens from an artifact's card. Keys name what the artifact is about, so
the card leads to that thing's history and not to another run's data: a stage's artifacts are keyed
by its output's fingerprint (every run that made or reused that very output), store-wide tables by
the store, a series' table by the series. Nested counts become one row per leaf (the UI shows
`[object Object]` for a nested value), the reasons documents were dropped first.
"""

from __future__ import annotations

import hashlib
import json
import re

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows import store_browser
from storage import StageDir


def key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from its parts."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def output_key(out: StageDir, what: str) -> str:
    """`{stage}-{what}-{fingerprint}`: the history of this output, whichever run made or reused it."""
    return key(out.name, what, out.fingerprint[:16])


def store_key(url: str, what: str) -> str:
    """`{what}-{store}`: one history per store (the store's URL hashed, not shown)."""
    return key(what, hashlib.sha256(url.encode()).hexdigest()[:10])


def flat(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted name, leaf value) for every leaf; lists become JSON text. A small dict of numbers
    below the top (a rule's checked and failed) is one row: `checked 20, failed 3`."""
    out: list[tuple[str, object]] = []
    for k, v in values.items():
        name = f"{prefix}{k}"
        if (
            isinstance(v, dict)
            and prefix
            and 0 < len(v) <= 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())
        ):
            out.append((name, ", ".join(f"{a} {b}" for a, b in v.items())))
        elif isinstance(v, dict):
            out += flat(v, f"{name}.")
        elif isinstance(v, (list, tuple)):
            out.append((name, json.dumps(v, default=str)))
        else:
            out.append((name, v))
    return out


def count_rows(counts: dict) -> list[dict]:
    """Metric/value rows of a stage's counts: why documents were removed first, then the totals,
    then the rest (per-rule checks, per-type spans)."""

    def rank(row: tuple[str, object]) -> int:
        return 0 if row[0].startswith("removed.") else 1 if row[0].startswith("docs_") else 2

    return [{"metric": k, "value": v} for k, v in sorted(flat(counts), key=rank)]  # stable: order kept within


def table(rows: list[dict], artifact_key: str, description: str) -> None:
    create_table_artifact(rows, key=artifact_key, description=description)


def markdown(text: str, artifact_key: str, description: str) -> None:
    create_markdown_artifact(text, key=artifact_key, description=description)


def output_link(out: StageDir, artifact_key: str, what: str, path: str = "") -> None:
    """A link artifact that opens the output (or `path` inside it) in the store browser."""
    folder_link(out.url(), artifact_key, what, path)


def folder_link(root: str, artifact_key: str, what: str, path: str = "") -> None:
    """A link artifact that opens `path` inside the folder `root` in the store browser, its text
    saying where the files are. Without a browser to open (a server that is not ours), a markdown
    artifact with the path to copy."""
    where = f"{root.rstrip('/')}/{path}" if path else root
    target = store_browser.link(root, path)
    if target is None:
        markdown(f"**{what}**\n\n`{where}`", artifact_key, f"{what}: {where}")
        return
    create_link_artifact(target, link_text=f"{what}: {where}", key=artifact_key, description=f"{what}: {where}")


def link_markdown(out: StageDir, path: str = "", text: str = "open") -> str:
    """A markdown link to the output in the store browser, or empty without one."""
    target = store_browser.link(out.url(), path)
    return f"[{text}]({target})" if target else ""


def pipeline_summary(results: dict[str, dict], seconds: dict[str, float], total_s: float) -> None:
    """The pipeline run's own artifact: each stage, whether it ran or was cached, its main counts,
    its time and a link to its output; keyed by the last output (which names the whole chain)."""
    lines = [
        "# Pipeline",
        "",
        f"{len(results)} stage(s) in {total_s:.1f} s; "
        f"{sum(not r.get('cached') for r in results.values())} ran, "
        f"{sum(bool(r.get('cached')) for r in results.values())} cached.",
        "",
        "| stage | this run | in | kept | seconds | output |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        counts = r.get("counts", {})
        got_in = counts.get("docs_in", counts.get("pages", counts.get("docs", "")))
        kept = counts.get("docs_kept", counts.get("train_tokens", ""))
        target = store_browser.link(r["url"])
        where = f"{r['stage']}/{r['fingerprint']}"  # in the store; plain characters only
        output = f"[{where}]({target})" if target else f"`{r['url']}`"
        took = f"{seconds[name]:.1f}" if name in seconds else ""  # an incremental run times the whole
        lines.append(f"| {name} | {'cached' if r.get('cached') else 'ran'} | {got_in} | {kept} | {took} | {output} |")
    lines += ["", "in/kept: documents (pages for crawl; kept training tokens for tokenize)."]
    last = list(results.values())[-1]
    markdown(
        "\n".join(lines),
        key("pipeline-summary", last["stage"], last["fingerprint"][:16]),
        "pipeline: every stage, cached or ran, with links to the outputs",
    )
