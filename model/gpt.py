"""A decoder-only transformer, small enough to read in one sitting, with the switches that separate
GPT-2 from a modern model (see GPT2 and MODERN below).

token embedding (+ learned positions) -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> head.
Rotary positions, RMSNorm, SwiGLU, QK-norm and an untied head are each one config field, laid out
the way Llama/Qwen3 lay them out so the weights export to transformers without reshuffling.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.checkpoint import checkpoint

from storage.config import ConfigError

IGNORE_INDEX = -100  # a target the loss skips (cross_entropy's default): tuning trains on some tokens only

# The two architectures compared in docs/BENCHMARKS.md: GPT-2 as published, and the usual modern
# choices (Llama-style RoPE, RMSNorm and SwiGLU; Qwen3/OLMo2-style QK-norm; an untied output head).
GPT2 = {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "tie_embeddings": True}
MODERN = {"positions": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "tie_embeddings": False}


class GPTConfig(BaseModel):
    """The shape of the network; saved next to the weights so a model file is self-describing."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(..., ge=1, description="Number of token ids (from the tokenizer).")
    block_size: int = Field(256, ge=1, le=1 << 20, description="Longest context in tokens.")
    n_layer: int = Field(4, ge=1, le=1024, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=1024, description="Attention heads per block; must divide n_embd.")
    n_embd: int = Field(256, ge=1, le=1 << 16, description="Width of the residual stream.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residual branches.")
    bias: bool = Field(
        False,
        description="Biases in Linear and LayerNorm layers (GPT-2 had them; without is slightly better and faster).",
    )
    positions: Literal["learned", "rotary"] = Field(
        "learned", description="learned: GPT-2's position embedding table; rotary: RoPE on queries and keys (Llama)."
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency (rotary positions only).")
    norm: Literal["layernorm", "rmsnorm"] = Field(
        "layernorm", description="Normalization before each sub-layer and before the head."
    )
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every normalization layer.")
    mlp: Literal["gelu", "swiglu"] = Field(
        "gelu",
        description="gelu: GPT-2's 4x GELU MLP; swiglu: gated SiLU "
        "(Llama), hidden width 8/3 x n_embd rounded up to 64.",
    )
    qk_norm: bool = Field(
        False,
        description="RMSNorm each head's queries and keys before attention (Qwen3, "
        "OLMo2): keeps attention logits bounded, fewer loss spikes.",
    )
    tie_embeddings: bool = Field(
        True,
        description="The output head reuses the token embedding matrix (GPT-2); false gives the head its own weights.",
    )
    vocab_multiple: int = Field(
        1,
        ge=1,
        le=1 << 16,
        description="The embedding and head have vocab_size rounded "
        "up to a multiple of this many rows; the padded rows are never predicted.",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "GPTConfig":
        check_heads(self)
        return self

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and head: vocab_size rounded up to vocab_multiple (GPU-friendly matmuls)."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)


def check_heads(c) -> None:
    """n_head must divide n_embd (and give an even head size for RoPE): GPTConfig's rule, which
    model.train.ModelConfig checks too, so a bad shape fails before the stages before training run."""
    if c.n_embd % c.n_head:
        raise ValueError(f"n_embd ({c.n_embd}) must be a multiple of n_head ({c.n_head})")
    if c.positions == "rotary" and (c.n_embd // c.n_head) % 2:
        raise ValueError(f"positions 'rotary' needs an even head size (n_embd / n_head), got {c.n_embd // c.n_head}")


def make_norm(c: GPTConfig, dim: int) -> nn.Module:
    if c.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=c.norm_eps)
    return nn.LayerNorm(dim, eps=c.norm_eps, bias=c.bias)


def rotary_tables(c: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (block_size, head_size), for rotating each pair (i, i + head_size/2) by position."""
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_size, 2, dtype=torch.int64).float() / c.head_size))
    angles = torch.outer(torch.arange(c.block_size, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by the first T rows of the tables (the half-split pairing HF Llama uses),
    or by tables already gathered per token, (B, 1, T, D)."""
    T = x.size(-2)
    if cos.dim() == 2:
        cos, sin = cos[:T], sin[:T]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Causal multi-head self-attention: every position attends to itself and earlier positions."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_drop = nn.Dropout(c.dropout)
        self.q_norm = nn.RMSNorm(c.head_size, eps=c.norm_eps) if c.qk_norm else None
        self.k_norm = nn.RMSNorm(c.head_size, eps=c.norm_eps) if c.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: "LayerCache | None" = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask: (B, 1, T, T), True where a query may attend to a key (packed sequences); else causal."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_size)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.extend(k, v)
            if 1 < T < k.size(2):  # new queries see every cached key, and each other causally
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T == k.size(2) and T > 1,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """GELU MLP, or SwiGLU: `fc` holds the gate and the up projection side by side (one matmul)."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.gated = c.mlp == "swiglu"
        self.fc = nn.Linear(c.n_embd, (2 if self.gated else 1) * c.mlp_hidden, bias=c.bias)
        self.proj = nn.Linear(c.mlp_hidden, c.n_embd, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.drop(self.proj(h))


class Block(nn.Module):
    """Pre-norm residual block: normalize, transform, add back."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(c, c.n_embd)
        self.attn = SelfAttention(c)
        self.ln2 = make_norm(c, c.n_embd)
        self.mlp = MLP(c)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: "LayerCache | None" = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rotary, cache, mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.padded_vocab, c.n_embd)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd) if c.positions == "learned" else None
        if c.positions == "rotary":  # not saved: recomputed from the config
            cos, sin = rotary_tables(c)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = make_norm(c, c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix both reads and writes tokens
        # Recompute each block's activations in the backward pass instead of storing them: less
        # memory for more compute. A training switch, not part of the shape (the trainer sets it).
        self.activation_checkpointing = False

        # GPT-2 init: N(0, 0.02) everywhere; the projections that write into the residual stream are
        # scaled by 1/sqrt(2 * n_layer) so the stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The head's logits over the real vocabulary: padded rows are cut off (a view), so no padded
        id is ever predicted, sampled or part of a softmax."""
        logits = self.lm_head(h)
        return logits if logits.size(-1) == self.config.vocab_size else logits[..., : self.config.vocab_size]

    def _loss_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(h).float(), targets, reduction="sum")

    def num_params(self) -> int:
        """Parameters, counting a tied embedding/lm_head matrix once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM appendix B; nanoGPT's estimate_mfu): N counts
        the weights used in matrix multiplies (not the position table, nor an untied input embedding,
        which are lookups), the second term is attention's scores and weighted sum over T tokens."""
        c = self.config
        n = self.num_params()
        if self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        if not c.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * (seq_len or c.block_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: "KVCache | None" = None,
        loss_chunks: int = 1,
        segments: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ):
        """idx, targets: (B, T) token ids. Returns logits (B, T, vocab_size: never the padded rows)
        and the mean loss (or None).
        With a KVCache, idx continues the tokens the cache already holds (their keys and values are
        reused, the new ones are appended). loss_chunks > 1 (with targets): no logits (None) and the
        loss computed in that many chunks of tokens, each chunk's logits recomputed in the backward,
        so at most one chunk's logits and fp32 log-softmax exist at a time. segments and positions
        (B, T), for packed sequences (model/sft_data.py): a token attends only to earlier tokens of
        its own segment, and its position counts from its segment's start."""
        h = self.hidden(idx, cache, segments, positions)
        if targets is not None and loss_chunks > 1:
            h, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
            total = sum(
                checkpoint(self._loss_sum, hc, tc, use_reentrant=False)
                for hc, tc in zip(h.chunk(loss_chunks), t.chunk(loss_chunks))
            )
            return None, total / (t != IGNORE_INDEX).sum()  # a mean over the targets trained on, as below
        logits = self._logits(h)
        if targets is None:
            return logits.contiguous(), None  # a copy only when padded rows were cut off
        return logits, F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    def hidden(
        self,
        idx: torch.Tensor,
        cache: "KVCache | None" = None,
        segments: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalized hidden states (B, T, n_embd), what the head reads (and a classifier)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.tok_emb(idx)
        pos = torch.arange(start, start + T, device=idx.device) if positions is None else positions
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
            rotary = None
        elif positions is None:
            rotary = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        else:
            rotary = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        mask = None
        if segments is not None:
            same = segments.unsqueeze(2) == segments.unsqueeze(1)
            mask = (same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()).unsqueeze(1)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rotary, None, mask, use_reentrant=False)
            else:
                x = block(x, rotary, cache.layers[i] if cache is not None else None, mask)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)


class LayerCache:
    """One layer's keys and values so far, (B, n_head, T, head_size) each."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generating one more token costs
    one position's forward pass instead of the whole sequence's."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.length = 0


# -- where and in what precision it runs (shared by training and evaluation) -----------------


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA GPU here; use auto or cpu")
    return device


def amp_dtype(device: str, dtype: str) -> torch.dtype | None:
    """The autocast dtype forward passes run in: bfloat16, or None for plain float32."""
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    return torch.bfloat16 if dtype == "bfloat16" else None


def autocast(device: str, dtype: str):
    """The mixed-precision context for forward passes: bfloat16 autocast, or nothing for float32."""
    kind = amp_dtype(device, dtype)
    return nullcontext() if kind is None else torch.autocast(device_type=device, dtype=kind)
