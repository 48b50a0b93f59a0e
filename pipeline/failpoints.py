"""Named points where a test can stop a run exactly, to prove resumability.

CRAWL2LLM_FAILPOINT=NAME kills the whole run (SIGKILL to its process group) when execution reaches
NAME; NAME@raise raises instead, as a crashing shard would. Names: "{stage}:{shard}" just before a
shard's commit point (its data files already written), "train:step:{N}" after training step N.
Unset (always, outside tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


class FailpointError(RuntimeError):
    """Raised at a failpoint set with @raise."""


def failpoint(name: str) -> None:
    spec = os.environ.get("CRAWL2LLM_FAILPOINT")
    if not spec:
        return
    target, _, action = spec.partition("@")
    if target != name:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name} reached")
    os.killpg(os.getpgid(0), signal.SIGKILL)
