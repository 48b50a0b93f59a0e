"""The tokenize stage's steps: train the BPE once, then encode every shard."""

from __future__ import annotations

import time
from typing import Any

from tokenizers import Tokenizer

from pipeline.shard_steps import commit_stats, read_docs, run_if_needed, stage_dir
from pipeline.tokenize import encode_table, encode_threads, sample_texts, train_tokenizer, val_cut
from storage import StageDir
from storage.tokens import transformers_files


def tokenizer_shard(store_url: str, fp: str, upstream: tuple[str, str], shard_indexes: list[int], config: Any) -> dict:
    """Train the BPE on a deterministic sample of the cleaned corpus; save tokenizer.json and the
    files that make its folder loadable by transformers. Also fix the corpus-wide validation
    cut-off (val_cut), so every encode shard splits by the same rule."""
    out = stage_dir(store_url, "tokenizer", fp)
    up = stage_dir(store_url, *upstream)

    def work():
        t0 = time.perf_counter()
        tables = (read_docs(up, i) for i in shard_indexes)
        tok = train_tokenizer(sample_texts(tables, config), config)
        rel = "data/tokenizer.json"
        out.write_bytes(rel, tok.to_str(pretty=True).encode())
        for name, data in transformers_files().items():
            out.write_bytes(f"data/{name}", data)
        ids = (i for index in shard_indexes for i in read_docs(up, index, ["id"]).column("id").to_pylist())
        counts = {"vocab_size": tok.get_vocab_size(), "val_cut": val_cut(ids, config)}
        return commit_stats(out, 0, {"data": rel}, counts, time.perf_counter() - t0)

    return run_if_needed(out, 0, work)


def encode_shard(
    store_url: str,
    fp: str,
    index: int,
    upstream: tuple[str, str],
    tokenizer_fp: str,
    config: Any,
    parallel: bool = True,
) -> dict:
    """Encode one document shard to train and val token files. `parallel`: whether HF tokenizers
    may use a thread per core in this process (off when there is a worker process per core)."""

    out = stage_dir(store_url, "tokenize", fp)

    def work():
        t0 = time.perf_counter()
        table = read_docs(stage_dir(store_url, *upstream), index)
        tok_dir = stage_dir(store_url, "tokenizer", tokenizer_fp)
        tok = Tokenizer.from_str(tok_dir.read_bytes("data/tokenizer.json").decode())
        cut = tok_dir.read_manifest()["counts"]["val_cut"]
        with encode_threads(parallel):
            train, val, counts = encode_table(table, tok, config, cut)
        outputs = {
            "train": StageDir.part("data/train", index, "arrow"),
            "val": StageDir.part("data/val", index, "arrow"),
        }
        out.write_arrow(outputs["train"], train)
        out.write_arrow(outputs["val"], val)
        return commit_stats(out, index, outputs, counts, time.perf_counter() - t0)

    return run_if_needed(out, index, work)
