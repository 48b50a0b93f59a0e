"""Training throughput and MFU of a GPT-2 124M-sized model: our trainer against a nanoGPT-equivalent
loop, same shapes, same device, same run.

    .venv/bin/python benchmarks/train_gpu.py                       # one GPU, about 5 minutes
    .venv/bin/python benchmarks/train_gpu.py --arch modern         # our modern architecture
    .venv/bin/python benchmarks/train_gpu.py --tiny --device cpu   # a smoke run of the script itself

Shapes: 12 layers, 12 heads, width 768, context 1024, vocab 50304 (GPT-2's 50257 padded to a
multiple of 64, as nanoGPT does), bf16 autocast, torch.compile.

- Baseline: the loop nanoGPT's train.py runs, written out here. It uses GPT-2's architecture
  (model.gpt.GPT2 with biases), fused AdamW, SDPA attention, compile, bf16 autocast and gradient
  clipping, with random tokens already on the GPU.
- Ours: model.train.train, the real trainer, at its defaults where the shape leaves them free:
  GPT-2's 50257 ids (vocab_multiple 64 pads them to the same 50304 rows; the padded logits are
  cut off), compile 'auto' (on, on CUDA; --no-compile sets it off), data from memory-mapped Arrow
  token files, the loss guard, MFU logging, checkpoints by checkpoint_minutes (none in a run this
  short but the last, after the timed steps).

Both are timed over the steps after the first `--warmup` (compilation), with the device
synchronized. MFU = flops_per_token x tokens/s / dense peak of the device (model/mfu.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from common import machine, markdown_table

from model.gpt import GPT, GPT2, MODERN, GPTConfig, autocast
from model.mfu import device_name, mfu, peak_flops
from model.train import TrainConfig, make_optimizer, train
from pipeline.tokenize import token_dtype, token_table
from storage import Store

GPT2_124M = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 512}
# The tokenizer's ids ours trains on; its default padding gives the baseline's vocab_size rows.
REAL_VOCAB = {50304: 50257, 512: 500}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline(shape: dict, batch: int, steps: int, warmup: int, device: str, compile_: bool) -> dict:
    """nanoGPT's training step: forward under bf16 autocast, backward, clip, fused AdamW step."""
    torch.manual_seed(0)
    config = GPTConfig(**shape, **GPT2, bias=True)
    model = GPT(config).to(device)
    opt = make_optimizer(model, TrainConfig(optimizer={"learning_rate": 6e-4, "weight_decay": 0.1}), device)
    step_fn = torch.compile(model) if compile_ else model
    x = torch.randint(0, shape["vocab_size"], (batch, shape["block_size"]), device=device)
    y = torch.randint(0, shape["vocab_size"], (batch, shape["block_size"]), device=device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, "auto"):
            _, loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"seconds_per_step": float(np.median(times)), "flops_per_token": model.flops_per_token()}


def token_file(folder: str, shape: dict, tokens: int, vocab: int | None = None) -> str:
    """Random tokens below vocab (default: the shape's) as one token file in the tokenize stage's
    format (one long document)."""
    vocab = vocab or shape["vocab_size"]
    values = np.random.default_rng(0).integers(0, vocab, tokens)
    table = token_table(["random"], [values.astype(token_dtype(vocab))], vocab)
    return Store(folder).stage("tokenize", "random").write_arrow("data/tokens.arrow", table)


LOG_INTERVAL = 5


def ours(shape: dict, arch: dict, batch: int, steps: int, warmup: int, device: str, compile_: bool) -> dict:
    """model.train.train on a token file; the per-step times it logs, after warmup."""
    vocab = REAL_VOCAB.get(shape["vocab_size"], shape["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        path = token_file(tmp, shape, (warmup + steps) * batch * (shape["block_size"] + 1) + 1, vocab)
        config = TrainConfig(
            model={**{k: v for k, v in shape.items() if k != "vocab_size"}, **arch},
            optimizer={"learning_rate": 6e-4},
            schedule={"max_steps": warmup + steps, "warmup_steps": warmup, "min_lr": 6e-5},
            data={"batch_size": batch},
            eval={"batches": 0},
            log={"interval": LOG_INTERVAL},
            launch={"device": device, **({} if compile_ else {"compile": False})},
        )
        assert config.gpt_config(vocab).padded_vocab == shape["vocab_size"]
        events: list[dict] = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = train([path], [], vocab, config, tmp, log=events.append)
    tokens_per_step = batch * shape["block_size"]
    # Each event's tokens/s is the mean over the LOG_INTERVAL steps before it (the default path reads
    # the device only at log steps); the intervals that overlap the warmup are left out.
    times = [
        tokens_per_step / e["tokens_per_s"]
        for e in events
        if "tokens_per_s" in e and e["step"] - LOG_INTERVAL >= warmup
    ]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {
        "seconds_per_step": float(np.median(times)),
        "flops_per_token": result["flops_per_token"],
        "peak_memory_gib": None if peak is None else round(peak / 2**30, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (micro-batch)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation)")
    ap.add_argument("--arch", choices=["gpt2", "modern"], default="gpt2", help="our model's architecture")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape, to check the script on a CPU")
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this benchmark measures a GPU (use --tiny --device cpu to smoke-test)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shape = TINY if args.tiny else GPT2_124M
    compile_ = not args.no_compile
    arch = GPT2 if args.arch == "gpt2" else MODERN
    name = device_name(args.device)
    peak = peak_flops(name, "bfloat16" if args.device == "cuda" else "float32")
    rows = []
    for label, fn in (
        (
            "nanoGPT-equivalent loop (GPT-2 arch)",
            lambda: baseline(shape, args.batch, args.steps, args.warmup, args.device, compile_),
        ),
        (
            f"ours: model.train ({args.arch} arch)",
            lambda: ours(shape, arch, args.batch, args.steps, args.warmup, args.device, compile_),
        ),
    ):
        r = fn()
        tps = args.batch * shape["block_size"] / r["seconds_per_step"]
        rows.append({"method": label, **r, "tokens_per_s": tps, "mfu": mfu(r["flops_per_token"], tps, peak)})
        if args.device == "cuda":
            torch.cuda.empty_cache()
    m = machine()
    print(
        f"\nDevice: {name} (dense peak {peak or 'unknown'} FLOP/s); host {m['cpu']}, torch {torch.__version__}; "
        f"shape {shape}, batch {args.batch}, compile {compile_} (ours: {'auto' if compile_ else False})\n"
    )
    print(
        markdown_table(
            ["method", "ms/step", "tokens/s", "MFU", "vs baseline"],
            [
                [
                    r["method"],
                    f"{1000 * r['seconds_per_step']:.1f}",
                    f"{r['tokens_per_s']:,.0f}",
                    "unknown" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                    f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    print(json.dumps({"rows": rows, "device": name, "args": vars(args), "machine": m}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
