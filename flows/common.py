"""The Prefect side of a stage: one task per shard, cache keys from store fingerprints, artifacts.

A shard task's cache key is its stage fingerprint plus shard index plus store, so Prefect's Cached
state and the store agree. A cache record is trusted only while the store still holds the shard
intact: before the tasks are submitted, every committed shard's files are checked against the sizes
(and on a local disk the CRC-32s) its stats record (storage/verify.py); a damaged shard is
uncommitted with a warning. A shard whose stats are gone (new store, deleted output, damaged) is
submitted with refresh_cache and recomputes.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from tqdm import tqdm

from flows import artifacts, logs, workers
from pipeline.damage import merge_listed
from pipeline.runner import commit_stage
from storage import StageDir, StoreError, protocol
from storage.lock import stage_lock
from storage.verify import redone_differently, repair

T = TypeVar("T")


def _shard_key(context, parameters: dict) -> str:
    sd: dict = parameters["where"]
    store = hashlib.sha256(sd["store"].encode()).hexdigest()[:10]
    return f"crawl2llm-{sd['stage']}-{sd['fingerprint']}-{parameters['index']:05d}-{store}"


@task(
    cache_key_fn=_shard_key,
    persist_result=True,
    result_serializer="json",
    task_run_name="{where[stage]}-{index:05d}",
    retries=0,
)
def shard_task(where: dict, index: int, job: Callable[[], dict], workers_n: int | None = None) -> dict:
    """Run one shard's job (in the worker pool) and return its small stats dict."""
    return workers.run(job, workers=workers_n)


def map_shards(
    out: StageDir, jobs: dict[int, Callable[[], dict]], workers_n: int | None = None, label: str | None = None
) -> dict[int, dict]:
    """Submit one task per shard, show progress (terminal bar and Prefect progress artifact)."""
    where = {"stage": out.name, "fingerprint": out.fingerprint, "store": out.store.url}
    futures, index_of = [], {}
    for index, job in sorted(jobs.items()):
        t = shard_task if out.shard_done(index) else shard_task.with_options(refresh_cache=True)
        futures.append(t.submit(where, index, job, workers_n))
        index_of[futures[-1].task_run_id] = index
    label = label or out.name
    progress_id = create_progress_artifact(0.0, description=f"{label}: shards done")
    results: dict[int, dict] = {}
    with tqdm(total=len(futures), desc=label, unit="shard", leave=False) as bar:
        for fut in as_completed(futures):
            try:
                stats = fut.result()
            except Exception as e:
                raise logs.logged_once(e, f"task run {out.name}-{index_of[fut.task_run_id]:05d}") from None
            results[stats["index"]] = stats
            bar.update(1)
            update_progress_artifact(progress_id, 100.0 * len(results) / max(1, len(futures)))
    return results


def stage_seconds(results: dict[int, dict]) -> float:
    return round(sum(r.get("seconds", 0.0) for r in results.values()), 3)


def publish_stage(
    out: StageDir,
    manifest: dict,
    results: dict[int, dict],
    wall_s: float,
    cached: bool,
    examples: list[dict] | None = None,
) -> None:
    """Table of counts, a markdown report and a link to the output, keyed by the output
    (flows/artifacts.py), so a card opens this output's history."""
    counts = manifest.get("counts", {})
    counted = artifacts.count_rows(counts)
    reasons = [r for r in counted if r["metric"].startswith("removed.")]  # why documents went: first
    rows = (
        reasons
        + [
            {"metric": "output", "value": out.url()},
            {"metric": "cached", "value": str(cached)},
            {"metric": "wall seconds", "value": round(wall_s, 2)},
            {"metric": "worker seconds", "value": stage_seconds(results)},
        ]
        + counted[len(reasons) :]
    )
    docs_in = counts.get("docs_in")
    if docs_in and wall_s > 0 and not cached:
        rows.append({"metric": "docs per second", "value": round(docs_in / wall_s, 1)})
    artifacts.table(rows, artifacts.output_key(out, "summary"), f"{out.name} {out.fingerprint}")
    md = [
        f"# {out.name}",
        "",
        f"Output: `{out.url()}` {artifacts.link_markdown(out)}  ",
        f"Fingerprint: `{out.fingerprint}`  ",
        f"Cached: {cached}",
        "",
    ]
    removed = counts.get("removed") or {}
    if examples:
        artifacts.table(examples, artifacts.output_key(out, "removed"), f"{out.name}: examples of removed documents")
    if removed:
        md += [
            "| removed because | documents |",
            "|---|---:|",
            *(f"| `{k}` | {v} |" for k, v in sorted(removed.items(), key=lambda kv: -kv[1])),
            "",
            f"Examples of each: the `{artifacts.output_key(out, 'removed')}` table." if examples else "",
        ]
    else:
        md.append("No documents removed.")
    md += damage_report(out, counts, results)
    spans = counts.get("pii_spans") or {}
    if spans:  # pii scrubs inside documents instead of removing them
        md += [
            "",
            f"PII scrubbed in {counts.get('docs_with_pii', 0)} of {counts.get('docs_scanned', 0)} scanned documents:",
            "",
            "| PII type | spans replaced |",
            "|---|---:|",
            *(f"| `{k}` | {v} |" for k, v in sorted(spans.items(), key=lambda kv: -kv[1])),
        ]
        scrubbed = scrubbed_examples(out, manifest)
        if scrubbed:
            artifacts.table(
                scrubbed,
                artifacts.output_key(out, "scrubbed"),
                f"{out.name}: scrubbed spans in their context (the corpus's text)",
            )
            md += [
                "",
                f"Examples of each type, as the corpus now reads: the `{artifacts.output_key(out, 'scrubbed')}` table.",
            ]
    artifacts.markdown("\n".join(md), artifacts.output_key(out, "report"), f"{out.name} report")
    artifacts.output_link(
        out, artifacts.output_key(out, "output"), f"{out.name} output (manifest.json, data/, removed/, stats/)"
    )
    get_run_logger().info("%s %s: %s", out.name, "cached" if cached else "done", _short(counts))


def damage_report(out: StageDir, counts: dict, results: dict[int, dict]) -> list[str]:
    """Markdown lines on damaged input records (their count by kind) and a table of the first
    MAX_LISTED of them by file, offset and record id, so a user can find them."""
    damaged = counts.get("damaged") or {}
    if not damaged:
        return []
    rows = [
        {**r, "record_id": r["record_id"] or ""}
        for r in merge_listed(*(results[i].get("damaged_records", []) for i in sorted(results)))
    ]
    total = sum(damaged.values())
    md = [
        "",
        f"{total} damaged input records, counted (docs/INGEST.md says which are kept):",
        "",
        "| damage | records |",
        "|---|---:|",
        *(f"| `{k}` | {v} |" for k, v in sorted(damaged.items(), key=lambda kv: -kv[1])),
    ]
    if rows:
        key = artifacts.output_key(out, "damaged")
        artifacts.table(rows, key, f"{out.name}: the first {len(rows)} of {total} damaged records (file, offset)")
        md += [
            "",
            f"Where they are (the first {len(rows)} of {total}): the `{key}` table.",
            "",
            "| file | offset | record id | damage |",
            "|---|---:|---|---|",
            *(f"| {r['file']} | {r['offset']} | {r['record_id']} | `{r['what']}` |" for r in rows[:10]),
        ]
    return md


def publish_table(artifact_key: str, values: dict, description: str) -> None:
    """A two-column table artifact (metric, value)."""
    artifacts.table([{"metric": k, "value": v} for k, v in artifacts.flat(values)], artifact_key, description)


def removed_examples(out: StageDir, manifest: dict, per_reason: int = 2, chars: int = 300) -> list[dict]:
    """A few removed documents per reason (reason, url, detail, text), so a person can judge a
    threshold. Shown as a table artifact: its cells are plain text, never markdown."""
    import pyarrow as pa

    seen: dict[str, list[dict]] = {}
    for shard in manifest.get("shards", []):
        if "removed" not in shard:
            continue
        table: pa.Table = out.read_parquet(shard["removed"])
        for row in table.select(["reason", "detail", "url", "text"]).to_pylist():
            bucket = seen.setdefault(row["reason"], [])
            if len(bucket) < per_reason:
                bucket.append(
                    {
                        "reason": row["reason"],
                        "url": row["url"] or "",
                        "detail": row["detail"] or "",
                        "text": " ".join((row["text"] or "")[:chars].split()),
                    }
                )
        if seen and all(len(v) >= per_reason for v in seen.values()):
            break
    return [row for reason in sorted(seen) for row in seen[reason]]


def scrubbed_examples(out: StageDir, manifest: dict, max_shards: int = 4) -> list[dict]:
    """A few replaced PII spans per type in their context, from the first shards of a pii output."""
    from pipeline.pii import PiiConfig
    from pipeline.pii import scrubbed_examples as find

    def docs():
        for shard in manifest.get("shards", [])[:max_shards]:
            yield from out.read_parquet(shard["data"]).select(["url", "text"]).to_pylist()

    return find(docs(), PiiConfig.model_validate(manifest["config"]))


def _short(counts: dict) -> str:
    keys = ["docs_in", "docs_kept", "docs_removed", "removed", "train_tokens", "val_tokens"]
    return ", ".join(f"{k}={counts[k]}" for k in keys if k in counts)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def run_locked(out: StageDir, work: Callable[[], T]) -> T:
    """`work()`, which writes `out`, holding out's lock (storage/lock.py) unless out is committed:
    a second run of the same stage waits for the first, then finds its output committed and does
    nothing, or takes over when the first died. Decide `cached` inside `work`."""
    if out.is_committed():
        return work()
    log = get_run_logger()
    with stage_lock(out, log=log.info) as lock:
        result = work()
    if lock.lost:
        log.warning("%s %s: another run took the lock over while this one wrote", out.name, out.fingerprint)
    return result


def run_stage(
    out: StageDir,
    jobs: dict[int, Callable[[], dict]],
    header: dict,
    workers_n: int | None = None,
    examples: bool = False,
) -> tuple[dict, bool]:
    """The shape every sharded stage shares: map shards, commit the manifest, publish artifacts.

    Returns the manifest and whether the stage was already committed (nothing to do)."""
    if _in_memory(out):
        if workers.runs_on_dask():
            raise StoreError(
                f"{out.url()}: a memory:// store lives in this process only; "
                "give the Dask workers a store they can reach (a shared folder, s3://...)"
            )
        workers_n = 0  # a memory:// store lives in this process only

    def work() -> tuple[dict, dict, bool, float]:
        damaged = repair(out, list(jobs), get_run_logger().warning)  # done again below, like any missing shard
        cached = out.is_committed() and not damaged
        with Timer() as t:
            results = map_shards(out, jobs, workers_n)
            redone_differently(out, damaged, results, get_run_logger().warning)
            manifest = commit_stage(out, results, header)
        return manifest, results, cached, t.seconds

    manifest, results, cached, seconds = run_locked(out, work)
    publish_stage(out, manifest, results, seconds, cached, removed_examples(out, manifest) if examples else None)
    return manifest, cached


def _in_memory(out: StageDir) -> bool:
    return protocol(out.fs) == "memory"


def bind(fn: Callable[..., dict], *args: Any) -> Callable[[], dict]:
    """A picklable zero-argument job for the worker pool."""
    import functools

    return functools.partial(fn, *args)
