"""Dedup's orchestration, for any runner (pipeline/runner.py): its outputs, their fingerprints and
the jobs of each step, in order. The Prefect flow (flows/stages.py) and the unit tests run this same
sequence; only the runner differs.

    dedup-signatures  per document shard: MinHash signatures and LSH bucket keys (sorted by key)
    dedup-pairs       per key-range partition: verified duplicate pairs (and pairs with earlier increments)
    dedup-clusters    once: union-find clusters, each shard's duplicates with their kept document
    dedup             per document shard: the documents without their duplicates

Each output's fingerprint holds only what decides its bytes: the signatures depend on the MinHash
and LSH settings, not on the threshold; nothing depends on `memory_mb`, which picks the number of
partitions. That number is fixed by the run that starts the pairs output (its plan.json), so a
resumed or concurrent run with another memory_mb finishes the same partitions.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Callable

from pipeline import dedup_steps
from pipeline.dedup import DedupConfig, implied_threshold, partitions_for
from storage import StageDir, fingerprint

# run(out, jobs, header, inline=False, examples=False) -> manifest (pipeline/runner.py)
Runner = Callable[..., dict]
PLAN = "plan.json"


def result_fields(config: DedupConfig) -> dict:
    """The settings that can change what dedup writes: all but the memory budget and partition count."""
    return config.model_dump(exclude={"memory_mb", "partitions"})


@dataclass(frozen=True)
class DedupOutputs:
    """Where each step of one dedup run writes."""

    up: StageDir
    signatures: StageDir
    pairs: StageDir
    clusters: StageDir
    out: StageDir
    upstream: dict


def outputs(up: StageDir, config: DedupConfig, previous: StageDir | None, code: str) -> DedupOutputs:
    """Every output of dedup of `up` after the increments up to `previous` (their fingerprints)."""
    st = up.store
    docs = {"stage": up.name, "fingerprint": up.fingerprint}
    sig = st.stage("dedup-signatures", fingerprint("dedup-signatures", code, config.key_fields(), docs))
    pairs_up = (
        sig.fingerprint if previous is None else {"signatures": sig.fingerprint, "previous": previous.fingerprint}
    )
    fields = result_fields(config)
    pairs = st.stage("dedup-pairs", fingerprint("dedup-pairs", code, fields, pairs_up))
    clusters = st.stage("dedup-clusters", fingerprint("dedup-clusters", code, fields, pairs.fingerprint))
    upstream = {**docs, **({"previous": previous.fingerprint} if previous is not None else {})}
    out = st.stage("dedup", fingerprint("dedup", code, fields, upstream))
    return DedupOutputs(up, sig, pairs, clusters, out, upstream)


def partitions(pairs: StageDir, docs: int, config: DedupConfig) -> int:
    """The pairs output's partition count: the one its first run chose (plan.json), else from the
    corpus size and memory budget now."""
    pairs.write_once(PLAN, json.dumps({"partitions": partitions_for(docs, config)}).encode())
    return int(pairs.read_json(PLAN)["partitions"])


def bind(fn, *args) -> Callable[[], dict]:
    """A picklable zero-argument job."""
    return functools.partial(fn, *args)


def run_dedup(up: StageDir, config: DedupConfig, previous: StageDir | None, code: str, run: Runner) -> dict:
    """Run every step with `run`; returns the dedup output's manifest (its `lsh` the totals)."""
    o = outputs(up, config, previous, code)
    url, idx = up.store.url, [s["index"] for s in up.read_manifest()["shards"]]
    earlier = earlier_increments(previous, config, code, run)
    offset = sum(e["docs"] for e in earlier)
    header = {"config": config, "code": code}
    source = (up.name, up.fingerprint)

    sig = run(
        o.signatures,
        {i: bind(dedup_steps.signature_shard, url, o.signatures.fingerprint, i, source, config) for i in idx},
        {**header, "upstream": {"stage": up.name, "fingerprint": up.fingerprint}},
    )
    n = partitions(o.pairs, sig["counts"].get("docs_in", 0), config)
    pairs = run(
        o.pairs,
        {
            p: bind(
                dedup_steps.pairs_shard, url, o.pairs.fingerprint, p, n, o.signatures.fingerprint, idx, config, earlier
            )
            for p in range(n)
        },
        {**header, "partitions": n, "upstream": {"stage": "dedup-signatures", "fingerprint": o.signatures.fingerprint}},
    )
    clusters = run(
        o.clusters,
        {
            0: bind(
                dedup_steps.cluster_shard,
                url,
                o.clusters.fingerprint,
                o.pairs.fingerprint,
                o.signatures.fingerprint,
                idx,
                config,
                earlier,
                offset,
            )
        },
        {**header, "upstream": {"stage": "dedup-pairs", "fingerprint": o.pairs.fingerprint}},
        inline=True,
    )
    lsh = {
        "num_perm": config.num_perm,
        "bands": config.bands,
        "rows": config.rows,
        "implied_threshold": round(implied_threshold(config.bands, config.rows), 4),
        "threshold": config.threshold,
        "partitions": n,
        **pairs["counts"],
        **{k: v for k, v in clusters["counts"].items() if k != "by_reason"},
    }
    # What a later increment needs to check its documents against this one (and the ones before).
    this = {
        "offset": offset,
        "docs": sig["counts"].get("docs_in", 0),
        "partitions": n,
        "signatures": o.signatures.fingerprint,
        "clusters": o.clusters.fingerprint,
    }
    increments = [{k: v for k, v in e.items() if k != "index"} for e in earlier] + [this]
    jobs = {
        i: bind(dedup_steps.dedup_apply_shard, url, o.out.fingerprint, i, source, o.clusters.fingerprint, config)
        for i in idx
    }
    return run(o.out, jobs, {**header, "upstream": o.upstream, "lsh": lsh, "increments": increments}, examples=True)


def earlier_increments(previous: StageDir | None, config: DedupConfig, code: str, run: Runner) -> list[dict]:
    """The increments up to `previous` (its manifest's `increments`), each with its bucket index,
    built here the first time a later increment needs it."""
    if previous is None:
        return []
    manifest = previous.read_manifest()
    if previous.name != "dedup" or "increments" not in manifest:
        raise ValueError(f"previous={previous.url()} is not a dedup output")
    if DedupConfig.model_validate(manifest["config"]).key_fields() != config.key_fields():
        raise ValueError(f"previous={previous.url()} used other MinHash/LSH settings: its keys cannot be compared")
    earlier = []
    for e in manifest["increments"]:
        index = previous.store.stage("dedup-index", fingerprint("dedup-index", code, None, e))
        if not index.is_committed():
            sig = previous.store.stage("dedup-signatures", e["signatures"])
            rows = sorted(dedup_steps.shard_rows(sig, [s["index"] for s in sig.read_manifest()["shards"]]).items())
            jobs = {
                p: bind(
                    dedup_steps.index_shard,
                    index.store.url,
                    index.fingerprint,
                    p,
                    e["partitions"],
                    e["signatures"],
                    e["clusters"],
                    rows,
                    e["offset"],
                )
                for p in range(e["partitions"])
            }
            run(index, jobs, {"code": code, "upstream": e, "rows": rows})
        earlier.append({**e, "index": index.fingerprint})
    return earlier


def find_duplicates(tables: list, config: DedupConfig, partitions: int = 0) -> list:
    """Each shard's duplicates (DUPLICATES_SCHEMA) of document tables given in corpus order (shard
    i = tables[i]): the production steps, run here on a memory:// store (small corpora, tests and
    benchmarks). `partitions`: the pairs step's partition count (0: from memory_mb)."""
    import uuid

    import fsspec

    from pipeline.runner import commit_stage, run_local
    from pipeline.shard_steps import commit_docs
    from pipeline.stage import ShardResult
    from storage import Store

    root = f"memory://find-duplicates-{uuid.uuid4().hex}"
    try:
        up = Store(root).stage("docs", "input")
        results = {}
        for i, table in enumerate(tables):
            results[i] = commit_docs(up, i, ShardResult(table, table.slice(0, 0), {"docs_in": table.num_rows}), 0.0)
        commit_stage(up, results, {})
        if partitions:
            config = config.model_copy(update={"partitions": partitions})
        run_dedup(up, config, None, "local", run_local)
        clusters = outputs(up, config, None, "local").clusters
        return [clusters.read_parquet(StageDir.part("data", i, "parquet")) for i in range(len(tables))]
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
