"""Perplexity and bits per byte of text files (model.evaluate.text_perplexity) on real books: the
same numbers as a direct token-by-token computation, .txt and .jsonl read as documented."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from model.evaluate import EvalConfig, read_documents, text_perplexity, text_windows, token_bytes
from model.gpt import GPT, MODERN, GPTConfig
from pipeline.tokenize import EOT, TokenizeConfig, sample_texts, train_tokenizer

BLOCK = 32


@pytest.fixture(scope="module")
def books():
    """Excerpts of three held-out Gutenberg books (real text, some non-ASCII) and a tokenizer
    trained on a training book."""
    from tests.fixtures.data import require_data

    with gzip.open(require_data("text/gutenberg-top-authors-subset.jsonl.gz"), "rt") as f:
        train_text = json.loads(f.readline())["text"][:200_000]
    with gzip.open(require_data("text/gutenberg-heldout-authors-val.jsonl.gz"), "rt") as f:
        held = [json.loads(line)["text"] for line in f][:3]
    config = TokenizeConfig(vocab_size=512, sample_chars=200_000)
    tokenizer = train_tokenizer(sample_texts([pa.table({"text": [train_text]})], config), config)
    return {
        "docs": [held[0][20_000:26_000], held[1][30_000:33_000] + " naïve “café”", held[2][10_000:10_500]],
        "tokenizer": tokenizer,
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, **MODERN)).eval()


def _jsonl(path, docs):
    path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    return str(path)


def _direct_nats(model, tokenizer, doc: str) -> tuple[float, int]:
    """Every token of <|endoftext|> + doc predicted from all the tokens before it that fit in
    block_size: the definition, without windows (the positions with a full context in one batch)."""
    ids = [tokenizer.token_to_id(EOT)] + tokenizer.encode(doc, add_special_tokens=False).ids
    nats = 0.0
    with torch.no_grad():
        for p in range(1, min(BLOCK, len(ids))):
            logits = model(torch.tensor([ids[:p]]))[0][0, -1].float()
            nats -= float(F.log_softmax(logits, -1)[ids[p]])
        full = torch.tensor([ids[p - BLOCK : p] for p in range(BLOCK, len(ids))])
        if len(full):
            logp = F.log_softmax(model(full)[0][:, -1].float(), -1)
            nats -= float(logp[range(len(full)), ids[BLOCK:]].double().sum())
    return nats, len(ids) - 1


def test_bpb_equals_a_direct_computation(books, model, tmp_path):
    """stride 1: every token sees min(position, block_size) tokens, exactly what _direct_nats does."""
    tok, docs = books["tokenizer"], books["docs"][1:]
    res = text_perplexity(
        model, tok, _jsonl(tmp_path / "two.jsonl", docs), EvalConfig(text_stride=1, batch_size=7), "cpu"
    )
    direct = [_direct_nats(model, tok, d) for d in docs]
    nats, tokens = sum(n for n, _ in direct), sum(t for _, t in direct)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert (res["documents"], res["tokens"], res["bytes"], res["stride"]) == (2, tokens, n_bytes, 1)
    assert res["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    # byte-level BPE: the text's bytes are its tokens' bytes, the count the held-out shards use
    sizes = token_bytes(tok)
    assert sum(int(sizes[tok.encode(d, add_special_tokens=False).ids].sum()) for d in docs) == n_bytes


def test_non_overlapping_windows_are_the_default(books, model, tmp_path):
    """stride 0 = block_size: each window of block_size tokens predicts its own tokens only, like
    lm-eval's rolling log likelihood (whose last window also takes a full block of context); a .txt
    file is one document."""
    tok, doc = books["tokenizer"], books["docs"][0]
    path = tmp_path / "book.txt"
    path.write_text(doc, encoding="utf-8")
    assert read_documents(str(path)) == [doc]
    res = text_perplexity(model, tok, str(path), EvalConfig(batch_size=16), "cpu")
    ids = [tok.token_to_id(EOT)] + tok.encode(doc, add_special_tokens=False).ids
    nats = 0.0
    with torch.no_grad():  # spans of BLOCK predicted tokens; the last one, shorter, still sees BLOCK tokens
        for first in range(1, len(ids), BLOCK):
            end = min(first + BLOCK, len(ids))
            inputs = torch.tensor([ids[max(0, end - 1 - BLOCK) : end - 1]])
            logits = model(inputs)[0][0, -(end - first) :].float()
            nats += float(F.cross_entropy(logits, torch.tensor(ids[first:end]), reduction="sum"))
    assert res["stride"] == BLOCK and res["tokens"] == len(ids) - 1
    assert res["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(doc.encode("utf-8")), rel=1e-5)
    # more context per token (stride 8) is a different, here better-informed, measurement of the same text
    strided = text_perplexity(model, tok, str(path), EvalConfig(text_stride=8), "cpu")
    assert strided["tokens"] == res["tokens"] and strided["loss"] != res["loss"]


def test_windows_score_every_token_once():
    tokens = np.arange(100)
    for stride in (1, 7, 32):
        windows = text_windows(tokens, 32, stride)
        scored = [int(t) for w, n in windows for t in w[-n:]]
        assert scored == list(range(1, 100)) and all(len(w) <= 33 for w, _ in windows)
        assert all(len(w) - 1 >= min(32, int(w[-n])) for w, n in windows)  # as much context as fits


def test_documents_and_errors(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert read_documents(str(path)) == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not a JSON record with a `text` field"):
        read_documents(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="text file not found: .*missing.txt"):
        read_documents(str(tmp_path / "missing.txt"))
