"""Byte-level BPE on real Gutenberg text: exact round trips, a deterministic tokenizer.json,
the id-hash train/val split, the uint16/uint32 switch, loading with transformers, and the tokenize
flow's shuffled shard order."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from pipeline.tokenize import (
    CHAT_TOKENS,
    EOT,
    PAD,
    SPECIAL_TOKENS,
    TokenizeConfig,
    encode_table,
    encode_threads,
    sample_texts,
    shard_order,
    token_dtype,
    train_tokenizer,
    transformers_files,
    val_cut,
    val_draw,
)
from storage import StageDir, Store

GUTENBERG = "text/gutenberg-top-authors-subset.jsonl.gz"
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def read_books(path: Path, n: int) -> list[dict]:
    """The first n books (cached: the shared_data fixture is per test, the reading need not be)."""
    books = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            books.append(json.loads(line))
            if len(books) == n:
                break
    return books


def paragraphs_table(books: list[dict], limit: int | None = None) -> pa.Table:
    """Each non-empty paragraph a document, with a stable id (book id + paragraph number)."""
    ids, texts = [], []
    for b in books:
        for k, p in enumerate(b["text"].split("\n\n")):
            if p.strip():
                ids.append(f"{b['id']}/{k}")
                texts.append(p)
    return pa.table({"id": ids[:limit], "text": texts[:limit]})


@pytest.fixture
def books(shared_data):
    return read_books(shared_data(GUTENBERG), 3)


@pytest.fixture
def config():
    return TokenizeConfig(vocab_size=1024, sample_chars=300_000, val_fraction=0.1)


@pytest.fixture
def tokenizer(shared_data, config):
    """Trained on the first book only (cached across tests)."""
    return _tokenizer(shared_data(GUTENBERG), config.model_dump_json())


@functools.lru_cache(maxsize=None)
def _tokenizer(path: Path, config_json: str):
    config = TokenizeConfig.model_validate_json(config_json)
    return train_tokenizer(sample_texts([paragraphs_table(read_books(path, 1))], config), config)


def test_round_trip_on_real_books(books, tokenizer, config):
    table = paragraphs_table(books[1:], limit=3000)  # books the BPE was not trained on
    extra = pa.table(
        {
            "id": ["odd-1", "odd-2", "odd-3"],
            "text": ["naïve café — “quotes” 日本語 🙂\ttabs\r\n", "  leading spaces", "x<|endoftext|>y"],
        }
    )
    table = pa.concat_tables([table, extra])
    train, val, counts = encode_table(table, tokenizer, config)
    eot = tokenizer.token_to_id(EOT)
    by_id = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    both = pa.concat_tables([train, val])
    assert both.num_rows == table.num_rows == counts["docs"]
    for doc_id, tokens in zip(both.column("id").to_pylist(), both.column("tokens").to_pylist()):
        assert tokens[-1] == eot
        assert eot not in tokens[:-1], f"{doc_id}: a literal {EOT} in the text must not become the special token"
        assert tokenizer.decode(tokens[:-1], skip_special_tokens=False) == by_id[doc_id]
    assert counts["chars"] == sum(len(t) for t in by_id.values())
    assert counts["train_tokens"] + counts["val_tokens"] == len(
        pa.concat_arrays([c.flatten() for c in both.column("tokens").chunks])
    )
    # BPE compresses real English: well under one token per 2 characters even at vocab 1024.
    assert counts["train_tokens"] + counts["val_tokens"] < counts["chars"] / 2


def test_tokenizer_is_standard_and_special_tokens_first(tokenizer, config):
    spec = json.loads(tokenizer.to_str())
    assert spec["model"]["type"] == "BPE"
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["decoder"]["type"] == "ByteLevel"
    assert [t["content"] for t in spec["added_tokens"]] == SPECIAL_TOKENS + CHAT_TOKENS
    assert all(t["special"] for t in spec["added_tokens"])
    assert tokenizer.get_vocab_size() == config.vocab_size
    assert len(spec["model"]["vocab"]) == config.vocab_size  # what flows/training.py counts


def test_tokenizer_file_is_deterministic(books, config, tmp_path):
    """Same texts, byte-identical tokenizer.json: twice in-process and in a fresh single-threaded process."""
    texts = list(sample_texts([paragraphs_table(books[:1])], config))
    first = train_tokenizer(texts, config).to_str(pretty=True)
    assert train_tokenizer(iter(texts), config).to_str(pretty=True) == first
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys; from pipeline.tokenize import TokenizeConfig, train_tokenizer;"
        "c = TokenizeConfig.model_validate_json(sys.argv[2]);"
        "sys.stdout.write(train_tokenizer(json.load(open(sys.argv[1])), c).to_str(pretty=True))"
    )
    for threads in ("1", "2"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "true"}
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "texts.json"), config.model_dump_json()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert hashlib.sha256(out.encode()).hexdigest() == hashlib.sha256(first.encode()).hexdigest(), threads


def test_sample_texts_takes_the_first_chars_in_order_and_stops_reading(books):
    tables = [paragraphs_table([b]) for b in books]
    config = TokenizeConfig(sample_chars=150_000)
    consumed = []

    def lazily():
        for t in tables:
            consumed.append(t)
            yield t

    sample = list(sample_texts(lazily(), config))
    assert sum(len(s) for s in sample) == 150_000
    everything = [t for tab in tables for t in tab.column("text").to_pylist()]
    assert sample[:-1] == everything[: len(sample) - 1]
    assert everything[len(sample) - 1].startswith(sample[-1])
    assert len(consumed) < len(tables)  # the sample fits in the first book; later ones were never read


def test_split_by_id_hash(books, tokenizer):
    table = paragraphs_table(books, limit=4000)
    config = TokenizeConfig(vocab_size=1024, val_fraction=0.2)
    train, val, counts = encode_table(table, tokenizer, config)
    n = table.num_rows
    assert counts["train_docs"] + counts["val_docs"] == n
    # Binomial(n, 0.2): stay within 4 standard deviations.
    assert abs(counts["val_docs"] - 0.2 * n) < 4 * (n * 0.2 * 0.8) ** 0.5
    assert set(val.column("id").to_pylist()) == {i for i in table.column("id").to_pylist() if val_draw(i) < 0.2}
    # A document's side depends on its id only, not on which shard or neighbours it came with.
    sub_train, sub_val, _ = encode_table(table.slice(1000, 500), tokenizer, config)
    assert set(sub_val.column("id").to_pylist()) <= set(val.column("id").to_pylist())
    assert set(sub_train.column("id").to_pylist()) <= set(train.column("id").to_pylist())
    # Same input and config: identical tables; another seed gives another split.
    again = encode_table(table, tokenizer, config)
    assert again[0].equals(train) and again[1].equals(val) and again[2] == counts
    other = encode_table(table, tokenizer, config.model_copy(update={"seed": 1}))[1]
    assert set(other.column("id").to_pylist()) != set(val.column("id").to_pylist())
    assert encode_table(table, tokenizer, config.model_copy(update={"val_fraction": 0.0}))[1].num_rows == 0
    assert encode_table(table, tokenizer, config.model_copy(update={"val_fraction": 1.0}))[0].num_rows == 0


def test_val_cut_holds_out_a_minimum_on_small_corpora(books, tokenizer):
    table = paragraphs_table(books, limit=4000)
    ids = table.column("id").to_pylist()
    config = TokenizeConfig(vocab_size=1024, val_fraction=0.05, min_val_docs=4)
    # a large corpus: the cut is exactly val_fraction
    assert val_cut(ids, config) == 0.05
    # 12 documents: 5% would hold out none or one; the cut takes the 4 lowest draws, the same in any shard
    small = table.slice(0, 12)
    cut = val_cut(small.column("id").to_pylist(), config)
    lowest = sorted(small.column("id").to_pylist(), key=val_draw)[:4]
    halves = [encode_table(small.slice(o, 6), tokenizer, config, cut)[1] for o in (0, 6)]
    assert sorted(i for h in halves for i in h.column("id").to_pylist()) == sorted(lowest)
    # never every document, and val_fraction 0 means no validation set
    assert val_cut(ids[:3], config.model_copy(update={"min_val_docs": 10})) == pytest.approx(
        sorted(val_draw(i) for i in ids[:3])[1], rel=1e-12
    )
    assert val_cut(ids[:1], config) == 0.05
    assert val_cut(ids[:12], config.model_copy(update={"val_fraction": 0.0})) == 0.0


def test_token_dtype_switch(books, tokenizer):
    assert token_dtype(258) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(2**32) == np.uint32
    table = paragraphs_table(books[:1], limit=200)
    small, _, _ = encode_table(table, tokenizer, TokenizeConfig(vocab_size=1024, val_fraction=0.0))
    large, _, _ = encode_table(table, tokenizer, TokenizeConfig(vocab_size=70_000, val_fraction=0.0))
    assert small.schema.field("tokens").type == pa.list_(pa.uint16())
    assert large.schema.field("tokens").type == pa.list_(pa.uint32())
    assert small.column("tokens").to_pylist() == large.column("tokens").to_pylist()


def test_bad_input(tokenizer):
    config = TokenizeConfig(vocab_size=1024)
    with pytest.raises(ValueError, match="no `text` column"):
        encode_table(pa.table({"id": ["a"]}), tokenizer, config)
    with pytest.raises(ValueError, match="1024 tokens but config.vocab_size is 512"):
        encode_table(pa.table({"id": ["a"], "text": ["b"]}), tokenizer, TokenizeConfig(vocab_size=512))
    damaged = pa.table({"id": ["a", None, "c", "d"], "text": ["one", "two", None, ""]})
    train, val, counts = encode_table(damaged, tokenizer, config.model_copy(update={"val_fraction": 0.0}))
    assert counts["skipped"] == {"null_id": 1, "null_text": 1}
    assert train.column("id").to_pylist() == ["a", "d"]
    assert train.column("tokens").to_pylist()[1] == [tokenizer.token_to_id(EOT)]
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", ""], config)
    with pytest.raises(ValueError):
        TokenizeConfig(vocab_size=100)
    with pytest.raises(ValueError):
        TokenizeConfig(vocab_sise=1000)


def test_default_vocab_is_32768():
    assert TokenizeConfig().vocab_size == 32768


def _upstream_store(root: Path, books: list[dict], shards: int) -> StageDir:
    """A committed document stage of `shards` parquet shards, as the pii stage leaves it."""
    up = Store(str(root)).stage("pii", "fixture")
    table = paragraphs_table(books, limit=3000)
    size = -(-table.num_rows // shards)
    parts = []
    for i in range(shards):
        rel = StageDir.part("data", i, "parquet")
        up.write_parquet(rel, table.slice(i * size, size))
        parts.append({"index": i, "data": rel})
    up.commit({"shards": parts, "counts": {}})
    return up


def test_tokenizer_folder_loads_in_transformers_with_our_ids(books, config, tmp_path):
    """The tokenizer stage's folder, loaded by transformers, encodes real book text to exactly
    encode_table's ids (without the EOT it appends), decodes back, and names EOT and PAD."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from pipeline.tokenize_steps import tokenizer_shard

    _upstream_store(tmp_path, books[:1], 1)
    tokenizer_shard(str(tmp_path), "t", ("pii", "fixture"), [0], config)
    folder = Path(Store(str(tmp_path)).stage("tokenizer", "t").local_path("data"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(["tokenizer.json", *transformers_files()])
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    options = json.loads((folder / "tokenizer_config.json").read_text())
    loaded = [
        AutoTokenizer.from_pretrained(str(folder)),
        PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **options),
    ]
    table = pa.concat_tables(
        [paragraphs_table(books[1:2], limit=500), pa.table({"id": ["odd"], "text": ["naïve 🙂 x<|endoftext|>y\r\n  "]})]
    )
    train, val, _ = encode_table(table, ours, config.model_copy(update={"val_fraction": 0.0}))
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    for hf in loaded:
        assert (hf.eos_token, hf.bos_token, hf.pad_token) == (EOT, EOT, PAD)
        assert (hf.eos_token_id, hf.pad_token_id) == (ours.token_to_id(EOT), ours.token_to_id(PAD))
        for doc_id, tokens in zip(train.column("id").to_pylist(), train.column("tokens").to_pylist()):
            ids = hf(texts[doc_id])["input_ids"]
            assert ids + [hf.eos_token_id] == tokens, doc_id
            assert hf.decode(ids) == texts[doc_id]


def test_encode_threads_switch_and_restore(books, tokenizer, config, monkeypatch):
    """Serial or parallel HF encoding gives the same tokens, and the process's setting comes back."""
    table = paragraphs_table(books[1:2], limit=500)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    results = []
    for parallel in (True, False):
        with encode_threads(parallel):
            assert os.environ["TOKENIZERS_PARALLELISM"] == str(parallel).lower()
            results.append(encode_table(table, tokenizer, config))
        assert "TOKENIZERS_PARALLELISM" not in os.environ
    assert results[0][0].equals(results[1][0]) and results[0][1].equals(results[1][1])
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "maybe")
    with encode_threads(False):
        pass
    assert os.environ["TOKENIZERS_PARALLELISM"] == "maybe"


def test_shard_order_is_a_seeded_permutation():
    order = shard_order(range(40), seed=0)
    assert sorted(order) == list(range(40)) and order != list(range(40))
    assert shard_order(reversed(range(40)), seed=0) == order  # depends on the indexes, not their order
    assert shard_order(range(40), seed=1) != order
    # A fixed function of index and seed: the same order on any machine and in any later run.
    assert shard_order(range(8), seed=0) == sorted(range(8), key=lambda i: val_draw(f"shard/{i}", 0))


@pytest.mark.slow
def test_flow_records_shard_order_and_training_reads_it(prefect_api, books, tmp_path):
    """The tokenize flow (two worker processes) writes train_order into its manifest, and training
    gets its train files in that order; the token files equal encode_table's."""
    from flows.stages import tokenize
    from flows.training import _token_files

    up = _upstream_store(tmp_path, books[:2], 6)
    config = TokenizeConfig(vocab_size=512, sample_chars=200_000, seed=3)
    result = tokenize(up.url(), config, workers_n=2)
    out = Store(str(tmp_path)).stage("tokenize", result["fingerprint"])
    manifest = out.read_manifest()
    assert manifest["train_order"] == shard_order(range(6), seed=3) != list(range(6))
    train, val, vocab = _token_files(out)
    assert train == [out.local_path(StageDir.part("data/train", i, "arrow")) for i in manifest["train_order"]]
    assert val == [out.local_path(StageDir.part("data/val", i, "arrow")) for i in range(6)]
    assert vocab == 512
    tok_dir = Store(str(tmp_path)).stage("tokenizer", manifest["tokenizer"]["fingerprint"])
    tok = Tokenizer.from_file(tok_dir.local_path("data/tokenizer.json"))
    cut = tok_dir.read_manifest()["counts"]["val_cut"]
    for i in range(6):
        want_train, want_val, _ = encode_table(up.read_parquet(StageDir.part("data", i, "parquet")), tok, config, cut)
        assert out.read_arrow(StageDir.part("data/train", i, "arrow")).equals(want_train)
        assert out.read_arrow(StageDir.part("data/val", i, "arrow")).equals(want_val)
