"""The step of every document filter stage (quality, pii, plug-ins): its function over one shard."""

from __future__ import annotations

import importlib
import time
from typing import Any

from pipeline.shard_steps import commit_docs, read_docs, run_if_needed, stage_dir


def filter_shard(
    store_url: str, stage: str, fp: str, index: int, upstream: tuple[str, str], config: Any, function: str
) -> dict:
    """A filter stage's `function` ("module:name", `(table, config) -> ShardResult`; its Stage's
    `filter`) over one shard of the upstream stage's documents."""
    out = stage_dir(store_url, stage, fp)
    module, _, name = function.partition(":")
    run = getattr(importlib.import_module(module), name)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        result = run(table, config)
        return commit_docs(out, index, result, time.perf_counter() - t0)

    return run_if_needed(out, index, work)
