"""Peak memory of dedup's clustering steps on millions of synthetic signatures, against the budget.

    .venv/bin/python benchmarks/dedup_memory.py                      # 2M signatures, 2048 MiB budget
    .venv/bin/python benchmarks/dedup_memory.py --docs 200000 --memory-mb 256

Signatures. --docs MinHash signatures (num_perm 112) in --shards shards, made without text: a
document's signature is a pseudo-random function of a template number. 88% of documents have their
own template; 10% are near copies of an earlier document's template (each value replaced by a
random one with probability 0.08, estimated Jaccard about 0.92); 2% are exact copies (same
signature and same content hash). Written to a throwaway store with the stage's own code
(pipeline.dedup_steps.commit_signatures: signature file and bucket keys sorted by key, read in the
key-range partitions that DedupConfig(memory_mb=...) picks for this corpus size).

Measured: every step runs as the flow's worker runs it, one task per fresh process: step 1's
bucket keys and writes per shard (signatures made in the same process), step 2
(pipeline.dedup_steps.pairs_shard) per partition, step 3 (pipeline.dedup_steps.cluster_shard) once. Peak
memory per step, the largest over its tasks: peak RSS is each process's VmHWM, which counts the
pages of the memory-mapped signature files a step touched (the kernel can drop those under
pressure); peak anonymous is the largest RssAnon sampled every 5 ms during the step's work (what
the step allocated itself, beside the ~100 MiB of imported libraries). In step 1 the synthetic
signatures are made before the measured work starts, but they stay in the process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from ingest_throughput import machine, vm_hwm_kib  # noqa: E402

NUM_PERM = 112


def _mix(x: np.ndarray) -> np.ndarray:
    from pipeline.minhash import fmix64

    return fmix64(x.astype(np.uint64))


class AnonPeak:
    """Samples this process's anonymous resident memory (RssAnon: what it allocated, as opposed to
    pages of memory-mapped files, which the kernel can drop) every 5 ms and keeps the largest."""

    def __init__(self):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
            self.peak_kib = max(self.peak_kib, kib)
            self._stop.wait(0.005)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def synthetic_shard(shard: int, rows: int, seed: int):
    """Signatures of one shard: (id, content_hash, shingles, minhash) as the stage stores them."""
    import pyarrow as pa

    from pipeline.dedup import signature_schema

    rng = np.random.default_rng([seed, shard])
    g = np.arange(shard * rows, (shard + 1) * rows, dtype=np.int64)  # corpus positions
    kind = rng.random(rows)
    template = g.copy()
    copy = (kind < 0.12) & (g > 0)
    template[copy] = (rng.random(copy.sum()) * g[copy]).astype(np.int64)  # an earlier document
    cells = template[:, None].astype(np.uint64) * np.uint64(NUM_PERM) + np.arange(NUM_PERM, dtype=np.uint64)
    sig = (_mix(cells) >> np.uint64(32)).astype(np.uint32)
    near = copy & (kind >= 0.02)
    noise = (rng.random((rows, NUM_PERM)) < 0.08) & near[:, None]
    sig[noise] = rng.integers(0, 2**32, noise.sum(), dtype=np.uint64).astype(np.uint32)
    exact = copy & (kind < 0.02)
    content = np.where(exact, template, g).astype(np.uint64)
    hashes = np.stack([_mix(content), _mix(content ^ np.uint64(0xABCDEF))], 1).view(np.uint8).reshape(-1)
    ids = pa.array([f"s{shard}-{r}" for r in range(rows)], pa.string())
    return pa.table(
        [
            ids,
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, pa.py_buffer(hashes)]),
            pa.array(np.ones(rows, np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1)), NUM_PERM),
        ],
        schema=signature_schema(NUM_PERM),
    )


def step1(store: str, fp: str, shard: int, rows: int, seed: int, memory_mb: int) -> dict:
    from pipeline.dedup_steps import commit_signatures, stage_dir

    sigs = synthetic_shard(shard, rows, seed)
    out = stage_dir(store, "dedup-signatures", fp)
    return measured(lambda config: commit_signatures(out, shard, sigs, config, time.perf_counter()), memory_mb)


def step2(store: str, fp: str, sig_fp: str, partition: int, partitions: int, shards: list[int], memory_mb: int) -> dict:
    from pipeline.dedup_steps import pairs_shard

    return measured(lambda config: pairs_shard(store, fp, partition, partitions, sig_fp, shards, config), memory_mb)


def step3(store: str, fp: str, pairs_fp: str, sig_fp: str, shards: list[int], memory_mb: int) -> dict:
    from pipeline.dedup_steps import cluster_shard

    return measured(lambda config: cluster_shard(store, fp, pairs_fp, sig_fp, shards, config), memory_mb)


def measured(step, memory_mb: int) -> dict:
    """Run one stage step, given DedupConfig(memory_mb=...): its time, memory and counts."""
    from pipeline.dedup import DedupConfig

    t0, anon = time.perf_counter(), AnonPeak()
    stats = step(DedupConfig(memory_mb=memory_mb))
    return {
        "seconds": time.perf_counter() - t0,
        "peak_mib": vm_hwm_kib() / 1024,
        "anon_mib": anon.stop(),
        "counts": stats["counts"],
    }


def in_fresh_processes(fn, jobs: list[tuple], workers: int) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--memory-mb", type=int, default=2048, help="DedupConfig.memory_mb, the budget")
    ap.add_argument("--workers", type=int, default=1, help="processes at once (peaks are per process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="store folder (default: a temporary one, removed after)")
    args = ap.parse_args()

    from pipeline.dedup import DedupConfig, partitions_for
    from pipeline.shard_steps import stage_dir

    config = DedupConfig(memory_mb=args.memory_mb)
    partitions = partitions_for(args.docs, config)
    rows = args.docs // args.shards
    shards = list(range(args.shards))
    work = args.work or tempfile.mkdtemp(prefix="crawl2llm-dedup-mem-")
    try:
        steps = {}
        t0 = time.perf_counter()
        steps["1 bucket keys (per shard)"] = in_fresh_processes(
            step1, [(work, "sig", s, rows, args.seed, args.memory_mb) for s in shards], args.workers
        )
        t1 = time.perf_counter()
        stage_dir(work, "dedup-signatures", "sig")  # step 2 reads the shards' files, not a manifest
        steps["2 pairs (per partition)"] = in_fresh_processes(
            step2,
            [(work, "pairs", "sig", p, partitions, shards, args.memory_mb) for p in range(partitions)],
            args.workers,
        )
        pairs_dir = stage_dir(work, "dedup-pairs", "pairs")
        pairs_dir.commit({"shards": [{"index": p, "data": f"data/part-{p:05d}.arrow"} for p in range(partitions)]})
        t2 = time.perf_counter()
        steps["3 clusters (once)"] = in_fresh_processes(
            step3, [(work, "clu", "pairs", "sig", shards, args.memory_mb)], 1
        )
        t3 = time.perf_counter()
        disk = sum(f.stat().st_size for f in Path(work).rglob("*") if f.is_file())
        signature_bytes = sum(f.stat().st_size for f in Path(work, "dedup-signatures", "sig", "data").glob("*.arrow"))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    m = machine()
    print(
        f"{rows * args.shards} synthetic signatures (num_perm {NUM_PERM}) in {args.shards} shards; "
        f"budget memory_mb={args.memory_mb} -> {partitions} partition(s); store on disk {disk / 2**20:.0f} MiB, "
        f"signature files {signature_bytes / 2**20:.0f} MiB"
    )
    print(f"machine: {m['cores']} x {m['cpu']}, {m['memory']}, Python {m['python']}\n")
    print("| step | tasks | peak RSS (MiB) | peak anonymous (MiB) | budget (MiB) | wall s | totals |")
    print("|---|---|---|---|---|---|---|")
    for (name, results), wall in zip(steps.items(), (t1 - t0, t2 - t1, t3 - t2)):
        totals: dict = {}
        for r in results:
            for k, v in r["counts"].items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0) + v
        peak, anon = max(r["peak_mib"] for r in results), max(r["anon_mib"] for r in results)
        print(
            f"| {name} | {len(results)} | {peak:.0f} | {anon:.0f} | {args.memory_mb} | {wall:.1f} | "
            f"{', '.join(f'{k} {v}' for k, v in totals.items())} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
