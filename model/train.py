"""Pretraining loop: AdamW, linear warmup + cosine decay, gradient accumulation and clipping,
periodic validation, and checkpoints that resume exactly.

A checkpoint holds everything the next step depends on (weights, optimizer moments, step, data
position, every RNG), so on CPU a run killed and resumed gives bitwise the same losses and the
same model.pt as a run never interrupted.

Under torchrun (model.launch) the same loop runs in every process: each takes its slice of every
micro-batch (model.data), DDP or FSDP2 (model.distributed) averages the gradients, and the logged
loss and gradient norm are those of the whole global batch. Rank 0 alone writes checkpoints,
model.pt and log events; every rank reads the checkpoint to resume. When to save is rank 0's
decision (its clock), taken at log steps and shared, so every rank saves at the same step.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from typing import Callable, Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field, model_validator

from model import checkpoints, distributed, sharded_checkpoint
from model.data import Batches, Prefetcher, TokenStream, sequential_batches
from model.gpt import GPT, GPTConfig, amp_dtype, autocast, check_heads, resolve_device
from model.guard import LossGuard
from model.mfu import device_name, mfu, peak_flops
from storage.config import StageConfig

CHECKPOINT = os.path.join("checkpoints", "latest.pt")
# Changing these between a run and its resume does not change the weights, so it is allowed.
RESUMABLE_CHANGES = {
    "eval_interval",
    "eval_batches",
    "checkpoint_interval",
    "checkpoint_minutes",
    "async_checkpoint",
    "keep_checkpoints",
    "log_interval",
    "device",
    "compile",
    "activation_checkpointing",
    "parallel",
    "rdzv_endpoint",
}
# What a checkpoint written before a field existed was trained with, where that is not the field's
# default: such a checkpoint's unpadded vocabulary then shows as a config change, named.
BEFORE_FIELD = {"vocab_multiple": 1}
# How the global batch is split into processes and micro-batches: any split of the same global batch
# (batch_size x grad_accum_steps x processes) draws the same windows per step, so it may change too.
BATCH_SPLIT = ("batch_size", "grad_accum_steps", "nproc_per_node", "nnodes")


def _shape(name: str):
    """GPTConfig's field `name` (default, limits, description) for TrainConfig: one definition of each."""
    return copy.copy(GPTConfig.model_fields[name])


class TrainConfig(StageConfig):
    """Model shape (vocab size comes from the tokenizer) and optimization. The defaults are GPT-2's
    architecture; model.gpt.MODERN lists the switches of the modern one (RoPE, RMSNorm, SwiGLU,
    QK-norm, untied head)."""

    block_size: int = _shape("block_size")
    n_layer: int = _shape("n_layer")
    n_head: int = _shape("n_head")
    n_embd: int = _shape("n_embd")
    dropout: float = _shape("dropout")
    bias: bool = _shape("bias")
    positions: Literal["learned", "rotary"] = _shape("positions")
    rope_theta: float = _shape("rope_theta")
    norm: Literal["layernorm", "rmsnorm"] = _shape("norm")
    norm_eps: float = _shape("norm_eps")
    mlp: Literal["gelu", "swiglu"] = _shape("mlp")
    qk_norm: bool = _shape("qk_norm")
    tie_embeddings: bool = _shape("tie_embeddings")
    vocab_multiple: int = Field(
        64,
        ge=1,
        le=1 << 16,
        description="Pad the embedding and output head to a "
        "multiple of this many rows (matmuls of GPU-friendly sizes, nanoGPT's 50304); "
        "the padded ids are never predicted, sampled or exported. 1: no padding.",
    )
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch of each process.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (tokens per step = "
        "batch_size x grad_accum_steps x processes x block_size).",
    )
    max_steps: int = Field(300, ge=1, description="Optimizer steps; also the length of the LR schedule.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate, reached after warmup.")
    min_lr: float = Field(3e-4, ge=0, description="Learning rate at the end of the decay.")
    warmup_steps: int = Field(30, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="After warmup: cosine decay to min_lr over "
        "the remaining steps, or warmup-stable-decay (constant, then a "
        "linear decay over the last decay_fraction of the steps).",
    )
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd only: share of max_steps spent decaying.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, applied to 2-D weights only.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = no clipping).")
    eval_interval: int = Field(100, ge=1, description="Compute validation loss every this many steps (and at the end).")
    eval_batches: int = Field(10, ge=0, description="Validation batches per evaluation (0 = no validation).")
    checkpoint_interval: int = Field(
        0,
        ge=0,
        description="Also save a resumable checkpoint every this many "
        "steps (0: only by checkpoint_minutes, and at the end).",
    )
    checkpoint_minutes: float = Field(
        15.0,
        ge=0,
        description="Save a resumable checkpoint at the first log step "
        "this many minutes after the last save (0: only by checkpoint_interval), "
        "and at the end.",
    )
    async_checkpoint: bool = Field(
        True,
        description="Write checkpoints in a background thread from a CPU copy, "
        "so training goes on during the write (one save in flight).",
    )
    keep_checkpoints: int = Field(
        2,
        ge=2,
        description="Resumable checkpoints kept (step-N.pt; latest.pt is the "
        "newest). At least 2: a damaged newest one leaves the one before.",
    )
    log_interval: int = Field(
        10,
        ge=1,
        description="Read the loss, gradient norm and guard to the host, log them "
        "and add them to the loss history every this many steps (and "
        "at the end); a read stalls the GPU, so not every step.",
    )
    seed: int = Field(1337, ge=0, description="Seed of the initialization, data order and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 autocast on CUDA, float32 on CPU."
    )
    compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="torch.compile the model: faster on GPU after a slow first step. auto: on CUDA, off on CPU."
    )
    loss_chunks: int = Field(
        1,
        ge=1,
        description="Compute the loss in this many chunks of tokens, recomputing "
        "each chunk's logits in the backward: memory for one chunk's "
        "logits instead of B x T x vocab (a large vocab or batch).",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each block's activations in the backward pass: less memory, about 1/3 more compute.",
    )
    loss_guard: Literal["skip", "stop", "off"] = Field(
        "skip",
        description="On a non-finite loss or gradient, or "
        "a loss spike: skip that update (the batch is used up), "
        "stop with an error, or do nothing.",
    )
    spike_factor: float = Field(
        3.0,
        ge=0,
        description="A loss above this many times the mean of the last 50 "
        "accepted losses (after warmup) is a spike; 0 = only "
        "non-finite values count.",
    )
    max_skipped_steps: int = Field(5, ge=1, description="Stop after this many updates in a row are skipped.")
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="Training processes per machine (one per GPU); more than one process in all runs under torchrun.",
    )
    nnodes: int = Field(1, ge=1, description="Machines; above 1, torchrun meets the others at rdzv_endpoint.")
    rdzv_endpoint: str = Field(
        "",
        description="host:port of the torchrun rendezvous when nnodes > 1 (a port "
        "free on that host; every machine names the same one).",
    )
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="How processes share the work: "
        "ddp (each holds the model, gradients averaged) or fsdp "
        "(FSDP2: weights, gradients and optimizer state sharded). "
        "Needed when processes > 1; no effect with one.",
    )

    @model_validator(mode="after")
    def _processes_have_a_plan(self) -> "TrainConfig":
        if self.processes > 1 and self.parallel == "none":
            raise ValueError(
                f"parallel 'none' cannot run {self.processes} processes (nproc_per_node x nnodes): use 'ddp' or 'fsdp'"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("rdzv_endpoint is needed when nnodes > 1 (host:port every machine can reach)")
        return self

    @model_validator(mode="after")
    def _shape_and_schedule(self) -> "TrainConfig":
        check_heads(self)
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate}): "
                "the schedule decays to it"
            )
        return self

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **self.model_dump(include=set(GPTConfig.model_fields) - {"vocab_size"}))


def lr_at(step: int, c: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay (or stable, then linear decay) to min_lr at
    max_steps: fixed by the plan, not by where a run stops."""
    if step < c.warmup_steps:
        return c.learning_rate * (step + 1) / c.warmup_steps
    if c.schedule == "wsd":
        decay_start = max(c.warmup_steps, c.max_steps - round(c.decay_fraction * c.max_steps))
        progress = max(0.0, (step - decay_start) / max(1, c.max_steps - decay_start))
        return c.learning_rate + min(1.0, progress) * (c.min_lr - c.learning_rate)
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


def make_optimizer(model: GPT, c: TrainConfig, device: str) -> torch.optim.AdamW:
    """Decay matrices (linear and embedding weights); never biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # Fused (on CUDA and CPU alike) for its found_inf: the loss guard skips a step without a host read.
    return torch.optim.AdamW(groups, lr=c.learning_rate, betas=(c.beta1, c.beta2), fused=True)


@torch.no_grad()
def val_loss(
    model: GPT,
    stream: TokenStream,
    block_size: int,
    batch_size: int,
    max_batches: int,
    device: str,
    dtype: str,
    rank: int = 0,
    world: int = 1,
) -> float:
    """Mean loss over the first max_batches batches of validation windows, always the same ones.
    Under `world` processes a batch is batch_size x world windows, each rank scoring its slice."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum and token count, read once at the end
    for x, y in sequential_batches(stream, block_size, batch_size * world, max_batches):
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        # A rank left without rows by a short last batch still runs the forward (FSDP's
        # all-gathers need every rank) and counts nothing.
        counts = len(y[mine]) > 0
        x, y = (x[mine], y[mine]) if counts else (x[:1], y[:1])
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        if counts:
            total[0] += loss.detach().double() * y.numel()
            total[1] += y.numel()
    model.train(was_training)
    loss_sum, n = distributed.sums(total).tolist()
    return loss_sum / n


def train(
    train_files: list[str],
    val_files: list[str],
    vocab_size: int,
    config: TrainConfig,
    out_dir: str,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Train (or resume) in out_dir; write out_dir/model.pt; return a JSON-ready summary.

    stop_after=N stops after step N as if the process were killed there: no final checkpoint and no
    model.pt, so the next call resumes from the last periodic checkpoint (a save in flight is
    finished first). clock (seconds) times checkpoint_minutes; a test passes its own."""
    c = config
    device = resolve_device(c.device)
    rank, world = distributed.rank(), distributed.world_size()
    if world != c.processes:
        raise ValueError(
            f"the config asks for {c.processes} processes (nproc_per_node x nnodes) but "
            f"{world} run: start several with torchrun (model.launch)"
        )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(c.seed)
    np.random.seed(c.seed)
    torch.manual_seed(c.seed)

    train_stream = TokenStream(train_files)
    batches = Batches(train_stream, c.block_size, c.batch_size, c.seed, rank, world)
    val_stream = TokenStream(val_files) if val_files and c.eval_batches else None
    if val_stream is not None:
        _check_vocab(val_stream, vocab_size)
        next(sequential_batches(val_stream, c.block_size, c.batch_size, 1))  # fail now, not at the first eval

    raw_model = GPT(c.gpt_config(vocab_size)).to(device)  # the same initial weights on every rank
    raw_model.activation_checkpointing = c.activation_checkpointing
    if rank:
        torch.manual_seed(distributed.rank_seed(c.seed, rank, 0))
    flops_per_token = raw_model.flops_per_token()
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    if distributed.is_main():
        sharded_checkpoint.remove_stale(os.path.dirname(ckpt_path))
        for folder in (out_dir, os.path.dirname(ckpt_path)):  # what a kill during a save left
            checkpoints.remove_stale_temporaries(folder)
    sharded = sharded_checkpoint.newer_than(ckpt_path)  # FSDP2's folder of shards, unless latest.pt is newer
    found = sharded is not None or os.path.exists(ckpt_path) or bool(checkpoints.step_files(os.path.dirname(ckpt_path)))
    if not distributed.same_on_all(found):
        raise RuntimeError(f"only some ranks see {ckpt_path}: out_dir must be on storage every machine shares")
    read_from = os.path.join(sharded, sharded_checkpoint.STATE) if sharded else ckpt_path
    ckpt = _read_checkpoint(read_from, c, vocab_size, device) if found else None
    identity = train_stream.identity()
    if ckpt and "token_files" in ckpt:
        if ckpt["token_files"] != identity:
            raise ValueError(
                f"checkpoint {ckpt_path} was trained on other token files ({ckpt['token_files']}) "
                f"than these ({identity}); use the same files or a new out_dir"
            )
    else:  # a resume on the same files needs no check (and a start reads each file's cached maximum)
        _check_vocab(train_stream, vocab_size)
    if ckpt and not sharded:
        raw_model.load_state_dict(ckpt["model"])  # before FSDP shards it
    wrapped = distributed.wrap(raw_model, c.parallel, device)
    optimizer = make_optimizer(raw_model, c, device)
    if sharded:  # after: each rank reads only the pieces its own tensors hold
        sharded_checkpoint.load(sharded, raw_model, optimizer)
    guard = LossGuard(c.loss_guard, c.spike_factor, c.max_skipped_steps, device)
    step, history, last_loss = 0, [], None
    if ckpt:
        step, history, last_loss = _restore(ckpt, raw_model, optimizer, batches, guard, c, rank)
        del ckpt
    model = torch.compile(wrapped) if (device == "cuda" if c.compile == "auto" else c.compile) else wrapped
    model.train()

    tokens_per_step = c.batch_size * c.grad_accum_steps * world * c.block_size
    log = log if distributed.is_main() else None
    peak = peak_flops(device_name(device), "bfloat16" if amp_dtype(device, c.dtype) else "float32")
    mfu_of = lambda tokens_per_s: mfu(flops_per_token, tokens_per_s, peak, devices=world)  # noqa: E731
    t_start, steps_run = time.perf_counter(), 0
    feed = Prefetcher(batches, device)  # after the resume: it starts at the restored position
    t_logged, steps_logged = t_start, 0
    # Committed: whoever keeps a copy elsewhere (the flow's upload) may take it now. Rank 0 alone saves.
    committed = (lambda s: log({"step": s, "checkpoint": ckpt_path})) if log else (lambda s: None)
    saver = checkpoints.Saver(c.async_checkpoint, committed)
    last_save = clock()
    # The last applied step's loss, on the device; read to the host only at log and checkpoint steps.
    last_loss_t = torch.tensor(float("nan") if last_loss is None else last_loss, device=device)
    try:
        while step < c.max_steps and (stop_after is None or step < stop_after):
            lr = lr_at(step, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            where = feed.position
            loss_sum = torch.zeros((), device=device)
            for micro in range(c.grad_accum_steps):
                x, y = feed.next()
                with distributed.grad_sync(wrapped, last=micro == c.grad_accum_steps - 1):
                    with autocast(device, c.dtype):
                        # Only the loss is kept: the logits (bf16, B x T x vocab) are freed before the backward.
                        loss = model(x, y, loss_chunks=c.loss_chunks)[1]
                    (loss / c.grad_accum_steps).backward()
                loss_sum += loss.detach()
            max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
            # After the reduction every rank holds the global gradient (or its shard): a global norm.
            grad_norm = distributed.whole(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm))
            step_loss = distributed.mean(loss_sum / c.grad_accum_steps)
            skip = guard.check(step + 1, step_loss, grad_norm, step >= c.warmup_steps, where)
            optimizer.found_inf = skip.float()  # fused AdamW leaves everything as it was where this is 1
            optimizer.step()
            last_loss_t = torch.where(skip, last_loss_t, step_loss.detach())
            optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_run += 1
            steps_logged += 1

            evaluating = step % c.eval_interval == 0 or step == c.max_steps
            saving = step == c.max_steps or bool(c.checkpoint_interval) and step % c.checkpoint_interval == 0
            if not saving and c.checkpoint_minutes and step % c.log_interval == 0:  # rank 0's clock decides
                saving = distributed.gather(clock() - last_save >= 60 * c.checkpoint_minutes)[0]
            if step % c.log_interval == 0 or step == c.max_steps or step == stop_after or evaluating or saving:
                # The one host read of these steps: loss, norm, skip flag and last applied loss at once.
                guard.verify()
                now_loss, now_norm, skipped, last = torch.stack(
                    [step_loss.double(), grad_norm.double(), skip.double(), last_loss_t.double()]
                ).tolist()
                last_loss = None if math.isnan(last) else last
                now = time.perf_counter()
                tokens_per_s = steps_logged * tokens_per_step / max(1e-9, now - t_logged)
                t_logged, steps_logged = now, 0
                history.append({"step": step, "loss": now_loss})
                if log:
                    log(
                        {
                            "step": step,
                            "loss": now_loss,
                            "lr": lr,
                            "grad_norm": now_norm,
                            "tokens_per_s": tokens_per_s,
                            "mfu": mfu_of(tokens_per_s),
                            **({"skipped": True} if skipped else {}),
                        }
                    )

            if evaluating and val_stream is not None:
                history[-1]["val_loss"] = val_loss(
                    raw_model, val_stream, c.block_size, c.batch_size, c.eval_batches, device, c.dtype, rank, world
                )
                if log:
                    log({"step": step, "val_loss": history[-1]["val_loss"]})
            if saving:  # the log's checkpoint event comes once the file is committed
                folder = _save_checkpoint(
                    saver,
                    ckpt_path,
                    raw_model,
                    optimizer,
                    feed,
                    guard,
                    c,
                    vocab_size,
                    step,
                    history,
                    last_loss,
                    identity,
                )
                if folder and log:  # FSDP2's folder of shards, committed on return
                    log({"step": step, "checkpoint": folder})
                last_save = clock()
            saver.poll()
    finally:  # a save in flight is finished, whatever ends the loop
        feed.close()
        saver.close()
    seconds = time.perf_counter() - t_start
    done = step >= c.max_steps
    if done:
        if distributed.is_sharded(raw_model):
            weights = distributed.full_state_dict(raw_model)
        else:
            weights = raw_model.cpu().state_dict()  # on CPU whatever trained it; the tied matrix stored once
        if distributed.is_main():
            checkpoints.atomic_save(
                {"model": weights, "config": raw_model.config.model_dump(), "vocab_size": vocab_size},
                os.path.join(out_dir, "model.pt"),
            )
    val_points = [h["val_loss"] for h in history if "val_loss" in h]
    return {
        "steps": step,
        "completed": done,
        "tokens_seen": step * tokens_per_step,
        "params": raw_model.num_params(),
        "final_train_loss": last_loss,
        "final_val_loss": val_points[-1] if val_points else None,
        "history": history,
        "skipped_steps": guard.total_skipped(),
        "flops_per_token": flops_per_token,
        "timing": {
            "seconds": round(seconds, 3),
            "steps_this_run": steps_run,
            "tokens_per_s": round(steps_run * tokens_per_step / max(1e-9, seconds), 1),
            "device": device_name(device),
            "peak_flops": peak,
            "mfu": mfu_of(steps_run * tokens_per_step / max(1e-9, seconds)),
        },
    }


def _check_vocab(stream: TokenStream, vocab_size: int) -> None:
    """Every token id of the stream fits the vocabulary (each file's maximum read from a cache
    when the file was checked before: model.data.TokenStream.max_token)."""
    top = stream.max_token()
    if top >= vocab_size:
        raise ValueError(f"token id {top} does not fit vocab_size {vocab_size}: {stream.describe()}")


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    saver, path, model, optimizer, batches, guard, c, vocab_size, step, history, last_loss, token_files
) -> Optional[str]:
    """Every rank calls it (each rank's RNG is collected). FSDP2: every rank writes its shards
    (model.sharded_checkpoint), committed when it returns that folder. Otherwise rank 0 hands one
    file's state, whole tensors laid out as one process lays them out, to the saver (None)."""
    rng = distributed.gather(_rng_state())
    extra = {"rng_ranks": rng} if len(rng) > 1 else {}
    state = {
        "step": step,
        "batches": batches.state_dict(),
        "guard": guard.state_dict(),
        "rng": rng[0],
        "history": history,
        "last_loss": last_loss,
        "config": c.model_dump(),
        "vocab_size": vocab_size,
        "token_files": token_files,
        **extra,
    }
    if distributed.is_sharded(model):  # written now, by every rank: no background write
        saver.wait()
        return sharded_checkpoint.save(os.path.dirname(path), step, model, optimizer, state, c.keep_checkpoints)
    if distributed.is_main():
        saver.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, path, step, c.keep_checkpoints
        )
    return None


def _read_checkpoint(path, c, vocab_size, device) -> dict:
    """The checkpoint (latest, or the newest older step file that loads when latest is damaged),
    after checking it was written by the same config (up to RESUMABLE_CHANGES and the split of the
    same global batch)."""
    path, ckpt = checkpoints.newest_readable(path, lambda p: torch.load(p, map_location=device, weights_only=True))
    fields = TrainConfig.model_fields
    # A field added since the checkpoint was written has the value that gives the behaviour before it existed.
    saved = {k: ckpt["config"].get(k, BEFORE_FIELD.get(k, fields[k].default)) for k in fields}
    now = c.model_dump()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and k not in BATCH_SPLIT and saved[k] != now[k])
    padded = lambda cfg: (  # noqa: E731
        GPTConfig(
            vocab_size=vocab_size,
            vocab_multiple=cfg["vocab_multiple"],
        ).padded_vocab
    )
    if "vocab_multiple" in changed and padded(saved) == padded(now):
        changed.remove("vocab_multiple")  # another multiple, the same rows: the same weights
    glob = lambda cfg: math.prod(cfg[k] for k in BATCH_SPLIT)  # noqa: E731
    if glob(saved) != glob(now):
        changed += [k for k in BATCH_SPLIT if saved[k] != now[k]]
    if changed or ckpt["vocab_size"] != vocab_size:
        what = (
            ", ".join(f"{k}: {saved.get(k)} -> {now[k]}" for k in changed)
            or f"vocab_size: {ckpt['vocab_size']} -> {vocab_size}"
        )
        raise ValueError(
            f"checkpoint {path} was written with another config ({what}); use the same config or a new out_dir"
        )
    return ckpt


def _restore(ckpt, model, optimizer, batches, guard, c, rank):
    """Optimizer, data position, guard and RNG from a checkpoint whose weights are already loaded.
    Each rank takes its own saved RNG state; a rank the saved run did not have gets a fresh seed."""
    if "optimizer" in ckpt:  # a sharded checkpoint's moments are loaded already
        state = ckpt["optimizer"]
        if distributed.is_sharded(model):
            state = distributed.shard_optimizer_state(state, optimizer)
        optimizer.load_state_dict(state)
    batches.load_state_dict(ckpt["batches"])
    guard.load_state_dict(ckpt["guard"])
    rngs = ckpt.get("rng_ranks", [ckpt["rng"]])
    if rank < len(rngs):
        _set_rng_state(rngs[rank])
    else:
        torch.manual_seed(distributed.rank_seed(c.seed, rank, ckpt["step"]))
    return ckpt["step"], ckpt["history"], ckpt["last_loss"]
