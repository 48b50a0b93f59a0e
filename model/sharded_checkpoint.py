"""FSDP2 checkpoints as folders of shards (torch.distributed.checkpoint, DCP): each rank writes and
reads only its own part of the weights and optimizer moments, so no rank holds the whole state.

    checkpoints/
      step-N/                 one committed checkpoint
        .metadata             DCP's index: which file holds which piece of which tensor
        __R_0.distcp          rank R's shards of the weights and optimizer moments
        state.pt              the rest, from rank 0: step, data position, guard, history, config and
                              every rank's RNG state (rng_ranks)
      latest.json             {"step": N, "folder": "step-N"}: the newest committed folder
      step-N.saving-<pid>/    a save in progress (or killed); removed at the next start

Durable as model.checkpoints' single files: a save fills step-N.saving-<pid>/ (every file fsynced),
DCP's last collective means every rank has written, then rank 0 fsyncs the folder, renames it to
step-N/, fsyncs checkpoints/, replaces latest.json atomically and keeps the `keep` newest folders.
Loading reads only the saved pieces that overlap a rank's own tensors (DCP reshards), so a
checkpoint resumes under another world size, under DDP, or in one process.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import shutil
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from model import distributed
from model.checkpoints import _fsync_dir

POINTER = "latest.json"
STATE = "state.pt"
STEP_FOLDER = re.compile(r"step-(\d+)$")
SAVING = ".saving-"


def save(
    folder: str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep: int
) -> str:
    """Every rank calls it. The weights and optimizer state as DCP shards plus `state` (picklable by
    torch.save, weights_only) in folder/step-<step>/; returns that path once it is committed."""
    final = os.path.join(folder, f"step-{step}")
    tmp = f"{final}{SAVING}{distributed.gather(os.getpid())[0]}"  # one name on every rank: rank 0's pid
    model_sd, optim_sd = _state_dicts(model, optimizer)
    dcp.save(
        {"model": model_sd, "optimizer": optim_sd},
        checkpoint_id=tmp,  # returns once all ranks wrote
        no_dist=not dist.is_initialized(),
    )
    if distributed.is_main():
        with open(os.path.join(tmp, STATE), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _commit(folder, tmp, final, step, keep)
    if dist.is_initialized():
        dist.barrier()  # every rank returns with the checkpoint committed
    return final


def _commit(folder: str, tmp: str, final: str, step: int, keep: int) -> None:
    _fsync_dir(tmp)
    if os.path.exists(final):  # committed by a run that died before moving the pointer: not pointed to
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(folder)
    pointer = os.path.join(folder, POINTER)
    with open(f"{pointer}{SAVING}{os.getpid()}", "w") as f:
        json.dump({"step": step, "folder": os.path.basename(final)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, pointer)
    _fsync_dir(folder)
    # Folders past this step were left by a run this one resumed before: they are its future, not ours.
    older = [p for s, p in step_folders(folder) if s <= step]
    for path in [p for s, p in step_folders(folder) if s > step] + older[:-keep]:
        shutil.rmtree(path)


def step_folders(folder: str) -> list[tuple[int, str]]:
    """The committed step-N folders of folder as (N, path), oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in glob.glob(os.path.join(folder, "step-*"))
        if os.path.isdir(p) and (m := STEP_FOLDER.search(os.path.basename(p)))
    ]
    return sorted(found)


def remove_stale(folder: str) -> list[str]:
    """Delete what a killed save left in folder (step-N.saving-<pid>/, latest.json.saving-<pid>)."""
    stale = glob.glob(os.path.join(folder, f"*{SAVING}*")) if os.path.isdir(folder) else []
    for path in stale:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return stale


def latest(folder: str) -> Optional[str]:
    """The committed step folder latest.json names, checked to be whole; None without a pointer."""
    pointer = os.path.join(folder, POINTER)
    if not os.path.exists(pointer):
        return None
    try:
        with open(pointer) as f:
            path = os.path.join(folder, json.load(f)["folder"])
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"checkpoint pointer {pointer} is unreadable ({e}); delete it to resume from the step folder before it"
        ) from e
    missing = _missing_files(path)
    if missing:
        raise RuntimeError(
            f"sharded checkpoint {path} (named by {pointer}) is incomplete, missing "
            f"{', '.join(missing[:5])}; the step folder before it is kept: point {POINTER} "
            f"at it or delete both to start over"
        )
    return path


def newer_than(single: str) -> Optional[str]:
    """The step folder latest.json names beside the single-file checkpoint `single` (latest.pt),
    unless that file is readable and of a later step (a run that went on under DDP or in one process)."""
    sharded = latest(os.path.dirname(single))
    if sharded and os.path.exists(single):
        try:
            step = torch.load(single, map_location="cpu", weights_only=True, mmap=True)["step"]  # no tensor read
        except Exception:  # noqa: BLE001 (a damaged file is no candidate)
            return sharded
        return sharded if step_of(sharded) > step else None
    return sharded


def _missing_files(path: str) -> list[str]:
    """The files a committed folder needs that are absent or shorter than .metadata says."""
    if not os.path.isdir(path):
        return [path]
    missing = [name for name in (".metadata", STATE) if not os.path.exists(os.path.join(path, name))]
    if missing:
        return missing
    ends: dict[str, int] = {}
    for item in dcp.FileSystemReader(path).read_metadata().storage_data.values():
        ends[item.relative_path] = max(ends.get(item.relative_path, 0), item.offset + item.length)
    return [
        name
        for name, end in sorted(ends.items())
        if not os.path.exists(os.path.join(path, name)) or os.path.getsize(os.path.join(path, name)) < end
    ]


def step_of(path: str) -> int:
    return int(STEP_FOLDER.search(path).group(1))


def load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank calls it after wrapping the model and making the optimizer: each fills its own
    tensors (FSDP2's shards, or whole ones under DDP or one process) with the saved values, reading
    only the saved pieces that overlap them."""
    model_sd, optim_sd = _state_dicts(model, optimizer)  # the optimizer's moments made, then overwritten
    sd = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(sd, checkpoint_id=path, no_dist=not dist.is_initialized())
    for name, source in distributed.tied_names(model).items():
        sd["model"][name] = sd["model"][source]
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def load_weights(path: str, model: torch.nn.Module) -> None:
    """The saved weights, whole, into a plain model in this one process (evaluation, export)."""
    weights = {k: v for k, v in model.state_dict().items() if k not in distributed.tied_names(model)}
    sd = {"model": weights}
    dcp.load(sd, checkpoint_id=path, no_dist=not dist.is_initialized())  # the model's part only
    model.load_state_dict({**sd["model"], **{a: sd["model"][s] for a, s in distributed.tied_names(model).items()}})


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """DCP's view of the model and optimizer; the tied head left out (the embedding holds it), so
    the matrix is written once."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    for name in distributed.tied_names(model):
        model_sd.pop(name, None)
    return model_sd, optim_sd


def upload(out, local_dir: str, path: str) -> None:
    """Copy a committed step folder to the stage folder `out` on its store, its files before the
    pointer; then drop the store's step folders this machine no longer keeps. A folder that training
    removed meanwhile (two newer ones committed) is skipped: the store keeps its pointer's folder."""
    kept = {os.path.basename(p) for _, p in step_folders(os.path.dirname(path))}
    rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
    try:
        for name in sorted(os.listdir(path)):
            out.upload(f"{rel}/{name}", os.path.join(path, name))
    except FileNotFoundError:
        return
    parent = posixpath.dirname(rel)
    out.upload(f"{parent}/{POINTER}", os.path.join(os.path.dirname(path), POINTER))
    for stored in {posixpath.basename(posixpath.dirname(r)) for r in out.list(parent)}:
        if STEP_FOLDER.match(stored) and stored not in kept:
            out.fs.rm(out.abspath(f"{parent}/{stored}"), recursive=True)


def restore(out, local_dir: str, rel_folder: str) -> bool:
    """Fetch the store's newest step folder into local_dir/rel_folder when the local cache has no
    pointer (a new or wiped machine); its files first, the pointer last. True when one was fetched."""
    local = os.path.join(local_dir, rel_folder)
    rel = rel_folder.replace(os.sep, "/")
    if os.path.exists(os.path.join(local, POINTER)) or not out.exists(f"{rel}/{POINTER}"):
        return False
    name = out.read_json(f"{rel}/{POINTER}")["folder"]
    for stored in out.list(f"{rel}/{name}"):
        out.download(stored, os.path.join(local, name, posixpath.basename(stored)))
    out.download(f"{rel}/{POINTER}", os.path.join(local, POINTER))
    return True
