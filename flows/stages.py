"""One Prefect flow per data stage. Each reads a committed upstream output, maps its shards to
tasks, commits a manifest and publishes artifacts. The logic lives in pipeline/."""

from __future__ import annotations

import os
import posixpath
from typing import Optional

import fsspec
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts, workers
from flows.common import Timer, bind, publish_stage, publish_table, run_locked, run_stage
from flows.config import Location, Locations
from pipeline import dedup_run, filter_step, ingest_steps, tokenize_steps
from pipeline.crawl import CrawlConfig
from pipeline.dedup import DedupConfig
from pipeline.ingest import IngestConfig
from pipeline.ingest_plan import plan_shards
from pipeline.inputs import CC_BASE_URL, CC_CRAWL, InputError, InputFile, refuse_credentials, resolve_inputs
from pipeline.plan import dedup_output, filter_output, ingest_output, tokenize_outputs
from pipeline.stage_table import BY_NAME, TABLE, Stage
from pipeline.tokenize import TokenizeConfig, shard_order
from storage import StageDir, Store, canonical_json, file_identity, fingerprint, open_stage
from storage.manifest import tokenize_manifest

DEFAULT_STORE = "store"
RUNNER = workers.task_runner()  # local threads + process pool, or the Dask cluster at $CRAWL2LLM_DASK_ADDRESS


def summary(out: StageDir, manifest: dict, cached: bool) -> dict:
    """What a flow returns: small, and enough for the next stage to find its input."""
    return {
        "stage": out.name,
        "fingerprint": out.fingerprint,
        "url": out.url(),
        "cached": cached,
        "counts": manifest.get("counts", {}),
    }


def _indexes(sd: StageDir) -> list[int]:
    return [s["index"] for s in sd.read_manifest()["shards"]]


@task(task_run_name="crawl-{out.fingerprint}", cache_policy=NO_CACHE)
def _crawl_task(out: StageDir, config: CrawlConfig) -> dict:
    from tqdm import tqdm

    from pipeline.crawl import crawl as run_crawl

    with tqdm(total=config.max_pages, desc="crawl", unit="page", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        return run_crawl(config, out, progress=progress)


@flow(name="crawl", task_runner=RUNNER)
def crawl(config: CrawlConfig, store: str = DEFAULT_STORE) -> dict:
    """Crawl seed URLs politely and record the pages as WARC files.

    Args:
        config: the seed URLs and the crawl's limits and politeness.
        store: folder or fsspec URL (s3://bucket/prefix) the output goes to, as crawl/{fingerprint}.
    """
    access.check({"store": store, "config.seeds": config.seeds})
    out = Store(store).stage("crawl", fingerprint("crawl", BY_NAME["crawl"].code_version(), config, None))

    def work() -> tuple[bool, float]:  # under the output's lock: a second crawl waits, then finds it committed
        cached = out.is_committed()
        with Timer() as t:
            if not cached:
                result = _crawl_task(out, config)
                files = out.list("data")
                counts = {k: v for k, v in result.items() if k != "files"}
                out.commit(
                    {
                        "config": config,
                        "shards": [{"index": i, "data": f} for i, f in enumerate(files)],
                        "counts": counts,
                    }
                )
        return cached, t.seconds

    cached, seconds = run_locked(out, work)
    manifest = out.read_manifest()
    publish_stage(out, manifest, {}, seconds, cached)
    return summary(out, manifest, cached)


@flow(name="ingest", task_runner=RUNNER)
def ingest(
    inputs: Locations,
    config: IngestConfig = IngestConfig(),
    store: str = DEFAULT_STORE,
    workers_n: int | None = None,
    limit: int | None = None,
    cc_base_url: str = CC_BASE_URL,
    files: list[dict] | None = None,
) -> dict:
    """Read WARC/WET/ARC/JSONL/Parquet files, a Common Crawl listing (CC-MAIN-2024-51) or a crawl output into
    document shards: extraction, language id. `limit` keeps the first that many input files.

    Args:
        inputs: files, folders, globs, fsspec URLs, a Common Crawl listing (CC-MAIN-2024-51,
            CC-MAIN-2024-51/wet, a *.paths.gz file) or a crawl output folder.
        config: record filtering, HTML to text and language id settings.
        store: folder or fsspec URL (s3://bucket/prefix) the output goes to, as ingest/{fingerprint}.
        workers_n: worker processes for the shards (empty: one per core; 0: inline, needed for memory:// stores).
        limit: ingest only the first this many input files (empty: all).
        cc_base_url: where the relative paths of a Common Crawl listing are fetched from.
        files: only the input files with these identities, in this order (empty: all); an incremental
            run's increment (storage/ledger.py), named as recorded, so no URL with secrets is needed.
    """
    access.check(
        {
            "store": store,
            "cc_base_url": cc_base_url,
            "config.url_blocklist_files": config.url_blocklist_files,
            "inputs": [i for i in inputs if not CC_CRAWL.match(i)],
        }
    )
    sources, identities, sizes = _ingest_sources(inputs, limit, cc_base_url, files)
    access.check({"inputs": [f.url for f in sources]})  # what globs, folders and symlinks resolved to
    out, code, upstream = ingest_output(store, config, identities)
    name = {f.url: f.name for f in sources}
    plan = plan_shards([(f.url, size) for f, size in zip(sources, sizes)], config.shard_bytes)
    jobs = {
        i: bind(
            ingest_steps.ingest_shard,
            out.store.url,
            out.fingerprint,
            i,
            [{**p, "name": name[p["url"]]} for p in pieces],
            config,
        )
        for i, pieces in enumerate(plan)
    }
    recorded = [[{**p, "url": name[p["url"]]} for p in pieces] for pieces in plan]  # names: no secrets, no paths
    header = {
        "config": config,
        "code": code,
        "upstream": upstream,
        "sources": [f.name for f in sources],
        "plan": recorded,
    }
    done = summary(out, *run_stage(out, jobs, header, workers_n, examples=True))
    unreadable = [u for i in jobs for u in out.read_shard_stats(i).get("unreadable", [])]
    if unreadable:  # the other files' documents are committed: the run still fails, naming these
        raise InputError(
            f"{len(unreadable)} input file(s) could not be read (the other files' documents are "
            f"committed in {out.url()}): " + "; ".join(u["error"] for u in unreadable)
        )
    return done


def ingest_identities(inputs: list[str], limit: int | None, cc_base_url: str):
    """What ingest of these inputs is named by (each file's identity, or a crawl output's): a run's plan."""
    return _ingest_sources(inputs, limit, cc_base_url)[1]


def _ingest_sources(
    inputs: list[str], limit: int | None, cc_base_url: str, only: list[dict] | None = None
) -> tuple[list[InputFile], object, list[int]]:
    """Input files, their identity (a crawl output's fingerprint, or each file's) and their sizes.

    A crawl output's files are named by their path in the store (crawl/{fp}/data/...), which stays
    the same wherever the store sits."""
    refuse_credentials(inputs, cc_base_url)
    if len(inputs) == 1:
        fs, path = fsspec.core.url_to_fs(inputs[0])
        if fs.exists(posixpath.join(path, "manifest.json")):
            up = open_stage(inputs[0])
            rels = [s["data"] for s in up.read_manifest()["shards"]]
            sizes = [up.fs.size(up.abspath(rel)) for rel in rels]  # abspath: each path stays in the store
            files = [
                InputFile(up.url(rel), posixpath.join(up.name, up.fingerprint, posixpath.normpath(rel))) for rel in rels
            ]
            return files, {"stage": up.name, "fingerprint": up.fingerprint}, sizes
    files = resolve_inputs(inputs, limit, cc_base_url)
    if only is not None:  # identify only the files an increment may hold (by name), then pick by identity
        names = {f["url"] for f in only}
        found = {canonical_json(file_identity(f.url, f.name)): f for f in files if f.name in names}
        gone = [f["url"] for f in only if canonical_json(f) not in found]
        if gone:
            raise InputError(f"input files changed or gone since they were recorded: {', '.join(gone)}")
        files = [found[canonical_json(f)] for f in only]
        return files, list(only), [f["size"] for f in only]
    identities = [file_identity(f.url, f.name) for f in files]
    return files, identities, [i["size"] for i in identities]


def _upstream(source: str, **more: str | None) -> tuple[StageDir, dict]:
    """The committed output a stage reads, after checking it (and `more`, other outputs the stage
    reads) against the server's allowed roots."""
    access.check({"source": source, **more})
    up = open_stage(source)
    return up, {"stage": up.name, "fingerprint": up.fingerprint}


@flow(name="dedup", task_runner=RUNNER)
def dedup(
    source: Location, config: DedupConfig = DedupConfig(), workers_n: int | None = None, previous: str | None = None
) -> dict:
    """Exact and MinHash-LSH near-duplicate removal across the whole corpus, in bounded memory:
    signatures and bucket keys per shard, verified pairs per bucket partition, union-find clusters
    (each keeps its first document), then apply per shard. Each step is cached on its own.
    `previous`: the dedup output of earlier input (an incremental run's last increment); documents
    that duplicate what it or its own predecessors kept are removed too, and those stay unchanged.

    Args:
        source: the upstream stage output to read (a folder or URL holding manifest.json, {store}/{stage}/{fingerprint}).
        config: the exact and MinHash near-duplicate settings.
        workers_n: worker processes for the shards (empty: one per core; 0: inline, needed for memory:// stores).
        previous: the dedup output of the previous increment of an incremental run (empty: none).
    """
    up, _ = _upstream(source, previous=previous)
    prev = open_stage(previous) if previous else None
    cached: dict[str, bool] = {}

    def run(out: StageDir, jobs, header, inline: bool = False, examples: bool = False) -> dict:
        manifest, cached[out.name] = run_stage(out, jobs, header, 0 if inline else workers_n, examples=examples)
        return manifest

    manifest = dedup_run.run_dedup(up, config, prev, BY_NAME["dedup"].code_version(), run)
    out = dedup_output(up, config, prev)[0]
    publish_table(artifacts.output_key(out, "lsh"), manifest["lsh"], "MinHash LSH settings and clustering totals")
    return summary(out, manifest, cached["dedup"])


def _filter_stage(name: str, source: str, config, workers_n: int | None) -> dict:
    up, _ = _upstream(source)
    out, code, upstream = filter_output(name, up, config)
    jobs = {
        i: bind(
            filter_step.filter_shard,
            up.store.url,
            name,
            out.fingerprint,
            i,
            (up.name, up.fingerprint),
            config,
            BY_NAME[name].filter,
        )
        for i in _indexes(up)
    }
    header = {"config": config, "code": code, "upstream": upstream}
    return summary(out, *run_stage(out, jobs, header, workers_n, examples=True))


def filter_flow(stage: Stage):
    """The Prefect flow of a document filter stage (quality, pii, a plug-in): its function over every
    shard of the upstream output, the form in the UI built from the stage's config model."""
    cls = stage.config_class

    def run(source, config=cls(), workers_n=None) -> dict:
        return _filter_stage(stage.name, source, config, workers_n)

    run.__annotations__ = {"source": Location, "config": cls, "workers_n": Optional[int], "return": dict}
    run.__name__ = run.__qualname__ = stage.name
    run.__module__ = __name__
    run.__doc__ = f"""{stage.description or stage.help}

    Args:
        source: the upstream stage output to read (a folder or URL holding manifest.json, {{store}}/{{stage}}/{{fingerprint}}).
        config: the {stage.title or stage.name} settings.
        workers_n: worker processes for the shards (empty: one per core; 0: inline, needed for memory:// stores).
    """
    return flow(name=stage.name, task_runner=RUNNER)(run)


for _stage in TABLE:  # quality, pii and every plug-in filter stage, as flows.stages.<name>
    if _stage.filter:
        globals()[_stage.name] = filter_flow(_stage)


@flow(name="tokenize", task_runner=RUNNER)
def tokenize(
    source: Location,
    config: TokenizeConfig = TokenizeConfig(),
    workers_n: int | None = None,
    tokenizer: str | None = None,
) -> dict:
    """Train a byte-level BPE on a sample, encode every shard to Arrow token shards, split train/val;
    the manifest's train_order is the seeded shuffle training reads the shards in. `tokenizer`: a
    tokenizer output to encode with instead (incremental runs keep their first one, so ids agree).

    Args:
        source: the upstream stage output to read (a folder or URL holding manifest.json, {store}/{stage}/{fingerprint}).
        config: the tokenizer training, encoding and validation split settings.
        workers_n: worker processes for the shards (empty: one per core; 0: inline, needed for memory:// stores).
        tokenizer: a tokenizer output ({store}/tokenizer/{fingerprint}) to encode with instead of training one.
    """
    up, upstream = _upstream(source, tokenizer=tokenizer)
    st, idx = up.store, _indexes(up)
    tok, out, code = tokenize_outputs(up, config, open_stage(tokenizer) if tokenizer else None)
    header = {"config": config, "code": code, "upstream": upstream}
    if not tokenizer:
        run_stage(
            tok,
            {0: bind(tokenize_steps.tokenizer_shard, st.url, tok.fingerprint, (up.name, up.fingerprint), idx, config)},
            header,
            0,
        )
    # A worker process per core: each encodes on one thread. Fewer workers: HF's threads use the rest.
    n = workers.default_workers() if workers_n is None else workers_n
    parallel = n < (os.cpu_count() or 1)
    jobs = {
        i: bind(
            tokenize_steps.encode_shard,
            st.url,
            out.fingerprint,
            i,
            (up.name, up.fingerprint),
            tok.fingerprint,
            config,
            parallel,
        )
        for i in idx
    }
    header = tokenize_manifest(
        config,
        code,
        upstream,
        {"stage": tok.name, "fingerprint": tok.fingerprint, "file": "data/tokenizer.json"},
        tok.read_manifest()["counts"]["vocab_size"],
        shard_order(idx, config.seed),
    )
    return summary(out, *run_stage(out, jobs, header, workers_n))
