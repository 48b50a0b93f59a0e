"""Held-out loss, perplexity and bits per byte of a trained model, on the validation token shards
and on any text file, plus benchmarks and a few seeded samples.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted text, so it
compares models with different tokenizers. On the validation shards the bytes are counted from the
tokens: with a byte-level BPE every character of a token's vocabulary string stands for exactly one
byte, so the count is a table lookup (<|endoftext|> counts 0 bytes, its loss still counts). On a
text file they are the file's own UTF-8 bytes.

A text file is scored document by document: a .txt file is one document, a .jsonl (or .jsonl.gz)
file has one per record's `text`. Each document is encoded as the tokenize stage encodes it, after an
<|endoftext|> (what precedes every document but the first in training), and every one of its tokens
is predicted once. Windows of block_size tokens advance by `text_stride` tokens and only the tokens a
window adds are scored. With the default stride (block_size: non-overlapping windows, lm-eval's
rolling log likelihood) the first token of each window sees one token of context; a smaller stride
gives every scored token at least block_size - stride tokens before it. A document's last, shorter
window still reaches back block_size tokens, as lm-eval's does. Windows of all documents are
batched, longest first, on the GPU when there is one.
"""

from __future__ import annotations

import gzip
import math
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from tokenizers import Tokenizer
from tqdm import tqdm

from model.data import TokenStream, sequential_batches
from model.generate import generate
from model.gpt import GPT, GPT2, MODERN, GPTConfig, autocast, resolve_device
from model.tasks import evaluate_task, load_task, read_jsonl
from storage.config import StageConfig, require_files
from storage.tokens import EOT, encode_texts

DEFAULT_PROMPTS = [
    "It was a dark and stormy night",
    "The history of the world",
    "Once upon a time, there was",
    "In the morning, she",
]


class EvalConfig(StageConfig):
    """What to measure on the validation tokens and how to sample completions."""

    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), description="Openings the model completes (one sample each)."
    )
    max_new_tokens: int = Field(48, ge=0, description="Tokens generated per prompt (fewer if it emits end-of-text).")
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_k: int = Field(40, ge=0, description="Sample only among the k most likely tokens (0 = all).")
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Sample only among the most likely tokens whose probabilities add up to top_p (1 = all).",
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        description="Divide the logits of tokens already in the text by this (CTRL; 1 = off, 1.1-1.3 is typical).",
    )
    seed: int = Field(0, ge=0, description="Seed of the sampling generator.")
    val_batches: int = Field(50, ge=0, description="Validation batches to score, in order (0 = all windows).")
    batch_size: int = Field(16, ge=1, description="Windows per validation batch.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    tasks: dict[str, str] = Field(
        default_factory=dict,
        description="Benchmarks to score: a name (hellaswag, piqa, "
        "arc_easy, winogrande, lambada_openai, copa, ...) -> its local file. "
        "Scored as lm-evaluation-harness scores them (docs/TRAINING.md, Evaluation).",
    )
    task_limit: int = Field(0, ge=0, description="Score only the first this many items of each benchmark (0 = all).")
    task_batch_size: int = Field(32, ge=1, description="Sequences per forward pass when scoring benchmarks.")
    text_files: dict[str, str] = Field(
        default_factory=dict,
        description="Texts to measure loss, perplexity "
        "and bits per byte on: a name -> a .txt file (one document) or a .jsonl / "
        ".jsonl.gz file (one document per record's `text`), tokenized with the "
        "run's tokenizer.",
    )
    text_stride: int = Field(
        0,
        ge=0,
        description="Tokens each window of a text file moves on (0 = block_size: "
        "non-overlapping windows, as lm-eval's rolling log likelihood). Smaller: every token "
        "scored with at least block_size - stride tokens of context, block_size/stride times "
        "the compute.",
    )
    data: str = Field(
        "",
        description="A tokenize output URL whose tokenizer and validation shards to use; "
        "empty: the one the model was trained on (needed only for a model file outside a train "
        "output).",
    )

    @field_validator("tasks", "text_files")
    @classmethod
    def _files_exist(cls, files: dict[str, str], info) -> dict[str, str]:
        return require_files(files, "benchmark file" if info.field_name == "tasks" else "text file")

    @field_validator("data")
    @classmethod
    def _data_exists(cls, url: str) -> str:
        if url:
            require_files([url.rstrip("/") + "/manifest.json"], "tokenize output (its manifest.json)")
        return url


def load_model(model_path: str, device: str = "cpu") -> GPT:
    """A GPT from a model.pt or a training checkpoint written by model.train, in eval mode."""
    return load_checkpoint(model_path, device)[0]


def load_checkpoint(model_path: str, device: str = "cpu") -> tuple[GPT, dict]:
    """The GPT in a model.pt, a checkpoints/latest.pt (whose config is the whole training config) or
    an FSDP2 checkpoint folder (checkpoints/step-N/), and what it says of its training: the step and
    tokens seen (None in a model.pt)."""
    sharded = os.path.isdir(model_path)
    try:
        saved = torch.load(
            os.path.join(model_path, "state.pt") if sharded else model_path, map_location=device, weights_only=True
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {model_path}") from None
    except Exception as e:
        raise ValueError(f"{model_path} is not a readable model file: {e}") from e
    if not isinstance(saved, dict) or not ({"config"} if sharded else {"model", "config"}) <= saved.keys():
        raise ValueError(f"{model_path} is not a crawl2llm model file (expected keys model, config)")
    config = saved["config"]
    if isinstance(config.get("model"), dict):  # a training checkpoint's config: the shape is its model group
        config = config["model"]
    config = {k: v for k, v in config.items() if k in GPTConfig.model_fields}
    config.setdefault("vocab_size", saved.get("vocab_size"))
    model = GPT(GPTConfig(**config))
    if sharded:
        from model.sharded_checkpoint import load_weights  # in here, as BATCH_SPLIT below

        load_weights(model_path, model)
    else:
        model.load_state_dict(saved["model"])
    trained = {"step": None, "tokens_seen": None}
    if "step" in saved:  # a training checkpoint: tokens per step = global batch x block_size
        from model.train import BATCH_SPLIT, dotted  # in here: evaluations' code fingerprint stays without model.train

        c = dotted(saved["config"])  # nested, or flat when written before the config's groups
        per_step = math.prod(c.get(k, 1) for k in BATCH_SPLIT)
        trained = {"step": saved["step"], "tokens_seen": saved["step"] * per_step * model.config.block_size}
    return model.to(device).eval(), trained


def describe(model: GPT) -> dict:
    """The model's shape, for reports that compare runs."""
    c = model.config
    switches = {k: getattr(c, k) for k in ("positions", "norm", "mlp", "qk_norm", "tie_embeddings")}
    arch = (
        "gpt2"
        if switches == GPT2
        else "modern"
        if switches == MODERN
        else "+".join(f"{k}={v}" for k, v in switches.items())
    )
    return {
        "architecture": arch,
        "params": model.num_params(),
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "block_size": c.block_size,
        "vocab_size": c.vocab_size,
    }


def token_bytes(tokenizer: Tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (special tokens: 0)."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    n = tokenizer.get_vocab_size()
    sizes = torch.zeros(n, dtype=torch.int64)
    for token, i in tokenizer.get_vocab().items():
        if token not in special:
            sizes[i] = len(token)  # byte-level: one vocabulary character per byte
    return sizes


@torch.no_grad()
def evaluate(model_path: str, tokenizer_path: str, val_files: list[str], config: EvalConfig) -> dict:
    """Score the model on validation windows (always the same ones, in order) and sample each prompt."""
    device = resolve_device(config.device)
    model, trained = load_checkpoint(model_path, device)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_path} has {tokenizer.get_vocab_size()} tokens but model "
            f"{model_path} was trained for {model.config.vocab_size}"
        )
    nbytes = token_bytes(tokenizer).to(device)

    stream = TokenStream(val_files)
    loss_sum, n_tokens, n_bytes = 0.0, 0, 0
    for x, y in sequential_batches(stream, model.config.block_size, config.batch_size, config.val_batches):
        x, y = x.to(device), y.to(device)
        with autocast(device, "auto"):
            logits, _ = model(x)
        losses = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        loss_sum += losses.double().sum().item()
        n_tokens += y.numel()
        n_bytes += int(nbytes[y].sum().item())
    loss = loss_sum / n_tokens

    return {
        "val_loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": loss_sum / math.log(2) / n_bytes if n_bytes else None,
        "val_tokens": n_tokens,
        "val_bytes": n_bytes,
        "params": model.num_params(),
        "model": {**describe(model), **trained},
        "texts": {
            name: text_perplexity(model, tokenizer, path, config, device)
            for name, path in sorted(config.text_files.items())
        },
        "samples": samples(model, tokenizer, config, device),
        "tasks": {
            name: score_task(model, tokenizer, name, path, config, device)
            for name, path in sorted(config.tasks.items())
        },
    }


def read_documents(path: str) -> list[str]:
    """The documents of a text file: a .txt file whole, or the `text` of each .jsonl record."""
    try:
        if not path.endswith((".jsonl", ".jsonl.gz")):
            with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
                return [f.read()]
        docs = []
        for n, rec in read_jsonl(path):
            if not isinstance(rec, dict) or "text" not in rec:
                raise ValueError(f"{path} line {n}: not a JSON record with a `text` field")
            if not isinstance(rec["text"], str):
                raise ValueError(f"{path} line {n}: `text` is {type(rec['text']).__name__}, not a string")
            docs.append(rec["text"])
        return docs
    except FileNotFoundError:
        raise FileNotFoundError(f"text file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def text_windows(tokens: np.ndarray, block_size: int, stride: int) -> list[tuple[np.ndarray, int]]:
    """(window, n): a window of at most block_size + 1 tokens of `tokens` (inputs and the targets
    shifted by one) whose last n targets are scored; every token but the first is scored once."""
    out, t0, last = [], 1, len(tokens) - 1
    while t0 <= last:
        t1 = min(t0 + stride, last + 1)
        out.append((tokens[max(0, t1 - 1 - block_size) : t1], t1 - t0))
        t0 = t1
    return out


@torch.no_grad()
def score_windows(model: GPT, windows: list[tuple[np.ndarray, int]], batch_size: int, device: str) -> float:
    """Summed negative log likelihood (nats) of the scored targets of every window, batched by length."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = len(windows[idx[0]][0]) - 1
        x = torch.zeros(len(idx), width, dtype=torch.long)
        y = torch.full((len(idx), width), -100, dtype=torch.long)  # -100: not scored
        for row, i in enumerate(idx):
            seq, n = torch.from_numpy(windows[i][0]), windows[i][1]
            x[row, : len(seq) - 1] = seq[:-1]
            y[row, len(seq) - 1 - n : len(seq) - 1] = seq[-n:]
        x, y = x.to(device), y.to(device)
        with autocast(device, "auto"):
            logits, _ = model(x)
        losses = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100, reduction="none"
        )
        total += losses.double().sum().item()
    return total


def text_perplexity(model: GPT, tokenizer: Tokenizer, path: str, config: EvalConfig, device: str) -> dict:
    """Loss per token, perplexity and bits per byte of a text file (see the module doc)."""
    docs = read_documents(path)
    eot = tokenizer.token_to_id(EOT)
    block = model.config.block_size
    stride = min(config.text_stride or block, block)
    windows, n_tokens = [], 0
    for ids in encode_texts(tokenizer, docs):
        windows += text_windows(np.array([eot, *ids], dtype=np.int64), block, stride)
        n_tokens += len(ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if not n_tokens:
        raise ValueError(f"{path}: no text to score")
    nats = score_windows(model, windows, config.batch_size, device)
    return {
        "documents": len(docs),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "stride": stride,
        "loss": nats / n_tokens,
        "perplexity": math.exp(nats / n_tokens),
        "bits_per_byte": nats / math.log(2) / n_bytes,
    }


def score_task(model: GPT, tokenizer: Tokenizer, name: str, path: str, config: EvalConfig, device: str) -> dict:
    """One benchmark file scored, with a progress bar over its sequences."""
    items = load_task(path, config.task_limit, name)
    total = sum(1 if isinstance(it, tuple) else len(it.continuations) for it in items)
    with tqdm(total=total, desc=name, unit="seq", leave=False) as bar:
        return evaluate_task(model, tokenizer, items, config.task_batch_size, device, progress=bar.update)


def samples(model: GPT, tokenizer: Tokenizer, config: EvalConfig, device: str) -> list[dict]:
    """One completion per prompt from a single seeded generator: the same samples every run."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    out = []
    for prompt in config.prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [eot]
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        with autocast(device, "auto"):
            full = generate(
                model,
                idx,
                config.max_new_tokens,
                temperature=config.temperature,
                top_k=config.top_k or None,
                top_p=config.top_p,
                repetition_penalty=config.repetition_penalty,
                eos_id=eot,
                generator=generator,
            )
        new = full[0, len(ids) :].tolist()
        if eot in new:
            new = new[: new.index(eot)]
        out.append({"prompt": prompt, "completion": tokenizer.decode(new)})
    return out
