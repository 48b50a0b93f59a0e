"""Each flow through a real Prefect server: caching, invalidation, artifacts, clear errors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_data
from tests.flow_inputs import WARCS, tiny_config

pytestmark = pytest.mark.slow

AFTER_QUALITY = ["quality", "pii", "tokenize", "train", "evaluate"]


@pytest.fixture
def inputs(shared_data):
    return [str(shared_data(rel)) for rel in WARCS]


def _task_states(flow_run_id) -> dict[str, str]:
    """Task run name -> state name, for a flow run and all its subflow runs. Prefect's own task runs
    that stand for a subflow call in its parent are left out: only our tasks."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with get_client(sync_client=True) as client:
        ids, frontier, subflow_calls = [flow_run_id], [flow_run_id], set()
        while frontier:
            # 3.8.8's sync client sends null limit/sort unless given, which the server rejects
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)), limit=200, sort=FlowRunSort.ID_DESC)
            frontier = [c.id for c in children]
            ids += frontier
            subflow_calls |= {c.parent_task_run_id for c in children}
        states, offset = {}, 0
        while True:  # the server answers at most 200 task runs a request
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                         limit=200, offset=offset, sort=TaskRunSort.ID_DESC)
            states.update({r.name: r.state.name for r in runs if r.id not in subflow_calls})
            if len(runs) < 200:
                return states
            offset += 200


def _latest_artifacts(keys: list[str]) -> dict[str, dict]:
    """key -> the newest artifact with that key (as the API returns it)."""
    from prefect import get_client

    # 3.8.8's clients send null flow/task run filters, which the server rejects: post the filter itself
    with get_client(sync_client=True) as client:
        found = client._client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": keys}},
                                                               "sort": "CREATED_DESC", "limit": 50}).json()
    out: dict = {}
    for a in found:
        out.setdefault(a["key"], a)
    return out


def test_pipeline_runs_caches_and_invalidates_downstream_only(prefect_api, tmp_path, inputs):
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    copa = str(require_data("eval/llm-foundry/copa.jsonl"))
    config = PipelineConfig.model_validate(tiny_config(str(tmp_path / "store"), inputs, evaluate={
        "tasks": {"copa": copa}, "task_limit": 40}))
    first = pipeline(config)
    assert list(first) == ["ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"]
    assert not any(r["cached"] for r in first.values())
    assert first["ingest"]["counts"]["docs_kept"] > 20
    assert first["tokenize"]["counts"]["train_tokens"] > 10_000
    assert first["evaluate"]["counts"]["perplexity"] > 1
    copa_scores = first["evaluate"]["counts"]["tasks"]["copa"]
    assert copa_scores["items"] == 40 and 0 <= copa_scores["acc"] <= 1 and 0 <= copa_scores["acc_norm"] <= 1
    artifacts = _latest_artifacts(["train-summary", "train-checkpoint", "train-model", "train-loss-curve",
                                   "evaluate-report"])
    assert "| copa | 40 | acc_norm |" in artifacts.pop("evaluate-report")["data"]
    assert set(artifacts) == {"train-summary", "train-checkpoint", "train-model", "train-loss-curve"}
    assert "latest.pt" in artifacts["train-checkpoint"]["data"] and "model.pt" in artifacts["train-model"]["data"]
    assert {"metric": "MFU (this run)", "value": "unknown"} in json.loads(artifacts["train-summary"]["data"])

    state = pipeline(config, return_state=True)
    again = state.result()
    assert all(r["cached"] for r in again.values()), {k: r["cached"] for k, r in again.items()}
    assert {k: r["url"] for k, r in again.items()} == {k: r["url"] for k, r in first.items()}
    states = _task_states(state.state_details.flow_run_id)
    assert any(name.startswith("quality-") for name in states), states
    assert all(s == "Cached" for s in states.values()), sorted(states.items())

    changed = config.model_copy(deep=True)
    changed.quality = type(config.quality).model_validate(
        {**config.quality.model_dump(), **_one_quality_change(config.quality)})
    third = pipeline(changed)
    assert third["ingest"]["cached"] and third["dedup"]["cached"]
    assert not any(third[s]["cached"] for s in AFTER_QUALITY), {k: r["cached"] for k, r in third.items()}


def _one_quality_change(quality) -> dict:
    """Loosen the first numeric threshold field of the quality config."""
    for name, value in quality.model_dump().items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return {name: value - 1}
    raise AssertionError("quality config has no integer threshold to change")


def test_missing_input_stops_before_any_work(prefect_api, tmp_path, inputs):
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline
    from pipeline.inputs import InputError

    config = PipelineConfig.model_validate(tiny_config(str(tmp_path / "store"), [*inputs, str(tmp_path / "nope.warc.gz")]))
    with pytest.raises(InputError, match="nope.warc.gz"):
        pipeline(config)
    assert not (tmp_path / "store" / "ingest").exists()


def test_stage_flow_on_its_own_with_memory_store(prefect_api, shared_data):
    """Any fsspec URL works as a store; memory:// runs shards inline in this process."""
    from flows.stages import dedup, ingest

    r = ingest([str(shared_data("warc/resiliparse-warcfile.warc.gz"))], store="memory://c2l-flow-test")
    assert r["url"].startswith("memory://") and r["counts"]["docs_in"] > 0
    d = dedup(r["url"])
    assert d["counts"]["docs_in"] == r["counts"]["docs_kept"]
    # A new threshold keeps step 1 (signatures, bucket keys) and re-runs pairs, clusters and apply.
    import fsspec

    from pipeline.dedup import DedupConfig

    again = dedup(r["url"], DedupConfig(threshold=0.9))
    assert not again["cached"] and again["fingerprint"] != d["fingerprint"]
    fs = fsspec.filesystem("memory")
    steps = {step: len(fs.ls(f"/c2l-flow-test/{step}")) for step in ("dedup-signatures", "dedup-pairs", "dedup")}
    assert steps == {"dedup-signatures": 1, "dedup-pairs": 2, "dedup": 2}


def test_editing_a_url_blocklist_file_reruns_ingest(prefect_api, tmp_path, shared_data):
    from flows.stages import ingest
    from pipeline.ingest import IngestConfig

    lists = tmp_path / "domains.txt"
    lists.write_text("nothing.example\n")
    config = IngestConfig(url_blocklist_files=[str(lists)])
    inputs = [str(shared_data("warc/resiliparse-warcfile.warc.gz"))]
    first = ingest(inputs, config, store=str(tmp_path / "store"))
    assert ingest(inputs, config, store=str(tmp_path / "store"))["cached"]
    lists.write_text("nothing.example\nanother.example\n")  # same name, new contents
    again = ingest(inputs, config, store=str(tmp_path / "store"))
    assert not again["cached"] and again["url"] != first["url"]
