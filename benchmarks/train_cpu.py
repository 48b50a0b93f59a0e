"""Training tokens per CPU second on the CPU: our trainer against the nanoGPT-equivalent loop of
benchmarks/train_gpu.py, same shape, same run.

    .venv/bin/python benchmarks/train_cpu.py                  # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/train_cpu.py --rounds 1 --short 2 --long 4   # a smoke run

The figure is process CPU seconds (time.process_time, every thread: the prefetch thread counts) per
training step. Fixed costs (model init, optimizer, token file, first step) are taken out by running
each method twice, for `--short` and for `--long` steps, and dividing the difference of CPU seconds
by the difference of steps. Rounds alternate the two methods (A B A B ...), so drift in the machine's
load hits both; the median over rounds is reported. Threads default to 1: the most stable figure on a
shared machine, and the per-core cost is what a CPU figure is for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch
from common import machine, markdown_table
from train_gpu import baseline, ours

from model.gpt import GPT2

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "vocab_size": 4096}


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    with warnings.catch_warnings():  # ours() also medians its logged step times: none in a short run
        warnings.simplefilter("ignore", RuntimeWarning)
        fn()
    return time.process_time() - t0


def per_step(run, short: int, long: int) -> float:
    """CPU seconds per step, fixed costs taken out."""
    return (cpu_seconds(lambda: run(long)) - cpu_seconds(lambda: run(short))) / (long - short)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--short", type=int, default=4, help="steps of the short run")
    ap.add_argument("--long", type=int, default=16, help="steps of the long run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = {
        "nanoGPT-equivalent loop (GPT-2 arch)": lambda n: baseline(SHAPE, args.batch, n, 0, "cpu", False),
        "ours: model.train (gpt2 arch)": lambda n: ours(SHAPE, GPT2, args.batch, n, 0, "cpu", False),
    }
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.rounds):
        for name, run in methods.items():
            samples[name].append(per_step(run, args.short, args.long))
            print(f"round {r + 1}: {name}: {samples[name][-1]:.3f} CPU s/step", file=sys.stderr)
    tokens = args.batch * SHAPE["block_size"]
    rows = [
        {
            "method": name,
            "cpu_s_per_step": statistics.median(s),
            "samples": s,
            "tokens_per_cpu_s": tokens / statistics.median(s),
        }
        for name, s in samples.items()
    ]
    m = machine()
    print(
        f"\nHost {m['cpu']}, torch {torch.__version__}, {args.threads} thread(s); shape {SHAPE}, batch "
        f"{args.batch}; median of {args.rounds} rounds, steps {args.short} -> {args.long}\n"
    )
    print(
        markdown_table(
            ["method", "CPU s/step", "tokens per CPU s", "vs baseline"],
            [
                [
                    r["method"],
                    f"{r['cpu_s_per_step']:.3f}",
                    f"{r['tokens_per_cpu_s']:,.0f}",
                    f"{r['tokens_per_cpu_s'] / rows[0]['tokens_per_cpu_s']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    print(json.dumps({"rows": rows, "args": vars(args), "machine": m}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
