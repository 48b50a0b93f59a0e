"""Where shard work runs: a local process pool, so CPU-bound stages use every core.

Prefect tasks run on threads (cheap to schedule, full task states in the UI); each task hands its
shard to this pool and waits. Worker processes import pipeline/ only, never Prefect. With
workers=0 work runs inline in the task's thread (needed for memory:// stores, which live in one
process, and handy in a debugger).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def default_workers() -> int:
    return int(os.environ.get("CRAWL2LLM_WORKERS", os.cpu_count() or 1))


def run(fn: Callable[..., Any], *args: Any, workers: int | None = None) -> Any:
    """Run fn(*args) in the shared pool of `workers` processes (inline when workers == 0)."""
    global _pool, _pool_size
    n = default_workers() if workers is None else workers
    if n <= 0:
        return fn(*args)
    with _lock:
        if _pool is None or _pool_size != n:
            shutdown()
            # spawn: forking a process that holds Prefect's threads and event loops is unsafe
            _pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
            _pool_size = n
        future = _pool.submit(fn, *args)
    return future.result()


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(cancel_futures=True)
        _pool = None


atexit.register(shutdown)
