"""Text generation from a GPT: greedy or sampled (temperature, top-k, top-p, repetition penalty),
stopping at <|endoftext|>, with a KV cache so each new token costs one position's forward pass.

Beyond block_size the context slides: each step then runs on the last block_size tokens without
the cache, since every position changes. Cached and uncached generation give the same tokens.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from model.gpt import GPT, KVCache


def next_token_logits(
    logits: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
) -> torch.Tensor:
    """The last position's logits (B, vocab) after the penalty, temperature and truncations; -inf
    marks tokens that cannot be drawn."""
    logits = logits.float()
    if repetition_penalty != 1.0:  # CTRL's penalty on every token already in the row
        picked = logits.gather(1, seen)
        logits = logits.scatter(
            1, seen, torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        )
    if temperature <= 0:
        return logits
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(
    model: GPT,
    idx: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """The next token of each row of idx (B, T), (B, 1), one per iteration, for as long as the caller
    asks (the caller decides when to stop)."""
    block = model.config.block_size
    cache = KVCache(model.config.n_layer) if use_cache else None
    while True:
        if cache is not None and idx.size(1) <= block:  # the tokens the cache has not seen yet
            logits, _ = model(idx[:, cache.length :], cache=cache)
        else:
            cache = None
            logits, _ = model(idx[:, -block:])
        logits = next_token_logits(logits[:, -1, :], idx, temperature, top_k, top_p, repetition_penalty)
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """idx (B, T) with up to max_new_tokens tokens appended; stops early once every row has produced
    eos_id. temperature <= 0 means greedy. Pass a seeded generator for repeatable samples."""
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    new = []
    tokens = sample_tokens(model, idx, temperature, top_k, top_p, repetition_penalty, generator, use_cache)
    for _, nxt in zip(range(max_new_tokens), tokens):
        new.append(nxt)
        if eos_id is not None:
            done |= nxt.squeeze(1) == eos_id
            if bool(done.all()):
                break
    return torch.cat([idx, *new], dim=1)


def stream(model: GPT, ids: list[int], max_new_tokens: int, stop_ids: set[int], **sampling) -> Iterator[int]:
    """The tokens generated after one prompt, as they come, ending at the first of stop_ids (not
    yielded) or after max_new_tokens. `sampling`: the keywords of sample_tokens."""
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    for _, nxt in zip(range(max_new_tokens), sample_tokens(model, idx, **sampling)):
        token = int(nxt)
        if token in stop_ids:
            return
        yield token
