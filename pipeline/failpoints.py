"""Named points where a test can stop a run exactly, to prove resumability.

CRAWL2LLM_FAILPOINT=NAME kills the whole run (SIGKILL to its process group) when execution reaches
NAME; NAME@raise raises instead, as a crashing shard would. Names: "{stage}:{shard}" just before a
shard's commit point (its data files already written), "train:step:{N}" after training step N
(a logged step: a multiple of log_interval).
CRAWL2LLM_FAILPOINT_FILE=PATH reads the same spec from that file while it exists, for a test that
arms and disarms a failpoint in processes it does not start (flow runs of `crawl2llm server`'s
worker, whose environment no flow run may change). Unset (always, outside tests) they cost two
dict lookups.
"""

from __future__ import annotations

import os
import signal


class FailpointError(RuntimeError):
    """Raised at a failpoint set with @raise."""


def failpoint(name: str) -> None:
    spec = os.environ.get("CRAWL2LLM_FAILPOINT") or _spec_file()
    if not spec:
        return
    target, _, action = spec.partition("@")
    if target != name:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name} reached")
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _spec_file() -> str:
    path = os.environ.get("CRAWL2LLM_FAILPOINT_FILE")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
