"""The pipeline flow: every stage in order, each cached and resumable on its own."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows import access
from flows.config import STAGES, PipelineConfig
from flows.increments import run_incremental
from flows.stages import crawl, dedup, ingest, pii, quality, tokenize
from flows.training import evaluate, train
from flows.workers import on_cluster
from pipeline.inputs import resolve_inputs


@flow(name="pipeline")
def pipeline(config: PipelineConfig) -> dict:
    """crawl → ingest → dedup → quality → pii → tokenize → train → evaluate.

    Args:
        config: the inputs (or seed URLs), the store and every stage's settings.
    """
    log = get_run_logger()
    access.check_pipeline(config)
    if config.incremental:  # its own input check: finished increments may have moved their files away
        return run_incremental(config)
    if config.inputs:
        resolve_inputs(config.inputs, config.input_limit, config.cc_base_url)  # fail before any work
    last = STAGES.index(config.stop_after)
    results: dict[str, dict] = {}
    if config.crawl:
        results["crawl"] = crawl(config.crawl, config.store)
        inputs = [results["crawl"]["url"]]
    else:
        inputs = config.inputs
    on = config.dask_address  # shard tasks of ingest..tokenize on this Dask cluster (None: local processes)
    results["ingest"] = on_cluster(ingest, on)(inputs, config.ingest, config.store, config.workers,
                                               config.input_limit, config.cc_base_url)
    steps = [("dedup", dedup, config.dedup), ("quality", quality, config.quality), ("pii", pii, config.pii),
             ("tokenize", tokenize, config.tokenize)]
    prev = results["ingest"]
    for name, fn, cfg in steps:
        if STAGES.index(name) > last:
            return results
        prev = results[name] = on_cluster(fn, on)(prev["url"], cfg, config.workers)
    if STAGES.index("train") <= last:
        prev = results["train"] = train(prev["url"], config.train)
    if STAGES.index("evaluate") <= last:
        results["evaluate"] = evaluate(prev["url"], config.evaluate)
    for name, r in results.items():
        log.info("%-9s %s", name, r["url"])
    return results
