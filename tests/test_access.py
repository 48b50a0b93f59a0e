"""flows/access.py: which paths and URLs a flow run of `crawl2llm server`'s worker may use. The run
through the real worker is in tests/test_security.py; these are the tricks, one line each."""

from __future__ import annotations

import pytest

from flows import access


@pytest.fixture
def roots(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    monkeypatch.setenv(
        access.ENV,
        access.encode([str(allowed), "https://data.commoncrawl.org/", "https://example.org/data", "s3://bucket/c2l/"]),
    )
    return allowed


@pytest.mark.parametrize(
    "target, ok",
    [
        ("https://data.commoncrawl.org/crawl-data/x.warc.gz", True),
        ("https://data.commoncrawl.org/crawl-data/x.warc.gz?X-Amz-Signature=abc", True),
        ("https://data.commoncrawl.org@evil.example/x.warc.gz", False),  # userinfo is not the host
        ("https://data.commoncrawl.org.evil.example/x.warc.gz", False),
        ("http://data.commoncrawl.org/x.warc.gz", False),  # another scheme
        ("https://data.commoncrawl.org:8443/x.warc.gz", False),  # another port
        ("https://example.org/data/part.warc.gz", True),
        ("https://example.org/data", True),
        ("https://example.org/database.warc.gz", False),  # a prefix ends at a path segment
        ("s3://bucket/c2l/store", True),
        ("s3://bucket/other", False),
        ("tcp://127.0.0.1:8786", False),
    ],
)
def test_urls(roots, target, ok):
    assert access.is_allowed(target, access.allowed_roots()) is ok


def test_local_paths(roots, tmp_path):
    allowed = access.allowed_roots()
    assert access.is_allowed(str(roots / "sub" / "x.warc.gz"), allowed)
    assert access.is_allowed(f"file://{roots}/sub", allowed)
    assert access.is_allowed(str(roots / "sub" / "*.warc.gz"), allowed)
    assert not access.is_allowed(str(roots / ".." / "x.warc.gz"), allowed)
    assert not access.is_allowed(str(roots) + "-sibling/x.warc.gz", allowed)
    (roots / "link").symlink_to(tmp_path)  # a symlink inside that points outside
    assert not access.is_allowed(str(roots / "link" / "x.warc.gz"), allowed)


def test_check_names_the_field_and_hides_secrets(roots):
    with pytest.raises(access.AccessError, match=r"^inputs: 'https://evil.example/x.warc.gz' is outside") as e:
        access.check({"store": str(roots), "inputs": ["https://user:secret@evil.example/x.warc.gz?sig=abc"]})
    assert "secret" not in str(e.value) and "sig=abc" not in str(e.value)
    access.check({"store": str(roots), "evaluate.tasks": {"hellaswag": str(roots / "h.jsonl")}, "data": ""})


def test_no_policy_no_restriction(monkeypatch):
    monkeypatch.delenv(access.ENV, raising=False)
    access.check({"inputs": ["/etc/passwd"]})


def test_a_bad_policy_is_an_error(monkeypatch):
    monkeypatch.setenv(access.ENV, "/data")
    with pytest.raises(access.AccessError, match="JSON list"):
        access.check({"inputs": ["/data/x"]})
