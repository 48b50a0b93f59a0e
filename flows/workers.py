"""Where shard work runs: a local process pool, so CPU-bound stages use every core, or a Dask cluster.

By default Prefect tasks run on threads (cheap to schedule, full task states in the UI); each task
hands its shard to this pool and waits. Worker processes import pipeline/ only, never Prefect. With
workers=0 work runs inline in the task's thread (needed for memory:// stores, which live in one
process, and handy in a debugger).

On a Dask cluster (an address, or $CRAWL2LLM_DASK_ADDRESS) the shard tasks themselves go to the
cluster through prefect-dask's DaskTaskRunner and run their job inline in the Dask worker. We use
the task runner rather than sending each job to a dask Client from a local task thread: each shard
stays one Prefect task run, with the same cache key, state and retries as on one machine, and the
flow process holds no thread per shard. The price: Dask workers import Prefect and report to the
Prefect API (docs/OPERATIONS.md).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

DASK_ADDRESS_ENV = "CRAWL2LLM_DASK_ADDRESS"

_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def default_workers() -> int:
    return int(os.environ.get("CRAWL2LLM_WORKERS", os.cpu_count() or 1))


def run(fn: Callable[..., Any], *args: Any, workers: int | None = None) -> Any:
    """Run fn(*args) in the shared pool of `workers` processes (inline when workers == 0 or on Dask)."""
    global _pool, _pool_size
    n = default_workers() if workers is None else workers
    if n <= 0 or in_dask_worker():
        return fn(*args)
    with _lock:
        if _pool is None or _pool_size != n:
            shutdown()
            # spawn: forking a process that holds Prefect's threads and event loops is unsafe
            _pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
            _pool_size = n
        future = _pool.submit(fn, *args)
    return future.result()


def in_dask_worker() -> bool:
    """True in a Dask worker's task thread: the cluster already spreads shards, a pool there would nest."""
    if "distributed" not in sys.modules:  # never imported: not a Dask worker, and no import cost
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def dask_address(address: str | None = None) -> str | None:
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


def task_runner(address: str | None = None):
    """Prefect's runner for shard tasks: DaskTaskRunner joined to the cluster at `address` (or
    $CRAWL2LLM_DASK_ADDRESS), else one thread per local worker process."""
    address = dask_address(address)
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max(1, default_workers()))


def on_cluster(flow, address: str | None):
    """The flow with its shard tasks on the Dask cluster at `address`; the flow unchanged without one."""
    return flow.with_options(task_runner=task_runner(address)) if address else flow


def runs_on_dask() -> bool:
    """Whether the current flow's tasks go to a Dask cluster (their processes share no memory with ours)."""
    if "prefect_dask" not in sys.modules:
        return False
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    ctx = FlowRunContext.get()
    return ctx is not None and isinstance(ctx.task_runner, DaskTaskRunner)


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(cancel_futures=True)
        _pool = None


atexit.register(shutdown)
