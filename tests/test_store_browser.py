"""The store browser output links open (flows/store_browser.py), as the server mounts it: what a
browser gets for a link, and what it gets for links nobody made (other outputs, paths out, forged
tokens), plus the artifact rows the UI renders (flows/artifacts.py)."""

from __future__ import annotations

import os

import pytest

AUTH = "test-auth-string"


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "store" / "quality" / "abc123"
    (out / "data").mkdir(parents=True)
    (out / "manifest.json").write_text('{"counts": {"docs_in": 3}}')
    (out / "data" / "part-00000.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    (out / "data" / "a_b <i>.html").write_text("<script>alert(1)</script>")
    (tmp_path / "secret.txt").write_text("not yours")
    return out


@pytest.fixture
def browser():
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from flows import store_browser

    return TestClient(Starlette(routes=[store_browser.route(AUTH)]))


def _link(root, path=""):
    from flows.store_browser import link

    return link(str(root), path, auth=AUTH)


def test_a_link_opens_the_output_its_files_and_folders(browser, output):
    listing = browser.get(_link(output))
    assert listing.status_code == 200 and listing.headers["content-type"].startswith("text/html")
    assert str(output) in listing.text and 'href="manifest.json"' in listing.text and 'href="data/"' in listing.text
    assert "default-src 'none'" in listing.headers["content-security-policy"]  # no script runs on the UI's origin
    manifest = browser.get(_link(output) + "manifest.json")
    assert manifest.status_code == 200 and manifest.json() == {"counts": {"docs_in": 3}}
    assert manifest.headers["content-type"] == "text/plain; charset=utf-8"
    inner = browser.get(_link(output) + "data/")
    assert "part-00000.parquet" in inner.text and 'href="../"' in inner.text
    assert "&lt;i&gt;" in inner.text and "<i>" not in inner.text  # names are escaped
    part = browser.get(_link(output, "data/part-00000.parquet"))
    assert part.content.startswith(b"PAR1") and "attachment" in part.headers["content-disposition"]
    page = browser.get(_link(output, "data/a_b <i>.html"))  # HTML from the store is a download, not a page
    assert (
        page.headers["content-type"] == "application/octet-stream"
        and page.headers["x-content-type-options"] == "nosniff"
    )
    assert browser.get(_link(output)[:-1], follow_redirects=False).status_code == 307  # folder without its slash


def test_links_nobody_made_are_refused(browser, output, tmp_path):
    from flows.store_browser import link

    good = _link(output)
    forged = link(str(tmp_path), "secret.txt", auth="another installation")
    assert browser.get(forged).status_code == 403
    token, encoded = good.split("/")[2:4]
    other = _link(tmp_path).split("/")[3]  # a real output's token with another folder
    assert browser.get(f"/crawl2llm-store/{token}/{other}/secret.txt").status_code == 403
    for path in ("../../secret.txt", "data/../../../secret.txt", "%2e%2e/%2e%2e/secret.txt", "..%2f..%2fsecret.txt"):
        r = browser.get(good + path)
        assert r.status_code in (403, 404) and "not yours" not in r.text, path
    os.symlink(tmp_path / "secret.txt", output / "data" / "link.txt")
    r = browser.get(_link(output, "data/link.txt"))
    assert r.status_code == 403 and "not yours" not in r.text
    assert browser.get(good + "missing.json").status_code == 404
    assert browser.get("/crawl2llm-store/x").status_code == 404
    assert browser.post(good + "manifest.json").status_code == 405  # read-only


def test_no_link_without_an_auth_string(monkeypatch, output):
    from flows.store_browser import link

    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    assert link(str(output)) is None


def test_count_rows_are_flat_and_drop_reasons_come_first():
    from flows.artifacts import count_rows, key

    rows = count_rows(
        {
            "chars_in": 10,
            "docs_in": 5,
            "docs_kept": 3,
            "rules": {"gopher": {"checked": 5, "failed": 2}},
            "removed": {"gopher": 2},
            "history": [1, 2],
        }
    )
    assert [r["metric"] for r in rows] == [
        "removed.gopher",
        "docs_in",
        "docs_kept",
        "chars_in",
        "rules.gopher",
        "history",
    ]
    assert rows[4]["value"] == "checked 5, failed 2"
    assert all(isinstance(r["value"], (int, float, str)) for r in rows)
    assert key("Quality", "summary", "AB_12") == "quality-summary-ab-12"
