"""Supervised instruction tuning (issue 18): a pretrained GPT (a train output's model.pt) trained on
instruction records (model/sft_data.py) with a loss on the answer tokens only.

It is model.train's loop with another batch source and loss: the same train_step() (schedule,
accumulation, clipping, loss guard), report(), save() (checkpoints with the data position and every
RNG, so a run killed and resumed gives bitwise the same weights on CPU) and finish() (model.pt).
What differs lives here: the base model's weights as the start (grown by the chat tokens when its
tokenizer lacks them), rows of rendered conversations instead of windows of a token stream, the
validation loss over the held-out answers, and the evaluation before and after tuning.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, Optional

import torch
from pydantic import Field, model_validator
from tokenizers import Tokenizer

from model import distributed, tuning
from model.batches import EpochBatches
from model.chat import CHAT_TEMPLATE, ChatFormat, add_chat_tokens, resize_vocab
from model.evaluate import load_model
from model.generate import generate
from model.gpt import IGNORE_INDEX, autocast
from model.judge import Judge, judge_answers
from model.sft_data import DataError, Example, Rows, pack, read_records, render_records, split_examples
from model.tasks import evaluate_task, load_task
from model.train import (
    CHECKPOINT,
    RESUMABLE_CHANGES,
    CheckpointConfig,
    DataConfig,
    GuardConfig,
    LaunchConfig,
    LogConfig,
    OptimizerConfig,
    Run,
    ScheduleConfig,
    ValidationConfig,
    _group,
    finish,
)
from storage.config import StageConfig
from storage.fingerprint import file_identity
from storage.tokens import EOT, PAD, transformers_files

TOKENIZER_DIR = "tokenizer"


class SFTDataConfig(StageConfig):
    """The instruction records, how they are rendered and split, and the rows they are laid out in."""

    files: list[str] = Field(
        default_factory=list, description="Instruction files: JSON lists or JSON Lines (.gz too), read in order."
    )
    format: Literal["auto", "alpaca", "chat"] = Field(
        "auto",
        description="Record format: alpaca (instruction/input/output), chat (messages) or auto (each record by its keys).",
    )
    prompt: Literal["chat", "alpaca"] = Field(
        "chat",
        description="chat: render with the chat tokens (<|user|>...<|end|>); alpaca: the Alpaca prompt text "
        "(the book's ch. 7), answers ending with <|endoftext|>.",
    )
    assistant_only: bool = Field(True, description="Train on the answers only (off: on every token).")
    packing: bool = Field(True, description="Pack several examples in a row (attention never crosses them).")
    seq_len: int = Field(0, ge=0, description="Tokens per row; 0: the base model's block_size.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of records held out for validation.")
    test_fraction: float = Field(0.10, ge=0, lt=1, description="Share of records held out for the final evaluation.")
    split_seed: Optional[int] = Field(
        None, ge=0, description="Shuffle the records with this seed before splitting; none: file order (the book's)."
    )
    skip_bad: bool = Field(False, description="Leave out bad records (listed in the summary) instead of stopping.")
    batch_size: int = DataConfig.model_fields["batch_size"]
    grad_accum_steps: int = DataConfig.model_fields["grad_accum_steps"]
    seed: int = DataConfig.model_fields["seed"]

    @model_validator(mode="after")
    def _splits_leave_training(self) -> "SFTDataConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave records to train on")
        return self


class SFTEvalConfig(ValidationConfig):
    """The validation loss during training, and the evaluation of base and tuned model at the end."""

    batches: int = Field(0, ge=0, description="Validation batches per evaluation (0 = all of the held-out rows).")
    interval: int = Field(50, ge=1, description="Compute validation loss every this many steps (and at the end).")
    answer_tokens: int = Field(
        128, ge=1, description="Token budget of each greedy answer to a held-out prompt (the end-of-turn share)."
    )
    prompts: int = Field(0, ge=0, description="Held-out prompts answered greedily (0 = all of the test split).")
    samples: int = Field(3, ge=0, description="Sample answers (before and after) shown in the summary.")
    before: bool = Field(True, description="Also evaluate the base model (loss, end-of-turn share, samples).")
    tasks: list[str] = Field(
        default_factory=list,
        description="Benchmark files (model.tasks: HellaSwag, PIQA, ARC, ... in eval/) scored before and after, "
        "zero-shot and through the chat format.",
    )
    task_items: int = Field(200, ge=0, description="Items of each benchmark file (0: all).")
    judge_url: str = Field(
        "",
        description="An OpenAI-compatible endpoint (up to /v1) whose model scores each greedy answer 0-100 "
        "against its reference (model/judge.py); empty: no judge.",
    )
    judge_model: str = Field("", description="The judge endpoint's model name.")
    judge_api_key_env: str = Field(
        "", description="The environment variable holding the judge's API key, if it needs one."
    )


class SFTConfig(StageConfig):
    """Instruction tuning of a pretrained GPT: the data and its rendering, then the groups of
    model.train (optimizer, schedule, evaluation, logging, checkpoints, loss guard, launch)."""

    data: SFTDataConfig = _group("Data", SFTDataConfig)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-4, weight_decay=0.1, grad_clip=1.0),
        title="Optimizer",
        description="AdamW and the gradient clipping before its step.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(max_steps=200, warmup_steps=10, min_lr=1e-5),
        title="Schedule",
        description="How long tuning runs and how the learning rate moves.",
    )
    eval: SFTEvalConfig = _group("Evaluation", SFTEvalConfig)
    log: LogConfig = _group("Logging", LogConfig)
    checkpoint: CheckpointConfig = _group("Checkpoints", CheckpointConfig)
    guard: GuardConfig = _group("Loss guard", GuardConfig)
    launch: LaunchConfig = _group("Launch", LaunchConfig)

    @model_validator(mode="after")
    def _lr_range(self) -> "SFTConfig":
        if self.schedule.min_lr > self.optimizer.learning_rate:
            raise ValueError("schedule.min_lr must not exceed optimizer.learning_rate")
        return self

    @property
    def processes(self) -> int:
        return self.launch.processes


# Changing these between a run and its resume leaves the weights as they were.
SFT_RESUMABLE = RESUMABLE_CHANGES | {
    "eval.answer_tokens",
    "eval.prompts",
    "eval.samples",
    "eval.before",
    "eval.tasks",
    "eval.task_items",
    "eval.judge_url",
    "eval.judge_model",
    "eval.judge_api_key_env",
    "data.skip_bad",
}


@dataclass
class SFTRun(Run):
    """model.train's Run, with rows of seq_len tokens instead of windows of block_size."""

    seq_len: int = 0
    val_rows: Optional[Rows] = None

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.data.batch_size * c.data.grad_accum_steps * self.world * self.seq_len


def row_batches(rows: Rows, batch_size: int, seed: int, device: str) -> EpochBatches:
    """Batches of rows in a seeded order, a new permutation each epoch (model/batches.py), each cut
    after its longest row's last token: padding after it changes nothing (attention is causal, its
    targets are ignored) and would cost as much as real tokens."""

    def collate(idx: list[int]) -> dict:
        batch = _select(rows, torch.tensor(idx))
        width = max(1, int((batch["segments"] > 0).sum(1).max()))
        return _to({k: v[:, :width] for k, v in batch.items()}, device)

    return EpochBatches(len(rows), batch_size, seed, collate, "row")


def _select(rows: Rows, idx) -> dict:
    return {k: getattr(rows, k)[idx] for k in ("tokens", "targets", "segments", "positions")}


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def masked_loss(model: torch.nn.Module, batch: dict, loss_chunks: int = 1) -> torch.Tensor:
    """Mean cross-entropy over the trained targets of a batch of packed rows. Under several
    processes, the mean over every rank's targets: this rank's sum over the global count, times the
    process count (DDP and FSDP2 average the gradients), so N processes x batch b step as one
    process x batch N*b does."""
    loss = rows_mean(model, batch, loss_chunks)
    world = distributed.world_size()
    if world == 1:
        return loss
    count = (batch["targets"] != IGNORE_INDEX).sum().float()
    return loss * count * world / distributed.sums(count).clamp_min(1)


def rows_mean(model: torch.nn.Module, batch: dict, loss_chunks: int = 1) -> torch.Tensor:
    """Mean cross-entropy over the trained targets of this process's batch of packed rows."""
    return model(
        batch["tokens"],
        batch["targets"],
        loss_chunks=loss_chunks,
        segments=batch["segments"],
        positions=batch["positions"],
    )[1]


@torch.no_grad()
def rows_loss(model, rows: Rows, batch_size: int, device: str, dtype: str, max_batches: int = 0) -> float:
    """Mean loss per trained target over the rows (every target weighs the same, whatever its row)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b, start in enumerate(range(0, len(rows), batch_size)):
        if max_batches and b >= max_batches:
            break
        batch = _to(_select(rows, slice(start, start + batch_size)), device)
        n = int((batch["targets"] != IGNORE_INDEX).sum())
        if n:
            with autocast(device, dtype):
                loss = rows_mean(model, batch)
            total += float(loss) * n
            count += n
    model.train(was_training)
    return total / max(1, count)


def load_tokenizer(tokenizer_dir: str) -> Tokenizer:
    path = os.path.join(tokenizer_dir, "tokenizer.json") if os.path.isdir(tokenizer_dir) else tokenizer_dir
    return Tokenizer.from_file(path)


def prepare(config: SFTConfig, tokenizer: Tokenizer):
    """(train, validation, test examples, what was skipped): every file's records rendered, split.
    The held-out splits are always rendered with the answer mask: their loss is the answers'."""
    d = config.data
    if not d.files:
        raise ValueError("sft: data.files names no instruction file")
    fmt = ChatFormat(tokenizer)
    examples, skipped = [], []
    for path in d.files:
        records = read_records(path)
        for n, r in enumerate(records, start=1):
            if isinstance(r, dict) and d.format != "auto" and (d.format == "chat") != ("messages" in r):
                need = "`messages`" if d.format == "chat" else "`instruction`/`output`, not `messages`"
                raise DataError(f"{path}: record {n}: format {d.format!r} needs {need}")
        got, bad = render_records(records, fmt, path, d.prompt, "assistant", d.skip_bad)
        examples += got
        skipped += bad
    if d.split_seed is not None:
        random.Random(d.split_seed).shuffle(examples)
    train_on = "assistant" if d.assistant_only else "all"
    train, val, test = split_examples(examples, d.val_fraction, d.test_fraction)
    if train_on == "all":
        train = [Example(ex.ids, [True] * len(ex.ids), ex.record) for ex in train]
    if not train:
        raise ValueError("sft: no training records after the split")
    return train, val, test, skipped


def _base(base_model_path: str, tokenizer: Tokenizer, device: str):
    """The base GPT grown to the tokenizer's vocabulary (chat tokens added to the tokenizer first)."""
    model = load_model(base_model_path, "cpu")
    add_chat_tokens(tokenizer)
    resize_vocab(model, tokenizer.get_vocab_size())
    return model.to(device)


def setup(base_model_path: str, tokenizer: Tokenizer, c: SFTConfig, out_dir: str, rows, val_rows, identity) -> SFTRun:
    """Seeds, the base model (wrapped for DDP/FSDP2 under torchrun), optimizer, guard and batches,
    restored from out_dir's checkpoint (model/tuning.py)."""
    return tuning.start(
        c,
        _base(base_model_path, tokenizer, "cpu"),
        lambda device: row_batches(rows, c.data.batch_size, c.data.seed, device),
        out_dir,
        CHECKPOINT,
        identity,
        SFT_RESUMABLE,
        SFTRun,
        seq_len=rows.tokens.size(1),
        val_rows=val_rows,
    )


def validate(run: SFTRun, log: Optional[Callable[[dict], None]]) -> None:
    c = run.config
    loss = rows_loss(run.raw_model, run.val_rows, c.data.batch_size, run.device, c.launch.dtype, c.eval.batches)
    run.history[-1]["val_loss"] = loss
    if log:
        log({"step": run.step, "val_loss": loss})


@torch.no_grad()
def answers(model, tokenizer: Tokenizer, examples: list[Example], end_id: int, budget: int, device: str) -> list[dict]:
    """The greedy answer to each example's prompt (its ids before the first trained one; its last
    block_size/2 when longer), and whether it ended with end_id within `budget` tokens (fewer when
    prompt and budget would pass the context)."""
    model.eval()
    out = []
    for ex in examples:
        first = ex.mask.index(True)
        block = model.config.block_size
        prompt = ex.ids[:first][-(block // 2) :] if first > block // 2 else ex.ids[:first]  # room to answer
        room = min(budget, block - len(prompt))
        idx = torch.tensor([prompt], device=device)
        new = generate(model, idx, room, temperature=0, eos_id=end_id)[0, len(prompt) :].tolist()
        ended = end_id in new
        new = new[: new.index(end_id)] if ended else new
        out.append(
            {
                "record": ex.record,
                "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                "user": tokenizer.decode(prompt, skip_special_tokens=True).strip(),
                "reference": tokenizer.decode([i for i, m in zip(ex.ids, ex.mask) if m], skip_special_tokens=True),
                "answer": tokenizer.decode(new, skip_special_tokens=False),
                "ended": ended,
            }
        )
    return out


def assess(model, tokenizer, test_rows: Rows, test: list[Example], c: SFTConfig, end_id: int, device: str) -> dict:
    """Masked answer loss and perplexity on the test split, the end-of-turn share of greedy answers."""
    loss = rows_loss(model, test_rows, c.data.batch_size, device, c.launch.dtype)
    prompts = test[: c.eval.prompts] if c.eval.prompts else test
    said = answers(model, tokenizer, prompts, end_id, c.eval.answer_tokens, device)
    out = {
        "answer_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "end_share": sum(a["ended"] for a in said) / max(1, len(said)),
        "prompts": len(said),
        "samples": said[: c.eval.samples],
    }
    if c.eval.judge_url:
        out["judge"] = judged(said, Judge(c.eval.judge_url, c.eval.judge_model, c.eval.judge_api_key_env))
    if c.eval.tasks:
        out["tasks"] = benchmarks(model, tokenizer, c, device)
    return out


def benchmarks(model, tokenizer: Tokenizer, c: SFTConfig, device: str) -> dict:
    """Each benchmark of eval.tasks scored zero-shot (lm-eval's way) and through the chat format."""
    fmt = ChatFormat(tokenizer)
    out = {}
    for path in c.eval.tasks:
        items = load_task(path, c.eval.task_items)
        name = os.path.basename(path).split(".")[0]
        out[name] = {
            "zero_shot": evaluate_task(model, tokenizer, items, 32, device),
            "chat": evaluate_task(model, tokenizer, items, 32, device, encode=fmt.answer_pair),
        }
    return out


def judged(said: list[dict], judge: Judge) -> dict:
    """The judge's scores of answers() output: each answer against its reference, the prompt as the
    user wrote it (no chat tokens)."""
    items = [
        {"record": a["record"], "prompt": a["user"], "reference": a["reference"], "answer": a["answer"]} for a in said
    ]
    return judge_answers(judge, items)


def sft(
    base_model_path: str,
    tokenizer_dir: str,
    config: SFTConfig,
    out_dir: str,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Tune (or resume) in out_dir; write out_dir/model.pt and out_dir/tokenizer/; return a
    JSON-ready summary with the evaluation before and after. stop_after=N stops after step N as if
    killed there (no final checkpoint, no model.pt, no evaluation): the next call resumes."""
    c = config
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    missing = [p for p in c.eval.tasks if not os.path.isfile(p)]
    if missing:  # found before training, not after it
        raise FileNotFoundError(f"eval.tasks: no such benchmark file: {', '.join(missing)}")
    tokenizer = load_tokenizer(tokenizer_dir)
    added = add_chat_tokens(tokenizer)
    train_ex, val_ex, test_ex, skipped = prepare(c, tokenizer)
    base_cfg = load_model(base_model_path, "cpu").config
    seq_len = c.data.seq_len or base_cfg.block_size
    if seq_len > base_cfg.block_size:
        raise ValueError(f"data.seq_len {seq_len} exceeds the base model's block_size {base_cfg.block_size}")
    pad = tokenizer.token_to_id(PAD)
    pad = pad if pad is not None else tokenizer.token_to_id(EOT)
    rows = pack(train_ex, seq_len, pad, c.data.packing)
    val_rows = pack(val_ex or test_ex, seq_len, pad, c.data.packing)
    test_rows = pack(test_ex or val_ex, seq_len, pad, c.data.packing)
    identity = {"base": file_identity(base_model_path, os.path.basename(base_model_path)),
                "data": [file_identity(p, os.path.basename(p)) for p in c.data.files]}  # fmt: skip
    run = setup(base_model_path, tokenizer, c, out_dir, rows, val_rows, identity)
    loss_fn = partial(masked_loss, loss_chunks=c.launch.loss_chunks)
    meter = tuning.tune(run, loss_fn, (lambda: validate(run, log)) if len(val_rows) else None, log, stop_after, clock)
    summary = finish(run, meter, out_dir)
    summary.update(
        {
            "records": {"train": len(train_ex), "validation": len(val_ex), "test": len(test_ex)},
            "rows": len(rows),
            "seq_len": seq_len,
            "truncated": rows.truncated,
            "trained_tokens_per_epoch": int((rows.targets != IGNORE_INDEX).sum()),
            "chat_tokens_added": added,
            "skipped_records": skipped,
        }
    )
    if not summary["completed"] or not distributed.is_main():
        return summary
    folder = os.path.join(out_dir, TOKENIZER_DIR)
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    for name, data in transformers_files(CHAT_TEMPLATE).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    end_id = tokenizer.token_to_id("<|end|>" if c.data.prompt == "chat" else EOT)
    held_out = test_ex or val_ex
    # several processes: the model.pt rank 0 wrote (FSDP2's weights are shards of it)
    tuned = (
        run.raw_model.to(run.device) if run.world == 1 else load_model(os.path.join(out_dir, "model.pt"), run.device)
    )
    summary["after"] = assess(tuned, tokenizer, test_rows, held_out, c, end_id, run.device)
    if c.eval.before:
        base = _base(base_model_path, load_tokenizer(tokenizer_dir), run.device)
        summary["before"] = assess(base, tokenizer, test_rows, held_out, c, end_id, run.device)
    summary["timing"]["seconds_with_evaluation"] = round(time.perf_counter() - t0, 3)
    with open(os.path.join(out_dir, "sft_summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "timing"}, f, indent=1)
    return summary


def held_out_answers(source: str, prompts: int = 0, answer_tokens: int = 0, device: str = "cpu") -> list[dict]:
    """Greedy answers of an sft output (or a dpo output tuned from one) to its test split's prompts:
    what the judge scores when run on its own (`crawl2llm judge`)."""
    from storage import open_stage

    out = open_stage(source)
    manifest = out.read_manifest()
    if "sft" not in {out.name, manifest.get("upstream", {}).get("stage")}:
        raise ValueError(f"{source} is a {out.name} output: the judge reads an sft output's test split")
    run = out if out.name == "sft" else out.store.stage("sft", manifest["upstream"]["fingerprint"])
    c = SFTConfig.model_validate(run.read_manifest()["config"])
    tokenizer = load_tokenizer(out.local_path(manifest["tokenizer"]))
    _, val, test, _ = prepare(c, tokenizer)
    held_out = test or val
    model = load_model(out.local_path(manifest["model"]), device)
    end_id = tokenizer.token_to_id("<|end|>" if c.data.prompt == "chat" else EOT)
    return answers(
        model,
        tokenizer,
        held_out[:prompts] if prompts else held_out,
        end_id,
        answer_tokens or c.eval.answer_tokens,
        device,
    )
