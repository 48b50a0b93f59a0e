"""`crawl2llm server` as an attacker on the same machine meets it (loopback only): the real command in
a subprocess, probed with plain HTTP and with Prefect's own client.

Without the auth string every API route answers 401; with it, a flow run cannot change what the
worker executes (command, env, working_dir), not even after the work pool's template is put back to
Prefect's default; CORS answers only the UI's origin; a foreign Host header is refused; and a flow
run may not read or write outside the folders the server allows."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
import uuid

import pytest

from tests.fixtures.server_cmd import AUTH, api_client, crawl2llm_server, wait_final

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("security-home")
    allowed = tmp_path_factory.mktemp("allowed")
    with crawl2llm_server(home, args=("--allow", str(allowed))) as (ui, api, log):
        yield ui, api, log, allowed


def request(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """(status, headers, body) of one plain HTTP request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def basic(auth: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def test_every_api_route_needs_the_auth_string(server):
    ui, api, _, _ = server
    status, _, body = request(f"{api}/openapi.json", headers=basic(AUTH[api]))
    assert status == 200
    routes = [(path, method.upper()) for path, ops in json.loads(body)["paths"].items() for method in ops]
    assert len(routes) > 150
    fake = str(uuid.uuid4())
    answers = {}
    for path, method in routes:
        url = api + re.sub(r"\{[^}]+\}", fake, path)  # path parameters: any value will do
        for headers in ({}, basic("wrong"), {"Authorization": "Bearer " + AUTH[api]}):
            status, _, _ = request(
                url,
                method,
                {**headers, "Content-Type": "application/json"},
                b"{}" if method in ("POST", "PUT", "PATCH") else None,
            )
            answers.setdefault(status, []).append(f"{method} {path}")
    open_routes = {"GET /health", "GET /ready"}
    let_through = {r for status, rs in answers.items() if status != 401 for r in rs}
    assert let_through <= open_routes, sorted(let_through)
    assert len(answers[401]) == 3 * (len(routes) - len(open_routes & set(f"{m} {p}" for p, m in routes)))
    assert request(f"{api}/health")[0] == 200  # probes stay open
    assert request(f"{ui}/")[0] == 200  # the UI's files: it asks for the password itself
    settings = json.loads(request(f"{ui}/ui-settings")[2])
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True


def test_a_flow_run_cannot_choose_what_the_worker_runs(server, tmp_path):
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.workers.process import ProcessWorker

    _, api, _, _ = server
    marker = tmp_path / "pwned"
    attacks = [
        {"command": f"touch {marker}"},
        {"env": {"PYTHONSTARTUP": str(marker)}},
        {"working_dir": str(tmp_path)},
        {"command": f"touch {marker}", "stream_output": True},
    ]
    with api_client(api) as client:
        deployment = client.read_deployment_by_name("ingest/ingest")
        for variables in attacks:  # the pool's template offers none of these: the server refuses the run
            with pytest.raises(PrefectHTTPStatusError) as e:
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"inputs": ["x.warc.gz"]}, job_variables=variables
                )
            assert e.value.response.status_code == 422, e.value.response.text
        # A client with the auth string may still put Prefect's default template back: the worker
        # does not trust it, and refuses the run before any process starts.
        pool = client.read_work_pool("crawl2llm")
        client.update_work_pool(
            "crawl2llm", WorkPoolUpdate(base_job_template=ProcessWorker.get_default_base_job_template())
        )
        try:
            runs = [
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"inputs": ["x.warc.gz"]}, job_variables=v
                )
                for v in attacks[:3]
            ]
            for run in runs:
                final = wait_final(client, run.id, timeout_s=120)
                assert final.state.type.value == "CRASHED", final.state
                assert "does not take" in final.state.message, final.state.message
                assert final.infrastructure_pid is None  # no process was started for it
        finally:
            client.update_work_pool("crawl2llm", WorkPoolUpdate(base_job_template=pool.base_job_template))
    assert not marker.exists()


def test_cors_answers_only_the_ui_origin_and_hosts_are_checked(server):
    ui, api, _, _ = server
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers, _ = request(f"{api}/flow_runs/filter", "OPTIONS", {"Origin": "http://evil.example", **preflight})
    assert status == 400 and "access-control-allow-origin" not in {k.lower() for k in headers}
    status, headers, _ = request(f"{api}/flow_runs/filter", "OPTIONS", {"Origin": ui, **preflight})
    assert status == 200 and headers.get("access-control-allow-origin") == ui
    # A write from a web page of another origin (no preflight: text/plain) meets the auth check.
    status, _, _ = request(
        f"{api}/flow_runs/filter", "POST", {"Origin": "http://evil.example", "Content-Type": "text/plain"}, b"{}"
    )
    assert status == 401
    # DNS rebinding: the right address under another name is refused, UI and API alike, even with the password.
    port = api.split(":")[2].split("/")[0]
    for path in ("/", "/api/health", "/api/flow_runs/filter"):
        status, _, body = request(f"{ui}{path}", "GET", {"Host": f"rebind.evil.example:{port}", **basic(AUTH[api])})
        assert status == 421, (path, status, body[:200])
    assert request(f"{ui}/api/health", headers={"Host": f"localhost:{port}"})[0] == 200


def test_flow_runs_read_and_write_only_under_the_allowed_roots(server, tmp_path):
    _, api, _, allowed = server
    outside = tmp_path / "outside.warc.gz"  # pytest's tmp_path: not under the allowed folder
    outside.write_bytes(b"")
    cases = [
        ({"inputs": [str(outside)], "store": str(allowed / "store")}, "inputs"),
        ({"inputs": [str(allowed / "missing.warc.gz")], "store": "/tmp/crawl2llm-elsewhere"}, "store"),
        ({"inputs": [str(allowed / ".." / outside.parent.name / outside.name)], "store": str(allowed)}, "inputs"),
    ]
    with api_client(api) as client:
        deployment = client.read_deployment_by_name("ingest/ingest")
        for parameters, field in cases:
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            final = wait_final(client, run.id, timeout_s=180)
            assert final.state.is_failed(), final.state
            assert f"{field}: " in final.state.message and "outside what this server lets" in final.state.message, (
                final.state.message
            )
    assert not (allowed / "store").exists() and not (tmp_path / "store").exists()
