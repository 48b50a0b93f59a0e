"""Instruction tuning on the CPU, acceptance size: the book's 935 training records (ch. 7), a small
GPT pretrained on the Gutenberg books as the base; the held-out answer loss before and after, the
share of the 110 test prompts whose greedy answer ends with <|end|>, and the wall time.

    .venv/bin/python benchmarks/sft_cpu.py                      # base from /work/shared-base when there
    .venv/bin/python benchmarks/sft_cpu.py --pretrain-minutes 8 # or pretrain one here first

The base: the newest model.pt under --base-store/train/*/ with the tokenizer of its tokenize output
(another engineer's Gutenberg GPT); without one, a tiny GPT is pretrained here with model.train on
the token files of --base-store/tokenize/*/ (or of a tokenize run of the books in shared/data/text).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import torch
from common import machine

from model.chat import add_chat_tokens
from model.sft import SFTConfig, load_tokenizer, prepare, sft
from model.sft_data import pack
from model.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "instruct", "rasbt-ch07-instruction-data.json")


def find_base(store: str):
    """(model.pt, tokenizer.json) of the newest train output in store that has a model.pt."""
    for model in sorted(glob.glob(os.path.join(store, "train", "*", "model.pt")), key=os.path.getmtime, reverse=True):
        toks = glob.glob(os.path.join(store, "tokenize", "*", "data", "tokenizer.json"))
        manifest = os.path.join(os.path.dirname(model), "manifest.json")
        if os.path.exists(manifest):
            ref = json.load(open(manifest)).get("tokenizer", {})
            named = os.path.join(store, ref.get("stage", ""), ref.get("fingerprint", ""), "data", "tokenizer.json")
            toks = [named] if os.path.exists(named) else toks
        if toks:
            return model, toks[0]
    return None


def pretrain(store: str, out: str, minutes: float):
    """A tiny GPT pretrained with model.train on the store's tokenized books, about `minutes` long."""
    tok_dir = sorted(glob.glob(os.path.join(store, "tokenize", "*", "data")))[0]
    manifest = json.load(open(os.path.join(os.path.dirname(tok_dir), "manifest.json")))
    train_files = sorted(glob.glob(os.path.join(tok_dir, "train", "*.arrow")))
    val_files = sorted(glob.glob(os.path.join(tok_dir, "val", "*.arrow")))
    steps = max(50, int(minutes * 60 / 1.0))  # about 1 s a step on 2 shared cores
    c = TrainConfig(
        model={"block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0},
        schedule={"max_steps": steps, "warmup_steps": 30, "min_lr": 1e-4},
        optimizer={"learning_rate": 2e-3},
        data={"batch_size": 8},
        eval={"interval": steps, "batches": 4},
        checkpoint={"minutes": 0},
        launch={"device": "cpu"},
    )
    res = train(train_files, val_files, manifest["vocab_size"], c, out)
    return os.path.join(out, "model.pt"), os.path.join(tok_dir, "tokenizer.json"), res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-store", default="/work/shared-base/store")
    ap.add_argument("--pretrain-minutes", type=float, default=0, help="pretrain a base here even when one exists")
    ap.add_argument("--out", default="/tmp/sft_cpu")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=0, help="held-out prompts answered (0: all 110)")
    ap.add_argument("--answer-tokens", type=int, default=128)
    ap.add_argument("--tasks", nargs="*", default=[], help="benchmark files scored before and after, both ways")
    ap.add_argument("--task-items", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    found = None if args.pretrain_minutes else find_base(args.base_store)
    pretrained = None
    if found is None:
        model, tokenizer, pretrained = pretrain(
            args.base_store, os.path.join(args.out, "base"), args.pretrain_minutes or 8
        )
    else:
        model, tokenizer = found
    base_cfg = torch.load(model, map_location="cpu", weights_only=True)["config"]
    seq_len = args.seq_len or base_cfg["block_size"]
    c = SFTConfig(
        data={"files": [DATA], "batch_size": args.batch, "seq_len": seq_len},
        optimizer={"learning_rate": args.lr},
        schedule={"max_steps": 1, "warmup_steps": 10, "min_lr": args.lr / 10},
        eval={
            "interval": 50,
            "answer_tokens": args.answer_tokens,
            "prompts": args.prompts,
            "samples": 3,
            "tasks": args.tasks,
            "task_items": args.task_items,
        },  # fmt: skip
        checkpoint={"minutes": 0},
        launch={"device": "cpu"},
    )
    tok = load_tokenizer(tokenizer)
    add_chat_tokens(tok)
    train_ex, _, _, _ = prepare(c, tok)
    rows = len(pack(train_ex, seq_len, 0))
    steps = math.ceil(args.epochs * rows / args.batch)
    c = c.model_copy(update={"schedule": c.schedule.model_copy(update={"max_steps": steps})})
    t1 = time.perf_counter()
    out_dir = os.path.join(args.out, f"sft-{int(time.time())}")
    res = sft(model, tokenizer, c, out_dir)
    t2 = time.perf_counter()
    figures = {
        "machine": machine(),
        "base_model": model,
        "base_shape": {k: base_cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
        "pretrain_seconds": round(t1 - t0, 1) if pretrained else None,
        "records": res["records"],
        "rows": res["rows"],
        "seq_len": seq_len,
        "steps": res["steps"],
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "truncated": res["truncated"],
        "answer_loss_before": res["before"]["answer_loss"],
        "answer_loss_after": res["after"]["answer_loss"],
        "perplexity_before": res["before"]["perplexity"],
        "perplexity_after": res["after"]["perplexity"],
        "end_share_before": res["before"]["end_share"],
        "end_share_after": res["after"]["end_share"],
        "prompts": res["after"]["prompts"],
        "sft_train_seconds": res["timing"]["seconds"],
        "sft_wall_seconds_with_evaluation": round(t2 - t1, 1),
        "tokens_per_s": res["timing"]["tokens_per_s"],
        "tasks": {"before": res["before"].get("tasks"), "after": res["after"].get("tasks")},
        "samples_after": [{k: s[k] for k in ("record", "reference", "answer")} for s in res["after"]["samples"]],
        "samples_before": [s["answer"] for s in res["before"]["samples"]],
    }
    print(json.dumps(figures, indent=1))
    with open(os.path.join(args.out, "sft_cpu.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return (
        0 if figures["end_share_after"] >= 0.95 and figures["answer_loss_after"] < figures["answer_loss_before"] else 1
    )


if __name__ == "__main__":
    sys.exit(main())
