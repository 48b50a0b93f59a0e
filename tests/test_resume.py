"""SIGKILL the whole run in each dedup step, mid-tokenize and mid-training; each re-run resumes, and the
final manifests, document and token shards, removed documents and model are byte-identical to an
uninterrupted run's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.flow_inputs import WARCS, tiny_config

pytestmark = pytest.mark.slow


def _run(config_path: Path, env: dict, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**env, "CRAWL2LLM_WORKERS": "1"}
    if failpoint:
        env["CRAWL2LLM_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(config_path)],
        env=env,
        cwd=config_path.parent,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )  # its own process group: the failpoint kills only the run


def _committed_files(store: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        data = ("/data/" in rel or "/removed/" in rel) and p.suffix in (".arrow", ".parquet")
        if p.is_file() and (p.name == "manifest.json" or data or p.name == "model.pt"):
            files[rel] = p.read_bytes()
    return files


def test_sigkill_then_rerun_gives_identical_bytes(prefect_server, tmp_path, shared_data):
    _, env = prefect_server
    inputs = [str(shared_data(rel)) for rel in WARCS]
    configs = {}
    for name in ("straight", "killed"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_config(str(tmp_path / name), inputs)))
        configs[name] = path

    done = _run(configs["straight"], env)
    assert done.returncode == 0, done.stderr[-3000:]

    for point, stage in [
        ("dedup-signatures:1", "dedup-signatures"),
        ("dedup-pairs:0", "dedup-pairs"),
        ("dedup-clusters:0", "dedup-clusters"),
        ("dedup:1", "dedup"),
        ("tokenize:1", "tokenize"),
        ("train:step:20", "train"),
    ]:
        killed = _run(configs["killed"], env, failpoint=point)
        assert killed.returncode == -9, f"{point}: expected SIGKILL, got {killed.returncode}\n{killed.stderr[-3000:]}"
        # the kill landed inside the stage: it had started and was not committed
        assert list((tmp_path / "killed" / stage).glob("*")), stage
        assert not list((tmp_path / "killed" / stage).glob("*/manifest.json")), stage

    resumed = _run(configs["killed"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    straight, again = _committed_files(tmp_path / "straight"), _committed_files(tmp_path / "killed")
    assert any(k.startswith("tokenize/") and k.endswith(".arrow") for k in straight)
    assert any(k.endswith("model.pt") for k in straight)
    assert any(k.startswith("dedup-clusters/") and k.endswith(".parquet") for k in straight)
    assert any(k.startswith("dedup/") and "/removed/" in k for k in straight)
    assert sorted(straight) == sorted(again)
    different = [k for k in straight if straight[k] != again[k]]
    assert different == []
