"""DPO on the book's preference set (Raschka ch. 7), on the CPU, from our own SFT model: the
held-out reward accuracy and margin over training, the tuned model's preference for the chosen
answers against the reference's, the KL it moved, and what the cached reference log-probs save.

    cd benchmarks && PYTHONPATH=$PWD/.. ../.venv/bin/python dpo_book.py
    cd benchmarks && PYTHONPATH=$PWD/.. ../.venv/bin/python dpo_book.py --sft /path/to/sft-output --lr 5e-6

The SFT model: an sft output folder (model.pt and tokenizer/), by default the acceptance run of
sft_cpu.py kept under /work/shared-base/sft/. The pairs are split as the book splits them (file
order, 935 train / 55 validation / 110 test). The reference's log-probs are computed once
(model.dpo.compute_reference, timed) and given to every run: the first with --beta, the second
with --beta2, as the flow's cached dpo-reference output would be.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from common import machine, markdown_table

from model.dpo import DPOConfig, compute_reference, dpo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "preference", "rasbt-ch07-instruction-data-with-preference.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", default="/work/shared-base/sft/gutenberg-sft-book")
    ap.add_argument("--out", default="/tmp/dpo_book")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--beta2", type=float, default=0.5, help="the second run, on the same reference table")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-interval", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = os.path.join(args.sft, "model.pt"), os.path.join(args.sft, "tokenizer")
    c = DPOConfig(
        data={"files": [DATA], "batch_size": args.batch},
        optimizer={"learning_rate": args.lr},
        schedule={"max_steps": 1, "warmup_steps": 0, "min_lr": args.lr},
        loss={"beta": args.beta},
        eval={"interval": args.eval_interval, "samples": 3},
        checkpoint={"minutes": 0},
        launch={"device": "cpu"},
    )
    t = time.perf_counter()
    table = compute_reference(model, tokenizer, c)
    reference_seconds = time.perf_counter() - t
    train_pairs = int(table.num_rows * (1 - c.data.val_fraction - c.data.test_fraction))
    steps = max(1, round(args.epochs * train_pairs / args.batch))
    runs = []
    for beta in (args.beta, args.beta2):
        rc = c.model_copy(
            update={
                "schedule": c.schedule.model_copy(update={"max_steps": steps}),
                "loss": c.loss.model_copy(update={"beta": beta}),
            }
        )
        t = time.perf_counter()
        res = dpo(model, tokenizer, rc, os.path.join(args.out, f"beta-{beta}-{int(t)}"), reference=table)
        runs.append({"beta": beta, "seconds": round(time.perf_counter() - t, 1), "summary": res})
    first = runs[0]["summary"]
    curve = [
        {
            "step": h["step"],
            "train loss": round(h["loss"], 4),
            "val loss": round(h["val_loss"], 4),
            "val reward accuracy": round(h["val_reward_accuracy"], 4),
            "val margin": round(h["val_margin"], 4),
            "val KL/token": round(h["val_kl_per_token"], 5),
        }
        for h in first["history"]
        if "val_reward_accuracy" in h
    ]
    figures = {
        "machine": machine(),
        "sft_model": args.sft,
        "pairs": first["pairs"],
        "pairs_cut": first["pairs_cut"],
        "max_len": first["max_len"],
        "steps": steps,
        "learning_rate": args.lr,
        "reference_seconds": round(reference_seconds, 1),
        "runs": [
            {
                "beta": r["beta"],
                "seconds": r["seconds"],
                "train_seconds": r["summary"]["timing"]["seconds"],
                "test": r["summary"]["test"],
            }  # fmt: skip
            for r in runs
        ],
        "curve": curve,
        "samples": first.get("samples", []),
    }
    print(json.dumps(figures, indent=1))
    print(markdown_table(list(curve[0]), [list(r.values()) for r in curve]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dpo_book.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
