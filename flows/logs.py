"""One traceback per failure in a run's log: the task run where a shard failed logs it in full; the
flows above it (the stage's subflow, the pipeline) log the error's one-line message and say where
the traceback is, instead of the same traceback again, longer at each level."""

from __future__ import annotations

import logging

MARK = "_crawl2llm_traceback_in"


def logged_once(exc: BaseException, where: str) -> BaseException:
    """`exc` (type and message kept, so callers still catch it as before) without the traceback and
    cause its task run already logged, marked so the flow loggers leave the traceback out."""
    exc.__cause__, exc.__suppress_context__ = None, True
    try:
        setattr(exc, MARK, where)
    except AttributeError:  # an exception type without a __dict__: logged in full, as before
        return exc
    return exc.with_traceback(None)


class _TracebackOnce(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        where = getattr(exc, MARK, None)
        if where:
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (its traceback: the log of {where.replace('%', '%%')})"
        return True


def install() -> None:
    """Filter Prefect's flow-run logger (once per process)."""
    flow_runs = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _TracebackOnce) for f in flow_runs.filters):
        flow_runs.addFilter(_TracebackOnce())
