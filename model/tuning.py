"""What the tuning stages that train a whole GPT share (SFT, DPO): model.train's loop around a
model that starts from given weights, a batch source of their own and a loss of their own.

start() builds the Run: seeds, the model wrapped for DDP or FSDP2 when the config runs several
processes (under torchrun, model.launch), the optimizer, the guard, the batches (each rank takes
its slice of every global batch: batch_size x processes items in the order one process would
read them), and restores the newest checkpoint after checking it was written by this config (up
to the fields `resumable` names) and these inputs. tune() is the loop: train_step, report, the
stage's validation, checkpoints (when to save is rank 0's decision, shared), until max_steps or
stop_after. model.train.finish() then writes model.pt on rank 0.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable, Optional

import numpy as np
import torch

from model import checkpoints, distributed, sharded_checkpoint
from model.batches import EpochBatches
from model.gpt import resolve_device
from model.guard import LossGuard
from model.train import (
    Meter,
    Run,
    _find_checkpoint,
    _restore,
    _save_due,
    dotted,
    make_optimizer,
    report,
    save,
    train_step,
)
from storage.config import StageConfig


def rank_slice(batches: EpochBatches) -> EpochBatches:
    """Each rank's share of every global batch: batches reads batch_size x processes items, and
    this rank collates its own batch_size of them (one process: all)."""
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        return batches
    collate, per_rank = batches.collate, batches.batch_size
    batches.batch_size = per_rank * world
    batches.collate = lambda idx: collate(idx[rank * per_rank : (rank + 1) * per_rank])
    return batches


def checked(path: str, c: StageConfig, identity: dict, resumable: set[str], device: str) -> dict:
    """The newest readable checkpoint at path, after checking its config and inputs are these."""
    path, ckpt = checkpoints.newest_readable(path, lambda p: torch.load(p, map_location=device, weights_only=True))
    now, saved = dotted(c.model_dump()), dotted(type(c).model_validate(ckpt["config"]).model_dump())
    changed = sorted(k for k in now if k not in resumable and saved.get(k) != now[k])
    if changed:
        what = ", ".join(f"{k}: {saved.get(k)} -> {now[k]}" for k in changed)
        raise ValueError(f"checkpoint {path} was written with another config ({what}); use the same or a new out_dir")
    if ckpt["token_files"] != identity:
        raise ValueError(f"checkpoint {path} was tuned from another model or data; use a new out_dir")
    return ckpt


def start(
    c,
    model: torch.nn.Module,
    batches: Callable[[str], EpochBatches],
    out_dir: str,
    checkpoint: str,
    identity: dict,
    resumable: set[str],
    run_type: type[Run],
    seq_len: int,
    **run_fields,
) -> Run:
    """The Run of a tuning stage: `model` (the start's weights, on the CPU), batches(device) its
    batch source for one process (sliced here per rank), run_type a Run with a seq_len field (the
    longest sequence a step reads: its FLOPs and tokens per step)."""
    device = resolve_device(c.launch.device)
    rank, world = distributed.rank(), distributed.world_size()
    if world != c.launch.processes:
        raise ValueError(
            f"the config asks for {c.launch.processes} processes (nproc_per_node x nnodes) but "
            f"{world} run: start several with torchrun (model.launch)"
        )
    random.seed(c.data.seed)
    np.random.seed(c.data.seed)
    torch.manual_seed(c.data.seed)
    model = model.to(device)
    model.train()
    if rank:
        torch.manual_seed(distributed.rank_seed(c.data.seed, rank, 0))
    ckpt_path = os.path.join(out_dir, checkpoint)
    ckpt, sharded = _find_checkpoint(
        out_dir,
        ckpt_path,
        c,
        model.config.vocab_size,
        device,
        read=lambda p: checked(p, c, identity, resumable, device),
    )
    if ckpt and not sharded:
        model.load_state_dict(ckpt["model"])  # before FSDP shards it
    wrapped = distributed.wrap(model, c.launch.parallel, device)
    optimizer = make_optimizer(model, c, device)
    if sharded:
        sharded_checkpoint.load(sharded, model, optimizer)
    guard = LossGuard(c.guard.mode, c.guard.spike_factor, c.guard.max_skipped, device)
    feed = rank_slice(batches(device))
    vocab = model.config.vocab_size
    run = run_type(c, device, rank, world, model, wrapped, wrapped, optimizer, guard, feed, None, vocab, ckpt_path,
                   identity, model.flops_per_token(seq_len), seq_len=seq_len, **run_fields)  # fmt: skip
    if ckpt:
        run.step, run.history, run.last_loss = _restore(ckpt, model, optimizer, feed, guard, c, rank)
        del ckpt
    if c.launch.compile is True:
        run.model = torch.compile(wrapped)
    run.last_loss_t = torch.tensor(float("nan") if run.last_loss is None else run.last_loss, device=device)
    return run


def tune(
    run: Run,
    loss_fn,
    validate: Optional[Callable[[], None]],
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    clock: Callable[[], float] = time.monotonic,
) -> Meter:
    """Steps until max_steps (or stop_after, as a kill there would: no final checkpoint); validate()
    every eval.interval steps and at the end; checkpoints every checkpoint.interval steps or
    minutes, and at the end. Every rank runs it (log is rank 0's)."""
    c = run.config
    meter = Meter(run)
    committed = (lambda s: log({"step": s, "checkpoint": run.ckpt_path})) if log else (lambda s: None)
    saver = checkpoints.Saver(c.checkpoint.async_save, committed)
    last_save = clock()
    max_steps = c.schedule.max_steps
    try:
        while run.step < max_steps and (stop_after is None or run.step < stop_after):
            out = train_step(run, run.batches, loss_fn)
            meter.stepped()
            evaluating = validate is not None and (run.step % c.eval.interval == 0 or run.step == max_steps)
            saving = _save_due(run, clock, last_save)
            if evaluating or saving or run.step % c.log.interval == 0 or run.step in (max_steps, stop_after):
                report(run, out, meter, log)
            if evaluating:
                validate()
            if saving:
                save(run, saver, run.batches, log)
                last_save = clock()
            saver.poll()
    finally:
        saver.close()
    return meter
