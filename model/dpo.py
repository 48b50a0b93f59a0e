"""Direct preference optimization (Rafailov et al. 2023; Raschka's ch. 7 does it from scratch): tune
a chat model so that, against a frozen reference (the model it starts from), it raises the
likelihood of the answers people preferred over the ones they rejected. No reward model, no
sampling: a classification loss on the log-probability ratios of the two answers.

The reference's log-probabilities never change, so they are computed once (reference_logps) and
given to dpo() as a table: the flow stores them as an output of their own, and a second DPO run
with another beta, loss or learning rate reads them instead of running the reference again. They
are kept as sums and token counts per answer, so both reductions (sum, mean) come from one table.

Losses (loss.kind), with h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)):
- sigmoid (DPO): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), eps = label_smoothing
  (conservative DPO when eps > 0);
- ipo (Azar et al. 2023): (h - 1 / (2 beta))^2, on mean log-probabilities by default.
The implicit rewards are beta times each answer's log ratio; reward accuracy is the share of pairs
whose chosen reward is above the rejected one.

The loop is model.train's (train_step, report, save, finish, the same checkpoints): a run killed
and resumed gives bitwise the same weights on CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tokenizers import Tokenizer

from model import distributed, tuning
from model.batches import EpochBatches
from model.chat import CHAT_TEMPLATE, ChatFormat, add_chat_tokens, resize_vocab
from model.evaluate import load_model
from model.gpt import IGNORE_INDEX, autocast, resolve_device
from model.preference_data import Pair, fit, read_pairs
from model.sft import answers, load_tokenizer
from model.sft_data import Example, split_examples
from model.train import (
    RESUMABLE_CHANGES,
    CheckpointConfig,
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

CHECKPOINT = os.path.join("checkpoints", "latest.pt")
TOKENIZER_DIR = "tokenizer"
REFERENCE_COLUMNS = ("chosen_logp", "chosen_tokens", "rejected_logp", "rejected_tokens")


class DPODataConfig(StageConfig):
    """The preference files, how pairs are cut and split, and what each step reads."""

    files: list[str] = Field(
        default_factory=list,
        description="Preference files (JSON list or JSON Lines, .gz too): the book's "
        "instruction/input/chosen/rejected records, prompt/chosen/rejected, or hh-rlhf transcripts.",
    )
    skip_bad: bool = Field(False, description="Leave out bad records (listed in the summary) instead of stopping.")
    max_len: int = Field(
        0, ge=0, description="Tokens of prompt + answer (0: the model's block_size); longer pairs are cut."
    )
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of pairs held out for validation.")
    test_fraction: float = Field(0.10, ge=0, lt=1, description="Share of pairs held out for the final evaluation.")
    batch_size: int = Field(8, ge=1, description="Pairs per micro-batch (each pair is two sequences).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    seed: int = Field(1337, ge=0, description="Seed of the pair order (a new permutation each epoch).")

    @model_validator(mode="after")
    def _splits_leave_training(self) -> "DPODataConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave pairs to train on")
        return self


class DPOLossConfig(StageConfig):
    """The preference loss and its strength."""

    kind: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO's loss; ipo: IPO's squared loss.")
    beta: float = Field(0.1, gt=0, description="How far from the reference the policy may move (smaller: further).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid only: the assumed share of flipped labels (conservative DPO)."
    )
    logps: Literal["auto", "sum", "mean"] = Field(
        "auto",
        description="An answer's log-probability: the sum over its tokens or their mean (auto: sum for sigmoid, mean for ipo).",
    )

    @property
    def reduction(self) -> str:
        return self.logps if self.logps != "auto" else ("mean" if self.kind == "ipo" else "sum")


class DPOEvalConfig(ValidationConfig):
    """The held-out preference metrics during training and at the end."""

    interval: int = Field(
        25, ge=1, description="Evaluate on the validation pairs every this many steps (and at the end)."
    )
    batches: int = Field(0, ge=0, description="Validation batches per evaluation (0 = all of the validation pairs).")
    kl: bool = Field(
        True, description="Also measure the per-token KL to the reference on the chosen answers (loads the reference)."
    )
    answer_tokens: int = Field(64, ge=1, description="Token budget of the sample answers before and after.")
    samples: int = Field(
        3, ge=0, description="Held-out prompts answered greedily by the reference and the tuned model."
    )


class DPOConfig(StageConfig):
    """Preference tuning of a chat model (an sft output) with a frozen reference: the data, the loss,
    then model.train's groups. Defaults are the book's: beta 0.1, AdamW at 5e-6 constant, batches of 8."""

    data: DPODataConfig = _group("Data", DPODataConfig)
    loss: DPOLossConfig = _group("Loss", DPOLossConfig)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(learning_rate=5e-6, weight_decay=0.01, grad_clip=1.0),
        title="Optimizer",
        description="AdamW and the gradient clipping before its step.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(max_steps=117, warmup_steps=0, min_lr=5e-6),
        title="Schedule",
        description="How long tuning runs and how the learning rate moves (default: constant).",
    )
    eval: DPOEvalConfig = _group("Evaluation", DPOEvalConfig)
    log: LogConfig = _group("Logging", LogConfig)
    checkpoint: CheckpointConfig = _group("Checkpoints", CheckpointConfig)
    guard: GuardConfig = Field(
        default_factory=lambda: GuardConfig(spike_factor=0.0),
        title="Loss guard",
        description="Non-finite losses only: a preference loss near 0 makes spikes of one hard batch common.",
    )
    launch: LaunchConfig = Field(
        default_factory=lambda: LaunchConfig(compile=False),
        title="Launch",
        description="Device, precision, memory savers and processes (DDP or FSDP2 under torchrun).",
    )

    @model_validator(mode="after")
    def _checks(self) -> "DPOConfig":
        if self.schedule.min_lr > self.optimizer.learning_rate:
            raise ValueError("schedule.min_lr must not exceed optimizer.learning_rate")
        return self

    @property
    def processes(self) -> int:
        return self.launch.processes


# Changing these between a run and its resume leaves the weights as they were.
DPO_RESUMABLE = RESUMABLE_CHANGES | {"eval.kl", "eval.answer_tokens", "eval.samples", "data.skip_bad"}


@dataclass
class DPORun(Run):
    """model.train's Run; a step reads batch_size pairs of at most max_len tokens each answer."""

    seq_len: int = 0  # prompt + answer, at most

    @property
    def tokens_per_step(self) -> int:  # the padded upper bound: two sequences per pair
        c = self.config
        return c.data.batch_size * c.data.grad_accum_steps * self.world * 2 * self.seq_len


class Fitted:
    """The pairs cut to max_len, as lists of ids (what batches are built from)."""

    def __init__(self, pairs: list[Pair], max_len: int):
        cut = [fit(p, max_len) for p in pairs]
        self.prompts = [c[0] for c in cut]
        self.chosen = [c[1] for c in cut]
        self.rejected = [c[2] for c in cut]
        self.records = [p.record for p in pairs]
        self.cut = sum(c[3] for c in cut)

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, idx: list[int], pad_id: int, device: str) -> dict:
        """Sequences prompt + answer, chosen ones first, then the rejected in the same order,
        right-padded to the longest; targets are the answer tokens only."""
        seqs = [(self.prompts[i], self.chosen[i]) for i in idx] + [(self.prompts[i], self.rejected[i]) for i in idx]
        width = max(len(p) + len(a) for p, a in seqs) - 1
        tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        for r, (p, a) in enumerate(seqs):
            ids = p + a
            tokens[r, : len(ids) - 1] = torch.tensor(ids[:-1])
            targets[r, len(p) - 1 : len(ids) - 1] = torch.tensor(a)
        return {"tokens": tokens.to(device), "targets": targets.to(device)}


def answer_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probabilities of each sequence's target tokens, their count), float32."""
    logits = model(batch["tokens"])[0].float()
    targets = batch["targets"]
    trained = targets != IGNORE_INDEX
    picked = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * trained).sum(-1), trained.sum(-1).float()


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module, fitted: Fitted, pad_id: int, batch_size: int, device: str, dtype: str = "auto"
) -> pa.Table:
    """The reference's log-probability sum and token count of both answers of every pair, in order:
    what every DPO run on these pairs needs from the reference, computed once."""
    was_training = model.training
    model.eval()
    cols: dict[str, list] = {k: [] for k in REFERENCE_COLUMNS}
    for start in range(0, len(fitted), batch_size):
        idx = list(range(start, min(start + batch_size, len(fitted))))
        with autocast(device, dtype):
            sums, counts = answer_logps(model, fitted.batch(idx, pad_id, device))
        n = len(idx)
        cols["chosen_logp"] += sums[:n].double().tolist()
        cols["rejected_logp"] += sums[n:].double().tolist()
        cols["chosen_tokens"] += counts[:n].long().tolist()
        cols["rejected_tokens"] += counts[n:].long().tolist()
    model.train(was_training)
    return pa.table({k: pa.array(v, pa.float64() if k.endswith("logp") else pa.int64()) for k, v in cols.items()})


def preference_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, c: DPOLossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward) from the policy's and reference's log-probs."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if c.kind == "ipo":
        loss = (h - 1 / (2 * c.beta)) ** 2
    else:
        eps = c.label_smoothing
        loss = -(1 - eps) * F.logsigmoid(c.beta * h) - eps * F.logsigmoid(-c.beta * h)
    return loss, c.beta * chosen_ratio.detach(), c.beta * rejected_ratio.detach()


def _reduced(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    return sums / counts.clamp_min(1) if reduction == "mean" else sums


def pair_batches(fitted: Fitted, train_idx: list[int], reference: dict, c: DPOConfig, pad_id: int, device: str):
    """The training pairs in a seeded order, a new permutation each epoch (model/batches.py); each
    batch carries its pairs' reference log-probs."""

    def collate(idx: list[int]) -> dict:
        return pair_batch(fitted, [train_idx[i] for i in idx], reference, c.loss.reduction, pad_id, device)

    return EpochBatches(len(train_idx), c.data.batch_size, c.data.seed, collate, "pair")


def pair_batch(fitted: Fitted, idx: list[int], reference: dict, reduction: str, pad_id: int, device: str) -> dict:
    """A batch of pairs with the reference's log-probs of both answers, reduced as the loss wants."""
    batch = fitted.batch(idx, pad_id, device)
    ref = {k: torch.tensor(reference[k][idx], dtype=torch.float32, device=device) for k in REFERENCE_COLUMNS}
    batch["ref_chosen"] = _reduced(ref["chosen_logp"], ref["chosen_tokens"], reduction)
    batch["ref_rejected"] = _reduced(ref["rejected_logp"], ref["rejected_tokens"], reduction)
    return batch


def pair_loss(model: torch.nn.Module, batch: dict, c: DPOLossConfig) -> tuple[torch.Tensor, dict]:
    """The mean preference loss of a batch, and its per-pair figures."""
    sums, counts = answer_logps(model, batch)
    logps = _reduced(sums, counts, c.reduction)
    n = logps.size(0) // 2
    loss, chosen_reward, rejected_reward = preference_loss(
        logps[:n], logps[n:], batch["ref_chosen"], batch["ref_rejected"], c
    )
    return loss.mean(), {
        "loss": loss.detach(),
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "chosen_logp": logps[:n].detach(),
        "rejected_logp": logps[n:].detach(),
    }


@torch.no_grad()
def token_kl(policy: torch.nn.Module, reference: torch.nn.Module, batch: dict) -> tuple[float, int]:
    """(sum, count) over the answer tokens of KL(policy || reference) of the next-token distributions."""
    trained = batch["targets"] != IGNORE_INDEX
    logp = F.log_softmax(policy(batch["tokens"])[0].float(), dim=-1)
    logq = F.log_softmax(reference(batch["tokens"])[0].float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return float((kl * trained).sum()), int(trained.sum())


@torch.no_grad()
def pair_metrics(
    model, idx: list[int], fitted: Fitted, reference: dict, c: DPOConfig, pad_id: int, device: str, ref_model=None
) -> dict:
    """Held-out figures of the policy on the pairs idx: mean loss, reward accuracy (ties count
    half), mean margin and rewards, mean log-probs, the share of pairs whose chosen answer is the
    likelier (logp_preference), and with ref_model the per-token KL on the chosen answers."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    kl_sum, kl_n = 0.0, 0
    for start in range(0, len(idx), c.data.batch_size):
        take = idx[start : start + c.data.batch_size]
        batch = pair_batch(fitted, take, reference, c.loss.reduction, pad_id, device)
        with autocast(device, c.launch.dtype):
            _, figures = pair_loss(model, batch, c.loss)
            if ref_model is not None:
                n = len(take)
                s, k = token_kl(model, ref_model, {key: batch[key][:n] for key in ("tokens", "targets")})
                kl_sum, kl_n = kl_sum + s, kl_n + k
        for k, v in figures.items():
            parts.setdefault(k, []).append(v.float().cpu())
    model.train(was_training)
    f = {k: torch.cat(v) for k, v in parts.items()}
    margin = f["chosen_reward"] - f["rejected_reward"]
    out = {
        "pairs": len(idx),
        "loss": float(f["loss"].mean()),
        "reward_accuracy": float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean()),
        "margin": float(margin.mean()),
        "chosen_reward": float(f["chosen_reward"].mean()),
        "rejected_reward": float(f["rejected_reward"].mean()),
        "chosen_logp": float(f["chosen_logp"].mean()),
        "rejected_logp": float(f["rejected_logp"].mean()),
        "logp_preference": float((f["chosen_logp"] > f["rejected_logp"]).float().mean()),
    }
    if ref_model is not None:
        out["kl_per_token"] = kl_sum / max(1, kl_n)
    return out


def reference_preference(idx: list[int], reference: dict, reduction: str) -> float:
    """The share of pairs whose chosen answer the reference already finds likelier."""
    if not idx:
        return float("nan")
    ref = {k: np.asarray(reference[k])[idx] for k in REFERENCE_COLUMNS}
    chosen = ref["chosen_logp"] / np.maximum(ref["chosen_tokens"], 1) if reduction == "mean" else ref["chosen_logp"]
    rejected = (
        ref["rejected_logp"] / np.maximum(ref["rejected_tokens"], 1) if reduction == "mean" else ref["rejected_logp"]
    )
    return float((chosen > rejected).mean())


@dataclass
class Prepared:
    """The pairs as this config reads, cuts and splits them, and the tokenizer with chat tokens."""

    tokenizer: Tokenizer
    fitted: Fitted
    train: list[int]
    val: list[int]
    test: list[int]
    skipped: list[str]
    max_len: int
    pad_id: int


def prepare(base_model_path: str, tokenizer_dir: str, c: DPOConfig) -> Prepared:
    if not c.data.files:
        raise ValueError("dpo: data.files names no preference file")
    tokenizer = load_tokenizer(tokenizer_dir)
    add_chat_tokens(tokenizer)
    block = load_model(base_model_path, "cpu").config.block_size
    max_len = min(c.data.max_len or block, block)
    pairs, skipped = read_pairs(c.data.files, ChatFormat(tokenizer), c.data.skip_bad)
    train, val, test = split_examples(list(range(len(pairs))), c.data.val_fraction, c.data.test_fraction)
    if not train:
        raise ValueError("dpo: no training pairs after the split")
    pad = tokenizer.token_to_id(PAD)
    pad = pad if pad is not None else tokenizer.token_to_id(EOT)
    return Prepared(tokenizer, Fitted(pairs, max_len), train, val, test, skipped, max_len, pad)


def _model(base_model_path: str, tokenizer: Tokenizer, device: str):
    model = load_model(base_model_path, "cpu")
    resize_vocab(model, tokenizer.get_vocab_size())
    return model.to(device)


def compute_reference(base_model_path: str, tokenizer_dir: str, c: DPOConfig) -> pa.Table:
    """The reference table of the base model on every pair the config reads (train and held out)."""
    p = prepare(base_model_path, tokenizer_dir, c)
    device = resolve_device(c.launch.device)
    return reference_logps(_model(base_model_path, p.tokenizer, device), p.fitted, p.pad_id, 16, device, c.launch.dtype)


def setup(base_model_path: str, p: Prepared, reference: dict, c: DPOConfig, out_dir: str, identity: dict) -> DPORun:
    """Seeds, the policy (the base's weights; wrapped for DDP/FSDP2 under torchrun), optimizer,
    guard and batches, restored from out_dir's checkpoint (model/tuning.py)."""
    return tuning.start(
        c,
        _model(base_model_path, p.tokenizer, "cpu"),
        lambda device: pair_batches(p.fitted, p.train, reference, c, p.pad_id, device),
        out_dir,
        CHECKPOINT,
        identity,
        DPO_RESUMABLE,
        DPORun,
        seq_len=p.max_len,
    )


def reference_columns(table: pa.Table, pairs: int, source: str = "the reference table") -> dict:
    """The table's columns as numpy arrays, checked against the pairs they are for."""
    missing = [k for k in REFERENCE_COLUMNS if k not in table.column_names]
    if missing or table.num_rows != pairs:
        raise ValueError(
            f"{source} does not fit these pairs ({table.num_rows} rows for {pairs} pairs"
            + (f", missing {', '.join(missing)}" if missing else "")
            + "): compute it again with compute_reference"
        )
    return {k: table.column(k).to_numpy() for k in REFERENCE_COLUMNS}


def dpo(
    base_model_path: str,
    tokenizer_dir: str,
    config: DPOConfig,
    out_dir: str,
    reference: Optional[pa.Table | str] = None,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Tune (or resume) in out_dir; write out_dir/model.pt and out_dir/tokenizer/; return a
    JSON-ready summary. reference: compute_reference's table for the same base and config, or the
    path of an Arrow IPC file holding it (None: computed here, and timed). stop_after=N stops after step N as if killed there."""
    c = config
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    p = prepare(base_model_path, tokenizer_dir, c)
    device = resolve_device(c.launch.device)
    reference_seconds = None
    if isinstance(reference, str):
        with pa.memory_map(reference) as source:
            reference = pa.ipc.open_file(source).read_all()
    if reference is None:
        t = time.perf_counter()
        ref_model = _model(base_model_path, p.tokenizer, device)
        reference = reference_logps(ref_model, p.fitted, p.pad_id, 16, device, c.launch.dtype)
        reference_seconds = round(time.perf_counter() - t, 3)
        del ref_model
    ref = reference_columns(reference, len(p.fitted))
    identity = {
        "base": file_identity(base_model_path, os.path.basename(base_model_path)),
        "data": [file_identity(f, os.path.basename(f)) for f in c.data.files],
        "reference": [float(np.sum(ref["chosen_logp"])), float(np.sum(ref["rejected_logp"]))],
    }
    run = setup(base_model_path, p, ref, c, out_dir, identity)
    ref_model = _model(base_model_path, p.tokenizer, device).eval() if c.eval.kl else None
    val = p.val[: c.eval.batches * c.data.batch_size] if c.eval.batches else p.val

    def validate() -> None:
        figures = pair_metrics(run.raw_model, val, p.fitted, ref, c, p.pad_id, device, ref_model)
        run.history[-1].update({f"val_{k}": v for k, v in figures.items() if k != "pairs"})
        if log:
            log({"step": run.step, **{f"val_{k}": v for k, v in figures.items() if k != "pairs"}})

    loss_fn = lambda model, batch: pair_loss(model, batch, c.loss)[0]  # noqa: E731
    meter = tuning.tune(run, loss_fn, validate if val else None, log, stop_after, clock)
    summary = finish(run, meter, out_dir)
    summary.update(
        {
            "pairs": {"train": len(p.train), "validation": len(p.val), "test": len(p.test)},
            "max_len": p.max_len,
            "pairs_cut": p.fitted.cut,
            "skipped_records": p.skipped,
            "loss": {"kind": c.loss.kind, "beta": c.loss.beta, "logps": c.loss.reduction},
        }
    )
    if reference_seconds is not None:
        summary["timing"]["reference_seconds"] = reference_seconds
    if not summary["completed"] or not distributed.is_main():
        return summary
    folder = os.path.join(out_dir, TOKENIZER_DIR)
    os.makedirs(folder, exist_ok=True)
    p.tokenizer.save(os.path.join(folder, "tokenizer.json"))
    for name, data in transformers_files(CHAT_TEMPLATE).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    held_out = p.test or p.val
    # several processes: the model.pt rank 0 wrote (FSDP2's weights are shards of it)
    tuned = run.raw_model.to(device) if run.world == 1 else load_model(os.path.join(out_dir, "model.pt"), device)
    summary["test"] = pair_metrics(tuned, held_out, p.fitted, ref, c, p.pad_id, device, ref_model)
    summary["test"]["reference_logp_preference"] = reference_preference(held_out, ref, c.loss.reduction)
    if c.eval.samples:
        summary["samples"] = _samples(tuned, ref_model, p, held_out[: c.eval.samples], c, device)
    summary["timing"]["seconds_with_evaluation"] = round(time.perf_counter() - t0, 3)
    return summary


def _samples(tuned, ref_model, p: Prepared, idx: list[int], c: DPOConfig, device: str) -> list[dict]:
    """Greedy answers of the reference (when loaded) and the tuned model to a few held-out prompts."""
    end = p.tokenizer.token_to_id("<|end|>")
    f = p.fitted
    examples = [Example(f.prompts[i] + f.chosen[i], [False] * len(f.prompts[i]) + [True] * len(f.chosen[i]), f.records[i]) for i in idx]  # fmt: skip
    after = answers(tuned, p.tokenizer, examples, end, c.eval.answer_tokens, device)
    before = answers(ref_model, p.tokenizer, examples, end, c.eval.answer_tokens, device) if ref_model else []
    out = []
    for k, a in enumerate(after):
        rejected = p.tokenizer.decode(f.rejected[idx[k]], skip_special_tokens=True)
        out.append({"record": a["record"], "prompt": a["prompt"], "chosen": a["reference"], "rejected": rejected,
                    "after": a["answer"], **({"before": before[k]["answer"]} if before else {})})  # fmt: skip
    return out
