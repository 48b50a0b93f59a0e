"""Our HellaSwag scorer (model.tasks) against lm-evaluation-harness's: same exported model, same items.

    .venv/bin/python benchmarks/hellaswag_lm_eval.py               # 2 small models, ~10 min on 2 idle cores
    .venv/bin/python benchmarks/hellaswag_lm_eval.py --arch modern --block 128 --tokens 500000 --limit 9000
    .venv/bin/python benchmarks/hellaswag_lm_eval.py --model-pt run/model.pt --tokenizer run/tokenizer.json

Each model has the demo's shape (context --block) and is trained with the project's trainer on the
Gutenberg books (arch_comparison's token files). It is exported with model.export.export_hf (modern
-> Qwen3ForCausalLM, gpt2 -> GPT2LMHeadModel) and scored on the first --limit items of the local
HellaSwag file twice: by model.tasks.evaluate_task on our GPT, and by `lm_eval --model hf` on the
exported folder with the lm-eval task `hellaswag_local` this script writes (TASK_YAML: the same
prompt, reading the HellaSwag file in ../shared/data), offline. `--write-task DIR` only writes that
task, for running lm_eval by hand (README). lm-eval is not a project dependency; it runs from its
own venv (--lm-eval):

    python3 -m venv /work/lmeval-venv
    /work/lmeval-venv/bin/pip install "lm_eval[hf]==0.4.13" torch==2.13.0 transformers==5.24.0

Per item, the four log likelihoods of both scorers are compared too (lm-eval's --log_samples).
lm-eval stops with an AssertionError on a continuation longer than the model's context, which ours
scores by its end: with --block 64 some HellaSwag endings are that long, so use 128 or more.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import arch_comparison
import torch
from common import HELLASWAG, machine, markdown_table
from tokenizers import Tokenizer

from model.evaluate import load_model
from model.export import export_hf
from model.tasks import accuracy, choice_scores, encode_pair, load_task, picks
from model.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
# HellaSwag validation from the local file with the prompt model.tasks builds: "<activity_label>:
# <ctx>", each ending scored after a space, acc and acc_norm (by characters).
TASK_YAML = """task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
test_split: null
doc_to_text: "{{{{activity_label}}}}: {{{{ctx}}}}"
doc_to_choice: endings
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
# The demo's model (flows/demo.py): 4 x 128 wide, 4096-token BPE, 16 sequences a step at lr 3e-3.
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128}
VOCAB, BATCH, LR = 4096, 16, 3e-3


def train_models(folder: str, args) -> tuple[dict[str, str], str]:
    """model.pt of each --arch, trained on the Gutenberg token files, and the tokenizer file
    (models already in `folder` are reused, so a rerun with --work skips training)."""
    tokenizer_file = str(Path(folder) / "tokenizer.json")
    models = {name: str(Path(folder) / name / "model.pt") for name in args.arch}
    if all(os.path.exists(f) for f in [tokenizer_file, *models.values()]):
        return models, tokenizer_file
    train_files, _, tokenizer = arch_comparison.token_files(folder, VOCAB)
    tokenizer.save(tokenizer_file)
    vocab = tokenizer.get_vocab_size()
    steps = max(1, args.tokens // (BATCH * args.block))
    for name in args.arch:
        config = TrainConfig(
            model={"block_size": args.block, **SHAPE, **arch_comparison.ARCHITECTURES[name]},
            optimizer={"learning_rate": LR},
            schedule={"max_steps": steps, "warmup_steps": max(1, steps // 10), "min_lr": LR / 10},
            data={"batch_size": BATCH},
            eval={"interval": steps, "batches": 0},
            checkpoint={"interval": steps},
            launch={"device": "cpu"},
        )
        out = str(Path(folder) / name)
        t0 = time.perf_counter()
        summary = train(train_files, [], vocab, config, out)
        print(
            f"trained {name}: {summary['params']:,} params, {steps} steps, loss {summary['final_train_loss']:.3f},"
            f" {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return models, tokenizer_file


def ours(model, tokenizer_file: str, items: list, batch: int) -> dict:
    """acc/acc_norm of our scorer with its CPU and wall time, and every choice's log likelihood."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    cpu0, t0 = time.process_time(), time.perf_counter()
    lls = choice_scores(model, tokenizer, items, batch, "cpu")
    result = accuracy(items, lls) | {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - t0}
    pairs = [encode_pair(tokenizer, c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
    return result | {"lls": lls, "truncated": sum(len(c) + len(k) > model.config.block_size + 1 for c, k in pairs)}


def long_endings(tokenizer_file: str, limit: int, blocks=(64, 96, 128, 160)) -> dict[int, tuple[int, int]]:
    """Per context: how many endings alone are longer than it (lm-eval stops with an AssertionError on
    one), among the pairs of the first `limit` items and among all pairs."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    lengths = [
        len(encode_pair(tokenizer, c, k)[1])
        for it in load_task(HELLASWAG, 0)
        for c, k in zip(it.contexts, it.continuations)
    ]
    first = lengths[: 4 * limit]
    return {b: (sum(n > b for n in first), sum(n > b for n in lengths)) for b in blocks}


def write_task(folder: str) -> str:
    """The lm-eval task folder holding hellaswag_local.yaml, with the data file's absolute path."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "hellaswag_local.yaml").write_text(TASK_YAML.format(data=Path(HELLASWAG).resolve()))
    return folder


def lm_eval(lm_eval_bin: str, hf_dir: str, folder: str, limit: int, batch: int) -> dict:
    """lm-eval's acc/acc_norm on the exported folder, offline, with its per-item log likelihoods."""
    tasks, out = write_task(str(Path(folder) / "tasks")), Path(folder) / "lm_eval_out"
    cmd = [
        lm_eval_bin,
        "--model",
        "hf",
        "--model_args",
        f"pretrained={hf_dir},dtype=float32",
        "--tasks",
        "hellaswag_local",
        "--include_path",
        str(tasks),
        "--limit",
        str(limit),
        "--device",
        "cpu",
        "--batch_size",
        str(batch),
        "--log_samples",
        "--output_path",
        str(out),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise RuntimeError(f"lm_eval failed ({run.returncode}):\n{run.stderr[-4000:]}")
    newest = lambda pattern: max(glob.glob(f"{out}/**/{pattern}", recursive=True), key=os.path.getmtime)  # noqa: E731
    metrics = json.loads(Path(newest("results_*.json")).read_text())["results"]["hellaswag_local"]
    samples = [json.loads(line) for line in open(newest("samples_hellaswag_local_*.jsonl"))]
    samples.sort(key=lambda s: s["doc_id"])
    return {
        "items": len(samples),
        "acc": metrics["acc,none"],
        "acc_norm": metrics["acc_norm,none"],
        "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "wall_s": wall,
        "lls": [[float(r[0][0]) for r in s["resps"]] for s in samples],
        "per_item": [(s["acc"], s["acc_norm"]) for s in samples],
        "command": " ".join(cmd),
    }


def compare(a: dict, b: dict, items: list) -> dict:
    """Share of items where both pick the same ending (acc, acc_norm) and where lm-eval's own
    right/wrong verdicts equal ours, and the largest gap between the two log likelihoods."""
    same = same_norm = verdicts = 0
    gap = 0.0
    for x, y, it, v in zip(a["lls"], b["lls"], items, b["per_item"]):
        mine, theirs = picks(it, x), picks(it, y)
        same += mine[0] == theirs[0]
        same_norm += mine[1] == theirs[1]
        verdicts += (mine[0] == it.gold, mine[1] == it.gold) == (v[0] == 1, v[1] == 1)
        gap = max(gap, max(abs(p - q) for p, q in zip(x, y)))
    n = len(items)
    return {"agree_acc": same / n, "agree_acc_norm": same_norm / n, "same_verdicts": verdicts / n, "max_ll_gap": gap}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2000, help="first N HellaSwag items")
    ap.add_argument("--arch", nargs="+", choices=list(arch_comparison.ARCHITECTURES), default=["modern", "gpt2"])
    ap.add_argument("--model-pt", help="score this model.pt instead of training (needs --tokenizer)")
    ap.add_argument("--tokenizer", help="tokenizer.json of --model-pt")
    ap.add_argument(
        "--lm-eval",
        default=os.environ.get("LM_EVAL", "/work/lmeval-venv/bin/lm_eval"),
        help="lm_eval executable of the separate venv",
    )
    ap.add_argument(
        "--work",
        help="keep models, exports and lm-eval outputs here (a rerun reuses the trained "
        "models); default: a temporary folder",
    )
    ap.add_argument("--eval-batch", type=int, default=32, help="sequences per forward pass, both scorers")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per model")
    ap.add_argument("--block", type=int, default=256, help="context of the trained models (128 or more)")
    ap.add_argument("--write-task", metavar="DIR", help="only write the lm-eval task hellaswag_local into DIR")
    ap.add_argument(
        "--long-endings",
        action="store_true",
        help="only count, with --tokenizer, the endings longer "
        "than contexts 64-160 tokens (in the first --limit items; in all)",
    )
    args = ap.parse_args()
    if args.write_task:
        print(write_task(args.write_task))
        return 0
    if args.long_endings:
        if not args.tokenizer:
            ap.error("--long-endings needs --tokenizer")
        for block, (first, every) in long_endings(args.tokenizer, args.limit).items():
            print(f"context {block}: {first} of the first {4 * args.limit:,} pairs, {every} of all, end alone longer")
        return 0
    if args.model_pt and not args.tokenizer:
        ap.error("--model-pt needs --tokenizer")
    items = load_task(HELLASWAG, args.limit)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or tmp
        if args.model_pt:
            models, tokenizer_file = {Path(args.model_pt).parent.name or "model": args.model_pt}, args.tokenizer
        else:
            models, tokenizer_file = train_models(tmp, args)
        for name, model_pt in models.items():
            hf_dir = str(Path(tmp) / f"{name}-hf")
            model = load_model(model_pt)
            config = export_hf(model, tokenizer_file, hf_dir)
            a = ours(model, tokenizer_file, items, args.eval_batch)
            print(f"{name} ours: acc {a['acc']:.4f} acc_norm {a['acc_norm']:.4f} ({a['cpu_s']:.1f} CPU s)", flush=True)
            b = lm_eval(args.lm_eval, hf_dir, str(Path(tmp) / f"{name}-lm-eval"), args.limit, args.eval_batch)
            print(
                f"{name} lm-eval: acc {b['acc']:.4f} acc_norm {b['acc_norm']:.4f} ({b['cpu_s']:.1f} CPU s)\n"
                f"  {b['command']}",
                flush=True,
            )
            c = compare(a, b, items)
            rows.append(
                {
                    "model": name,
                    "arch": config["architectures"][0],
                    "params": model.num_params(),
                    "items": a["items"],
                    "lm_eval_items": b["items"],
                    "truncated_pairs": a["truncated"],
                    **{f"ours_{k}": a[k] for k in ("acc", "acc_norm", "cpu_s", "wall_s")},
                    **{f"lm_eval_{k}": b[k] for k in ("acc", "acc_norm", "cpu_s", "wall_s")},
                    **c,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    m = machine()
    print(
        f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {torch.__version__}, "
        f"1-minute load average at the end {os.getloadavg()[0]:.1f} (this run alone makes about 2)\n"
    )
    print(
        markdown_table(
            ["model", "exported as", "params", "items", "scorer", "acc", "acc_norm", "CPU s", "wall s", "items/s"],
            [
                [
                    r["model"],
                    r["arch"],
                    f"{r['params']:,}",
                    r["items"],
                    label,
                    f"{r[who + '_acc']:.4f}",
                    f"{r[who + '_acc_norm']:.4f}",
                    f"{r[who + '_cpu_s']:.1f}",
                    f"{r[who + '_wall_s']:.1f}",
                    f"{r['items'] / r[who + '_wall_s']:.0f}",
                ]
                for r in rows
                for who, label in (("ours", "ours (model.tasks)"), ("lm_eval", "lm-eval (hf)"))
            ],
        )
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "acc diff (points)",
                "acc_norm diff (points)",
                "same pick, acc",
                "same pick, acc_norm",
                "same per-item verdicts",
                "max log-likelihood gap",
                "pairs truncated",
            ],
            [
                [
                    r["model"],
                    f"{100 * (r['ours_acc'] - r['lm_eval_acc']):+.2f}",
                    f"{100 * (r['ours_acc_norm'] - r['lm_eval_acc_norm']):+.2f}",
                    f"{r['agree_acc']:.2%}",
                    f"{r['agree_acc_norm']:.2%}",
                    f"{r['same_verdicts']:.2%}",
                    f"{r['max_ll_gap']:.2e}",
                    r["truncated_pairs"],
                ]
                for r in rows
            ],
        )
    )
    print(json.dumps({"rows": rows, "args": vars(args), "machine": m}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
