"""Checkpoint files that survive a kill or a power cut: written under a temporary name, fsynced,
renamed, the folder fsynced; the last few kept as step-N.pt with latest.pt a hard link to the newest.

A kill during a save leaves `<name>.tmp-<pid>`; the next start deletes those (remove_stale_temporaries),
so a crashed run never fills the disk. Saver writes in a thread from a CPU snapshot, so training
goes on while the file is written; newest_readable falls back to an older step file when latest.pt
is damaged.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary name, fsync, rename, fsync the folder: after a kill or a crash the
    path holds the old file or the new, never half of one, and a finished rename is on the disk."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def save_kept(obj, latest: str, step: int, keep: int) -> list[str]:
    """obj as step-<step>.pt beside `latest`, latest a hard link to it (a copy where links are not
    supported), and only the `keep` newest step files left. Returns the step files kept."""
    folder = os.path.dirname(latest) or "."
    path = os.path.join(folder, f"step-{step}.pt")
    atomic_save(obj, path)
    tmp = f"{latest}.tmp-{os.getpid()}"
    try:
        os.link(path, tmp)
    except OSError:
        atomic_save(obj, latest)
    else:
        os.replace(tmp, latest)
        _fsync_dir(folder)
    kept = step_files(folder)
    for old in kept[:-keep]:
        os.remove(old)
    return kept[-keep:]


def step_files(folder: str) -> list[str]:
    """The step-N.pt files of a folder, oldest step first."""
    found = [
        (int(m.group(1)), p)
        for p in glob.glob(os.path.join(folder, "step-*.pt"))
        if (m := STEP_FILE.search(os.path.basename(p)))
    ]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the `*.tmp-<pid>` files a killed save left in folder; returns their paths."""
    stale = glob.glob(os.path.join(folder, "*.tmp-*")) if os.path.isdir(folder) else []
    for path in stale:
        os.remove(path)
    return stale


def snapshot(tree, buffers: dict | None = None):
    """tree (nested dicts, lists and tuples) with every tensor copied to the CPU: the copy a
    background save writes while training changes the originals in place. Tensors that are one
    tensor (a tied embedding and head) stay one, so the file stores them once.

    buffers (a dict the caller keeps, emptied and refilled here) holds the copies of the last call:
    a tensor of the same place and shape is copied into its old buffer, so a save every few minutes
    reuses memory already mapped (pinned, for a fast copy from a GPU) instead of faulting in new pages."""
    old = {} if buffers is None else dict(buffers)
    used: dict = {}
    cuda = False

    def copy(value):
        nonlocal cuda
        if isinstance(value, torch.Tensor):
            key = (
                value.device,
                value.dtype,
                value.data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
            )
            if key not in used:
                buf = old.get(key)
                if buf is None:
                    buf = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
                buf.copy_(value.detach(), non_blocking=value.is_cuda)
                cuda |= value.is_cuda
                used[key] = buf
            return used[key]
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value

    out = copy(tree)
    if cuda:
        torch.cuda.synchronize()  # the non_blocking copies have landed
    if buffers is not None:
        buffers.clear()
        buffers.update(used)
    return out


class Saver:
    """save_kept, in a background thread when `background`: one save in flight, a save waits for
    the one before, so step files commit in order and at most one snapshot is held besides the live
    state. Without `background` each save writes before it returns.

    on_commit(step) runs in the caller's thread (save, poll, wait), never in the writer's: a log
    callback that uploads the file sees it committed and needs no locking."""

    def __init__(self, background: bool, on_commit: Callable[[int], None] = lambda step: None):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if background else None
        self._pending: tuple[int, Future] | None = None
        self._on_commit = on_commit
        self._buffers: dict = {}  # the last snapshot's copies, refilled by the next (its write is done)

    def save(self, obj, latest: str, step: int, keep: int) -> None:
        """In the background: snapshot obj now (the stall: a copy to the CPU) and write it in the thread."""
        self.wait()
        if self._pool is None:
            save_kept(obj, latest, step, keep)
            self._on_commit(step)
            return
        copy = snapshot(obj, self._buffers)
        self._pending = (step, self._pool.submit(save_kept, copy, latest, step, keep))

    def poll(self) -> None:
        """Report a save that finished since the last call (no waiting)."""
        if self._pending and self._pending[1].done():
            self.wait()

    def wait(self) -> None:
        """Wait for the save in flight, if any; its error (a full disk) is raised here."""
        if self._pending is None:
            return
        step, future = self._pending
        self._pending = None
        future.result()
        self._on_commit(step)

    def close(self) -> None:
        """Wait for the save in flight and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def newest_readable(latest: str, load: Callable[[str], dict]) -> tuple[str, dict]:
    """(path, checkpoint) of latest, or when it does not load (truncated, unreadable) of the newest
    older step file that does, with a warning naming the damaged files. RuntimeError when none load."""
    folder = os.path.dirname(latest) or "."
    candidates = [latest] + [
        p for p in reversed(step_files(folder)) if not (os.path.exists(latest) and os.path.samefile(p, latest))
    ]
    damaged = []
    for path in candidates:
        try:
            ckpt = load(path)
        except Exception as e:  # noqa: BLE001 (any failure to read means: try the one before)
            damaged.append(f"{path} ({e})")
            continue
        if damaged:
            warnings.warn(f"checkpoint {'; '.join(damaged)} is damaged: resuming from {path}", stacklevel=2)
        return path, ckpt
    raise RuntimeError(f"no checkpoint in {folder} is readable: {'; '.join(damaged)}; delete them to start over")


def upload(out, local_dir: str, latest: str) -> None:
    """Copy the checkpoint just committed in local_dir (`latest`, e.g. checkpoints/latest.pt) to
    the stage folder `out` on its store: a preempted machine's lost cache then loses nothing."""
    rel = os.path.relpath(latest, local_dir)
    out.upload(rel.replace(os.sep, "/"), latest)


def restore(out, local_dir: str, latest_rel: str) -> bool:
    """Fetch the stage folder's checkpoint into local_dir when the local cache lacks it (a new or
    wiped machine); True when one was fetched."""
    local = os.path.join(local_dir, latest_rel)
    rel = latest_rel.replace(os.sep, "/")
    if os.path.exists(local) or not out.exists(rel):
        return False
    out.download(rel, local)
    return True
