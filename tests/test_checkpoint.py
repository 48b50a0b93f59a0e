"""The training loop's host reads and checkpoint durability: no device value read to the host
outside log, eval and checkpoint steps; two checkpoints kept; a SIGKILL in the middle of a save
(synchronous or in the background) leaves no stale temporary file after the resume, which is bitwise
the uninterrupted run; a damaged latest.pt falls back to the step file before; saves by the clock;
a resume refuses other token files."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
import torch

import model.train as train_module
from model import checkpoints
from model.guard import TrainingDiverged
from model.train import CHECKPOINT
from storage import Store
from tests.fixtures.train import CONFIG, losses, run, sha, train_killed

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def test_host_reads_happen_only_at_log_eval_and_checkpoint_steps(corpus, tmp_path, monkeypatch):
    """Every Tensor-to-host read is counted against the step running; only steps 4, 8 (logged),
    6 (evaluated), 9 (checkpointed) and 12 (the end) may read."""
    config = CONFIG.updated(
        schedule={"max_steps": 12},
        log={"interval": 4},
        eval={"interval": 6},
        checkpoint={"interval": 9},
        data={"grad_accum_steps": 2},
    )
    current, reads = {"step": 0}, Counter()

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            reads[current["step"]] += 1
            return original(self, *a, **k)

        return read

    real_lr_at = train_module.lr_at

    def lr_at(step, c):  # called once at the start of every step: tells which step is running
        current["step"] = step + 1
        return real_lr_at(step, c)

    monkeypatch.setattr(train_module, "lr_at", lr_at)
    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    summary, events = run(corpus, tmp_path, config)
    monkeypatch.undo()
    assert summary["completed"] and [e["step"] for e in events if "loss" in e] == [4, 6, 8, 9, 12]
    assert {s for s in reads if s} <= {4, 6, 8, 9, 12}, reads
    assert all(reads[s] for s in (4, 8, 12))  # the counting works: log steps do read
    assert [h["step"] for h in summary["history"]] == [4, 6, 8, 9, 12]


def test_guard_stops_at_the_next_log_step_naming_the_step(corpus, tmp_path):
    """With log_interval 7 the guard still skips on the device and stops after 6 skips in a row;
    the message names the step where the run went wrong, and no later update was applied."""
    bad = CONFIG.updated(
        optimizer={"learning_rate": 50.0, "grad_clip": 0},
        schedule={"min_lr": 50.0, "warmup_steps": 0, "max_steps": 30},
        eval={"interval": 30},
        guard={"spike_factor": 1.5},
        log={"interval": 7},
        checkpoint={"interval": 30},
    )
    events: list[dict] = []
    with pytest.raises(TrainingDiverged, match=r"step (\d+): 6 updates in a row skipped.*data epoch 0 window"):
        train_module.train(corpus["train"], corpus["val"], corpus["vocab"], bad, str(tmp_path), log=events.append)
    assert events and all(e["step"] % 7 == 0 for e in events)
    with pytest.raises(TrainingDiverged, match="guard.mode='stop'"):
        run(corpus, tmp_path / "stop", bad.updated(guard={"mode": "stop"}))


def test_two_checkpoints_kept_and_latest_is_the_newest(baseline):
    folder = baseline["out"] / "checkpoints"
    assert sorted(os.listdir(folder)) == ["latest.pt", "step-30.pt", "step-40.pt"]
    assert os.path.samefile(folder / "latest.pt", folder / "step-40.pt")
    assert torch.load(folder / "step-30.pt", weights_only=True)["step"] == 30


def test_sigkill_during_a_save_leaves_nothing_stale_and_resumes_bitwise(baseline, corpus, tmp_path):
    """The process dies half way through writing the step-20 checkpoint (a synchronous save): the
    step-10 one is intact, the next start deletes the half file, and the resumed run is the
    uninterrupted one, byte for byte."""
    train_killed(
        corpus,
        tmp_path,
        "import model.checkpoints as ck\n"
        "real, log = torch.save, None\n"
        "def save(obj, f):\n"
        "    if isinstance(obj, dict) and obj.get('step') == 20:\n"
        "        f.write(b'half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(obj, f)\n"
        "ck.torch.save = save\n",
        CONFIG.updated(checkpoint={"async_save": False}),
    )
    _resumes_after_a_kill_in_the_step_20_save(baseline, corpus, tmp_path)


def test_async_save_runs_beside_training_and_a_kill_during_it_resumes_bitwise(baseline, corpus, tmp_path):
    """The step-20 save (async, the default) writes half its file and waits until training has logged
    step 23, then the process is killed: training went on during the write (a synchronous save
    would block step 21 and never get there), the step-10 checkpoint is intact, and the resume is
    bitwise the uninterrupted run with nothing stale left."""
    train_killed(
        corpus,
        tmp_path,
        "import threading\n"
        "import model.checkpoints as ck\n"
        "real, later = torch.save, threading.Event()\n"
        "def log(e):\n"
        "    if e.get('step') == 23 and 'loss' in e:\n"
        "        later.set()\n"
        "def save(obj, f):\n"
        "    if isinstance(obj, dict) and obj.get('step') == 20:\n"
        "        f.write(b'half a checkpoint'); f.flush()\n"
        "        if later.wait(120):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        raise SystemExit('training did not go on during the save')\n"
        "    real(obj, f)\n"
        "ck.torch.save = save\n",
    )
    _resumes_after_a_kill_in_the_step_20_save(baseline, corpus, tmp_path)


def _resumes_after_a_kill_in_the_step_20_save(baseline, corpus, tmp_path):
    folder = tmp_path / "checkpoints"
    assert any(".tmp-" in n for n in os.listdir(folder))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 10
    summary, events = run(corpus, tmp_path)
    assert [e["step"] for e in events if "loss" in e] == list(range(11, 41))
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 10}
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")
    assert sorted(os.listdir(folder)) == ["latest.pt", "step-30.pt", "step-40.pt"]


def test_resume_refuses_other_token_files(corpus, tmp_path):
    """The checkpoint records its token files (name, tokens, checksum): a resume on other files
    (here: the validation file as training data) is refused, naming both."""
    short = CONFIG.updated(schedule={"max_steps": 4}, checkpoint={"interval": 2})
    run(corpus, tmp_path, short, stop_after=3)
    with pytest.raises(ValueError, match="trained on other token files"):
        train_module.train(
            corpus["val"],
            corpus["val"],
            corpus["vocab"],
            short,
            str(tmp_path),
        )


def test_checkpoint_on_a_memory_store_survives_losing_the_cache(baseline, corpus, tmp_path):
    """As the train flow does on a remote store: each committed checkpoint is uploaded; the local
    cache is deleted (a preempted machine); the next start fetches it and resumes bitwise."""
    out = Store("memory://c2l-checkpoint-test").stage("train", "lost-cache")
    cache = tmp_path / "cache"

    def log(event):
        if "checkpoint" in event:
            checkpoints.upload(out, str(cache), event["checkpoint"])

    train_module.train(corpus["train"], corpus["val"], corpus["vocab"], CONFIG, str(cache), log=log, stop_after=25)
    shutil.rmtree(cache)
    assert checkpoints.restore(out, str(cache), CHECKPOINT)
    assert torch.load(cache / CHECKPOINT, weights_only=True)["step"] == 20
    assert not checkpoints.restore(out, str(cache), CHECKPOINT)  # the cache has it now: nothing fetched
    summary, events = run(corpus, cache)
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 20}
    assert sha(cache / "model.pt") == sha(baseline["out"] / "model.pt")


def test_a_damaged_latest_resumes_from_the_step_file_before(baseline, corpus, tmp_path):
    """The baseline's checkpoints copied (latest.pt a copy of step-40.pt, not a link), then latest.pt
    and step-40.pt cut short: the resume warns naming both, starts from step-30.pt and is bitwise the
    uninterrupted run; when no checkpoint loads, the error names them all."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(baseline["out"] / "checkpoints", folder)
    for name in ("latest.pt", "step-40.pt"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"latest.pt .*; .*step-40.pt .* is damaged: resuming from .*step-30.pt"):
        summary, events = run(corpus, tmp_path)
    assert [e["step"] for e in events if "loss" in e] == list(range(31, 41))
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 30}
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")
    for name in os.listdir(folder):
        (folder / name).write_bytes(b"junk")
    with pytest.raises(RuntimeError, match=r"(?s)no checkpoint in .*checkpoints is readable: .*latest.pt .*step-30.pt"):
        run(corpus, tmp_path)


def test_checkpoint_minutes_saves_by_the_clock(corpus, tmp_path):
    """A clock that reads a minute per step logged so far, and checkpoint.minutes 3: the first log
    step 3 minutes after the last save saves (steps 4 and 8 of 10), and the end does; with
    log_interval 3 the clock is read at log steps only (step 6, then the end)."""

    def saves(config, out):
        clock, events = [0.0], []

        def log(event):
            events.append(event)
            if "loss" in event:
                clock[0] = 60.0 * event["step"]

        train_module.train(
            corpus["train"],
            corpus["val"],
            corpus["vocab"],
            config,
            str(tmp_path / out),
            log=log,
            clock=lambda: clock[0],
        )
        return [e["step"] for e in events if "checkpoint" in e]

    by_clock = CONFIG.updated(
        schedule={"max_steps": 10}, eval={"interval": 10}, checkpoint={"interval": 0, "minutes": 3}
    )
    assert saves(by_clock, "a") == [4, 8, 10]
    assert saves(by_clock.updated(log={"interval": 3}), "b") == [6, 10]
    assert saves(by_clock.updated(checkpoint={"minutes": 0}), "c") == [10]
