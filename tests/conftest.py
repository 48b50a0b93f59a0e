"""Shared fixtures. Tests that need ../shared/data skip when it is absent, unless
CRAWL2LLM_REQUIRE_DATA=1 (set by .ci/run), where they fail instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CRAWL2LLM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def require_data(rel: str) -> Path:
    """Path of a file or folder under shared/data; skip (or fail in CI) when it is missing."""
    path = SHARED_DATA / rel
    if not path.exists():
        msg = f"real data not found: {path} (set CRAWL2LLM_DATA to the shared/data folder)"
        if os.environ.get("CRAWL2LLM_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data():
    """Call with a relative path: shared_data('warc/cc-whirlwind.warc.gz')."""
    return require_data
