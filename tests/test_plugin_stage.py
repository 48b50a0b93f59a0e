"""A new filter stage is one file: declared with filter_stage and named in $CRAWL2LLM_STAGES, it runs
in the pipeline (between the stages it sits between), as a CLI command, in every increment of an
incremental series, and has its form in the UI's schema, without editing any other module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.flow_inputs import tiny_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

STAGE_FILE = '''"""Drop documents shorter than min_chars: a whole stage in one file."""

from pydantic import Field

from pipeline.stage import StageConfig, split_by_reason
from pipeline.stage_table import filter_stage


class ShortDocsConfig(StageConfig):
    min_chars: int = Field(400, ge=0, description="Documents with fewer characters are removed.")


def drop_short(table, config):
    reasons = ["too_short" if len(t) < config.min_chars else None for t in table.column("text").to_pylist()]
    return split_by_reason(table, reasons)


STAGE = filter_stage("short_docs", "drop documents under min_chars characters", "short_docs:ShortDocsConfig",
                     "short_docs:drop_short", after="quality", title="Short documents")
'''


def cli(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def outputs(store: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / stage).glob("*/manifest.json"))]


def test_a_one_file_filter_stage_runs_everywhere(prefect_server, tmp_path, shared_data):
    _, env = prefect_server
    (tmp_path / "short_docs.py").write_text(STAGE_FILE)
    env = {
        **env,
        "CRAWL2LLM_STAGES": "short_docs",
        "CRAWL2LLM_WORKERS": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")]),
    }
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(shared_data("warc/dolma-sample-0000.warc.gz"), incoming)
    store = tmp_path / "store"
    config = tiny_config(
        str(store), [str(incoming / "*.warc.gz")], incremental=True, stop_after="pii", short_docs={"min_chars": 2000}
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    # the schema the UI's forms are made from, and the CLI's command
    probe = (
        "import json; from prefect.flows import load_flow_from_entrypoint; "
        "from prefect.utilities.callables import parameter_schema; from flows.config import PipelineConfig; "
        "print(json.dumps([sorted(parameter_schema(load_flow_from_entrypoint('flows.stages:short_docs'))"
        ".model_dump()['definitions']), list(PipelineConfig.model_fields)]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    definitions, fields = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ShortDocsConfig" in definitions and fields.index("short_docs") == fields.index("quality") + 1
    assert "short_docs" in cli(["--help"], env, tmp_path).stdout

    # increment 0: ingest → dedup → quality → short_docs → pii
    cli(["run", str(tmp_path / "run.yaml")], env, tmp_path)
    [first] = outputs(store, "short_docs")
    [quality] = outputs(store, "quality")
    assert first["upstream"]["fingerprint"] == quality_fp(store, quality)
    assert first["counts"]["removed"]["too_short"] > 0 and first["counts"]["docs_kept"] > 0
    [pii] = outputs(store, "pii")
    assert pii["upstream"]["stage"] == "short_docs"

    # a new file: increment 1 runs the stage too; increment 0's outputs stay as they are
    shutil.copy(shared_data("warc/dolma-sample-0001.warc.gz"), incoming)
    cli(["run", str(tmp_path / "run.yaml"), "--set", "stop_after=short_docs"], env, tmp_path)
    runs = outputs(store, "short_docs")
    assert len(runs) == 2 and first in runs and len(outputs(store, "quality")) == 2

    # the stage on its own, from the CLI, over a committed output
    source = next((store / "quality").glob("*/manifest.json")).parent
    cli(["short_docs", str(source), "--set", "min_chars=10", "--workers", "0"], env, tmp_path)
    assert len(outputs(store, "short_docs")) == 3


def quality_fp(store: Path, manifest: dict) -> str:
    """The fingerprint (folder name) of the quality output whose manifest this is."""
    for path in (store / "quality").glob("*/manifest.json"):
        if json.loads(path.read_text()) == manifest:
            return path.parent.name
    raise AssertionError("quality output not found")
