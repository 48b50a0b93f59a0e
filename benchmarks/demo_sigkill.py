"""SIGKILL the demo from outside during dedup, tokenize and training; check the re-run's bytes.

    .venv/bin/python benchmarks/demo_sigkill.py [--work DIR]

1. Runs `crawl2llm demo` uninterrupted into a store, then moves that store aside as A.
2. Puts a copy of A's crawl output into a new store B at the same path (ingest records its source
   files' paths; the crawl is a live fetch whose WARC dates differ between runs, and its own resume
   is tested in tests/test_crawl.py), so every later stage has the same input.
3. Starts the demo on B three times and kills its whole process group with SIGKILL as soon as the
   target stage is seen at work in the store (its folder exists, its manifest does not; for
   training, once a checkpoint is written).
4. Runs the demo on B to the end and compares every manifest, token shard and model.pt with A's.

Uses 127.0.0.1:4200 (Prefect) and 8765 (pydoc) like the demo: stop other servers first.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, ".venv", "bin", "crawl2llm")


def at_work(store: str, stage: str, inner: str = "") -> bool:
    """The stage has started writing and has not committed."""
    started = glob.glob(os.path.join(store, stage, "*", inner, "*"))
    return bool(started) and not glob.glob(os.path.join(store, stage, "*", "manifest.json"))


TARGETS = {  # what "during this stage" means, seen from the store
    "dedup": lambda s: at_work(s, "dedup-signatures") or at_work(s, "dedup-clusters") or at_work(s, "dedup"),
    "tokenize": lambda s: at_work(s, "tokenizer") or at_work(s, "tokenize"),
    "train": lambda s: at_work(s, "train", "checkpoints"),
}


def demo(store: str, cwd: str, kill_when=None) -> tuple[int, float]:
    """Run the demo; with kill_when, SIGKILL its process group once kill_when(store) holds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [CLI, "demo", "--store", store],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while proc.poll() is None:
        if kill_when and kill_when(store):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.05)
    return proc.returncode, round(time.monotonic() - t0, 1)


def committed(store: str) -> dict[str, bytes]:
    """Manifests, token shards and the model: what an uninterrupted run commits."""
    out = {}
    for path in sorted(glob.glob(os.path.join(store, "**", "*"), recursive=True)):
        rel = os.path.relpath(path, store)
        if os.path.isfile(path) and (
            path.endswith(("manifest.json", ".arrow", "model.pt", ".parquet")) and "checkpoints" not in rel
        ):
            with open(path, "rb") as f:
                out[rel] = f.read()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="folder for the two stores (default: a new temporary folder)")
    args = ap.parse_args()
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="c2l-sigkill-"))
    os.makedirs(work, exist_ok=True)
    a, b = os.path.join(work, "uninterrupted"), os.path.join(work, "store")
    report: dict = {"work": work}

    rc, report["uninterrupted_s"] = demo(b, work)
    if rc != 0:
        print(f"uninterrupted demo failed with exit code {rc}", file=sys.stderr)
        return 1
    os.rename(b, a)
    shutil.copytree(os.path.join(a, "crawl"), os.path.join(b, "crawl"))

    for stage, when in TARGETS.items():
        rc, seconds = demo(b, work, kill_when=when)
        report[f"killed_in_{stage}"] = {"exit": rc, "after_s": seconds}
        if rc != -signal.SIGKILL:
            print(f"the demo was not killed during {stage} (exit {rc}): it finished or failed first", file=sys.stderr)
            return 1

    rc, report["resumed_s"] = demo(b, work)
    if rc != 0:
        print(f"resumed demo failed with exit code {rc}", file=sys.stderr)
        return 1
    files_a, files_b = committed(a), committed(b)
    report["files_compared"] = len(files_a)
    report["missing_or_extra"] = sorted(set(files_a) ^ set(files_b))
    report["different"] = sorted(k for k in set(files_a) & set(files_b) if files_a[k] != files_b[k])
    print(json.dumps(report, indent=2))
    subprocess.run([CLI, "server", "stop"], cwd=work, stdout=subprocess.DEVNULL)
    return 0 if not report["missing_or_extra"] and not report["different"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
