"""What the training tests share (test_train, test_checkpoint, test_distributed): a tiny config, a
corpus of real Gutenberg tokens, and helpers to run and compare runs. The fixtures over these
(corpus, baseline) are in tests/conftest.py, so no test module imports another."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from model.train import TrainConfig, train
from pipeline.tokenize import TokenizeConfig, encode_table, sample_texts, train_tokenizer
from storage import Store

GUTENBERG = "text/gutenberg-top-authors-subset.jsonl.gz"
ROOT = Path(__file__).resolve().parents[1]

CONFIG = TrainConfig(
    model={"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
    optimizer={"learning_rate": 3e-3},
    schedule={"max_steps": 40, "warmup_steps": 5, "min_lr": 3e-4},
    data={"batch_size": 8},
    eval={"interval": 10, "batches": 4},
    log={"interval": 1},
    checkpoint={"interval": 10},
    launch={"device": "cpu"},
)


def build_corpus(path: Path, folder: Path) -> dict:
    """The first 300k chars of one book as paragraph documents: a tokenizer, train and val token files."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        book = json.loads(f.readline())
    paras = [p for p in book["text"][:300_000].split("\n\n") if p.strip()]
    table = pa.table({"id": [f"{book['id']}/{k}" for k in range(len(paras))], "text": paras})
    config = TokenizeConfig(vocab_size=512, sample_chars=200_000, val_fraction=0.1)
    tokenizer = train_tokenizer(sample_texts([table], config), config)
    train_t, val_t, _ = encode_table(table, tokenizer, config)
    out = Store(str(folder)).stage("tokenize", "test")
    tok_path = out.write_bytes("tokenizer.json", tokenizer.to_str().encode())
    return {
        "train": [out.write_arrow("data/train/part-00000.arrow", train_t)],
        "val": [out.write_arrow("data/val/part-00000.arrow", val_t)],
        "vocab": tokenizer.get_vocab_size(),
        "tokenizer": tokenizer,
        "tokenizer_path": tok_path,
        "val_table": val_t,
        "docs": table,
    }


def run(corpus, out: Path, config: TrainConfig = CONFIG, stop_after=None) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    summary = train(
        corpus["train"], corpus["val"], corpus["vocab"], config, str(out), log=events.append, stop_after=stop_after
    )
    return summary, events


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def losses(events: list[dict]) -> dict[int, float]:
    """step -> loss; a resumed run that redoes steps must redo them with the same loss."""
    out: dict[int, float] = {}
    for e in events:
        if "loss" in e:
            assert out.setdefault(e["step"], e["loss"]) == e["loss"], f"step {e['step']} redone differently"
    return out


def train_killed(corpus, out: Path, prelude: str, config: TrainConfig = CONFIG) -> None:
    """Train config in another process that runs `prelude` first (defining log(), which kills it
    somewhere with SIGKILL); checks that it died so."""
    script = (
        "import json, os, signal, sys, torch\n"
        "from model.train import TrainConfig, train\n"
        "a = json.loads(sys.argv[1])\n"
        + prelude
        + "train(a['train'], a['val'], a['vocab'], TrainConfig.model_validate(a['config']), a['out'], log=log)\n"
    )
    args = {
        "train": corpus["train"],
        "val": corpus["val"],
        "vocab": corpus["vocab"],
        "config": config.model_dump(),
        "out": str(out),
    }
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
