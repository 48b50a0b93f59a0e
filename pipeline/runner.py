"""Run a stage's shard jobs and commit its manifest, without Prefect.

A stage's orchestration (pipeline/dedup_run.py, ...) builds its jobs and hands them to a runner
`run(out, jobs, header, inline=False) -> manifest`. flows/common.py's runner maps the jobs to Prefect
tasks (cache keys, progress, artifacts); `run_local` here runs them in this process, for tests,
benchmarks and library use. Both go through the same steps: the lock, repair of damaged shards, the
jobs (each skips a shard already committed intact), then `commit_stage`.

"""

from __future__ import annotations

import logging
from typing import Callable

from pipeline.stage import merge_counts
from storage import StageDir
from storage.lock import stage_lock
from storage.verify import repair

Jobs = dict[int, Callable[[], dict]]
log = logging.getLogger(__name__)


def commit_stage(out: StageDir, results: dict[int, dict], header: dict) -> dict:
    """Write the stage manifest from its shard stats. Deterministic: no timings go in."""
    if out.is_committed():
        return out.read_manifest()
    totals: dict = {}
    shards = []
    for index in sorted(results):
        stats = results[index]
        totals = merge_counts(totals, stats["counts"])
        shards.append({"index": index, **stats["outputs"]})
    return out.commit({**header, "shards": shards, "counts": totals})


def run_local(out: StageDir, jobs: Jobs, header: dict, inline: bool = False, examples: bool = False) -> dict:
    """Run the jobs of `out` here, one after another, and commit it; its manifest. (`inline` and
    `examples` are for the Prefect runner: this one always runs inline and publishes nothing.)"""
    if out.is_committed() and not repair(out, list(jobs), log.warning):
        return out.read_manifest()
    with stage_lock(out, log=log.info):
        repair(out, list(jobs), log.warning)
        results = {i: job() for i, job in sorted(jobs.items())}
        return commit_stage(out, results, header)
