"""Our instruction tuning against TRL's SFTTrainer: the same start, records, order, rows and
hyperparameters, fp32 on the CPU; every step's loss of both, and the throughput of both, same run.

    python3 -m venv /work/trl-venv
    /work/trl-venv/bin/pip install torch==2.13.0 trl transformers datasets accelerate
    cd benchmarks && PYTHONPATH=$PWD/.. ../.venv/bin/python sft_trl_parity.py --steps 50

What is held equal:
- the start: the base model (sft_cpu.py's Gutenberg GPT; its tokenizer has the chat tokens, so the
  model is not grown), exported with model.export.export_hf as GPT2LMHeadModel with the chat template;
- the rows: the book's 935 training records in the chat format, loss on the answers and <|end|>
  (ours: model.chat's mask; TRL: the records as `messages`, rendered by the exported template, whose
  generation marks give its assistant mask, assistant_only_loss on), one record per row (packing off
  on both sides), cut to the model's context (128 ids; TRL: max_length);
- the order: our seeded order (model/batches.py), read off ours and given to TRL as a dataset in that
  order with the sequential sampler;
- the optimizer: fused AdamW (betas, eps 1e-8, weight decay on the 2-D weights, which for GPT-2 is
  also what the HF Trainer decays), gradient clipping, a cosine from lr to min_lr without warmup
  (HF's cosine_with_min_lr), one micro-batch per step, the loss the mean over the batch's trained
  tokens on both sides.
TRL runs from its own venv (benchmarks/trl_sft_peer.py), never from the project's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from common import machine, markdown_table
from sft_cpu import DATA, find_base

from model.batches import EpochBatches
from model.chat import CHAT_TEMPLATE, ChatFormat, add_chat_tokens
from model.evaluate import load_model
from model.export import export_hf
from model.sft import SFTConfig, load_tokenizer, prepare, sft
from model.sft_data import read_records, to_messages

HERE = os.path.dirname(os.path.abspath(__file__))


def row_order(n_rows: int, batch: int, seed: int, steps: int) -> list[int]:
    """The row indices our SFT reads over `steps` batches (model.sft.row_batches' order)."""
    batches = EpochBatches(n_rows, batch, seed, lambda idx: idx)
    return [i for _ in range(steps) for i in batches.next()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-store", default="/work/shared-base/store")
    ap.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    ap.add_argument("--out", default="/tmp/sft_trl_parity")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    found = find_base(args.base_store)
    if found is None:
        print(f"no base model under {args.base_store}/train (run sft_cpu.py --pretrain-minutes 8 first)")
        return 2
    base, tokenizer_file = found
    os.makedirs(args.out, exist_ok=True)
    block = load_model(base).config.block_size
    c = SFTConfig(
        data={"files": [DATA], "batch_size": args.batch, "seq_len": block, "packing": False},
        optimizer={"learning_rate": args.lr, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0},
        schedule={"max_steps": args.steps, "warmup_steps": 0, "min_lr": args.lr / 10},
        eval={"interval": 10 * args.steps, "before": False, "prompts": 1, "answer_tokens": 1, "samples": 0},
        log={"interval": 1},
        checkpoint={"interval": 0, "minutes": 0, "async_save": False},
        launch={"device": "cpu", "dtype": "float32", "compile": False},
    )
    tok = load_tokenizer(tokenizer_file)
    if add_chat_tokens(tok):
        print("the base tokenizer lacks the chat tokens: this comparison needs one that has them")
        return 2
    train_ex, _, _, _ = prepare(c, tok)
    # One record per row and at most `block` ids, so TRL's model sees the same inputs (its context
    # is `block` positions, where ours reads `block` inputs and one more target).
    rows = [(ex.ids[:block], ex.mask[:block]) for ex in train_ex]
    order = row_order(len(rows), args.batch, c.data.seed, args.steps)
    hf_dir = os.path.join(args.out, "hf")
    export_hf(load_model(base), tokenizer_file, hf_dir, CHAT_TEMPLATE)
    # Ours, on rows cut the same way (seq_len block - 1 keeps every record at most block ids).
    c = c.model_copy(update={"data": c.data.model_copy(update={"seq_len": block - 1})})
    events: list[dict] = []
    ours = sft(base, tokenizer_file, c, tempfile.mkdtemp(dir=args.out, prefix="ours-"), log=events.append)
    mine = {e["step"]: e["loss"] for e in events if "loss" in e}
    # TRL renders the records itself, with the exported chat template and its generation marks.
    records = [to_messages(r) for r in read_records(DATA)[: len(train_ex)]]
    fmt = ChatFormat(tok)
    assert all(fmt.render(m)[0] == ex.ids for m, ex in zip(records, train_ex)), "records and examples out of step"
    data = os.path.join(args.out, "rows.json")
    with open(data, "w") as f:
        json.dump([{"messages": records[i]} for i in order], f)
    peer_out = os.path.join(args.out, "trl.json")
    subprocess.run(
        [args.trl_python, os.path.join(HERE, "trl_sft_peer.py"), "--model", hf_dir, "--data", data,
         "--out", peer_out, "--workdir", os.path.join(args.out, "trl-work"), "--batch", str(args.batch),
         "--steps", str(args.steps), "--lr", str(args.lr), "--min-lr", str(args.lr / 10),
         "--weight-decay", "0.1", "--beta1", "0.9", "--beta2", "0.95", "--clip", "1.0",
         "--threads", str(args.threads), "--max-length", str(block)]
        + (["--freeze-biases"] if not load_model(base).config.bias else []),
        check=True,
    )  # fmt: skip
    with open(peer_out) as f:
        peer = json.load(f)
    theirs = peer["losses"]
    rel = [abs(mine[s + 1] - theirs[s]) / abs(theirs[s]) for s in range(min(args.steps, len(theirs)))]
    tokens = sum(len(rows[i][0]) for i in order)
    ours_s = ours["timing"]["seconds"]
    table = [
        [s + 1, f"{mine[s + 1]:.6f}", f"{theirs[s]:.6f}", f"{rel[s]:.2e}"]
        for s in sorted({0, 1, 2, 4, 9, 19, 29, 39, len(rel) - 1})
        if s < len(rel)
    ]
    figures = {
        "machine": machine(),
        "versions": peer["versions"],
        "steps": args.steps,
        "batch": args.batch,
        "max_rel_diff": max(rel),
        "first_step_rel_diff": rel[0],
        "ours_seconds": ours_s,
        "trl_seconds": peer["train_runtime"],
        "tokens": tokens,
        "ours_tokens_per_s": round(tokens / ours_s, 1),
        "trl_tokens_per_s": round(tokens / peer["train_runtime"], 1),
        "trl_lrs_first": peer["lrs"][:3],
    }
    print(json.dumps(figures, indent=1))
    print(markdown_table(["step", "ours", "TRL", "relative difference"], table))
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump({**figures, "ours": mine, "trl": theirs}, f, indent=1)
    return 0 if max(rel) < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
