"""Stages on a real local Dask cluster (2 worker processes) write the same bytes as the default runner."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WARCS = ["warc/dolma-sample-0000.warc.gz", "warc/resiliparse-warcfile.warc.gz", "warc/cc-whirlwind.warc.gz"]


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and 2 single-threaded worker processes on 127.0.0.1, able to import the project."""
    from distributed import Client, LocalCluster

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = dict(os.environ)
    try:
        with (
            LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, env=env
            ) as c,
            Client(c) as client,
        ):
            client.wait_for_workers(2)
            yield client
    finally:
        # The in-process nannies leave OMP_NUM_THREADS=1 (and MKL_/OPENBLAS_) in this process's
        # environment: later tests' subprocesses would then compute with other thread counts
        # (test_train's resume after SIGKILL got other model bytes).
        os.environ.clear()
        os.environ.update(saved)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under a store, by relative path; a stats file without its timings (the one
    thing allowed to differ between two runs)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel, data = path.relative_to(root).as_posix(), path.read_bytes()
            if "/stats/" in rel:
                stats = json.loads(data)
                stats.pop("seconds", None)
                data = json.dumps(stats, sort_keys=True).encode()
            out[rel] = data
    return out


def _pools_in_workers(client) -> dict[str, bool]:
    """Per Dask worker: whether flows.workers ever started its local process pool there."""
    return client.run(lambda: getattr(sys.modules.get("flows.workers"), "_pool", None) is not None)


def test_pipeline_on_dask_matches_default_runner(prefect_api, tmp_path, shared_data, cluster):
    """ingest, dedup's four steps and quality, each stage's shard tasks on the cluster."""
    from distributed import get_task_stream

    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    local, remote = tmp_path / "local", tmp_path / "dask"
    config = {
        "inputs": [str(shared_data(rel)) for rel in WARCS],
        "stop_after": "quality",
        "workers": 2,
        "ingest": {"shard_bytes": 100_000},
    }  # several shards, so both workers get some
    ref = pipeline(PipelineConfig.model_validate({**config, "store": str(local)}))
    with get_task_stream(client=cluster) as stream:
        got = pipeline(
            PipelineConfig.model_validate({**config, "store": str(remote), "dask_address": cluster.scheduler.address})
        )
    assert list(got) == ["ingest", "dedup", "quality"] and not any(r["cached"] for r in got.values())
    assert {k: r["fingerprint"] for k, r in got.items()} == {k: r["fingerprint"] for k, r in ref.items()}

    manifests = {rel: json.loads((remote / rel).read_bytes()) for rel in _tree(remote) if rel.endswith("manifest.json")}
    shard_tasks = sum(len(m["shards"]) for m in manifests.values())
    assert len(manifests) == 6 and len(manifests[f"ingest/{got['ingest']['fingerprint']}/manifest.json"]["shards"]) >= 4
    assert len(stream.data) == shard_tasks  # each shard task of every step ran as a Dask task
    assert {t["worker"] for t in stream.data} == set(cluster.scheduler_info()["workers"])
    assert not any(_pools_in_workers(cluster).values())  # jobs ran inline in the Dask workers

    a, b = _tree(local), _tree(remote)
    assert sorted(a) == sorted(b) and any(rel.startswith("quality/") and "/data/part-" in rel for rel in a)
    assert [rel for rel in a if a[rel] != b[rel]] == []


def test_memory_store_is_refused_on_dask(prefect_api, shared_data, cluster):
    """Dask workers are other processes: they cannot see this process's memory:// store."""
    from flows.stages import ingest
    from flows.workers import on_cluster
    from storage import StoreError

    with pytest.raises(StoreError, match="memory://"):
        on_cluster(ingest, cluster.scheduler.address)([str(shared_data(WARCS[1]))], store="memory://c2l-dask-test")


def test_address_from_environment(monkeypatch):
    """$CRAWL2LLM_DASK_ADDRESS sends every stage command's shard tasks to that cluster."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.workers import DASK_ADDRESS_ENV, task_runner

    monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://scheduler.example:8786")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://scheduler.example:8786"
    assert task_runner("tcp://other:8786").address == "tcp://other:8786"
    monkeypatch.delenv(DASK_ADDRESS_ENV)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
