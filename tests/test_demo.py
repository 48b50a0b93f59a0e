"""The demo end to end, as README command 1 runs it (smaller): crawl pydoc on localhost, every stage,
a tiny GPT, the report; the second run is all cached."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

STAGES = ["crawl", "ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"]


def _demo(tmp_path, env) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "demo",
            "--store",
            str(tmp_path / "store"),
            "--pages",
            "40",
            "--steps",
            "20",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _stage_lines(report: str) -> dict[str, str]:
    return {
        line.split()[0]: line.split()[1]
        for line in report.splitlines()
        if line.split() and line.split()[0] in STAGES and len(line.split()) > 1
    }


def test_demo_runs_every_stage_then_everything_is_cached(prefect_server, tmp_path):
    _, env = prefect_server
    first = _demo(tmp_path, env)
    assert _stage_lines(first) == {s: "ran" for s in STAGES}, first
    assert "perplexity" in first and "Prefect UI" in first
    assert (tmp_path / "store" / "crawl").is_dir()
    warcs = list((tmp_path / "store" / "crawl").glob("*/data/part-*.warc.gz"))
    assert len(warcs) >= 1
    second = _demo(tmp_path, env)
    assert _stage_lines(second) == {s: "cached" for s in STAGES}, second
