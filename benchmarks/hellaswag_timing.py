"""How long our scorer takes over the full HellaSwag validation set (10,042 items, 40,168 pairs).

    .venv/bin/python benchmarks/hellaswag_timing.py --model-pt run/model.pt --tokenizer run/tokenizer.json
    .venv/bin/python benchmarks/hellaswag_timing.py --shape gpt2-124m --device cuda     # one GPU
    .venv/bin/python benchmarks/hellaswag_timing.py --shape demo --limit 200           # a smoke run

With --model-pt it scores that trained model with its tokenizer. With --shape it builds a model of
that shape with random weights, and a 32768-token BPE trained on the HellaSwag text itself (the
time does not depend on the weights, only on the shapes and the sequence lengths). Scoring is
model.tasks.evaluate_task, as the evaluate flow runs it. The clock covers tokenizing every
(context, ending) pair and scoring them; loading the file and the model is timed apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from common import HELLASWAG, cpu_seconds, machine
from tokenizers import Tokenizer

from model.evaluate import load_model
from model.gpt import GPT, GPT2, GPTConfig, resolve_device
from model.tasks import evaluate_task, load_task
from pipeline.tokenize import TokenizeConfig, train_tokenizer

SHAPES = {
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024},
    "demo": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default=HELLASWAG, help="HellaSwag JSONL (default: ../shared/data/eval, read in place)")
    p.add_argument("--model-pt", help="a trained model.pt (with --tokenizer)")
    p.add_argument("--tokenizer", help="the model's tokenizer.json")
    p.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-124m", help="random-weight model of this shape")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="first N items only (0: all)")
    args = p.parse_args()
    if not Path(args.file).exists():
        raise SystemExit(f"HellaSwag file not found: {args.file} (set CRAWL2LLM_DATA or --file)")
    device = resolve_device(args.device)

    t = time.perf_counter()
    items = load_task(args.file, args.limit, "hellaswag")
    load_s = time.perf_counter() - t
    if args.model_pt:
        if not args.tokenizer:
            raise SystemExit("--model-pt needs --tokenizer")
        tokenizer, model = Tokenizer.from_file(args.tokenizer), load_model(args.model_pt, device)
        what = f"trained model {args.model_pt}"
    else:
        texts = (f"{it.contexts[0]} {c}" for it in items for c in it.continuations)
        tokenizer = train_tokenizer(texts, TokenizeConfig())
        torch.manual_seed(0)
        shape = {**SHAPES[args.shape], "vocab_size": tokenizer.get_vocab_size()}
        model = GPT(GPTConfig(**shape, **GPT2)).to(device).eval()
        what = f"{args.shape} shape, random weights"
    params = sum(p.numel() for p in model.parameters())

    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    result = evaluate_task(model, tokenizer, items, args.batch_size, device)
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, cpu_seconds(resource.RUSAGE_SELF) - cpu
    print(
        json.dumps(
            {
                "model": what,
                "params": params,
                "block_size": model.config.block_size,
                "device": device,
                "machine": machine(),
                "items": result["items"],
                "pairs": sum(len(i.continuations) for i in items),
                "batch_size": args.batch_size,
                "acc": round(result["acc"], 4),
                "acc_norm": round(result["acc_norm"], 4),
                "load_s": round(load_s, 2),
                "score_wall_s": round(wall, 2),
                "score_cpu_s": round(cpu, 2),
                "items_per_s": round(result["items"] / wall, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
