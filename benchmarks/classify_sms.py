"""Acceptance run of the classify stage (issue 18): SMS spam, Raschka's ch. 6 task, on a GPT we
pretrain here on CPU, against the book's GPT-2 124M figure (95.67% test accuracy, balanced set).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/classify_sms.py              # pretrain (once) + fine-tune
    PYTHONPATH=$PWD .venv/bin/python benchmarks/classify_sms.py --base-only  # only the shared base model

1. Pretraining (skipped when BASE already holds it): a byte-level BPE (4096 tokens) on the Gutenberg
   top-authors books of ../shared/data/text, their tokens as one tokenize output, the held-out-author
   books as validation, and model.train on CPU for about --pretrain-seconds (the step count is
   measured from a short timing run). Written as a store at BASE/store (tokenize/{fp}, train/{fp},
   each with a committed manifest), so model.source and the classify flow take the train output as
   they take any: other benchmarks (SFT) reuse it. BASE/README.txt says what it is.
2. Fine-tuning (model.classify.classify) on the book's balanced SMS set (747 + 747, split 70/10/20:
   1045/149/300), then on the full imbalanced set (4825 ham, 747 spam): test accuracy, spam F1, the
   confusion matrices, wall times. One JSON line at the end; docs/BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402
from pipeline.tokenize import TokenizeConfig, encode_table, sample_texts, train_tokenizer  # noqa: E402
from storage import Store  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BOOKS = DATA / "text" / "gutenberg-top-authors-subset.jsonl.gz"
HELDOUT = DATA / "text" / "gutenberg-heldout-authors-val.jsonl.gz"
SMS = DATA / "classification" / "SMSSpamCollection.tsv"
BASE = Path("/work/shared-base")
TOKENIZE_FP = "gutenberg-bpe4096"
TRAIN_FP = "gutenberg-gpt-6l192d"
SHAPE = {"block_size": 128, "n_layer": 6, "n_head": 6, "n_embd": 192, "dropout": 0.0}


def _books(path: Path, limit: int | None = None) -> pa.Table:
    """Each book as paragraphs of about 4k characters (rows of a document table)."""
    ids, texts = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                break
            book = json.loads(line)
            text = book["text"]
            for k in range(0, len(text), 4000):
                ids.append(f"{book['id']}/{k // 4000}")
                texts.append(text[k : k + 4000])
    return pa.table({"id": ids, "text": texts})


def train_config(max_steps: int) -> TrainConfig:
    return TrainConfig(
        model=SHAPE,
        optimizer={"learning_rate": 2e-3},
        schedule={"max_steps": max_steps, "warmup_steps": min(100, max_steps // 10), "min_lr": 2e-4},
        data={"batch_size": 16},
        eval={"interval": max(1, max_steps // 4), "batches": 20},
        log={"interval": 50},
        checkpoint={"minutes": 5.0},
        launch={"device": "cpu"},
    )


def pretrain(seconds: float) -> dict:
    """The shared base model: tokenize, time a few steps, train for about `seconds`."""
    store = Store(str(BASE / "store"))
    tok = store.stage("tokenize", TOKENIZE_FP)
    t0 = time.perf_counter()
    if not tok.is_committed():
        books, heldout = _books(BOOKS), _books(HELDOUT, limit=3)
        config = TokenizeConfig(vocab_size=4096, sample_chars=8_000_000, val_fraction=0.0)
        tokenizer = train_tokenizer(sample_texts([books], config), config)
        train_t, _, train_counts = encode_table(books, tokenizer, config, cut=0.0)
        _, val_t, val_counts = encode_table(heldout, tokenizer, config, cut=1.0)
        tok.write_bytes("data/tokenizer.json", tokenizer.to_str().encode(), replace=True)
        tok.write_arrow("data/train/part-00000.arrow", train_t)
        tok.write_arrow("data/val/part-00000.arrow", val_t)
        tok.commit(
            {
                "config": config.model_dump(),
                "code": "benchmarks/classify_sms.py",
                "upstream": {"books": BOOKS.name, "validation": f"{HELDOUT.name} (first 3 books)"},
                "tokenizer": {"stage": "tokenize", "fingerprint": TOKENIZE_FP, "file": "data/tokenizer.json"},
                "vocab_size": tokenizer.get_vocab_size(),
                "train_order": [0],
                "shards": [{"index": 0, "train": "data/train/part-00000.arrow", "val": "data/val/part-00000.arrow"}],
                "counts": {"train": train_counts, "val": val_counts},
            }
        )
    tokenize_s = time.perf_counter() - t0
    manifest = tok.read_manifest()
    vocab = manifest["vocab_size"]
    files = [tok.local_path("data/train/part-00000.arrow")], [tok.local_path("data/val/part-00000.arrow")]
    out = store.stage("train", TRAIN_FP)
    if out.is_committed():
        counts = out.read_manifest()["counts"]
        return {k: counts[k] for k in ("steps", "tokens_seen", "params", "final_train_loss", "final_val_loss")}
    out.fs.makedirs(out.path, exist_ok=True)
    if not os.path.exists(os.path.join(out.path, "planned.json")):  # a fresh start: size the run
        probe = BASE / "timing-probe"
        at: dict[int, float] = {}  # step -> time: steps 4..24, without the setup and the first steps
        probe_config = train_config(24).updated(eval={"batches": 0}, log={"interval": 1}, checkpoint={"minutes": 0})
        train(*files, vocab, probe_config, str(probe), log=lambda e: at.setdefault(e["step"], time.perf_counter()))
        per_step = (at[24] - at[4]) / 20
        shutil.rmtree(probe)
        max_steps = max(100, int(seconds / per_step) // 50 * 50)
        with open(os.path.join(out.path, "planned.json"), "w") as f:
            json.dump({"max_steps": max_steps, "probe_s_per_step": per_step}, f)
    with open(os.path.join(out.path, "planned.json")) as f:
        max_steps = json.load(f)["max_steps"]
    config = train_config(max_steps)
    t2 = time.perf_counter()
    summary = train(*files, vocab, config, out.path, log=lambda e: print(json.dumps(e), file=sys.stderr, flush=True))
    train_s = time.perf_counter() - t2
    with open(os.path.join(out.path, "upstream.json"), "w") as f:
        json.dump({"tokenize": tok.url()}, f)
    timing = summary.pop("timing")
    out.commit(
        {
            "config": config.model_dump(),
            "code": "benchmarks/classify_sms.py",
            "upstream": {"stage": "tokenize", "fingerprint": TOKENIZE_FP},
            "vocab_size": vocab,
            "model": "model.pt",
            "tokenizer": manifest["tokenizer"],
            "counts": summary,
        }
    )
    (BASE / "README.txt").write_text(
        f"""Shared base GPT for the post-training benchmarks (issue 18), written by benchmarks/classify_sms.py
(branch classify) on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.

  store/train/{TRAIN_FP}/model.pt   the pretrained GPT (model.train's model.pt; manifest.json beside it)
  store/tokenize/{TOKENIZE_FP}/     its tokenizer (data/tokenizer.json, byte-level BPE, {vocab} tokens)
                                    and token shards (data/train, data/val)

Pass store/train/{TRAIN_FP} as the source of a post-training stage (model.source.resolve reads it as any
train output: model.pt, tokenizer, validation shards).

Model: GPT-2 architecture, {SHAPE["n_layer"]} layers, {SHAPE["n_head"]} heads, {SHAPE["n_embd"]} wide, context \
{SHAPE["block_size"]}, {summary["params"]:,} parameters.
Data: {BOOKS.name} (120 Project Gutenberg books, every 4,000-character piece a document), validation on the
first 3 books of {HELDOUT.name} (other authors).
Training: {summary["steps"]} steps of 16 x 128 tokens ({summary["tokens_seen"]:,} tokens), AdamW lr 2e-3 cosine
to 2e-4, CPU ({timing["device"]}), {train_s:.0f} s; final train loss {summary["final_train_loss"]:.3f},
validation loss {summary["final_val_loss"]:.3f} (nats/token).
"""
    )
    return {
        "tokenize_s": round(tokenize_s, 1),
        "pretrain_s": round(train_s, 1),
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        "params": summary["params"],
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],
        "train_output": out.url(),
    }


RUNS = {
    # name: (balance, trainable, steps, learning rate); batches of 8 as in the book
    "balanced, all weights": (True, "all", 650, 2e-4),  # 5 epochs of the 1045 training texts
    "balanced, last block + head (the book's choice)": (True, 1, 650, 5e-4),
    "full imbalanced set, all weights": (False, "all", 650, 2e-4),  # 1.3 epochs of 3900
}


def fine_tune(only: list[str] | None = None) -> list[dict]:
    """model.classify.classify on the SMS Spam Collection from the shared base model, each run in a
    fresh folder: test accuracy, spam precision/recall/F1, the confusion matrix, wall seconds."""
    from model.classify import ClassifyConfig, classify

    train_dir = BASE / "store" / "train" / TRAIN_FP
    tok_dir = BASE / "store" / "tokenize" / TOKENIZE_FP / "data"
    rows = []
    for name, (balanced, trainable, steps, lr) in RUNS.items():
        if only and not any(o in name for o in only):
            continue
        config = ClassifyConfig(
            data_file=str(SMS),
            balance=balanced,
            trainable=trainable,
            optimizer={"learning_rate": lr, "weight_decay": 0.1},
            schedule={"max_steps": steps, "warmup_steps": 20, "min_lr": lr / 10},
            data={"batch_size": 8},
            eval={"interval": steps // 5, "batches": 100},
            log={"interval": 50},
            checkpoint={"minutes": 0},
            launch={"device": "cpu"},
        )
        out = Path("/tmp/classify-bench") / name.split(",")[0].replace(" ", "-") / str(len(rows))
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()

        def progress(event: dict, name: str = name) -> None:
            if "val_accuracy" in event:
                print(name, json.dumps(event), file=sys.stderr, flush=True)

        summary = classify(str(train_dir / "model.pt"), str(tok_dir), config, str(out), log=progress)
        seconds = time.perf_counter() - t0
        test = summary["test"]
        rows.append(
            {
                "run": name,
                "split": summary["split"],
                "steps": steps,
                "learning_rate": lr,
                "trainable_params": summary["trainable_params"],
                "train_accuracy": summary["train_accuracy"],
                "validation_accuracy": summary["validation"]["accuracy"],
                "test_accuracy": test["accuracy"],
                "spam": test["per_class"]["spam"],
                "confusion": test["confusion"],
                "val_history": [(h["step"], h["val_accuracy"]) for h in summary["history"] if "val_accuracy" in h],
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-seconds", type=float, default=600.0)
    ap.add_argument("--base-only", action="store_true", help="only pretrain the shared base model")
    ap.add_argument("--threads", type=int, default=1, help="fine-tuning's small matmuls: 1 is fastest on 2 cores")
    ap.add_argument("--only", action="append", help="fine-tune only the runs whose name holds this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "threads": args.threads}
    result["pretrain"] = pretrain(args.pretrain_seconds)
    print(json.dumps(result["pretrain"]), file=sys.stderr)
    if not args.base_only:
        result["fine_tune"] = fine_tune(args.only)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
