"""Prefect's own CLI works against our server: its list commands send null filters, which the
server refuses (422) with fastapi 0.151 and later; the lock pins one that reads them as absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "command", [["flow-run", "ls"], ["deployment", "ls"], ["work-pool", "ls"], ["artifact", "ls"], ["flow", "ls"]]
)
def test_prefect_list_commands_answer(prefect_server, command):
    url, env = prefect_server
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run([str(prefect), *command], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert "Unprocessable Entity" not in done.stdout + done.stderr
