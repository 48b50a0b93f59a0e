"""What checking WARC-Block-Digest and WARC-Payload-Digest costs ingest (issue 16), in the same run.

    .venv/bin/python benchmarks/digest_cost.py            # the real WARCs, 3 rounds
    .venv/bin/python benchmarks/digest_cost.py --rounds 5

Input: the top-level *.warc.gz of ../shared/data/warc (real files from several writers; ClueWeb09's
quirk file has digests that do not match, so both runs keep its records: digest_mismatch=keep).
Each round ingests every file with pipeline.ingest.ingest_file twice, digests checked and not, in
alternating order, in this one process (the language model loaded before the clock starts); the
figure is process CPU seconds (time.process_time) summed over rounds, with the best-of-rounds too.
The A/B difference is small against the noise of a shared machine, so the checked runs also time
the check itself (pipeline.ingest_docs._digests_ok, wrapped) as a share of their CPU seconds.
Results with the machine and load: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import time

import pipeline.ingest_docs as ingest_docs
from pipeline.ingest import IngestConfig, detect_language, ingest_file

DATA = os.path.join(
    os.environ.get("CRAWL2LLM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")), "warc"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=DATA, help="folder of *.warc.gz (default: $CRAWL2LLM_DATA/warc)")
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.data, "*.warc.gz")))
    if not files:
        raise SystemExit(f"no *.warc.gz in {args.data}")
    detect_language("warm up the model")
    configs = {"checked": IngestConfig(digest_mismatch="keep"), "unchecked": IngestConfig(check_digests=False)}
    cpu = {name: [] for name in configs}
    in_check = [0.0]
    check = ingest_docs._digests_ok

    def timed_check(record, block):
        t = time.process_time()
        try:
            return check(record, block)
        finally:
            in_check[0] += time.process_time() - t

    ingest_docs._digests_ok = timed_check
    docs = {}
    for round_no in range(args.rounds):
        order = list(configs) if round_no % 2 == 0 else list(reversed(configs))
        for name in order:
            t0 = time.process_time()
            n = 0
            for path in files:
                n += ingest_file(path, configs[name]).counts["docs_in"]
            cpu[name].append(time.process_time() - t0)
            docs[name] = n
    mib = sum(os.path.getsize(f) for f in files) / 2**20
    print(
        f"{len(files)} files, {mib:.1f} MiB, {docs['checked']} docs; {platform.processor() or platform.machine()}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for name in configs:
        print(
            f"{name:9s} CPU s per round: {', '.join(f'{s:.2f}' for s in cpu[name])}; "
            f"total {sum(cpu[name]):.2f}, best {min(cpu[name]):.2f}"
        )
    total = (sum(cpu["checked"]) - sum(cpu["unchecked"])) / sum(cpu["unchecked"])
    best = (min(cpu["checked"]) - min(cpu["unchecked"])) / min(cpu["unchecked"])
    print(f"A/B: checked runs took {100 * total:+.1f}% CPU (totals), {100 * best:+.1f}% (best rounds)")
    print(
        f"inside the check: {in_check[0]:.3f} s = {100 * in_check[0] / sum(cpu['checked']):.1f}% of the checked "
        "runs' CPU"
    )


if __name__ == "__main__":
    main()
