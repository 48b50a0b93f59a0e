"""Prefect's SQLite server as Prefect starts it (`python -m prefect`) against our launcher
(`python -m flows.prefect_server`, IMMEDIATE transactions), in the same run, on fresh servers:

- refused creates: the deployment `pipeline` of `crawl2llm server` (its worker polling every
  second) gets --creates create_flow_run calls shaped like the UI's Submit, 0.2 s apart, each run
  scheduled a week ahead so that nothing executes; counted are the 503s ("database is locked"),
  which the UI shows as "Something went wrong trying to create a flow run";
- task-run throughput: a flow of --tasks trivial tasks (thread pool), its wall time, then the
  seconds until the server has recorded every task run.

    .venv/bin/python benchmarks/prefect_sqlite.py            # --repeats 2 --creates 100 --tasks 1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import ROOT, machine, markdown_table

from flows.prefect_env import wait_healthy
from tests.fixtures.server_cmd import READY, free_port

LAUNCHERS = {"prefect (stock, DEFERRED)": "prefect", "flows.prefect_server (IMMEDIATE)": "flows.prefect_server"}
FLOW = """
import sys, time
from prefect import flow, task

@task
def one(i):
    return i

@flow
def many(n):
    return sum(f.result() for f in [one.submit(i) for i in range(n)])

t0 = time.monotonic()
many(int(sys.argv[1]))
print(time.monotonic() - t0)
"""


def call(api: str, path: str, body: dict) -> tuple[int, object]:
    """One POST as the UI sends it: no retries."""
    req = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def measure(module: str, creates: int, tasks: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="prefect-sqlite-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=api,
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", module, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=open(home / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tool = None
    try:
        wait_healthy(api, server, home)
        # deployments and a worker polling every second, from `crawl2llm server` on that server
        tool_log = home / "crawl2llm-server.log"
        tool = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "server"],
            cwd=ROOT,
            start_new_session=True,
            env={**env, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"},
            stdout=open(tool_log, "wb"),
            stderr=subprocess.STDOUT,
        )
        while READY.encode() not in tool_log.read_bytes():
            if tool.poll() is not None:
                raise SystemExit(f"crawl2llm server failed:\n{tool_log.read_text()[-2000:]}")
            time.sleep(0.5)
        _, deps = call(api, "/deployments/filter", {"deployments": {"name": {"any_": ["pipeline"]}}})
        dep = deps[0]
        later = (datetime.now(timezone.utc) + timedelta(days=7)).isoformat()
        body = {
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}},
            "work_queue_name": dep["work_queue_name"],
            "parameters": dep["parameters"],
            "job_variables": {},
            "enforce_parameter_schema": True,
        }
        codes = []
        for _ in range(creates):
            codes.append(call(api, f"/deployments/{dep['id']}/create_flow_run", body)[0])
            time.sleep(0.2)

        before = call(api, "/task_runs/count", {})[1]
        out = subprocess.run(
            [sys.executable, "-c", FLOW, str(tasks)],
            env={**env, "PREFECT_API_URL": api},
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            check=True,
        )
        flow_s = float(out.stdout.strip().splitlines()[-1])
        t0 = time.monotonic()
        while call(api, "/task_runs/count", {})[1] < before + tasks and time.monotonic() - t0 < 300:
            time.sleep(0.2)
        return {
            "refused": sum(c == 503 for c in codes),
            "other": sum(c not in (201, 503) for c in codes),
            "flow_s": flow_s,
            "recorded_s": time.monotonic() - t0,
        }
    finally:
        for proc in (tool, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--creates", type=int, default=100)
    ap.add_argument("--tasks", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    for repeat in range(1, args.repeats + 1):
        for name, module in LAUNCHERS.items():  # interleaved, so that load drifts hit both
            r = measure(module, args.creates, args.tasks)
            print(f"{name} #{repeat}: {r}", file=sys.stderr)
            rows.append(
                [
                    name,
                    repeat,
                    f"{r['refused']}/{args.creates}" + (f" (+{r['other']} other)" if r["other"] else ""),
                    f"{r['flow_s']:.1f}",
                    f"{r['recorded_s']:.1f}",
                ]
            )
    print(json.dumps(machine()))
    print(
        markdown_table(
            [
                "server",
                "run",
                "creates refused (503)",
                f"flow of {args.tasks} tasks (s)",
                "then all recorded after (s)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
