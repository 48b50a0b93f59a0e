"""What checking committed shards costs (issue 16 part 8), against computing them, in the same run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/shard_verify.py              # 1 GiB of token shards
    PYTHONPATH=$PWD .venv/bin/python benchmarks/shard_verify.py --gib 2 --rounds 5

Two stores in a temporary folder on the local disk (--dir):

- real: every top-level *.warc.gz of ../shared/data/warc and the Gutenberg JSONL of
  ../shared/data/text ingested (pipeline.ingest_steps.ingest_shard, one shard per file, the language model
  loaded before the clock starts): the time to compute shards per GB of what they write;
- big: --gib of tokenize-like shards (random uint16 tokens, Arrow IPC, 128 MiB each) written
  through StageDir and committed, so the check is measured on data of a real size.

On each, best of --rounds: the reuse check as a run does it (storage.verify.repair over every shard:
one listing, the stats, sizes and the CRC-32s on a local disk), the same with sizes only (what an
object store gets), and the full verify (storage.verify.verify_outputs, `crawl2llm verify`). Also
the CRC-32 that writing computes (zlib.crc32 over the bytes written) as a share of the write. The
files were just written, so they are in the page cache: a cold read is bounded by the disk instead.
Results with the machine: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import tempfile
import time
import zlib

import numpy as np
import pyarrow as pa
from common import DATA

from pipeline.ingest import IngestConfig, detect_language
from pipeline.ingest_steps import ingest_shard
from pipeline.shard_steps import commit_shard
from storage import Store
from storage.verify import repair, verify_outputs

TEXT = "text/gutenberg-top-authors-subset.jsonl.gz"
SHARD = 128 << 20


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def checks(sd, indexes, rounds: int) -> dict[str, float]:
    def must_be_clean(found):
        assert not found, found

    return {
        "reuse (sizes + CRC-32)": best(lambda: must_be_clean(repair(sd, indexes, print)), rounds),
        "reuse (sizes only)": best(lambda: must_be_clean(repair(sd, indexes, print, crc=False)), rounds),
        "full verify": best(lambda: must_be_clean([p for r in verify_outputs([sd]) for p in r["problems"]]), rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of token shards for the big store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=DATA, help="the shared data folder (default: $CRAWL2LLM_DATA)")
    parser.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.data, "warc", "*.warc.gz"))) + [os.path.join(args.data, TEXT)]
    if not os.path.exists(files[-1]):
        raise SystemExit(f"no {TEXT} in {args.data}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        detect_language("warm up the model")
        real = Store(os.path.join(root, "real"))
        t0 = time.perf_counter()
        for i, path in enumerate(files):
            ingest_shard(
                real.url,
                "fp",
                i,
                [{"url": path, "start": 0, "end": None, "name": os.path.basename(path)}],
                IngestConfig(),
            )
        compute = time.perf_counter() - t0
        sd = real.stage("ingest", "fp")
        nbytes = sum(sum(f["size"] for f in sd.read_shard_stats(i)["files"].values()) for i in range(len(files)))
        report(
            "real: ingest of the WARCs and the JSONL",
            len(files),
            nbytes,
            compute,
            checks(sd, range(len(files)), args.rounds),
        )

        big = Store(os.path.join(root, "big")).stage("tokenize", "fp")
        n = max(1, round(args.gib * (1 << 30) / SHARD))
        tokens = pa.table({"tokens": np.random.default_rng(0).integers(0, 32768, SHARD // 2, dtype=np.uint16)})
        t0 = time.perf_counter()
        for i in range(n):
            big.write_arrow(big.part("data/train", i, "arrow"), tokens)
            commit_shard(big, i, {"index": i, "outputs": {"train": big.part("data/train", i, "arrow")}})
        write = time.perf_counter() - t0
        body = big.read_bytes(big.part("data/train", 0, "arrow"))
        crc = best(lambda: zlib.crc32(body), args.rounds) * n
        print(
            f"\nbig: wrote {n} shards of {len(body) / 2**20:.0f} MiB in {write:.2f} s; CRC-32 while writing "
            f"{crc:.2f} s of that ({100 * crc / write:.1f}%, {n * len(body) / crc / 1e9:.2f} GB/s)"
        )
        report("big: token shards", n, n * len(body), None, checks(big, range(n), args.rounds))


def report(what: str, shards: int, nbytes: int, compute: float | None, timed: dict[str, float]) -> None:
    gb = nbytes / 1e9
    line = f"\n{what}: {shards} shards, {nbytes / 2**20:.1f} MiB of shard files"
    if compute is not None:
        line += f", computed in {compute:.2f} s ({compute / gb:.0f} s per GB written)"
    print(line)
    for name, seconds in timed.items():
        share = f", {100 * seconds / compute:.2f}% of computing them" if compute else ""
        print(f"  {name:<24} {seconds:8.4f} s  {seconds / gb:8.3f} s per GB{share}")


if __name__ == "__main__":
    main()
