"""GPT-2's architecture against the modern one, same shapes, same data, same token budget.

    .venv/bin/python benchmarks/arch_comparison.py                  # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/arch_comparison.py --tokens 500000  # shorter

Both models train with the same trainer (model.train.train), the same hyperparameters and seeds,
and the same windows in the same order, on the Gutenberg books in ../shared/data/text
(gutenberg-top-authors-subset: 120 books by 40 authors, PG header and footer cut, ~200-word
documents). The BPE is trained on those books. The score is the loss on books by 8 authors that
are not in the training set (gutenberg-heldout-authors-val), over the same windows for both.
"gpt2" is model.gpt.GPT2 (learned positions, LayerNorm, GELU, tied head). "modern" is
model.gpt.MODERN (RoPE, RMSNorm, SwiGLU, QK-norm, untied head).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch
from common import DATA as SHARED_DATA
from common import machine, markdown_table
from dedup_corpus import windows
from tokenizers import Tokenizer

from model.data import TokenStream
from model.evaluate import load_model
from model.gpt import GPT2, MODERN
from model.train import TrainConfig, train, val_loss
from pipeline.tokenize import TokenizeConfig, encode_table, sample_texts, train_tokenizer
from storage import Store

DATA = Path(SHARED_DATA) / "text"
TRAIN_BOOKS = DATA / "gutenberg-top-authors-subset.jsonl.gz"
HELDOUT_BOOKS = DATA / "gutenberg-heldout-authors-val.jsonl.gz"
ARCHITECTURES = {"gpt2": GPT2, "modern": MODERN}


def token_files(folder: str, vocab_size: int) -> tuple[list[str], list[str], Tokenizer]:
    """Train token files (all training books), held-out token files (the held-out authors) and the
    tokenizer that made them."""
    config = TokenizeConfig(vocab_size=vocab_size, sample_chars=20_000_000, val_fraction=0.0, min_val_docs=0)
    books = pa.Table.from_pylist(windows(TRAIN_BOOKS))
    tokenizer = train_tokenizer(sample_texts([books], config), config)
    stage = Store(folder).stage("tokenize", "arch-comparison")
    train_t, _, _ = encode_table(books, tokenizer, config)
    heldout_t, _, _ = encode_table(pa.Table.from_pylist(windows(HELDOUT_BOOKS)), tokenizer, config)
    return (
        [stage.write_arrow("data/train.arrow", train_t)],
        [stage.write_arrow("data/heldout.arrow", heldout_t)],
        tokenizer,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_500_000, help="training tokens per model")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--heldout-windows", type=int, default=1024, help="held-out windows scored (0: all)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_files, heldout_files, tokenizer = token_files(tmp, args.vocab)
        vocab = tokenizer.get_vocab_size()
        steps = max(1, args.tokens // (args.batch * args.block))
        heldout = TokenStream(heldout_files)
        print(
            f"train tokens available: {len(TokenStream(train_files))}; held-out tokens: {len(heldout)}; "
            f"{steps} steps of {args.batch} x {args.block} tokens",
            flush=True,
        )
        for seed in args.seeds:
            for name, switches in ARCHITECTURES.items():
                config = TrainConfig(
                    model={
                        "block_size": args.block,
                        "n_layer": args.layers,
                        "n_head": args.heads,
                        "n_embd": args.width,
                        **switches,
                    },
                    optimizer={"learning_rate": args.lr},
                    schedule={"max_steps": steps, "warmup_steps": max(1, steps // 10), "min_lr": args.lr / 10},
                    data={"batch_size": args.batch, "seed": seed},
                    eval={"interval": steps, "batches": 0},
                    checkpoint={"interval": steps},
                    launch={"device": "auto"},
                )
                out = str(Path(tmp) / f"{name}-{seed}")
                t0 = time.perf_counter()
                summary = train(train_files, [], vocab, config, out)
                seconds = time.perf_counter() - t0
                model = load_model(str(Path(out) / "model.pt"))
                device = next(model.parameters()).device.type
                n_batches = args.heldout_windows // args.batch if args.heldout_windows else 0
                loss = val_loss(model, heldout, args.block, args.batch, n_batches, device, "auto")
                rows.append(
                    {
                        "arch": name,
                        "seed": seed,
                        "params": summary["params"],
                        "steps": steps,
                        "tokens": summary["tokens_seen"],
                        "final_train_loss": summary["final_train_loss"],
                        "heldout_loss": loss,
                        "seconds": seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    m = machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {torch.__version__}\n")
    print(
        markdown_table(
            [
                "architecture",
                "seed",
                "params",
                "steps",
                "training tokens",
                "final train loss",
                "held-out loss",
                "held-out perplexity",
                "seconds",
            ],
            [
                [
                    r["arch"],
                    r["seed"],
                    f"{r['params']:,}",
                    r["steps"],
                    f"{r['tokens']:,}",
                    f"{r['final_train_loss']:.4f}",
                    f"{r['heldout_loss']:.4f}",
                    f"{math.exp(r['heldout_loss']):.1f}",
                    f"{r['seconds']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    print(json.dumps({"rows": rows, "args": vars(args), "machine": m}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
