"""Peak memory per rank while an FSDP2 training state loads: the folder of shards that FSDP2 runs
now write (model.sharded_checkpoint) against one file of whole tensors, which FSDP2 resumes read
before (torch.load of the whole file on every rank, then cut to shards).

    .venv/bin/python benchmarks/sharded_checkpoint_memory.py                   # 2 ranks, ~92M params
    .venv/bin/python benchmarks/sharded_checkpoint_memory.py --n-embd 256 --n-layer 4 --vocab 8192

Starts torchrun (2 gloo processes on the CPU) on itself. Each rank builds the GPT, shards it with
FSDP2 (model.distributed.wrap), takes one AdamW step so the moments exist, and saves both layouts.
Then, for each layout, a fresh model and optimizer are built and sharded first (what train() does
before it loads), and the load alone is measured: the growth of the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs just before) over its resident set before the load.
MALLOC_MMAP_THRESHOLD_ is fixed at 128 KiB, so every tensor larger than that is its own mapping and
goes back to the system when freed: memory an earlier step freed cannot hide a load's allocation.
The sharded load is checked bitwise against the saved shards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # on the workers' PYTHONPATH

MIB = 2**20


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(fn) -> int:
    """Bytes the process's peak resident set rose above its resident set before fn() ran."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set (Linux 4.0+)
    before = status_kib("VmRSS")
    fn()
    return (status_kib("VmHWM") - before) * 1024


def local_bytes(tree, seen=None) -> int:
    """Bytes of the tensors a rank holds in tree (a DTensor's local shard only; a tied matrix once)."""
    import torch
    from torch.distributed.tensor import DTensor

    seen = set() if seen is None else seen
    if isinstance(tree, dict):
        return sum(local_bytes(v, seen) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(local_bytes(v, seen) for v in tree)
    if isinstance(tree, DTensor):
        tree = tree.to_local()
    if not isinstance(tree, torch.Tensor) or tree.data_ptr() in seen:
        return 0
    seen.add(tree.data_ptr())
    return tree.numel() * tree.element_size()


def worker(a) -> None:
    import torch
    import torch.distributed as dist

    from model import checkpoints, distributed, sharded_checkpoint
    from model.train import TrainConfig, make_optimizer

    distributed.setup("cpu")
    c = TrainConfig(
        model={"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.n_embd, "block_size": a.block_size},
        launch={"device": "cpu", "nproc_per_node": 2, "parallel": "fsdp"},
    )
    shape = c.gpt_config(a.vocab)

    def build():
        from model.gpt import GPT

        torch.manual_seed(0)
        raw = GPT(shape)
        distributed.wrap(raw, "fsdp", "cpu")
        return raw, make_optimizer(raw, c, "cpu")

    model, optimizer = build()
    torch.manual_seed(1 + distributed.rank())
    x = torch.randint(0, a.vocab, (2, a.block_size))
    model(x, x)[1].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    folder = os.path.join(a.out, "checkpoints")
    saved = sharded_checkpoint.save(folder, 1, model, optimizer, {"step": 1}, keep=2)
    whole_path = os.path.join(a.out, "whole.pt")
    weights, optim = distributed.full_state_dict(model), distributed.full_tensors(optimizer.state_dict())
    if distributed.is_main():
        checkpoints.atomic_save({"model": weights, "optimizer": optim}, whole_path)
    del weights, optim
    dist.barrier()
    shard = local_bytes(model.state_dict()) + local_bytes(optimizer.state_dict()["state"])
    whole = os.path.getsize(whole_path)

    fresh, fresh_opt = build()
    sharded_peak = peak_growth(lambda: sharded_checkpoint.load(saved, fresh, fresh_opt))
    same = all(torch.equal(p.to_local(), q.to_local()) for p, q in zip(model.parameters(), fresh.parameters()))
    same &= all(
        torch.equal(optimizer.state[p][k].to_local(), fresh_opt.state[q][k].to_local())
        for p, q in zip(model.parameters(), fresh.parameters())
        for k in ("exp_avg", "exp_avg_sq")
    )
    del fresh, fresh_opt

    fresh, fresh_opt = build()

    def load_whole():  # the path FSDP2 resumes took before: the whole file on every rank, then cut
        state = torch.load(whole_path, map_location="cpu", weights_only=True)
        fresh_opt.load_state_dict(distributed.shard_optimizer_state(state["optimizer"], fresh_opt))
        del state

    whole_peak = peak_growth(load_whole)
    rows = distributed.gather(
        {
            "rank": distributed.rank(),
            "params": model.num_params(),
            "whole_bytes": whole,
            "shard_bytes": shard,
            "sharded_load_peak": sharded_peak,
            "whole_load_peak": whole_peak,
            "bitwise": bool(same),
        }
    )
    if distributed.is_main():
        with open(os.path.join(a.out, "memory.json"), "w") as f:
            json.dump(rows, f)
    distributed.teardown()


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--out", default="", help="folder for the checkpoints (a temporary one by default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or tmp
        env = {
            **os.environ,
            "MALLOC_MMAP_THRESHOLD_": "131072",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("worker", "out")]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                __file__,
                "--worker",
                f"--out={out}",
                *args,
            ],
            env=env,
            check=True,
        )
        with open(os.path.join(out, "memory.json")) as f:
            rows = json.load(f)
    if argv is None:
        from common import machine, markdown_table  # run as a script: benchmarks/ is on sys.path

        print(json.dumps(machine()))
        print(
            markdown_table(
                [
                    "rank",
                    "params",
                    "whole state MiB",
                    "rank's shard MiB",
                    "sharded load peak MiB",
                    "whole-file load peak MiB",
                    "bitwise",
                ],
                [
                    [
                        r["rank"],
                        f"{r['params']:,}",
                        f"{r['whole_bytes'] / MIB:.1f}",
                        f"{r['shard_bytes'] / MIB:.1f}",
                        f"{r['sharded_load_peak'] / MIB:.1f}",
                        f"{r['whole_load_peak'] / MIB:.1f}",
                        r["bitwise"],
                    ]
                    for r in rows
                ],
            )
        )
    return rows


if __name__ == "__main__":
    main()
