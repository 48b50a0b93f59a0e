"""What the tokenize stage writes and the model reads: the special tokens, the files that make a
tokenizer folder loadable by transformers, how a text becomes ids, and the token shards' schema.

A neutral module so that model/ does not import pipeline/ (an edit of a pipeline stage must not
retrain a model); code_version follows imports into it, so editing it changes tokenize's outputs.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
EOT, PAD = SPECIAL_TOKENS
# The chat format's role and end-of-turn tokens (model/chat.py), reserved at training so that a
# pretrained model can be tuned to chat without growing its vocabulary.
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Documents are encoded in batches of about this many characters: big enough for the parallel
# encoder, small enough that the per-token Encoding objects stay a few hundred MB at most.
BATCH_CHARS = 2_000_000


def transformers_files(chat_template: str | None = None) -> dict[str, bytes]:
    """The files that, beside tokenizer.json, make its folder a transformers tokenizer with our
    special tokens. split_special_tokens: a literal "<|endoftext|>" in text stays text, as in
    encode_table, so transformers gives exactly the ids we train on. A chat model's tokenizer
    carries `chat_template` instead, and must not split special tokens: apply_chat_template
    tokenizes the rendered string, role tokens and all (model/chat.py)."""
    tokens = {"bos_token": EOT, "eos_token": EOT if chat_template is None else CHAT_TOKENS[-1], "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "split_special_tokens": chat_template is None,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
        "special_tokens_map.json": json.dumps(tokens, indent=2).encode(),
    }


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> Iterator[list[int]]:
    """Token ids of each text, encoded in batches; special-token strings in the text stay plain text.
    encode_batch_fast skips the character offsets, which we never read."""
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    encode = tokenizer.encode_batch_fast
    try:
        start = 0
        while start < len(texts):
            end, chars = start, 0
            while end < len(texts) and (end == start or chars + len(texts[end]) <= BATCH_CHARS):
                chars += len(texts[end])
                end += 1
            for enc in encode(texts[start:end], add_special_tokens=False):
                yield enc.ids
            start = end
    finally:
        tokenizer.encode_special_tokens = before


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size must be in 1..2**32, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def token_schema(vocab_size: int) -> pa.Schema:
    """TOKEN_SCHEMA: one row per document, its tokens (EOT last) as list<uint16> or list<uint32>."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("tokens", pa.list_(pa.from_numpy_dtype(token_dtype(vocab_size))), nullable=False),
        ]
    )


def token_table(ids: list[str], tokens: list[np.ndarray], vocab_size: int) -> pa.Table:
    """A TOKEN_SCHEMA table: one row per document id with its tokens."""
    schema, dtype = token_schema(vocab_size), token_dtype(vocab_size)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    if lengths.sum() > np.iinfo(np.int32).max:
        raise ValueError(f"{lengths.sum()} tokens in one shard: more than a list<> column holds; use smaller shards")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(tokens) if tokens else np.array([], dtype=dtype)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.Table.from_arrays([pa.array(ids, pa.string()), column], schema=schema)
