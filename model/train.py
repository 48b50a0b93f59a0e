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

train() reads top to bottom as its named steps: setup() (model, optimizer, data, resume), then per
step train_step() (one optimizer step), report() (the host read and log event), evaluate() and
save(), and finish() (model.pt and the summary). train_step() takes any batch source and loss
function, so another objective (instruction tuning, classification) reuses the same step.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Literal, Optional, Protocol, Union

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator

from model import checkpoints, distributed, sharded_checkpoint
from model.data import Batches, Prefetcher, TokenStream, sequential_batches
from model.gpt import GPT, GPTConfig, amp_dtype, autocast, check_heads, resolve_device
from model.guard import LossGuard
from model.mfu import device_name, mfu, peak_flops
from storage.config import StageConfig

CHECKPOINT = os.path.join("checkpoints", "latest.pt")


def _shape(name: str):
    """GPTConfig's field `name` (default, limits, description) for ModelConfig: one definition of each."""
    return copy.copy(GPTConfig.model_fields[name])


class ModelConfig(StageConfig):
    """The network's shape: GPTConfig's fields but vocab_size (the tokenizer's). The defaults are
    GPT-2's architecture; model.gpt.MODERN lists the switches of the modern one (RoPE, RMSNorm,
    SwiGLU, QK-norm, untied head)."""

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

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        check_heads(self)  # here too, so a bad shape fails before the stages before training run
        return self


class OptimizerConfig(StageConfig):
    """AdamW and the gradient clipping before its step."""

    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate, reached after warmup.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, applied to 2-D weights only.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = no clipping).")


class ScheduleConfig(StageConfig):
    """How long training runs and how the learning rate moves from 0 to its peak and down."""

    max_steps: int = Field(300, ge=1, description="Optimizer steps; also the length of the LR schedule.")
    warmup_steps: int = Field(30, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    min_lr: float = Field(3e-4, ge=0, description="Learning rate at the end of the decay.")
    decay: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="After warmup: cosine decay to min_lr over "
        "the remaining steps, or warmup-stable-decay (constant, then a "
        "linear decay over the last decay_fraction of the steps).",
    )
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd only: share of max_steps spent decaying.")


class DataConfig(StageConfig):
    """What each optimizer step reads, and the seed of the order it reads it in."""

    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch of each process.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (tokens per step = "
        "batch_size x grad_accum_steps x processes x block_size).",
    )
    seed: int = Field(1337, ge=0, description="Seed of the data order, and of the initialization and dropout.")


class ValidationConfig(StageConfig):
    """The validation loss computed during training."""

    interval: int = Field(100, ge=1, description="Compute validation loss every this many steps (and at the end).")
    batches: int = Field(10, ge=0, description="Validation batches per evaluation (0 = no validation).")


class LogConfig(StageConfig):
    """How often the loop reads its device values to the host."""

    interval: int = Field(
        10,
        ge=1,
        description="Read the loss, gradient norm and guard to the host, log them "
        "and add them to the loss history every this many steps (and "
        "at the end); a read stalls the GPU, so not every step.",
    )


class CheckpointConfig(StageConfig):
    """When resumable checkpoints are written, how, and how many are kept."""

    interval: int = Field(
        0,
        ge=0,
        description="Also save a resumable checkpoint every this many steps (0: only by minutes, and at the end).",
    )
    minutes: float = Field(
        15.0,
        ge=0,
        description="Save a resumable checkpoint at the first log step "
        "this many minutes after the last save (0: only by interval), "
        "and at the end.",
    )
    async_save: bool = Field(
        True,
        description="Write checkpoints in a background thread from a CPU copy, "
        "so training goes on during the write (one save in flight).",
    )
    keep: int = Field(
        2,
        ge=2,
        description="Resumable checkpoints kept (step-N.pt; latest.pt is the "
        "newest). At least 2: a damaged newest one leaves the one before.",
    )


class GuardConfig(StageConfig):
    """The loss-spike and NaN guard (model.guard)."""

    mode: Literal["skip", "stop", "off"] = Field(
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
    max_skipped: int = Field(5, ge=1, description="Stop after this many updates in a row are skipped.")


class LaunchConfig(StageConfig):
    """Where and how the computation runs: device, precision, compilation, memory savers and processes."""

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
    def _processes_have_a_plan(self) -> "LaunchConfig":
        if self.processes > 1 and self.parallel == "none":
            raise ValueError(
                f"parallel 'none' cannot run {self.processes} processes (nproc_per_node x nnodes): use 'ddp' or 'fsdp'"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("rdzv_endpoint is needed when nnodes > 1 (host:port every machine can reach)")
        return self

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes


GROUPS: dict[str, type[StageConfig]] = {
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "data": DataConfig,
    "eval": ValidationConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
    "guard": GuardConfig,
    "launch": LaunchConfig,
}
# The flat keys of the config before its groups (accepted for one release, with a DeprecationWarning):
# old key -> (group, field). A checkpoint written then holds its config in these keys.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "schedule": ("schedule", "decay"),  # first: "schedule" is both this flat key and a group
    **{k: ("model", k) for k in ModelConfig.model_fields},
    **{k: ("optimizer", k) for k in OptimizerConfig.model_fields},
    **{k: ("schedule", k) for k in ("max_steps", "warmup_steps", "min_lr", "decay_fraction")},
    **{k: ("data", k) for k in DataConfig.model_fields},
    "eval_interval": ("eval", "interval"),
    "eval_batches": ("eval", "batches"),
    "log_interval": ("log", "interval"),
    "checkpoint_interval": ("checkpoint", "interval"),
    "checkpoint_minutes": ("checkpoint", "minutes"),
    "async_checkpoint": ("checkpoint", "async_save"),
    "keep_checkpoints": ("checkpoint", "keep"),
    "loss_guard": ("guard", "mode"),
    "spike_factor": ("guard", "spike_factor"),
    "max_skipped_steps": ("guard", "max_skipped"),
    **{k: ("launch", k) for k in LaunchConfig.model_fields},
}


def _group(title: str, cls: type[StageConfig]):
    return Field(default_factory=cls, title=title, description=cls.__doc__.split("\n\n")[0].replace("\n    ", " "))


class TrainConfig(StageConfig):
    """Pretraining, one group per component: the model's shape (vocab size comes from the
    tokenizer), the optimizer, the LR schedule, the data, validation, logging, checkpoints, the
    loss guard and the launch. The flat keys of before (n_layer, max_steps, ...) are still
    accepted, with a DeprecationWarning naming where each went (FLAT_KEYS)."""

    model: ModelConfig = _group("Model", ModelConfig)
    optimizer: OptimizerConfig = _group("Optimizer", OptimizerConfig)
    schedule: ScheduleConfig = _group("Schedule", ScheduleConfig)
    data: DataConfig = _group("Data", DataConfig)
    eval: ValidationConfig = _group("Validation", ValidationConfig)
    log: LogConfig = _group("Logging", LogConfig)
    checkpoint: CheckpointConfig = _group("Checkpoints", CheckpointConfig)
    guard: GuardConfig = _group("Loss guard", GuardConfig)
    launch: LaunchConfig = _group("Launch", LaunchConfig)

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, data: Any) -> Any:
        return nest_flat_keys(data, warn=True) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _schedule_below_peak(self) -> "TrainConfig":
        if self.schedule.min_lr > self.optimizer.learning_rate:
            raise ValueError(
                f"schedule.min_lr ({self.schedule.min_lr}) must not exceed optimizer.learning_rate "
                f"({self.optimizer.learning_rate}): the schedule decays to it"
            )
        return self

    @property
    def processes(self) -> int:
        return self.launch.processes

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **self.model.model_dump())

    def updated(self, **groups: dict) -> "TrainConfig":
        """A copy with some fields of some groups changed and everything validated again (which
        model_copy(update=...) does not do): config.updated(schedule={"max_steps": 8})."""
        data = self.model_dump()
        for name, changes in groups.items():
            if name not in GROUPS:
                raise ValueError(f"no config group {name!r} (groups: {', '.join(GROUPS)})")
            data[name] = {**data[name], **changes}
        return TrainConfig.model_validate(data)


def nest_flat_keys(data: dict, warn: bool = False) -> dict:
    """data with each flat key of before the groups (FLAT_KEYS) moved to its group; a flat key and
    its new place given with different values is an error. warn: a DeprecationWarning for each."""
    out = dict(data)
    for old, (group, new) in FLAT_KEYS.items():
        if old not in out or (old == group and isinstance(out[old], (dict, BaseModel))):
            continue  # the group "schedule", not the flat key
        value = out.pop(old)
        section = out.get(group, {})
        if isinstance(section, BaseModel):  # a group given as a config: only what it set explicitly
            section = {k: getattr(section, k) for k in section.model_fields_set}
        if not isinstance(section, dict):
            raise ValueError(f"{old} (deprecated: {group}.{new}) given with {group} that is no mapping")
        if new in section and section[new] != value:
            raise ValueError(
                f"{old} (deprecated) and {group}.{new} are both given, with different values "
                f"({value!r} and {section[new]!r}): give {group}.{new} only"
            )
        out[group] = {**section, new: value}
        if warn:
            warnings.warn(f"train.{old} is deprecated: use train.{group}.{new}", DeprecationWarning, stacklevel=4)
    return out


def dotted(config: dict) -> dict:
    """{"group.field": value} of a TrainConfig dump, nested (now) or flat (a checkpoint written
    before the groups), for comparing a checkpoint's config with the current one."""
    out = {}
    for key, value in nest_flat_keys(config).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# Changing these between a run and its resume does not change the weights, so it is allowed.
RESUMABLE_CHANGES = {
    "eval.interval",
    "eval.batches",
    "checkpoint.interval",
    "checkpoint.minutes",
    "checkpoint.async_save",
    "checkpoint.keep",
    "log.interval",
    "launch.device",
    "launch.compile",
    "launch.activation_checkpointing",
    "launch.parallel",
    "launch.rdzv_endpoint",
}
# What a checkpoint written before a field existed was trained with, where that is not the field's
# default: such a checkpoint's unpadded vocabulary then shows as a config change, named.
BEFORE_FIELD = {"model.vocab_multiple": 1}
# How the global batch is split into processes and micro-batches: any split of the same global batch
# (batch_size x grad_accum_steps x processes) draws the same windows per step, so it may change too.
BATCH_SPLIT = ("data.batch_size", "data.grad_accum_steps", "launch.nproc_per_node", "launch.nnodes")


def lr_at(step: int, c: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay (or stable, then linear decay) to min_lr at
    max_steps: fixed by the plan, not by where a run stops."""
    s, peak = c.schedule, c.optimizer.learning_rate
    if step < s.warmup_steps:
        return peak * (step + 1) / s.warmup_steps
    if s.decay == "wsd":
        decay_start = max(s.warmup_steps, s.max_steps - round(s.decay_fraction * s.max_steps))
        progress = max(0.0, (step - decay_start) / max(1, s.max_steps - decay_start))
        return peak + min(1.0, progress) * (s.min_lr - peak)
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - s.min_lr)


def make_optimizer(model: torch.nn.Module, c: TrainConfig, device: str) -> torch.optim.AdamW:
    """Decay matrices (linear and embedding weights); never biases or LayerNorm gains."""
    o = c.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # Fused (on CUDA and CPU alike) for its found_inf: the loss guard skips a step without a host read.
    return torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.beta1, o.beta2), fused=True)


class BatchSource(Protocol):
    """What train_step() reads: the next batch (on the device), and where it comes from (for the
    guard's message). model.data.Prefetcher is one."""

    position: str

    def next(self) -> Any: ...


# loss_fn(model, batch) -> the batch's mean loss (a 0-d tensor): the objective train_step() minimizes.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_chunks: int = 1) -> torch.Tensor:
    """Next-token cross-entropy of (inputs, targets), pretraining's objective. Only the loss is
    kept: the logits (bf16, B x T x vocab) are freed before the backward."""
    x, y = batch
    return model(x, y, loss_chunks=loss_chunks)[1]


@dataclass
class Run:
    """What setup() builds and the loop advances: the model (raw; wrapped for DDP/FSDP2; compiled),
    its optimizer and guard, the data, and how far training got."""

    config: TrainConfig
    device: str
    rank: int
    world: int
    raw_model: torch.nn.Module
    wrapped: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    guard: LossGuard
    batches: Batches
    val_stream: Optional[TokenStream]
    vocab_size: int
    ckpt_path: str
    token_files: list
    flops_per_token: float  # of the model as built, before DDP or FSDP2 wraps it
    step: int = 0
    history: list = field(default_factory=list)
    last_loss: Optional[float] = None  # the last applied step's loss, as read at the last report
    last_loss_t: Optional[torch.Tensor] = None  # the same on the device, kept up to date every step

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.data.batch_size * c.data.grad_accum_steps * self.world * c.model.block_size


@dataclass
class Step:
    """One optimizer step's outcome, on the device (read to the host only by report())."""

    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    skipped: torch.Tensor


class Meter:
    """Throughput and MFU: since the last report (per log event) and of the whole run (the summary)."""

    def __init__(self, run: Run):
        self.flops_per_token = run.flops_per_token
        dtype = "bfloat16" if amp_dtype(run.device, run.config.launch.dtype) else "float32"
        self.peak, self.world = peak_flops(device_name(run.device), dtype), run.world
        self.t_start = self.t_logged = time.perf_counter()
        self.steps_run = self.steps_logged = 0

    def mfu(self, tokens_per_s: float) -> Optional[float]:
        return mfu(self.flops_per_token, tokens_per_s, self.peak, devices=self.world)

    def stepped(self) -> None:
        self.steps_run += 1
        self.steps_logged += 1

    def since_last(self, tokens_per_step: int) -> float:
        """Tokens per second since the last call (or the start)."""
        now = time.perf_counter()
        tokens_per_s = self.steps_logged * tokens_per_step / max(1e-9, now - self.t_logged)
        self.t_logged, self.steps_logged = now, 0
        return tokens_per_s


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
    finished first). clock (seconds) times checkpoint.minutes; a test passes its own."""
    c = config
    run = setup(train_files, val_files, vocab_size, c, out_dir)
    log = log if distributed.is_main() else None
    meter = Meter(run)
    feed = Prefetcher(run.batches, run.device)  # after the resume: it starts at the restored position
    # Committed: whoever keeps a copy elsewhere (the flow's upload) may take it now. Rank 0 alone saves.
    committed = (lambda s: log({"step": s, "checkpoint": run.ckpt_path})) if log else (lambda s: None)
    saver = checkpoints.Saver(c.checkpoint.async_save, committed)
    last_save = clock()
    loss_fn = partial(lm_loss, loss_chunks=c.launch.loss_chunks)
    try:
        while run.step < c.schedule.max_steps and (stop_after is None or run.step < stop_after):
            out = train_step(run, feed, loss_fn)
            meter.stepped()
            evaluating = run.step % c.eval.interval == 0 or run.step == c.schedule.max_steps
            saving = _save_due(run, clock, last_save)
            if evaluating or saving or run.step % c.log.interval == 0 or run.step in (c.schedule.max_steps, stop_after):
                report(run, out, meter, log)
            if evaluating and run.val_stream is not None:
                evaluate(run, log)
            if saving:  # the log's checkpoint event comes once the file is committed
                save(run, saver, feed, log)
                last_save = clock()
            saver.poll()
    finally:  # a save in flight is finished, whatever ends the loop
        feed.close()
        saver.close()
    return finish(run, meter, out_dir)


def setup(train_files: list[str], val_files: list[str], vocab_size: int, c: TrainConfig, out_dir: str) -> Run:
    """Seeds, data, model, optimizer and guard, restored from out_dir's checkpoint when there is one."""
    device = resolve_device(c.launch.device)
    rank, world = distributed.rank(), distributed.world_size()
    if world != c.processes:
        raise ValueError(
            f"the config asks for {c.processes} processes (nproc_per_node x nnodes) but "
            f"{world} run: start several with torchrun (model.launch)"
        )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(c.data.seed)
    np.random.seed(c.data.seed)
    torch.manual_seed(c.data.seed)

    block, batch = c.model.block_size, c.data.batch_size
    train_stream = TokenStream(train_files)
    batches = Batches(train_stream, block, batch, c.data.seed, rank, world)
    val_stream = TokenStream(val_files) if val_files and c.eval.batches else None
    if val_stream is not None:
        _check_vocab(val_stream, vocab_size)
        next(sequential_batches(val_stream, block, batch, 1))  # fail now, not at the first eval

    raw_model = GPT(c.gpt_config(vocab_size)).to(device)  # the same initial weights on every rank
    raw_model.activation_checkpointing = c.launch.activation_checkpointing
    if rank:
        torch.manual_seed(distributed.rank_seed(c.data.seed, rank, 0))
    flops_per_token = raw_model.flops_per_token()
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    ckpt, sharded = _find_checkpoint(out_dir, ckpt_path, c, vocab_size, device)
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
    wrapped = distributed.wrap(raw_model, c.launch.parallel, device)
    optimizer = make_optimizer(raw_model, c, device)
    if sharded:  # after: each rank reads only the pieces its own tensors hold
        sharded_checkpoint.load(sharded, raw_model, optimizer)
    guard = LossGuard(c.guard.mode, c.guard.spike_factor, c.guard.max_skipped, device)
    parts = (raw_model, wrapped, wrapped, optimizer, guard, batches, val_stream)  # wrapped: compiled below, or not
    run = Run(c, device, rank, world, *parts, vocab_size, ckpt_path, identity, flops_per_token)
    if ckpt:
        run.step, run.history, run.last_loss = _restore(ckpt, raw_model, optimizer, batches, guard, c, rank)
        del ckpt
    compile_ = c.launch.compile
    if device == "cuda" if compile_ == "auto" else compile_:
        run.model = torch.compile(wrapped)
    run.model.train()
    run.last_loss_t = torch.tensor(float("nan") if run.last_loss is None else run.last_loss, device=device)
    return run


def train_step(run: Run, batches: BatchSource, loss_fn: LossFn) -> Step:
    """One optimizer step over data.grad_accum_steps micro-batches of `batches`, minimizing
    loss_fn: the LR of the schedule, forward and backward under autocast, the gradients reduced
    across processes and clipped, the guard's verdict, and AdamW's step (a no-op where the guard
    says skip). No host read."""
    c, device = run.config, run.device
    accum = c.data.grad_accum_steps
    lr = lr_at(run.step, c)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    where = batches.position
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum):
        batch = batches.next()
        with distributed.grad_sync(run.wrapped, last=micro == accum - 1):
            with autocast(device, c.launch.dtype):
                loss = loss_fn(run.model, batch)
            (loss / accum).backward()
        loss_sum += loss.detach()
    max_norm = c.optimizer.grad_clip if c.optimizer.grad_clip > 0 else float("inf")
    # After the reduction every rank holds the global gradient (or its shard): a global norm.
    grad_norm = distributed.whole(torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), max_norm))
    step_loss = distributed.mean(loss_sum / accum)
    skip = run.guard.check(run.step + 1, step_loss, grad_norm, run.step >= c.schedule.warmup_steps, where)
    run.optimizer.found_inf = skip.float()  # fused AdamW leaves everything as it was where this is 1
    run.optimizer.step()
    run.last_loss_t = torch.where(skip, run.last_loss_t, step_loss.detach())
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return Step(lr, step_loss, grad_norm, skip)


def _save_due(run: Run, clock: Callable[[], float], last_save: float) -> bool:
    """At the end, every checkpoint.interval steps, or at the first log step checkpoint.minutes
    after the last save (rank 0's clock decides, read at log steps only: every rank saves at once)."""
    c, step = run.config.checkpoint, run.step
    if step == run.config.schedule.max_steps or bool(c.interval) and step % c.interval == 0:
        return True
    if c.minutes and step % run.config.log.interval == 0:
        return distributed.gather(clock() - last_save >= 60 * c.minutes)[0]
    return False


def report(run: Run, out: Step, meter: Meter, log: Optional[Callable[[dict], None]]) -> None:
    """The one host read of the steps since the last report: the guard (which raises if the run must
    stop), then loss, norm, skip flag and last applied loss at once; a history point and a log event."""
    run.guard.verify()
    loss, norm, skipped, last = torch.stack(
        [out.loss.double(), out.grad_norm.double(), out.skipped.double(), run.last_loss_t.double()]
    ).tolist()
    run.last_loss = None if math.isnan(last) else last
    tokens_per_s = meter.since_last(run.tokens_per_step)
    run.history.append({"step": run.step, "loss": loss})
    if log:
        log(
            {
                "step": run.step,
                "loss": loss,
                "lr": out.lr,
                "grad_norm": norm,
                "tokens_per_s": tokens_per_s,
                "mfu": meter.mfu(tokens_per_s),
                **({"skipped": True} if skipped else {}),
            }
        )


def evaluate(run: Run, log: Optional[Callable[[dict], None]]) -> None:
    """The validation loss, added to the last history point and logged."""
    c = run.config
    run.history[-1]["val_loss"] = val_loss(
        run.raw_model,
        run.val_stream,
        c.model.block_size,
        c.data.batch_size,
        c.eval.batches,
        run.device,
        c.launch.dtype,
        run.rank,
        run.world,
    )
    if log:
        log({"step": run.step, "val_loss": run.history[-1]["val_loss"]})


def save(run: Run, saver: checkpoints.Saver, feed: Prefetcher, log: Optional[Callable[[dict], None]]) -> None:
    """A resumable checkpoint of this step (every rank takes part); FSDP2's folder of shards is
    committed on return, and logged here (a single file's event comes from the saver, once committed)."""
    folder = _save_checkpoint(saver, run, feed)
    if folder and log:
        log({"step": run.step, "checkpoint": folder})


def finish(run: Run, meter: Meter, out_dir: str) -> dict:
    """model.pt when the schedule is done, and the JSON-ready summary."""
    seconds = time.perf_counter() - meter.t_start
    done = run.step >= run.config.schedule.max_steps
    if done:
        if distributed.is_sharded(run.raw_model):
            weights = distributed.full_state_dict(run.raw_model)
        else:
            weights = run.raw_model.cpu().state_dict()  # on CPU whatever trained it; the tied matrix stored once
        if distributed.is_main():
            checkpoints.atomic_save(
                {"model": weights, "config": run.raw_model.config.model_dump(), "vocab_size": run.vocab_size},
                os.path.join(out_dir, "model.pt"),
            )
    val_points = [h["val_loss"] for h in run.history if "val_loss" in h]
    tokens_per_s = meter.steps_run * run.tokens_per_step / max(1e-9, seconds)
    return {
        "steps": run.step,
        "completed": done,
        "tokens_seen": run.step * run.tokens_per_step,
        "params": run.raw_model.num_params(),
        "final_train_loss": run.last_loss,
        "final_val_loss": val_points[-1] if val_points else None,
        "history": run.history,
        "skipped_steps": run.guard.total_skipped(),
        "flops_per_token": meter.flops_per_token,
        "timing": {
            "seconds": round(seconds, 3),
            "steps_this_run": meter.steps_run,
            "tokens_per_s": round(tokens_per_s, 1),
            "device": device_name(run.device),
            "peak_flops": meter.peak,
            "mfu": meter.mfu(tokens_per_s),
        },
    }


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


def _save_checkpoint(saver: checkpoints.Saver, run: Run, batches: Prefetcher) -> Optional[str]:
    """Every rank calls it (each rank's RNG is collected). FSDP2: every rank writes its shards
    (model.sharded_checkpoint), committed when it returns that folder. Otherwise rank 0 hands one
    file's state, whole tensors laid out as one process lays them out, to the saver (None)."""
    rng = distributed.gather(_rng_state())
    extra = {"rng_ranks": rng} if len(rng) > 1 else {}
    keep = run.config.checkpoint.keep
    state = {
        "step": run.step,
        "batches": batches.state_dict(),
        "guard": run.guard.state_dict(),
        "rng": rng[0],
        "history": run.history,
        "last_loss": run.last_loss,
        "config": run.config.model_dump(),
        "vocab_size": run.vocab_size,
        "token_files": run.token_files,
        **extra,
    }
    if distributed.is_sharded(run.raw_model):  # written now, by every rank: no background write
        saver.wait()
        return sharded_checkpoint.save(
            os.path.dirname(run.ckpt_path), run.step, run.raw_model, run.optimizer, state, keep
        )
    if distributed.is_main():
        saver.save(
            {"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(), **state},
            run.ckpt_path,
            run.step,
            keep,
        )
    return None


def _find_checkpoint(
    out_dir: str, ckpt_path: str, c: TrainConfig, vocab_size: int, device: str, read: Optional[Callable] = None
):
    """(checkpoint, FSDP2 folder or None): the checkpoint to resume from (None: a fresh start),
    after clearing what a kill during a save left; every rank must see the same. read(path) reads
    and checks it (default: pretraining's checks; the tuning stages pass theirs)."""
    if distributed.is_main():
        sharded_checkpoint.remove_stale(os.path.dirname(ckpt_path))
        for folder in (out_dir, os.path.dirname(ckpt_path)):  # what a kill during a save left
            checkpoints.remove_stale_temporaries(folder)
    sharded = sharded_checkpoint.newer_than(ckpt_path)  # FSDP2's folder of shards, unless latest.pt is newer
    found = sharded is not None or os.path.exists(ckpt_path) or bool(checkpoints.step_files(os.path.dirname(ckpt_path)))
    if not distributed.same_on_all(found):
        raise RuntimeError(f"only some ranks see {ckpt_path}: out_dir must be on storage every machine shares")
    read_from = os.path.join(sharded, sharded_checkpoint.STATE) if sharded else ckpt_path
    read = read or (lambda path: _read_checkpoint(path, c, vocab_size, device))
    return (read(read_from) if found else None), sharded


def _read_checkpoint(path, c, vocab_size, device) -> dict:
    """The checkpoint (latest, or the newest older step file that loads when latest is damaged),
    after checking it was written by the same config (up to RESUMABLE_CHANGES and the split of the
    same global batch). Its config may be nested or flat (written before the groups)."""
    path, ckpt = checkpoints.newest_readable(path, lambda p: torch.load(p, map_location=device, weights_only=True))
    now, defaults, written = dotted(c.model_dump()), dotted(TrainConfig().model_dump()), dotted(ckpt["config"])
    # A field added since the checkpoint was written has the value that gives the behaviour before it existed.
    saved = {k: written.get(k, BEFORE_FIELD.get(k, defaults[k])) for k in now}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and k not in BATCH_SPLIT and saved[k] != now[k])
    padded = lambda cfg: GPTConfig(vocab_size=vocab_size, vocab_multiple=cfg["model.vocab_multiple"]).padded_vocab  # noqa: E731
    if "model.vocab_multiple" in changed and padded(saved) == padded(now):
        changed.remove("model.vocab_multiple")  # another multiple, the same rows: the same weights
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
        torch.manual_seed(distributed.rank_seed(c.data.seed, rank, ckpt["step"]))
    return ckpt["step"], ckpt["history"], ckpt["last_loss"]
