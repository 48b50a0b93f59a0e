"""Time README command 1 (`make demo`) from a fresh clone, then again (everything cached).

    python3 benchmarks/demo_timing.py [--repo .] [--keep DIR]

Clones the repository's HEAD into a temporary folder (so nothing installed or cached in this
checkout is reused), runs `make demo` twice and prints the wall time of each run plus the stage
lines of the second run's report. The clone has its own PREFECT_HOME (its .prefect folder); the
demo starts its server on 127.0.0.1:4200, so stop any other one first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=".")
    ap.add_argument("--keep", help="clone into this folder and keep it")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="c2l-demo-")
    clone = os.path.join(work, "crawl2llm")
    subprocess.run(["git", "clone", "-q", os.path.abspath(args.repo), clone], check=True)
    data = os.path.join(os.path.abspath(args.repo), "..", "shared")
    if os.path.isdir(data) and not os.path.exists(os.path.join(work, "shared")):
        os.symlink(os.path.abspath(data), os.path.join(work, "shared"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CRAWL2LLM_"))}
    times = []
    for run in ("fresh", "cached"):
        t0 = time.monotonic()
        proc = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
        times.append(round(time.monotonic() - t0, 1))
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        print(f"== {run} run: {times[-1]} s")
        print("\n".join(line for line in proc.stdout.splitlines() if line.strip()))
    subprocess.run([os.path.join(clone, ".venv/bin/crawl2llm"), "server", "stop"], cwd=clone, env=env)
    print(json.dumps({"fresh_s": times[0], "cached_s": times[1], "clone": clone}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
