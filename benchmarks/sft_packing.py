"""Packing against one example per padded row, for instruction tuning on the CPU: the same records,
epochs, batch size and learning rate, laid out both ways (model.sft_data.pack); rows per epoch,
the share of row positions that are padding, wall time and the held-out answer loss after.

    cd benchmarks && PYTHONPATH=$PWD/.. ../.venv/bin/python sft_packing.py --epochs 2

Packing puts several examples in a row with attention that never crosses them (a block-diagonal
mask from the segment ids) and positions restarting at 0 in each; padded rows use the same mask
code, so what differs is only how many rows an epoch costs. The base is sft_cpu.py's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from common import machine, markdown_table
from sft_cpu import DATA, find_base

from model.chat import add_chat_tokens
from model.sft import SFTConfig, load_tokenizer, prepare, sft
from model.sft_data import pack


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-store", default="/work/shared-base/store")
    ap.add_argument("--out", default="/tmp/sft_packing")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    found = find_base(args.base_store)
    if found is None:
        print(f"no base model under {args.base_store}/train (run sft_cpu.py --pretrain-minutes 8 first)")
        return 2
    model, tokenizer = found
    seq_len = torch.load(model, map_location="cpu", weights_only=True)["config"]["block_size"]
    results = []
    for packing in (True, False):
        c = SFTConfig(
            data={"files": [DATA], "batch_size": args.batch, "seq_len": seq_len, "packing": packing},
            optimizer={"learning_rate": args.lr},
            schedule={"max_steps": 1, "warmup_steps": 10, "min_lr": args.lr / 10},
            eval={"interval": 10_000, "answer_tokens": 1, "prompts": 1, "samples": 0, "before": False},
            checkpoint={"minutes": 0},
            launch={"device": "cpu"},
        )
        tok = load_tokenizer(tokenizer)
        add_chat_tokens(tok)
        rows = pack(prepare(c, tok)[0], seq_len, 0, packing)
        filled = int((rows.segments > 0).sum())
        steps = math.ceil(args.epochs * len(rows) / args.batch)
        c = c.model_copy(update={"schedule": c.schedule.model_copy(update={"max_steps": steps})})
        t0 = time.perf_counter()
        res = sft(model, tokenizer, c, os.path.join(args.out, f"packing-{packing}-{int(t0)}"))
        results.append(
            {
                "layout": "packed" if packing else "one example per row",
                "rows per epoch": len(rows),
                "padding share": round(1 - filled / rows.tokens.numel(), 4),
                "steps": res["steps"],
                "train seconds": res["timing"]["seconds"],
                "held-out answer loss": round(res["after"]["answer_loss"], 4),
                "wall seconds": round(time.perf_counter() - t0, 1),
            }
        )
    print(json.dumps({"machine": machine(), "base": model, "epochs": args.epochs, "results": results}, indent=1))
    print(markdown_table(list(results[0]), [list(r.values()) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
