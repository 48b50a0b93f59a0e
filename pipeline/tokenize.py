"""Byte-level BPE (HF `tokenizers`) and the encoding of document tables to token tables.

Byte-level means every string can be encoded and decoded back exactly: no unknown tokens, no
normalization. `<|endoftext|>` is appended after every document so the model learns where one
document ends; document text that happens to contain the literal string "<|endoftext|>" is encoded
as plain text, never as the special token.

Determinism: the BPE trainer counts words in parallel (rayon) but sums the counts, and breaks ties
between equally frequent pairs by token id, so the same texts give a byte-identical tokenizer.json
whatever the thread count (tests/test_tokenize.py checks this with RAYON_NUM_THREADS=1 and 2).

The tokenizer stage saves tokenizer.json with transformers_files() beside it, so the folder loads
with `transformers.AutoTokenizer.from_pretrained` and encodes text to exactly our ids.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from storage.config import StageConfig
from storage.tokens import (  # noqa: F401 (the token contract, as pipeline.tokenize.X too)
    BATCH_CHARS,
    CHAT_TOKENS,
    EOT,
    PAD,
    SPECIAL_TOKENS,
    encode_texts,
    token_dtype,
    token_schema,
    token_table,
    transformers_files,
)


class TokenizeConfig(StageConfig):
    """Byte-level BPE training and the train/validation split of the encoded documents."""

    vocab_size: int = Field(
        32768,
        ge=256 + len(SPECIAL_TOKENS + CHAT_TOKENS),
        le=2**32,
        description="Tokens in the vocabulary: 256 bytes + special tokens + BPE merges. "
        "Up to 65536 the token files hold uint16, above that uint32.",
    )
    min_frequency: int = Field(2, ge=1, description="A pair must occur at least this often in the sample to be merged.")
    sample_chars: int = Field(
        20_000_000, ge=1, description="Characters of text (the first ones, in corpus order) used to train the BPE."
    )
    val_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of documents held out for validation, chosen by a hash of the document id.",
    )
    min_val_docs: int = Field(
        4,
        ge=0,
        description="Hold out at least this many documents (never all of them) "
        "even when val_fraction of a small corpus rounds to fewer.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Salt of the hashes that pick validation documents and order "
        "the training shards: change it for another split and order.",
    )
    chat_tokens: bool = Field(
        True,
        description="Reserve the chat format's role and end-of-turn tokens "
        "(<|system|>, <|user|>, <|assistant|>, <|end|>) for tuning to chat.",
    )

    def special_tokens(self) -> list[str]:
        return SPECIAL_TOKENS + (CHAT_TOKENS if self.chat_tokens else [])


def sample_texts(tables: Iterable[pa.Table], config: TokenizeConfig) -> Iterator[str]:
    """The first `sample_chars` characters of text in corpus order (the last document cut short).

    Tables are consumed lazily, so later shards are never read once the sample is full."""
    left = config.sample_chars
    for table in tables:
        for text in table.column("text").to_pylist():
            if not text:
                continue
            yield text[:left]
            left -= min(left, len(text))
            if left == 0:
                return


def train_tokenizer(texts: Iterable[str], config: TokenizeConfig) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the result saves as a standard tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=config.special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = {"chars": 0}

    def counted():
        for text in texts:
            seen["chars"] += len(text)
            yield text

    tok.train_from_iterator(counted(), trainer)
    if seen["chars"] == 0:
        raise ValueError("no text to train the tokenizer on: every sampled document was empty")
    return tok


def val_draw(doc_id: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by the document id: documents below val_fraction go to validation."""
    digest = hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shard_order(indexes: Iterable[int], seed: int = 0) -> list[int]:
    """The shard indexes in a seeded, shuffled order, so training does not read the corpus in
    crawl order. A hash of each index, not a random generator: the same order on any machine and
    numpy version."""
    return sorted(indexes, key=lambda i: val_draw(f"shard/{i}", seed))


def val_cut(doc_ids: Iterable[str | None], config: TokenizeConfig) -> float:
    """The corpus-wide threshold on val_draw below which a document is held out.

    It is val_fraction, raised just enough that at least min_val_docs documents (but never every
    document) fall below it: a small corpus still gets a validation set, a large one gets exactly
    val_fraction. val_fraction 0 means no validation set at all. Computed once over all ids, applied
    per shard by encode_table."""
    draws = [val_draw(i, config.seed) for i in doc_ids if i is not None]
    want = min(config.min_val_docs, len(draws) - 1)
    if want <= 0 or config.val_fraction in (0.0, 1.0):
        return config.val_fraction
    smallest = heapq.nsmallest(want, draws)
    return max(config.val_fraction, float(np.nextafter(smallest[-1], 1.0)))


def encode_table(
    table: pa.Table, tokenizer: Tokenizer, config: TokenizeConfig, cut: float | None = None
) -> tuple[pa.Table, pa.Table, dict]:
    """Encode every document (EOT appended) and split them into (train, val, counts).

    A document goes to validation when its val_draw is below `cut` (from val_cut; default
    val_fraction). Rows without an id or text are skipped and counted under counts["skipped"][reason]."""
    for col in ("id", "text"):
        if col not in table.column_names:
            raise ValueError(f"table to tokenize has no `{col}` column (columns: {table.column_names})")
    n_vocab = tokenizer.get_vocab_size()
    if n_vocab > config.vocab_size:
        raise ValueError(f"tokenizer has {n_vocab} tokens but config.vocab_size is {config.vocab_size}")
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    dtype = token_dtype(config.vocab_size)

    ids, texts, skipped = [], [], {}
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
        reason = "null_id" if doc_id is None else "null_text" if text is None else None
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        ids.append(doc_id)
        texts.append(text)

    tokens = [np.append(np.asarray(e, dtype=dtype), np.array([eot], dtype)) for e in encode_texts(tokenizer, texts)]
    cut = config.val_fraction if cut is None else cut
    is_val = [val_draw(i, config.seed) < cut for i in ids]
    train = token_table(
        [i for i, v in zip(ids, is_val) if not v], [t for t, v in zip(tokens, is_val) if not v], config.vocab_size
    )
    val = token_table(
        [i for i, v in zip(ids, is_val) if v], [t for t, v in zip(tokens, is_val) if v], config.vocab_size
    )
    counts = {
        "docs": len(ids),
        "train_docs": train.num_rows,
        "val_docs": val.num_rows,
        "train_tokens": _n_tokens(train),
        "val_tokens": _n_tokens(val),
        "chars": sum(len(t) for t in texts),
    }
    if skipped:
        counts["skipped"] = dict(sorted(skipped.items()))
    return train, val, counts


@contextmanager
def encode_threads(parallel: bool):
    """Switch HF tokenizers' batch threads (a thread per core, TOKENIZERS_PARALLELISM is read at each
    call) on or off for this process. With one worker process per core they only compete for the
    cores; with fewer workers than cores they use the rest (docs/BENCHMARKS.md measures both)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _n_tokens(table: pa.Table) -> int:
    return int(sum(len(chunk.flatten()) for chunk in table.column("tokens").chunks))
