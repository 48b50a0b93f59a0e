"""Classification fine-tuning (Raschka's ch. 6): a pretrained GPT with a class head, trained with
cross-entropy on labelled texts, validation accuracy during training, and test-split metrics.

The loop is pretraining's (model.train): the same train_step (LR schedule, clipping, loss guard,
AdamW) with another batch source (seeded epochs of right-padded texts) and loss function, and the
same checkpoint machinery (model.checkpoints: atomic step files, a background writer, a damaged
latest falling back to the one before). A checkpoint holds the classifier, the optimizer, the data
position and every RNG, so on CPU a run killed and resumed gives bitwise the same weights.

The output folder is self-contained for predict(): classifier.pt (weights, base shape, labels,
pooling, cut length) and the tokenizer.json it was trained with.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tokenizers import Tokenizer

from model import checkpoints
from model.chat import encode_plain
from model.classifier import Classifier, pad_batch, set_trainable
from model.classify_data import balance, class_counts, encode, read_labelled, split
from model.classify_metrics import classification_report
from model.gpt import GPT, GPTConfig, autocast, resolve_device
from model.guard import LossGuard
from model.train import (
    CheckpointConfig,
    DataConfig,
    GuardConfig,
    LaunchConfig,
    LogConfig,
    OptimizerConfig,
    Run,
    ScheduleConfig,
    ValidationConfig,
    _rng_state,
    _save_due,
    _set_rng_state,
    make_optimizer,
    train_step,
)
from storage.config import StageConfig
from storage.tokens import EOT, PAD

CHECKPOINT = os.path.join("checkpoints", "latest.pt")
CLASSIFIER = "classifier.pt"
TOKENIZER = "tokenizer.json"


def _group(title: str, cls: type[StageConfig], **defaults):
    """A training group with this stage's defaults (fine-tuning wants smaller steps than pretraining)."""
    return Field(
        default_factory=lambda: cls(**defaults),
        title=title,
        description=cls.__doc__.split("\n\n")[0].replace("\n    ", " "),
    )


class ClassifyConfig(StageConfig):
    """Fine-tune a pretrained GPT as a text classifier: the labelled data and its split, the head
    (pooling, which weights train), and the training groups of pretraining (model.train). The
    defaults are the book's: the balanced SMS set, the last block, final norm and head trained,
    batches of 8, 5 epochs of its 1045 training texts."""

    data_file: str = Field(
        "",
        description="The labelled texts: .tsv (label<TAB>text lines, the SMS Spam "
        "Collection), .csv with a header, or JSON Lines / a JSON list of objects.",
    )
    text_field: str = Field("text", min_length=1, description="The text's column or key (.csv, JSON).")
    label_field: str = Field("label", min_length=1, description="The label's column or key (.csv, JSON).")
    balance: bool = Field(
        True,
        description="Cut every class to the smallest class's count by a seeded "
        "draw (the book's balanced SMS set); off: the full, imbalanced set.",
    )
    split: tuple[float, float, float] = Field(
        (0.7, 0.1, 0.2), description="Train, validation and test fractions, after a seeded shuffle."
    )
    split_seed: int = Field(123, ge=0, description="Seed of the balancing draw and of the split's shuffle.")
    pooling: Literal["last", "mean"] = Field(
        "last",
        description="Classify on the last token's hidden state (exports to "
        "transformers' *ForSequenceClassification) or the mean over the text's tokens.",
    )
    trainable: Union[int, Literal["head", "all"]] = Field(
        1,
        description="What trains: the head alone, the last N blocks with the final "
        "norm and the head (the book: 1), or all weights.",
    )
    max_length: int = Field(
        0, ge=0, description="Cut each text to this many tokens from its start (0: the model's context)."
    )
    optimizer: OptimizerConfig = _group("Optimizer", OptimizerConfig, learning_rate=3e-4, weight_decay=0.1)
    schedule: ScheduleConfig = _group("Schedule", ScheduleConfig, max_steps=650, warmup_steps=20, min_lr=3e-5)
    data: DataConfig = _group("Data", DataConfig, batch_size=8)
    eval: ValidationConfig = _group("Validation", ValidationConfig, interval=50, batches=100)
    log: LogConfig = _group("Logging", LogConfig)
    checkpoint: CheckpointConfig = _group("Checkpoints", CheckpointConfig, interval=0, minutes=5.0)
    # A fine-tuning loss near 0 makes a 3x "spike" of one hard batch common: only non-finite values count.
    guard: GuardConfig = _group("Loss guard", GuardConfig, spike_factor=0.0)
    launch: LaunchConfig = _group("Launch", LaunchConfig, compile=False)

    @model_validator(mode="after")
    def _checks(self) -> "ClassifyConfig":
        if self.schedule.min_lr > self.optimizer.learning_rate:
            raise ValueError(
                f"schedule.min_lr ({self.schedule.min_lr}) must not exceed optimizer.learning_rate "
                f"({self.optimizer.learning_rate}): the schedule decays to it"
            )
        if abs(sum(self.split) - 1) > 1e-9 or min(self.split) < 0 or min(self.split[0], self.split[2]) == 0:
            raise ValueError(f"split must be 3 fractions >= 0 summing to 1, train and test above 0: {self.split}")
        if self.launch.processes != 1:
            raise ValueError("classify runs in one process: launch.nproc_per_node and launch.nnodes must be 1")
        return self

    def updated(self, **groups: dict) -> "ClassifyConfig":
        """A copy with some fields changed and everything validated again: updated(schedule={"max_steps": 8})."""
        data = self.model_dump()
        for name, changes in groups.items():
            data[name] = {**data[name], **changes} if isinstance(data.get(name), dict) else changes
        return ClassifyConfig.model_validate(data)


# Changing these between a run and its resume does not change the weights.
RESUMABLE_CHANGES = {"data_file", "eval", "log", "checkpoint", "launch.device", "launch.compile"}


class TextBatches:
    """Seeded epochs of the training texts, batch_size at a time (an epoch's tail continues into the
    next one's start), right-padded on the device as (ids, lengths, labels). Its state is the count
    of texts taken: an exact resume."""

    def __init__(self, ids: list[list[int]], ys: list[int], batch_size: int, seed: int, pad_id: int, device: str):
        self.ids, self.ys, self.batch_size, self.seed = ids, ys, batch_size, seed
        self.pad_id, self.device = pad_id, device
        self.taken = 0
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {
                epoch: torch.randperm(
                    len(self.ids), generator=torch.Generator().manual_seed(self.seed + epoch)
                ).tolist()
            }
        return self._orders[epoch]

    @property
    def position(self) -> str:
        epoch, i = divmod(self.taken, len(self.ids))
        return f"epoch {epoch + 1}, text {i} of the shuffled training split"

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            epoch, i = divmod(self.taken, len(self.ids))
            rows.append(self._order(epoch)[i])
            self.taken += 1
        idx, lengths = pad_batch([self.ids[r] for r in rows], self.pad_id, self.device)
        return idx, lengths, torch.tensor([self.ys[r] for r in rows], dtype=torch.long, device=self.device)

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state["taken"])


def class_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of the class logits: the objective train_step() minimizes here."""
    idx, lengths, y = batch
    return F.cross_entropy(model(idx, lengths).float(), y)


@torch.no_grad()
def predict_ids(
    model: Classifier, ids: list[list[int]], batch_size: int, pad_id: int, device: str, dtype: str = "auto"
) -> torch.Tensor:
    """(N, n_classes) float32 probabilities, in the order given (texts of like length batched together)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    probs = torch.empty(len(ids), model.head.out_features)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        idx, lengths = pad_batch([ids[r] for r in rows], pad_id, device)
        with autocast(device, dtype):
            logits = model(idx, lengths)
        probs[rows] = torch.softmax(logits.float(), dim=-1).cpu()
    model.train(was_training)
    return probs


def _metrics(model, ids, ys, labels, c: ClassifyConfig, pad_id: int, device: str) -> dict:
    probs = predict_ids(model, ids, max(32, c.data.batch_size), pad_id, device, c.launch.dtype)
    report = classification_report(ys, probs.argmax(-1).tolist(), labels)
    report["loss"] = F.nll_loss(torch.log(probs.clamp_min(1e-12)), torch.tensor(ys)).item()
    return report


class Prepared:
    """The labelled data as this config reads, balances, splits and encodes it."""

    def __init__(self, c: ClassifyConfig, tokenizer: Tokenizer, block_size: int):
        if not c.data_file:
            raise ValueError("classify needs data_file: the labelled texts (.tsv, .csv or JSON Lines)")
        examples = read_labelled(c.data_file, c.text_field, c.label_field)
        self.labels = sorted({ex.label for ex in examples})
        if len(self.labels) < 2:
            raise ValueError(f"{c.data_file}: a classifier needs at least 2 labels, found {self.labels}")
        self.all_counts = class_counts(examples)
        if c.balance:
            examples = balance(examples, c.split_seed)
        parts = split(examples, c.split, c.split_seed)
        self.max_tokens = min(c.max_length or block_size, block_size)
        self.counts = {name: class_counts(p) for name, p in zip(("train", "validation", "test"), parts)}
        encoded = [encode(p, tokenizer, self.labels, self.max_tokens) for p in parts]
        (self.train, self.train_y, _), (self.val, self.val_y, _), (self.test, self.test_y, _) = encoded
        self.cut = {name: e[2] for name, e in zip(("train", "validation", "test"), encoded)}
        if not self.train or not self.test:
            raise ValueError(f"{c.data_file}: the split leaves no training or no test texts ({self.counts})")


def load_base(path: str, device: str) -> GPT:
    """The GPT of a model.pt or a training checkpoint (model.train's files; here, not through
    model.evaluate, so this stage's code version does not follow the evaluation's)."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"base model not found: {path}") from None
    if not isinstance(saved, dict) or not {"model", "config"} <= saved.keys():
        raise ValueError(f"{path} is not a crawl2llm model file (expected keys model, config)")
    config = saved["config"]
    if isinstance(config.get("model"), dict):  # a training checkpoint: the shape is its model group
        config = config["model"]
    config = {k: v for k, v in config.items() if k in GPTConfig.model_fields}
    config.setdefault("vocab_size", saved.get("vocab_size"))
    gpt = GPT(GPTConfig(**config))
    gpt.load_state_dict(saved["model"])
    return gpt.to(device)


def _pad_id(tokenizer: Tokenizer) -> int:
    pad = tokenizer.token_to_id(PAD)
    return tokenizer.token_to_id(EOT) if pad is None else pad


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _check_resumable(path: str, ckpt: dict, c: ClassifyConfig, labels: list[str], base: dict) -> None:
    now, saved = _flat(c.model_dump()), _flat(ckpt["config"])
    keep = lambda k: k not in RESUMABLE_CHANGES and k.split(".")[0] not in RESUMABLE_CHANGES  # noqa: E731
    changed = sorted(k for k in now if keep(k) and saved.get(k) != now[k])
    if ckpt["labels"] != labels:
        changed.append(f"labels: {ckpt['labels']} -> {labels}")
    if ckpt["base"] != base:
        changed.append("the base model")
    if changed:
        raise ValueError(
            f"checkpoint {path} was written by another run ({', '.join(changed)}); use the same config or a new out_dir"
        )


def classify(
    base_model_path: str,
    tokenizer_dir: str,
    config: ClassifyConfig,
    out_dir: str,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Fine-tune (or resume) in out_dir; write out_dir/classifier.pt and tokenizer.json; return a
    JSON-ready summary with the test split's metrics.

    base_model_path: a train output's model.pt (or a training checkpoint); tokenizer_dir: the folder
    of its tokenizer.json, or the file. stop_after=N stops after step N as a kill would (no final
    checkpoint, no classifier.pt): the next call resumes from the last checkpoint."""
    c = config
    t_start = time.perf_counter()
    device = resolve_device(c.launch.device)
    tok_file = os.path.join(tokenizer_dir, TOKENIZER) if os.path.isdir(tokenizer_dir) else tokenizer_dir
    tokenizer = Tokenizer.from_file(tok_file)
    pad_id = _pad_id(tokenizer)
    random.seed(c.data.seed)
    np.random.seed(c.data.seed)
    torch.manual_seed(c.data.seed)
    gpt = load_base(base_model_path, device)
    data = Prepared(c, tokenizer, gpt.config.block_size)
    model = Classifier(gpt, len(data.labels), c.pooling).to(device)
    trainable = set_trainable(model, c.trainable)
    model.train()
    optimizer = make_optimizer(model, c, device)
    guard = LossGuard(c.guard.mode, c.guard.spike_factor, c.guard.max_skipped, device)
    batches = TextBatches(data.train, data.train_y, c.data.batch_size, c.data.seed, pad_id, device)
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    base = {"params": gpt.num_params(), "config": gpt.config.model_dump()}
    parts = (model, model, model, optimizer, guard, batches, None, gpt.config.vocab_size, ckpt_path, [], 0.0)
    run = Run(c, device, 0, 1, *parts)
    for folder in (out_dir, os.path.dirname(ckpt_path)):  # what a kill during a save left
        checkpoints.remove_stale_temporaries(folder)
    if os.path.exists(ckpt_path) or checkpoints.step_files(os.path.dirname(ckpt_path)):
        path, ckpt = checkpoints.newest_readable(
            ckpt_path, lambda p: torch.load(p, map_location=device, weights_only=True)
        )
        _check_resumable(path, ckpt, c, data.labels, base)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["batches"])
        guard.load_state_dict(ckpt["guard"])
        _set_rng_state(ckpt["rng"])
        run.step, run.history, run.last_loss = ckpt["step"], ckpt["history"], ckpt["last_loss"]
        del ckpt
    run.last_loss_t = torch.tensor(float("nan") if run.last_loss is None else run.last_loss, device=device)
    committed = (lambda s: log({"step": s, "checkpoint": ckpt_path})) if log else (lambda s: None)
    saver = checkpoints.Saver(c.checkpoint.async_save, committed)
    last_save, steps_run, max_steps = clock(), 0, c.schedule.max_steps
    try:
        while run.step < max_steps and (stop_after is None or run.step < stop_after):
            out = train_step(run, batches, class_loss)
            steps_run += 1
            evaluating = (
                bool(data.val) and c.eval.batches > 0 and (run.step % c.eval.interval == 0 or run.step == max_steps)
            )
            saving = _save_due(run, clock, last_save)
            if evaluating or saving or run.step % c.log.interval == 0 or run.step in (max_steps, stop_after):
                _report(run, out, log)
            if evaluating:
                n = c.eval.batches * c.data.batch_size
                val = _metrics(model, data.val[:n], data.val_y[:n], data.labels, c, pad_id, device)
                run.history[-1] |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
                if log:
                    log({"step": run.step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]})
            if saving:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": run.step,
                    "batches": batches.state_dict(),
                    "guard": guard.state_dict(),
                    "rng": _rng_state(),
                    "history": run.history,
                    "last_loss": run.last_loss,
                    "config": c.model_dump(),
                    "labels": data.labels,
                    "base": base,
                }
                saver.save(state, ckpt_path, run.step, c.checkpoint.keep)
                last_save = clock()
            saver.poll()
    finally:
        saver.close()
    done = run.step >= max_steps
    summary: dict[str, Any] = {
        "steps": run.step,
        "completed": done,
        "labels": data.labels,
        "classes": data.all_counts,
        "split": data.counts,
        "texts_cut": data.cut,
        "max_tokens": data.max_tokens,
        "trainable_params": trainable,
        "params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": run.last_loss,
        "history": run.history,
        "skipped_steps": guard.total_skipped(),
    }
    if done:
        checkpoints.atomic_save(
            {
                "model": {k: v.cpu() for k, v in model.state_dict().items()},
                "gpt_config": gpt.config.model_dump(),
                "labels": data.labels,
                "pooling": c.pooling,
                "max_tokens": data.max_tokens,
            },
            os.path.join(out_dir, CLASSIFIER),
        )
        if os.path.abspath(tok_file) != os.path.abspath(os.path.join(out_dir, TOKENIZER)):
            shutil.copyfile(tok_file, os.path.join(out_dir, TOKENIZER))
        summary["train_accuracy"] = _metrics(model, data.train, data.train_y, data.labels, c, pad_id, device)[
            "accuracy"
        ]
        if data.val:
            summary["validation"] = _metrics(model, data.val, data.val_y, data.labels, c, pad_id, device)
        summary["test"] = _metrics(model, data.test, data.test_y, data.labels, c, pad_id, device)
    seconds = time.perf_counter() - t_start
    summary["timing"] = {"seconds": round(seconds, 3), "steps_this_run": steps_run, "device": device}
    return summary


def _report(run: Run, out, log: Optional[Callable[[dict], None]]) -> None:
    """The host read of the steps since the last report: the guard, then loss and norm; a history point."""
    run.guard.verify()
    loss, norm, skipped, last = torch.stack(
        [out.loss.double(), out.grad_norm.double(), out.skipped.double(), run.last_loss_t.double()]
    ).tolist()
    run.last_loss = None if math.isnan(last) else last
    run.history.append({"step": run.step, "loss": loss})
    if log:
        log({"step": run.step, "loss": loss, "lr": out.lr, "grad_norm": norm, **({"skipped": True} if skipped else {})})


def holds_classifier(output_dir: str) -> bool:
    """Whether a folder or store URL is a classify output (an unfinished one too)."""
    if "://" in output_dir:
        from storage import open_stage

        return open_stage(output_dir).name == "classify"
    folder = os.path.abspath(output_dir)
    return os.path.isfile(os.path.join(folder, CLASSIFIER)) or os.path.basename(os.path.dirname(folder)) == "classify"


def classifier_files(output_dir: str) -> tuple[str, str]:
    """Local paths of the classifier and tokenizer files of a finished classify output."""
    if "://" in output_dir:
        from storage import open_stage

        out = open_stage(output_dir)
        if not out.exists(CLASSIFIER):
            raise FileNotFoundError(f"{output_dir} holds no {CLASSIFIER}: give a finished classify output")
        return out.local_path(CLASSIFIER), out.local_path(TOKENIZER)
    model_file, tok_file = os.path.join(output_dir, CLASSIFIER), os.path.join(output_dir, TOKENIZER)
    if not os.path.exists(model_file):
        raise FileNotFoundError(f"{output_dir} holds no {CLASSIFIER}: give a finished classify output")
    return model_file, tok_file


def load_classifier(output_dir: str, device: str = "cpu") -> tuple[Classifier, Tokenizer, dict]:
    """The classifier and tokenizer a classify output folder holds (a local folder, or a store URL)."""
    model_file, tok_file = classifier_files(output_dir)
    saved = torch.load(model_file, map_location=device, weights_only=True)
    model = Classifier(GPT(GPTConfig(**saved["gpt_config"])), len(saved["labels"]), saved["pooling"])
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), Tokenizer.from_file(tok_file), saved


def predict(output_dir: str, texts: list[str], device: str = "cpu") -> list[dict]:
    """Each text's label and the probability of every label, by the classifier in output_dir."""
    model, tokenizer, saved = load_classifier(output_dir, device)
    eot = tokenizer.token_to_id(EOT)
    ids = [(encode_plain(tokenizer, t) or [eot])[: saved["max_tokens"]] for t in texts]
    probs = predict_ids(model, ids, 32, _pad_id(tokenizer), device)
    labels = saved["labels"]
    return [
        {"label": labels[int(p.argmax())], "probabilities": {label: float(q) for label, q in zip(labels, p)}}
        for p in probs
    ]
