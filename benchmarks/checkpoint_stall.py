"""How long a checkpoint save stops the training loop: synchronous (write, fsync, rename in the
loop) against async_checkpoint (a CPU snapshot in the loop, the write in a thread), same run.

    .venv/bin/python benchmarks/checkpoint_stall.py                # about 2 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/checkpoint_stall.py --rounds 1 --steps 12   # a quick look

model.train.train on random tokens (one token file in the tokenize stage's format), GPT-2 architecture,
on the CPU, saving every --every steps. The stall is the time the training thread spends in
Saver.save, the one call the loop makes per save (for async: waiting for the save before, if any,
and the snapshot), timed around that call. The wall time of each whole run is shown against a run
that saves only at the end (checkpoint_interval 0, checkpoint_minutes 0). Runs alternate
sync / async / none for --rounds rounds in one process; the first round starts with a warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from common import machine, markdown_table
from train_gpu import token_file

from model import checkpoints
from model.train import TrainConfig, train

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 64, "vocab_size": 8192}


def timed_saves(stalls: list[float]):
    """Saver.save wrapped to record how long each call kept the training thread."""
    real = checkpoints.Saver.save

    def save(self, *a, **k):
        t0 = time.perf_counter()
        real(self, *a, **k)
        stalls.append(time.perf_counter() - t0)

    return real, save


def one_run(folder: str, path: str, steps: int, every: int, mode: str) -> dict:
    config = TrainConfig(
        model={k: v for k, v in SHAPE.items() if k != "vocab_size"},
        schedule={"max_steps": steps, "warmup_steps": 2},
        data={"batch_size": 4},
        eval={"batches": 0},
        log={"interval": every},
        checkpoint={"interval": 0 if mode == "none" else every, "minutes": 0, "async_save": mode == "async"},
        launch={"device": "cpu"},
    )
    stalls: list[float] = []
    real, save = timed_saves(stalls)
    checkpoints.Saver.save = save
    out = tempfile.mkdtemp(dir=folder)
    try:
        t0 = time.perf_counter()
        result = train([path], [], SHAPE["vocab_size"], config, out)
        wall = time.perf_counter() - t0
    finally:
        checkpoints.Saver.save = real
    size = os.path.getsize(os.path.join(out, "checkpoints", "latest.pt"))
    periodic = stalls[:-1]  # the last save (at the end) is waited for anyway: not a stall of training
    return {
        "mode": mode,
        "wall_s": wall,
        "saves": len(stalls),
        "stalls_s": periodic,
        "bytes": size,
        "params": result["params"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="save every this many steps")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, runs = [], {"sync": [], "async": [], "none": []}
    with tempfile.TemporaryDirectory() as folder:
        path = token_file(folder, SHAPE, 200_000)
        one_run(folder, path, 3, 1, "sync")  # warm-up: allocator, thread pools, page cache
        for _ in range(args.rounds):
            for mode in ("sync", "async", "none"):
                runs[mode].append(one_run(folder, path, args.steps, args.every, mode))
    for mode, rs in runs.items():
        stalls = [s for r in rs for s in r["stalls_s"]]
        rows.append(
            [
                mode,
                f"{np.median(stalls) * 1000:.0f}" if stalls else "-",
                f"{max(stalls) * 1000:.0f}" if stalls else "-",
                len(stalls),
                ", ".join(f"{r['wall_s']:.1f}" for r in rs),
            ]
        )
    m = machine()
    size = runs["sync"][0]["bytes"]
    print(
        f"\nShape {SHAPE}, batch 4, {runs['sync'][0]['params']:,} parameters, checkpoint {size / 2**20:.0f} MiB; "
        f"{args.steps} steps, a save every {args.every}; host {m['cpu']}, {m['cores']} cores; torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        markdown_table(
            ["save", "stall per save, median (ms)", "max (ms)", "saves timed", "run wall time per round (s)"], rows
        )
    )
    print(json.dumps({"runs": runs, "args": vars(args), "machine": m}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
