"""Tokenization throughput in MB/s per core: the tokenize stage's encode path vs a plain
`Tokenizer.encode_batch` loop over the same texts, same run.

    .venv/bin/python benchmarks/tokenize_throughput.py               # all Gutenberg windows (~39 MB), ~4 min on 2 cores
    .venv/bin/python benchmarks/tokenize_throughput.py --docs 3000   # for development

Corpus: the Gutenberg books in ../shared/data/text cut into ~200-word windows of whole paragraphs
(benchmarks/dedup_corpus.py), written as --shards Parquet shards of a document stage in a throwaway
store. MB = 10**6 bytes of UTF-8 text.

Tokenizer: trained once by the tokenizer stage's step (pipeline.tokenize_steps.tokenizer_shard, vocab 32768,
the default 20 M character sample), not timed.

Ours: pipeline.tokenize_steps.encode_shard on every shard (read Parquet, encode_table with
encode_batch_fast, EOT appended, train/val split, Arrow IPC files written, stats committed). As the
tokenize flow runs it: a thread per worker hands each shard to flows.workers.run, the shared pool of
spawned worker processes, with 1 and with 2 workers. The flow turns HF tokenizers' own threads off
when there is a worker per core and on when there are fewer; both settings are measured.

Baseline: in this process, one `Tokenizer.encode_batch(texts)` per shard over the same texts read
into memory beforehand, the ids taken out of each Encoding; with tokenizers' default threads (one
per core) and with TOKENIZERS_PARALLELISM=false, pinned to one core. `encode_batch_fast`, what ours
calls, is measured the same way to show the cost of the stage around it.

Before timing, ours is checked equal to the baseline: every document's tokens are its
encode_batch ids plus <|endoftext|>. CPU seconds are user + system of every process involved (for
the workers, time.process_time() around each job: all its threads); MB/s per core = MB / CPU s.
--repeat rounds run every configuration once each (so a change in the machine's load hits
all of them); the least wall time and the least CPU time of each are shown. On a shared machine
trust the CPU seconds: wall time there depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
from dedup_corpus import windows  # noqa: E402
from ingest_throughput import cpu_seconds, machine, pin, tidy  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from flows import workers  # noqa: E402
from pipeline.tokenize_steps import encode_shard, tokenizer_shard  # noqa: E402
from pipeline.tokenize import EOT, TokenizeConfig, encode_threads  # noqa: E402
from storage import StageDir, Store  # noqa: E402

UPSTREAM = ("pii", "bench")


def write_corpus(store: str, docs: list[dict], shards: int) -> list[pa.Table]:
    """The documents as `shards` Parquet shards of a document stage, in corpus order."""
    up = Store(store).stage(*UPSTREAM)
    size = -(-len(docs) // shards)
    tables = []
    for i in range(shards):
        part = docs[i * size : (i + 1) * size]
        table = pa.table({"id": [d["id"] for d in part], "text": [d["text"] for d in part]})
        up.write_parquet(StageDir.part("data", i, "parquet"), table)
        tables.append(table)
    return tables


def timed_encode(*args) -> dict:
    """encode_shard in a worker, with the CPU seconds of this process (all its threads) spent on it."""
    cpu0 = time.process_time()
    stats = encode_shard(*args)
    return {**stats, "cpu_s": time.process_time() - cpu0}


def warm_up(n: int) -> None:
    """Start the pool's n processes and import what a shard job imports, outside the clock."""
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: workers.run(_imports, workers=n), range(n)))


def _imports() -> None:
    import tokenizers  # noqa: F401

    import pipeline.tokenize_steps  # noqa: F401
    import pipeline.tokenize  # noqa: F401

    time.sleep(0.5)  # hold this process so the next job starts another


def run_ours(store: str, tok_fp: str, n_shards: int, n: int, parallel: bool, label: str, config) -> dict:
    """Every shard through encode_shard as the tokenize flow maps it: n threads, n worker processes."""
    warm_up(n)
    jobs = [(store, label, i, UPSTREAM, tok_fp, config, parallel) for i in range(n_shards)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        stats = list(pool.map(lambda args: workers.run(timed_encode, *args, workers=n), jobs))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": sum(s["cpu_s"] for s in stats),
        "tokens": sum(s["counts"]["train_tokens"] + s["counts"]["val_tokens"] for s in stats),
    }


def run_plain(tok: Tokenizer, texts: list[list[str]], method: str, parallel: bool, core: int | None) -> dict:
    """The baseline: one encode call per shard's texts, ids taken out of every Encoding."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if not parallel:
        pin(core)
    try:
        with encode_threads(parallel):
            encode = getattr(tok, method)
            cpu0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
            tokens = sum(len(e.ids) for shard in texts for e in encode(shard, add_special_tokens=False))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - cpu0
    finally:
        if allowed is not None:
            os.sched_setaffinity(0, allowed)
    return {"wall_s": wall, "cpu_s": cpu, "tokens": tokens}


def check_equal(store: str, fp: str, tok: Tokenizer, tables: list[pa.Table]) -> int:
    """Ours' tokens of every document == encode_batch ids + EOT. Returns the documents checked."""
    out, eot, n = Store(store).stage("tokenize", fp), tok.token_to_id(EOT), 0
    for i, table in enumerate(tables):
        got = {}
        for kind in ("train", "val"):
            t = out.read_arrow(StageDir.part(f"data/{kind}", i, "arrow"))
            got.update(zip(t.column("id").to_pylist(), t.column("tokens").to_pylist()))
        texts = table.column("text").to_pylist()
        for doc_id, enc in zip(table.column("id").to_pylist(), tok.encode_batch(texts, add_special_tokens=False)):
            if got[doc_id] != enc.ids + [eot]:
                sys.exit(f"ours differs from encode_batch on {doc_id}")
            n += 1
    return n


def commit() -> str:
    """The commit the figures are taken at (+dirty when the benchmark's inputs are edited)."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    dirty = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "pipeline/tokenize.py",
            "pipeline/tokenize_steps.py",
            "benchmarks/tokenize_throughput.py",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    return head.strip() + ("+dirty" if dirty.strip() else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=None, help="first N documents only (default: all)")
    ap.add_argument("--shards", type=int, default=8, help="document shards (default 8)")
    ap.add_argument("--vocab", type=int, default=32768, help="vocabulary size (default 32768)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all configurations (default 3)")
    default_core = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    ap.add_argument("--core", type=int, default=default_core, help="core the one-thread baselines are pinned to")
    args = ap.parse_args()

    docs = windows()[: args.docs]
    store = tempfile.mkdtemp(prefix="c2l-tokenize-bench-")
    try:
        tables = write_corpus(store, docs, args.shards)
        texts = [t.column("text").to_pylist() for t in tables]
        mb = sum(len(s.encode()) for shard in texts for s in shard) / 1e6
        config = TokenizeConfig(vocab_size=args.vocab)
        t0 = time.perf_counter()
        tokenizer_shard(store, "bench", UPSTREAM, list(range(args.shards)), config)
        tok_dir = Store(store).stage("tokenizer", "bench")
        tok_dir.commit({"counts": tok_dir.read_shard_stats(0)["counts"]})  # what the flow's manifest holds
        print(
            f"{len(docs)} documents, {mb:.1f} MB in {args.shards} shards; tokenizer (vocab {args.vocab}) "
            f"trained in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        tok = Tokenizer.from_file(tok_dir.local_path("data/tokenizer.json"))

        load_before = [round(x, 2) for x in os.getloadavg()]
        configs = [
            ("plain `encode_batch`, tokenizers' threads off (1 core)", "plain", "encode_batch", 1, False),
            ("plain `encode_batch`, tokenizers' threads on (default)", "plain", "encode_batch", 1, True),
            ("plain `encode_batch_fast`, threads off (1 core)", "plain", "encode_batch_fast", 1, False),
            ("ours, 1 worker, HF threads on (the flow's choice)", "ours", "", 1, True),
            ("ours, 1 worker, HF threads off", "ours", "", 1, False),
            ("ours, 2 workers, HF threads off (the flow's choice)", "ours", "", 2, False),
            ("ours, 2 workers, HF threads on", "ours", "", 2, True),
        ]
        runs: dict[int, list[dict]] = {k: [] for k in range(len(configs))}
        checked = 0
        for rep in range(args.repeat):  # every configuration once per round, so a change in load hits all
            for k, (label, kind, method, n, parallel) in enumerate(configs):
                if kind == "plain":
                    runs[k].append(run_plain(tok, texts, method, parallel, args.core))
                    continue
                fp = f"w{n}-{'on' if parallel else 'off'}-{rep}"
                runs[k].append(run_ours(store, "bench", args.shards, n, parallel, fp, config))
                if not checked:
                    checked = check_equal(store, fp, tok, tables)
                    print(f"checked: ours == encode_batch ids + EOT on {checked} documents", flush=True)
            print(f"round {rep + 1} of {args.repeat} done", flush=True)
        rows = []
        for k, (label, kind, method, n, parallel) in enumerate(configs):
            wall, cpu = min(r["wall_s"] for r in runs[k]), min(r["cpu_s"] for r in runs[k])
            rows.append(
                {
                    "system": label,
                    "workers": n,
                    "hf_threads": parallel,
                    "mb": mb,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "tokens": runs[k][0]["tokens"],
                    "mb_per_s": mb / wall,
                    "mb_per_core_s": mb / cpu,
                    "wall_s_all": [r["wall_s"] for r in runs[k]],
                    "cpu_s_all": [r["cpu_s"] for r in runs[k]],
                }
            )
        workers.shutdown()
    finally:
        shutil.rmtree(store, ignore_errors=True)

    base = rows[0]["mb_per_core_s"]
    print("\n| system | wall s | CPU s | MB/s | MB/s per core | per core vs plain encode_batch (1 core) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['system']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['mb_per_s']:.2f} | "
            f"{r['mb_per_core_s']:.2f} | {r['mb_per_core_s'] / base:.2f}x |"
        )
    m = machine()
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{len(docs)} documents, {mb:.1f} MB, {rows[0]['tokens']} tokens (without EOT); commit {commit()}")
    print(
        f"machine: {m['cores']} x {m['cpu']}, {m['memory']}, Python {m['python']}; load average before "
        f"{load_before}, after {load_after}"
    )
    print(
        json.dumps(
            tidy(
                {
                    "machine": m,
                    "commit": commit(),
                    "docs": len(docs),
                    "mb": mb,
                    "shards": args.shards,
                    "vocab": args.vocab,
                    "load_avg_before": load_before,
                    "load_avg_after": load_after,
                    "rows": rows,
                }
            )
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
