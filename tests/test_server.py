"""`crawl2llm server` end to end, through the API the UI uses: the real command in a subprocess
(server, deployments, worker). A pipeline run from its deployment, with one quality shard made to
fail, is retried the way the UI's Retry button does it and resumes: the shards the first attempt
finished come back Cached, only the failed one runs again."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.fixtures.data import SHARED_DATA
from tests.fixtures.flow_inputs import tiny_config
from tests.fixtures.server_cmd import api_client, crawl2llm_server, ui_headers, wait_final

pytestmark = pytest.mark.slow

INPUTS = ["warc/dolma-sample-0000.warc.gz", "warc/dolma-sample-0001.warc.gz"]


@pytest.fixture(scope="module")
def server_home(tmp_path_factory):
    return tmp_path_factory.mktemp("server-home")


@pytest.fixture(scope="module")
def server(server_home, tmp_path_factory):
    """The command, letting flow runs use the tests' temporary folders and the shared data, and
    reading a failpoint from a file the tests write (no flow run may set the worker's environment)."""
    allow = ("--allow", str(tmp_path_factory.getbasetemp()), "--allow", str(SHARED_DATA))
    with crawl2llm_server(
        server_home,
        args=allow,
        extra_env={
            "CRAWL2LLM_FAILPOINT_FILE": str(server_home / "failpoint"),
            # the scheduler looks for new schedules every 5 s, not every 60
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        },
    ) as s:
        yield s


@pytest.fixture
def client(server):
    with api_client(server[1]) as c:
        yield c


def shard_runs(client, since=None, until=None) -> dict[str, list]:
    """Shard task runs ({stage}-{shard:05d}; a subflow's own task run is {stage}-{n}) created in
    [since, until), by name."""
    from prefect.client.schemas.filters import TaskRunFilter
    from prefect.client.schemas.sorting import TaskRunSort

    runs = client.read_task_runs(task_run_filter=TaskRunFilter(), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    out: dict[str, list] = {}
    for r in runs:
        if (
            not re.fullmatch(r"[a-z-]+-\d{5}", r.name)
            or (since and r.created < since)
            or (until and r.created >= until)
        ):
            continue
        out.setdefault(r.name, []).append(r)
    return out


def test_deployments_registered_nightly_schedule_off_until_switched_on(client):
    from prefect.client.schemas.sorting import DeploymentSort

    deps = {d.name: d for d in client.read_deployments(limit=50, sort=DeploymentSort.NAME_ASC)}
    assert set(deps) >= {
        "pipeline",
        "pipeline-nightly",
        "crawl",
        "ingest",
        "dedup",
        "quality",
        "pii",
        "tokenize",
        "train",
        "evaluate",
    }
    nightly = deps["pipeline-nightly"]
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 3 * * *", False)]
    # switched on in the UI, it stays on when `crawl2llm server` registers the deployments again
    from flows.server import register_deployments

    client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=True)
    register_deployments()
    again = client.read_deployment_by_name("pipeline/pipeline-nightly")
    assert [(s.schedule.cron, s.active) for s in again.schedules] == [("0 3 * * *", True)]
    client.update_deployment_schedule(nightly.id, again.schedules[0].id, active=False)

    schema = deps["pipeline"].parameter_openapi_schema
    pipeline_cfg = schema["definitions"]["PipelineConfig"]["properties"]
    assert all(field.get("description") for field in pipeline_cfg.values())  # the UI form explains every field
    for dep in deps.values():  # and every flow argument of every deployment (the flows' docstring Args)
        props = dep.parameter_openapi_schema["properties"]
        assert props and all(p.get("description") for p in props.values()), dep.name
    # nightly runs are incremental, one at a time
    assert nightly.parameters["config"]["incremental"] is True
    assert nightly.global_concurrency_limit.limit == 1


def test_quick_run_on_a_fresh_clone_is_refused_saying_what_to_fill(server, client):
    """Quick run sends no parameters: a deployment whose defaults have nothing to read (a fresh clone
    has no crawl files) is refused by the server, naming the parameter, instead of failing later."""
    from prefect.client.schemas.sorting import DeploymentSort
    from prefect.exceptions import PrefectHTTPStatusError

    refused = {}
    for dep in client.read_deployments(limit=50, sort=DeploymentSort.NAME_ASC):
        if dep.name == "pipeline-nightly":  # data/incoming holds no file yet on a fresh clone: nothing to do
            incoming = Path(__file__).resolve().parents[1] / "data" / "incoming"
            if incoming.exists() and any(incoming.iterdir()):
                continue  # a developer's checkout that is being fed: a real run, not this test's business
            run = wait_final(client, client.create_flow_run_from_deployment(dep.id).id, timeout_s=120)
            assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
            said = client._client.post("/artifacts/filter", json={"flow_runs": {"id": {"any_": [str(run.id)]}}}).json()
            assert any("No input files yet" in (a["data"] or "") for a in said), said
            continue
        with pytest.raises(PrefectHTTPStatusError) as err:
            client._client.post(f"/deployments/{dep.id}/create_flow_run", json={"state": {"type": "SCHEDULED"}})
        refused[dep.name] = err.value.response.json()["detail"]
    listed = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())["deployments"]
    assert sorted(refused) == sorted(d["name"] for d in listed if d["name"] != "pipeline-nightly"), refused
    for name, detail in refused.items():
        need = {"pipeline": "config", "crawl": "config", "ingest": "inputs"}.get(name, "source")
        assert f"'{need}' is a required property" in detail, (name, detail)


def test_the_form_marks_an_empty_input_before_the_run_is_made(client):
    """What the UI's form sends to the server's /ui/schemas/validate before it makes a run: an empty
    inputs list (or an empty item, or an empty source) comes back as an error on that field."""

    def errors(dep, values) -> dict:
        r = client._client.post("/ui/schemas/validate", json={"schema": dep.parameter_openapi_schema, "values": values})
        r.raise_for_status()
        return r.json()

    def on(result, *path) -> list[str]:
        found = result["errors"]
        for part in path:
            found = next((e["errors"] for e in found if e.get("property") == part), [])
        return found

    pipeline = client.read_deployment_by_name("pipeline/pipeline")
    for config in ({"store": "s"}, {"store": "s", "inputs": []}, {"store": "s", "inputs": [], "crawl": None}):
        assert on(errors(pipeline, {"config": config}), "config", "inputs"), config
    assert on(errors(pipeline, {"config": {"store": "s", "inputs": [""]}}), "config", "inputs")
    for config in ({"store": "s", "inputs": ["data/x.warc.gz"]}, {"store": "s", "crawl": {"seeds": ["https://a.b/"]}}):
        assert errors(pipeline, {"config": config})["valid"], config
    ingest = client.read_deployment_by_name("ingest/ingest")
    assert on(errors(ingest, {"inputs": []}), "inputs") and errors(ingest, {"inputs": ["a.warc.gz"]})["valid"]
    for name in ("dedup", "quality", "pii", "tokenize", "train", "evaluate"):
        dep = client.read_deployment_by_name(f"{name}/{name}")
        assert on(errors(dep, {"source": ""}), "source") and errors(dep, {"source": "store/x"})["valid"], name


def _runs_of(client, deployment_id, state: str | None = None) -> list:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    flow_runs = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[state]))) if state else None
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=flow_runs,
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )


def _wait_for(what: str, get, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while not (found := get()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(1)
    return found


def test_a_schedule_switched_on_makes_runs_that_the_worker_completes(server, client, tmp_path, shared_data):
    """A schedule is tested by the runs it creates: the nightly switch on gives Scheduled runs at
    03:00 UTC on the next days (the UI's Upcoming), off takes them away; an interval schedule due in
    a few seconds gives a run the scheduler made and the worker completed. The server's scheduler
    logs no error meanwhile (SQLAlchemy 2.1 broke it: "Can't evaluate bulk DML statement")."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    nightly = client.read_deployment_by_name("pipeline/pipeline-nightly")
    client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=True)
    try:
        upcoming = _wait_for("scheduled nightly run", lambda: _runs_of(client, nightly.id, "Scheduled"))
        now = datetime.now(timezone.utc)
        starts = [r.expected_start_time.astimezone(timezone.utc) for r in upcoming]
        assert len(starts) >= 3 and all(r.auto_scheduled for r in upcoming)
        assert all(t > now and (t.hour, t.minute, t.second) == (3, 0, 0) for t in starts), starts
        assert len({t.date() for t in starts}) == len(starts)  # one a night
        assert starts[0] - now <= timedelta(days=1)
    finally:
        client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=False)
    _wait_for("removal of the nightly's scheduled runs", lambda: not _runs_of(client, nightly.id, "Scheduled"), 30)

    ingest = client.read_deployment_by_name("ingest/ingest")
    store = tmp_path / "store"
    params = {"inputs": [str(shared_data(INPUTS[0]))], "store": str(store)}
    due = datetime.now(timezone.utc) + timedelta(seconds=20)  # the scheduler makes runs that start after now
    [schedule] = client.create_deployment_schedules(
        ingest.id,
        [
            DeploymentScheduleCreate(
                schedule=IntervalSchedule(interval=timedelta(hours=1), anchor_date=due), active=True, parameters=params
            )
        ],
    )
    try:
        [first, *_] = _wait_for(
            "scheduled ingest run", lambda: [r for r in _runs_of(client, ingest.id) if r.auto_scheduled]
        )
        done = wait_final(client, first.id, timeout_s=180)
    finally:
        client.delete_deployment_schedule(ingest.id, schedule.id)
    assert done.state.is_completed(), done.state
    assert abs(done.expected_start_time - due) < timedelta(seconds=1) and done.parameters["store"] == str(store)
    assert len(list(store.glob("ingest/*/manifest.json"))) == 1
    log = (server[2].parent / "server.log").read_text(errors="replace")
    assert "bulk DML" not in log and "schedule_deployments" not in log, log[-3000:]


def test_a_run_made_while_another_connection_writes_waits_instead_of_failing(server, client):
    """The UI's create call reads the deployment, then inserts the run, in one transaction. Another
    connection commits a write in between (here: this test, holding the lock; in use: the worker,
    the event persister). Prefect's own DEFERRED transaction fails then at once with "database is
    locked", a 503 the UI does not retry; flows/prefect_server.py makes it wait for the lock."""
    import httpx

    api, home = server[1], server[2].parent
    deployment = client.read_deployment_by_name("pipeline/pipeline")
    later = (datetime.now(timezone.utc) + timedelta(days=7)).isoformat()  # never picked up by the worker
    body = {
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}},  # the UI's request
        "work_queue_name": deployment.work_queue_name,
        "parameters": {"config": {"inputs": [str(SHARED_DATA / INPUTS[0])]}},  # what the form sends
        "job_variables": {},
        "enforce_parameter_schema": True,
    }
    answer = {}
    headers = ui_headers(api)

    def create():  # plain httpx: Prefect's client would retry the 503 the UI shows
        answer["r"] = httpx.post(
            f"{api}/deployments/{deployment.id}/create_flow_run", json=body, timeout=120, headers=headers
        )

    db = sqlite3.connect(home / "prefect.db", timeout=60, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE work_pool SET description = ? WHERE name = 'crawl2llm'", (f"held at {time.time()}",))
        thread = threading.Thread(target=create)
        thread.start()
        time.sleep(3)  # the call has read the deployment by now and waits to write
        db.execute("COMMIT")
    finally:
        db.close()
    thread.join(120)
    assert answer["r"].status_code == 201, answer["r"].text
    client.delete_flow_run(answer["r"].json()["id"])


def test_retry_from_the_api_resumes_without_recomputing(client, server_home, tmp_path, shared_data):
    from prefect.states import Scheduled

    from pipeline.ingest_plan import plan_shards

    inputs = [shared_data(rel) for rel in INPUTS]
    cfg = tiny_config(
        str(tmp_path / "store"), [str(p) for p in inputs], stop_after="quality", ingest={"shard_bytes": 65_536}
    )
    n_shards = len(plan_shards([(str(p), p.stat().st_size) for p in inputs], cfg["ingest"]["shard_bytes"]))
    assert n_shards >= 3
    failing = f"quality-{n_shards - 1:05d}"  # the last shard: the others are done (or running) when it fails

    deployment = client.read_deployment_by_name("pipeline/pipeline")
    t0 = datetime.now(timezone.utc)
    (server_home / "failpoint").write_text(f"quality:{n_shards - 1}@raise")
    try:
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": cfg})
        first = wait_final(client, run.id)
        assert first.state.is_failed(), first.state
        assert "failpoint quality" in (first.state.message or "")
    finally:  # the cause goes away, as a transient error's would
        (server_home / "failpoint").unlink()

    # Retry: what the UI's button sends (the flow run keeps its id; run_count goes up)
    t_retry = datetime.now(timezone.utc)
    client.set_flow_run_state(
        run.id, Scheduled(name="AwaitingRetry", scheduled_time=t_retry, message="Retry from the test"), force=True
    )
    second = wait_final(client, run.id)
    assert second.state.is_completed(), second.state
    assert second.id == run.id and second.run_count == 2

    before, after = shard_runs(client, since=t0, until=t_retry), shard_runs(client, since=t_retry)
    done_first = {name for name, runs in before.items() if any(r.state.name == "Completed" for r in runs)}
    assert before[failing][0].state.is_failed()
    assert sum(n.startswith("quality-") for n in done_first) >= 1, sorted(done_first)
    assert {f"ingest-{i:05d}" for i in range(n_shards)} <= done_first
    for name in done_first:  # finished in the first attempt: not computed again
        ran_again = [r for r in after.get(name, []) if r.state.name != "Cached"]
        assert not ran_again, f"{name} was recomputed: {[r.state.name for r in ran_again]}"
    assert [r.state.name for r in after[failing]] == ["Completed"]  # the failed shard ran, once
    cached = sorted(n for n, runs in after.items() if any(r.state.name == "Cached" for r in runs))
    assert any(n.startswith("quality-") for n in cached), cached
    recomputed = sorted(n for n, runs in after.items() if any(r.state.name == "Completed" for r in runs))
    assert set(recomputed) <= {f"quality-{i:05d}" for i in range(n_shards)} - done_first, recomputed

    manifest = tmp_path / "store" / "quality"
    assert len(list(manifest.glob("*/manifest.json"))) == 1
