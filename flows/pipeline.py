"""The pipeline flow: every stage in order, each cached and resumable on its own."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, tags
from prefect.runtime import flow_run

from flows import access, artifacts, stages
from flows.config import STAGES, PipelineConfig
from flows.increments import run_incremental, run_post_training, run_stages
from flows.stages import crawl
from flows.training import evaluate, train
from pipeline.inputs import resolve_inputs
from pipeline.plan import plan
from pipeline.stage_table import PER_INCREMENT


@flow(name="pipeline")
def pipeline(config: PipelineConfig) -> dict:
    """crawl → ingest → dedup → quality → pii → tokenize → train → evaluate, then sft and classify
    when the config gives them (pipeline/stage_table.py).

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
    seconds: dict[str, float] = {}
    t0 = time.monotonic()

    parent = flow_run.get_name() or "pipeline"

    def run(name: str, fn, *args) -> dict:
        """One stage as a subflow named after this run, with this run's tags (the UI lists them so)."""
        start = time.monotonic()
        with tags(*(flow_run.get_tags() or [])):
            results[name] = fn.with_options(flow_run_name=f"{parent}-{name}")(*args)
        seconds[name] = time.monotonic() - start
        return results[name]

    if config.crawl:
        inputs = [run("crawl", crawl, config.crawl, config.store)["url"]]
    else:
        inputs = config.inputs
    # One increment holding every input: the same plan and chain as an incremental run's increments.
    identities = stages.ingest_identities(inputs, config.input_limit, config.cc_base_url)
    plans = plan(config, [{"files": identities}])
    wanted = [s for s in PER_INCREMENT if STAGES.index(s) <= last]
    results.update(run_stages(0, plans, wanted, config, run=run, inputs=inputs))
    if wanted == list(PER_INCREMENT):
        prev = results["tokenize"]
        if STAGES.index("train") <= last:
            prev = run("train", train, prev["url"], config.train)
        if STAGES.index("evaluate") <= last:
            run("evaluate", evaluate, prev["url"], config.evaluate)
        run_post_training(config, results.get("train"), last, run)
    for name, r in results.items():
        log.info("%-9s %s", name, r["url"])
    artifacts.pipeline_summary(results, seconds, time.monotonic() - t0)
    return results
