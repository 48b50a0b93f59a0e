"""Held-out loss, perplexity and bits per byte of a trained model, plus a few seeded samples.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so it
compares models with different tokenizers. With a byte-level BPE every character of a token's
vocabulary string stands for exactly one byte, which makes the byte count a table lookup.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tokenizers import Tokenizer
from tqdm import tqdm

from model.data import TokenStream, sequential_batches
from model.generate import generate
from model.gpt import GPT, GPTConfig, autocast, resolve_device
from model.tasks import evaluate_task, load_task
from pipeline.stage import StageConfig

DEFAULT_PROMPTS = ["It was a dark and stormy night", "The history of the world", "Once upon a time, there was",
                   "In the morning, she"]


class EvalConfig(StageConfig):
    """What to measure on the validation tokens and how to sample completions."""

    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS),
                               description="Openings the model completes (one sample each).")
    max_new_tokens: int = Field(48, ge=0, description="Tokens generated per prompt (fewer if it emits end-of-text).")
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_k: int = Field(40, ge=0, description="Sample only among the k most likely tokens (0 = all).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Sample only among the most likely tokens whose "
                                                        "probabilities add up to top_p (1 = all).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Divide the logits of tokens already in the text "
                                                               "by this (CTRL; 1 = off, 1.1-1.3 is typical).")
    seed: int = Field(0, ge=0, description="Seed of the sampling generator.")
    val_batches: int = Field(50, ge=0, description="Validation batches to score, in order (0 = all windows).")
    batch_size: int = Field(16, ge=1, description="Windows per validation batch.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    tasks: dict[str, str] = Field(default_factory=dict, description="Benchmarks to score: a name (hellaswag, piqa, "
                                  "arc_easy, winogrande, lambada_openai, copa, ...) -> its local JSONL file. "
                                  "Scored as lm-evaluation-harness scores them (docs/EVALUATION.md).")
    task_limit: int = Field(0, ge=0, description="Score only the first this many items of each benchmark (0 = all).")
    task_batch_size: int = Field(32, ge=1, description="Sequences per forward pass when scoring benchmarks.")


def load_model(model_path: str, device: str = "cpu") -> GPT:
    """A GPT from a model.pt written by model.train (weights, config, vocab_size), in eval mode."""
    try:
        saved = torch.load(model_path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {model_path}") from None
    except Exception as e:
        raise ValueError(f"{model_path} is not a readable model file: {e}") from e
    if not isinstance(saved, dict) or not {"model", "config"} <= saved.keys():
        raise ValueError(f"{model_path} is not a crawl2llm model file (expected keys model, config)")
    model = GPT(GPTConfig(**saved["config"]))
    model.load_state_dict(saved["model"])
    return model.to(device).eval()


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
    model = load_model(model_path, device)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {tokenizer.get_vocab_size()} tokens but model "
                         f"{model_path} was trained for {model.config.vocab_size}")
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
        "samples": samples(model, tokenizer, config, device),
        "tasks": {name: score_task(model, tokenizer, name, path, config, device)
                  for name, path in sorted(config.tasks.items())},
    }


def score_task(model: GPT, tokenizer: Tokenizer, name: str, path: str, config: EvalConfig, device: str) -> dict:
    """One benchmark file scored, with a progress bar over its sequences."""
    items = load_task(path, config.task_limit)
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
            full = generate(model, idx, config.max_new_tokens, temperature=config.temperature,
                            top_k=config.top_k or None, top_p=config.top_p,
                            repetition_penalty=config.repetition_penalty, eos_id=eot, generator=generator)
        new = full[0, len(ids):].tolist()
        if eot in new:
            new = new[:new.index(eot)]
        out.append({"prompt": prompt, "completion": tokenizer.decode(new)})
    return out
