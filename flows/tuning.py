"""What the flows of the tuning stages share around their model/ function: a local folder for
checkpoints (the stage folder on a local store; a cache folder whose checkpoints are uploaded as
they commit on an object store, and restored from the store on a rerun elsewhere), a progress
artifact, a log line per event, failpoints for the kill tests, and the outputs copied to the store."""

from __future__ import annotations

import os
from typing import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.common import Timer, run_locked
from flows.training import local_dir
from model import checkpoints
from model.launch import launch_entry
from model.train import CHECKPOINT
from pipeline.failpoints import failpoint
from storage import StageDir


def run_tuning(
    out: StageDir,
    max_steps: int,
    work: Callable[[str, Callable[[dict], None]], dict],
    describe: Callable[[dict], list[str]],
    outputs: Callable[[str], list[str]],
) -> dict:
    """work(folder, log) tunes in `folder`; describe(event) gives its log lines (a step's loss at
    the progress points only); outputs(folder) names the files (relative) that go to the store
    once it returns."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="tuning steps done")
    local = local_dir(out)
    remote = os.path.abspath(local) != os.path.abspath(out.path)
    if remote and checkpoints.restore(out, local, CHECKPOINT):
        logger.info("resuming from the store's checkpoint %s", out.url(CHECKPOINT))

    def log(event: dict) -> None:
        step = event.get("step", 0)
        failpoint(f"{out.name}:step:{step}")
        due = step % max(1, max_steps // 20) == 0 or step == max_steps  # about 20 progress points
        if "loss" in event and due:
            update_progress_artifact(progress, 100.0 * step / max_steps)
        for line in describe(event) if due or "loss" not in event else ():
            logger.info(line)
        if "checkpoint" in event and remote:
            checkpoints.upload(out, local, event["checkpoint"])

    result = work(local, log)
    update_progress_artifact(progress, 100.0)
    if remote and result.get("completed", True):
        for name in outputs(local):
            with open(os.path.join(local, name), "rb") as f:
                out.write_bytes(name, f.read())
    return result


def folder_files(local: str, *names: str) -> list[str]:
    """The named files, and every file of the named folders, relative to local."""
    found = []
    for name in names:
        path = os.path.join(local, name)
        found += [os.path.join(name, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [name]
    return found


def commit_tuned(out: StageDir, train: Callable[[], dict], manifest: dict) -> tuple[bool, float, dict | None]:
    """(cached, seconds, timing): out is committed already, or train() makes it, holding out's lock,
    and out is committed with `manifest` and train()'s result as its counts (its timing left out:
    it differs between identical runs)."""

    def work() -> tuple[bool, float, dict | None]:
        cached, timing = out.is_committed(), None
        with Timer() as t:
            if not cached:
                result = train()
                timing = result.pop("timing")
                out.commit({**manifest, "counts": result})
        return cached, t.seconds, timing

    return run_locked(out, work)


def in_processes(entry: tuple[str, str], args: list, config, out: StageDir, kwargs: dict | None = None):
    """run_tuning's work: entry's function (model.launch.launch_entry's form) in this process, or
    in config.processes processes under torchrun (DDP or FSDP2)."""
    from pipeline.stage_table import load

    def work(local: str, log: Callable[[dict], None]) -> dict:
        if config.processes == 1:
            return load(entry[0])(*args, config, local, log=log, **(kwargs or {}))
        return launch_entry(entry, args, config, local, log, run_id=out.fingerprint, kwargs=kwargs)

    return work
