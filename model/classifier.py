"""A GPT with a class head: the hidden state of each text's last token (or the mean over its tokens)
through one linear layer, as Raschka's ch. 6 and transformers' *ForSequenceClassification do it.

The head has no bias, like transformers' `score` layer, so a model with `pooling="last"` exports to
GPT2/Llama/Qwen3ForSequenceClassification with the same logits (model/export.py). Which weights
train is a choice (`set_trainable`): the head alone, the last k blocks with the final norm and the
head (the book trains the last block), or everything.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from model.gpt import GPT


class Classifier(nn.Module):
    def __init__(self, gpt: GPT, n_classes: int, pooling: Literal["last", "mean"] = "last"):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', not {pooling!r}")
        self.gpt, self.pooling = gpt, pooling
        self.head = nn.Linear(gpt.config.n_embd, n_classes, bias=False)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """idx (B, T) right-padded token ids, lengths (B,) the real tokens of each row: (B, n_classes)."""
        h = self.gpt.hidden(idx)
        if self.pooling == "last":
            pooled = h[torch.arange(h.size(0), device=h.device), lengths - 1]
        else:
            real = (torch.arange(h.size(1), device=h.device) < lengths[:, None]).unsqueeze(-1).to(h.dtype)
            pooled = (h * real).sum(dim=1) / lengths[:, None].to(h.dtype)
        return self.head(pooled)


def set_trainable(model: Classifier, blocks: Literal["head", "all"] | int) -> int:
    """Freeze all but what trains: the head ("head"), the last `blocks` blocks with the final norm and
    the head (an int), or everything ("all"). Returns the trainable parameter count."""
    n_layer = len(model.gpt.blocks)
    if blocks == "all":
        chosen = list(model.parameters())
    elif blocks == "head":
        chosen = list(model.head.parameters())
    elif isinstance(blocks, int) and 0 <= blocks <= n_layer:
        chosen = [*model.head.parameters(), *model.gpt.ln_f.parameters()]
        for block in model.gpt.blocks[n_layer - blocks :]:
            chosen += list(block.parameters())
    else:
        raise ValueError(f"trainable blocks must be 'head', 'all' or 0..{n_layer}, got {blocks!r}")
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pad_batch(ids: list[list[int]], pad_id: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and (B,) lengths."""
    width = max(len(x) for x in ids)
    idx = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for row, x in enumerate(ids):
        idx[row, : len(x)] = torch.tensor(x, dtype=torch.long)
    return idx.to(device), torch.tensor([len(x) for x in ids], dtype=torch.long, device=device)
