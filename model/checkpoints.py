"""Checkpoint files that survive a kill or a power cut: written under a temporary name, fsynced,
renamed, the folder fsynced; the last few kept as step-N.pt with latest.pt a hard link to the newest.

A kill during a save leaves `<name>.tmp-<pid>`; the next start deletes those (remove_stale_temporaries),
so a crashed run never fills the disk.
"""

from __future__ import annotations

import glob
import os
import re

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
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(folder, "step-*.pt"))
             if (m := STEP_FILE.search(os.path.basename(p)))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the `*.tmp-<pid>` files a killed save left in folder; returns their paths."""
    stale = glob.glob(os.path.join(folder, "*.tmp-*")) if os.path.isdir(folder) else []
    for path in stale:
        os.remove(path)
    return stale


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
