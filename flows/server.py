"""`crawl2llm server`: a local Prefect server, the deployments of prefect.yaml and a worker, in one
foreground command, so that a click in the UI runs a flow. Ctrl-C or SIGTERM stops all of it.

The worker starts each flow run in a session of its own (Prefect's process worker does), so
stopping the worker's process group would leave runs and their shard processes behind: we stop
every descendant we can see in /proc instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows import access, prefect_env

POOL = "crawl2llm"
PROJECT_DIR = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


def run_server(
    home: Path, port: int = prefect_env.PORT, deploy: bool = True, allow: list[str] | None = None, public_url: str = ""
) -> int:
    """Server (unless PREFECT_API_URL names one, or one already answers on the port), work pool,
    deployments, worker; then wait until a signal or until a child dies, and stop what we started.
    `allow`: folders and URL prefixes flow runs may read and write besides the defaults
    (flows/access.py); `public_url`: where a reverse proxy serves this server to other machines."""
    if not (PROJECT_DIR / "prefect.yaml").exists():
        print(
            f"error: no prefect.yaml in {PROJECT_DIR}: install crawl2llm from its source folder (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    children: list[tuple[str, subprocess.Popen]] = []
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        try:
            url, proc = prefect_env.find_or_start_server(home, port, public_url=public_url)
        except prefect_env.ServerUnreachable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if proc is None:
            print(f"using the Prefect server at {url}", flush=True)
        else:
            print(f"started the Prefect server (log: {home / 'server.log'})", flush=True)
            children.append(("server", proc))
        os.environ["PREFECT_API_URL"] = url
        os.environ["CRAWL2LLM_PROJECT_DIR"] = str(PROJECT_DIR)  # prefect.yaml's pull step: where flow runs start
        os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")  # a click in the UI starts a run within ~5 s
        roots = access.default_roots(PROJECT_DIR) + [access.absolute(a) for a in allow or []]
        os.environ[access.ENV] = access.encode(roots)  # the worker's flow runs read and write only there
        ensure_pool()
        if deploy:
            t0 = time.monotonic()
            names = register_deployments()
            print(
                f"registered {len(names)} deployments from prefect.yaml in {time.monotonic() - t0:.0f} s: "
                + ", ".join(names),
                flush=True,
            )
        worker = subprocess.Popen(
            [sys.executable, "-m", "flows.worker", POOL],
            cwd=PROJECT_DIR,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        children.append(("worker", worker))
        ui = url.removesuffix("/api")
        print(f"flow runs may read and write under: {', '.join(roots)} (add more with --allow)", flush=True)
        if proc is not None:
            print(
                f"sign in to the UI: {prefect_env.login_url(public_url or ui, prefect_env.auth_string(home))} "
                f"(or paste {home / prefect_env.AUTH_FILE} into its login form)",
                flush=True,
            )
        print(
            f"ready: Prefect UI {ui} · deployments {ui}/deployments · worker on pool {POOL!r} · "
            "Ctrl-C stops everything",
            flush=True,
        )
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"error: the {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping", flush=True)
        return 0
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name, proc in reversed(children):  # the worker and its runs first, the server last
            pids = stop_tree(proc)
            if name == "worker":
                mark_crashed(pids)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum, frame):
    raise _Stop()


def ensure_pool() -> None:
    """The process work pool the deployments name, with flows/worker.py's job template: no variable
    that changes the command, environment or folder a run starts with (a pool made by an earlier
    version with Prefect's default template is set to ours)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from flows.worker import base_job_template

    template = base_job_template()
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(POOL)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))
            return
        if pool.base_job_template != template:
            client.update_work_pool(POOL, WorkPoolUpdate(base_job_template=template))


DEPLOYMENT_KEYS = {
    "name",
    "description",
    "entrypoint",
    "work_pool",
    "parameters",
    "schedules",
    "tags",
    "pull",
    "concurrency_limit",
}


def plug_in_deployments(spec: dict) -> list[dict]:
    """A deployment for each stage of the table that prefect.yaml does not list ($CRAWL2LLM_STAGES
    plug-ins), on the same work pool: every stage can be run on its own from the UI."""
    from pipeline.stage_table import TABLE

    listed = {d["name"] for d in spec["deployments"]}
    pool = spec.get("definitions", {}).get("work_pool")
    return [
        {"name": s.name, "description": s.description or s.help, "entrypoint": s.flow_entrypoint, "work_pool": pool}
        for s in TABLE
        if s.name not in listed
    ]


def register_deployments(project_dir: Path = PROJECT_DIR) -> list[str]:
    """Register the deployments of prefect.yaml through the client; returns their names.

    `prefect deploy --all` would do, but in Prefect 3.8.8 it stops after the first deployment: its
    check for running workers sends limit=null, which the server refuses (422). This covers the
    fields our prefect.yaml uses and refuses others, so none is silently dropped. A schedule that
    already exists keeps its on/off switch from the server: switching the nightly run on in the UI
    survives a restart."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    names = []
    with get_client(sync_client=True) as client:
        for d in spec["deployments"] + plug_in_deployments(spec):
            unknown = set(d) - DEPLOYMENT_KEYS
            if unknown:
                raise RuntimeError(
                    f"prefect.yaml deployment {d['name']!r}: fields {sorted(unknown)} are not "
                    "registered by crawl2llm server (flows/server.py)"
                )
            flow = load_flow_from_entrypoint(d["entrypoint"])
            try:
                old = {
                    (s.schedule.cron, s.schedule.timezone): s.active
                    for s in client.read_deployment_by_name(f"{flow.name}/{d['name']}").schedules
                    if isinstance(s.schedule, CronSchedule)
                }
            except ObjectNotFound:
                old = {}
            schedules = []
            for sch in d.get("schedules") or []:
                cron = CronSchedule(cron=sch["cron"], timezone=sch.get("timezone") or "UTC")
                active = old.get((cron.cron, cron.timezone), sch.get("active", True))
                schedules.append(DeploymentScheduleCreate(schedule=cron, active=active))
            pool = d.get("work_pool") or {}
            client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name),
                name=d["name"],
                entrypoint=d["entrypoint"],
                description=d.get("description") or flow.description,
                version=flow.version,
                work_pool_name=pool.get("name"),
                work_queue_name=pool.get("work_queue_name"),
                job_variables=pool.get("job_variables") or {},
                parameters=d.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(flow).model_dump(exclude_unset=True),
                enforce_parameter_schema=True,
                schedules=schedules,
                tags=d.get("tags") or [],
                concurrency_limit=d.get("concurrency_limit"),
                pull_steps=d.get("pull", spec.get("pull")) or [],
            )
            names.append(f"{flow.name}/{d['name']}")
    return names


def mark_crashed(pids: list[int]) -> None:
    """Flow runs that were running in these processes, and their subflows: Crashed, so that the UI
    offers Retry. A run stopped with the worker cannot report it itself and would show Running forever."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            live = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["RUNNING", "PENDING", "CANCELLING"]}}),
                sort=FlowRunSort.START_TIME_DESC,
                limit=200,
            )
            ours = {r.id for r in live if (r.infrastructure_pid or "").rpartition(":")[2] in {str(p) for p in pids}}
            children = [r for r in live if r.parent_task_run_id]
            parents = (
                {
                    t.id: t.flow_run_id
                    for t in client.read_task_runs(
                        task_run_filter=TaskRunFilter(id={"any_": [r.parent_task_run_id for r in children]}),
                        sort=TaskRunSort.ID_DESC,
                        limit=200,
                    )
                }
                if children
                else {}
            )
            grew = True
            while grew:  # subflows of subflows
                before = len(ours)
                ours |= {r.id for r in children if parents.get(r.parent_task_run_id) in ours}
                grew = len(ours) > before
            for run_id in ours:
                client.set_flow_run_state(
                    run_id, Crashed(message="stopped with `crawl2llm server`: Retry resumes it"), force=True
                )
    except Exception as e:  # the server may be gone already: nothing to mark then
        print(f"could not mark the interrupted runs as crashed: {e}", file=sys.stderr)
        return
    if ours:
        print(f"marked {len(ours)} interrupted flow run(s) Crashed (Retry in the UI resumes them)", flush=True)


def stop_tree(proc: subprocess.Popen, grace_s: float = 15.0) -> list[int]:
    """SIGTERM the process and every descendant, then SIGKILL whatever is left after grace_s.
    Returns the pids it stopped."""
    pids = descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        _signal(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 2
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in [proc.pid, *pids]:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()
    return [proc.pid, *pids]


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
