"""The crawler against a tiny site served on 127.0.0.1 (nothing else is ever contacted): what it
records, what it leaves alone (robots.txt, depth, scope, exclusions), resume, config errors, the
fetch deadline against servers that send a byte a second, and seeds that redirect."""

from __future__ import annotations

import functools
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from pipeline.crawl import MAX_SEED_REDIRECTS, CrawlConfig, crawl
from pipeline.deadline import Deadline, DeadlineExceeded, build_opener
from storage import Store


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean; remember what was asked instead
        self.server.requests.append(self.path)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Base URL of a small site: pages, a robots.txt rule, a redirect, a 404, text, outside links."""
    root = tmp_path_factory.mktemp("site")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.requests = []
    port = server.server_address[1]
    pages = {
        "index.html": '<a href="a.html">A</a> <a href="b.html">B</a> <a href="private/secret.html">S</a> '
        '<a href="file.txt">T</a> <a href="missing.html">404</a> <a href="sub">dir</a> '
        f'<a href="http://example.com/">out</a> <a href="http://localhost:{port}/other.html">lh</a>',
        "a.html": '<p>A</p><a href="deep1.html">deeper</a>',
        "b.html": '<a href="./">home</a> <a href="a.html#top">A again</a> <a href="mailto:x@y">mail</a>',
        "deep1.html": '<a href="deep2.html">deeper still</a>',
        "deep2.html": "<p>too deep</p>",
        "private/secret.html": "<p>robots.txt keeps crawlers out</p>",
        "sub/index.html": '<a href="../a.html">A</a>',
        "other.html": "<p>on localhost</p>",
        "file.txt": "plain text, no links: a.html",
        "robots.txt": "User-agent: *\nDisallow: /private/\n",
    }
    for rel, text in pages.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"<html><body>{text}</body></html>" if rel.endswith(".html") else text)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{port}/"
    server.shutdown()
    server.server_close()


def _out(tmp_path, name="store"):
    return Store(str(tmp_path / name)).stage("crawl", "fp1")


def _records(out) -> list[dict]:
    """Every record of every WARC file, read back with fastwarc."""
    from fastwarc.warc import ArchiveIterator

    recs = []
    for rel in out.list("data"):
        for r in ArchiveIterator(io.BytesIO(out.read_bytes(rel)), parse_http=False):
            assert r.verify_block_digest()
            block = r.reader.read()
            h = r.headers
            recs.append(
                {
                    "file": rel,
                    "type": h.get("WARC-Type"),
                    "id": h.get("WARC-Record-ID"),
                    "uri": h.get("WARC-Target-URI"),
                    "to": h.get("WARC-Concurrent-To"),
                    "truncated": h.get("WARC-Truncated"),
                    "block": block,
                    "status": int(block.split(b" ", 2)[1]) if h.get("WARC-Type") == "response" else None,
                }
            )
    return recs


def _urls(recs, base):
    return [r["uri"].removeprefix(base) for r in recs if r["type"] == "response"]


def test_crawl_records_pages_politely(site, tmp_path):
    server, base = site
    out = _out(tmp_path)
    config = CrawlConfig(seeds=[base], max_depth=2, pages_per_file=3)
    done = []
    result = crawl(config, out, progress=lambda n, total: done.append((n, total)))

    recs = _records(out)
    # breadth first; robots.txt, depth 3, text links, mailto, fragments and other hosts left alone
    assert _urls(recs, base) == ["", "a.html", "b.html", "file.txt", "missing.html", "sub", "deep1.html", "sub/"]
    assert result == {
        "pages": 8,
        "files": 3,
        "status": {"200": 6, "301": 1, "404": 1},
        "errors": 0,
        "robots_blocked": 1,
        "bytes": sum(len(out.read_bytes(f)) for f in out.list("data")),
    }
    assert out.list("data") == ["data/part-00000.warc.gz", "data/part-00001.warc.gz", "data/part-00002.warc.gz"]
    assert done == [(i, 200) for i in range(1, 9)]
    assert not any("example.com" in (r["uri"] or "") or "localhost" in (r["uri"] or "") for r in recs)
    assert not any("/private/" in p or "deep2" in p for p in server.requests)

    # each file opens with warcinfo, then a request and its response per page
    for rel in out.list("data"):
        kinds = [r["type"] for r in recs if r["file"] == rel]
        assert kinds[0] == "warcinfo" and kinds[1:] == ["request", "response"] * ((len(kinds) - 1) // 2)
    ids = [r["id"] for r in recs]
    assert len(set(ids)) == len(ids)
    requests = {r["id"]: r for r in recs if r["type"] == "request"}
    for resp in (r for r in recs if r["type"] == "response"):
        assert requests[resp["to"]]["uri"] == resp["uri"]
        assert requests[resp["to"]]["block"].startswith(b"GET /")
    by_url = {r["uri"]: r for r in recs if r["type"] == "response"}
    assert by_url[base + "missing.html"]["status"] == 404
    assert b"Location: /sub/" in by_url[base + "sub"]["block"]
    assert by_url[base + "a.html"]["block"].endswith(b'<a href="deep1.html">deeper</a></body></html>')
    assert out.read_json("state.json")["pages"] == 8


def test_max_pages_and_truncation(site, tmp_path):
    _, base = site
    out = _out(tmp_path)
    result = crawl(CrawlConfig(seeds=[base], max_pages=3, max_page_bytes=100), out)
    recs = _records(out)
    assert result["pages"] == 3 and _urls(recs, base) == ["", "a.html", "b.html"]
    first = next(r for r in recs if r["type"] == "response")
    head, _, body = first["block"].partition(b"\r\n\r\n")
    assert len(body) == 100 and first["truncated"] == "length"  # links before the cut are still followed
    assert b"\r\nContent-Length: 100" in head and b"X-Crawler-Content-Length:" in head


def test_exclude_patterns_and_allow_list(site, tmp_path):
    _, base = site
    out = _out(tmp_path, "excluded")
    crawl(CrawlConfig(seeds=[base], max_depth=1, exclude_patterns=[r"/b\.html$", "missing", r"\.txt$"]), out)
    assert _urls(_records(out), base) == ["", "a.html", "sub", "sub/"]

    out = _out(tmp_path, "allow")
    result = crawl(CrawlConfig(seeds=[base], scope="allow-list", allow_hosts=["localhost"]), out)
    port = base.rsplit(":", 1)[1]
    # the seed is always fetched; only links to the allowed host are followed from it
    assert _urls(_records(out), "http://") == [f"127.0.0.1:{port}", f"localhost:{port}other.html"]
    assert result["status"] == {"200": 2}


def test_resume_after_interruption(site, tmp_path):
    server, base = site
    config = CrawlConfig(seeds=[base], max_depth=2, pages_per_file=1)
    full = _out(tmp_path, "a")
    crawl(config, full)

    resumed = _out(tmp_path, "b")

    def killed(done, total):
        if done == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        crawl(config, resumed, progress=killed)
    assert resumed.list("data") == ["data/part-00000.warc.gz", "data/part-00001.warc.gz"]
    resumed.write_bytes("data/part-00009.warc.gz", b"left by a run killed before its checkpoint")
    server.requests.clear()
    result = crawl(config, resumed)
    assert "/" not in server.requests and "/a.html" not in server.requests  # already in files: not fetched again
    assert "/b.html" in server.requests

    a, b = _records(full), _records(resumed)
    assert result["pages"] == 8 and resumed.list("data") == full.list("data")
    assert _urls(a, base) == _urls(b, base)
    assert [r["id"] for r in a] == [r["id"] for r in b]

    def payloads(recs):
        return [r["block"].partition(b"\r\n\r\n")[2] for r in recs if r["type"] == "response"]

    assert payloads(a) == payloads(b)
    # a finished crawl run again does nothing more
    assert crawl(config, resumed)["pages"] == 8 and len(resumed.list("data")) == 8


def test_per_host_delay(site, tmp_path):
    _, base = site
    start = time.monotonic()
    crawl(CrawlConfig(seeds=[base], max_pages=3, delay_s=0.15), _out(tmp_path))
    assert time.monotonic() - start >= 0.45  # robots.txt, then three pages, 0.15 s apart


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"seeds": ["ftp://x"]}, "ftp://x"),
        ({"seeds": ["not a url"]}, "not a url"),
        ({"seeds": []}, "seeds"),
        ({"seeds": ["http://x/"], "exclude_patterns": ["(unclosed"]}, "exclude_patterns"),
        ({"seeds": ["http://x/"], "scope": "allow-list"}, "allow_hosts"),
        ({"seeds": ["http://x/"], "allow_hosts": ["http://y/"]}, "allow_hosts"),
        ({"seeds": ["http://x/"], "allow_hosts": ["y:0"]}, "allow_hosts"),
        ({"seeds": ["http://x/"], "allow_hosts": ["y:http"]}, "allow_hosts"),
        ({"seeds": ["http://x/"], "scope": "same-host"}, "same-origin"),
        ({"seeds": ["http://x/"], "fetch_deadline_s": 0}, "fetch_deadline_s"),
        ({"seeds": ["http://x/"], "max_pages": 0}, "max_pages"),
        ({"seeds": ["http://x/"], "max_page": 10}, "max_page"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        CrawlConfig(**fields)


@pytest.mark.parametrize("robots", [True, False])
def test_unreachable_seed_is_a_clear_error(tmp_path, robots):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    seed = f"http://127.0.0.1:{port}/"
    out = _out(tmp_path)
    with pytest.raises(RuntimeError, match=f"{seed}.*refused"):
        crawl(CrawlConfig(seeds=[seed], respect_robots=robots, timeout_s=2), out)
    assert out.list("data") == [] and not out.exists("state.json")


def test_one_dead_seed_among_live_ones(site, tmp_path):
    _, base = site
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    result = crawl(CrawlConfig(seeds=[dead, base], max_depth=0), _out(tmp_path))
    assert result["pages"] == 1 and result["errors"] == 1


def test_crawled_warc_reads_back_through_ingest(site, tmp_path):
    """What the crawler records is what ingest reads: one document per HTML 200 page, with its URL
    and text; redirects, 404s and plain text are counted as skipped, never documents."""
    from pipeline.ingest import IngestConfig, ingest_file

    _, base = site
    out = _out(tmp_path)
    crawl(CrawlConfig(seeds=[base], max_depth=2, pages_per_file=20), out)
    (warc_file,) = out.list("data")
    result = ingest_file(out.url(warc_file), IngestConfig(min_chars=0, languages=[]))
    docs = {r["url"].removeprefix(base): r for r in result.kept.to_pylist()}
    assert sorted(docs) == ["", "a.html", "b.html", "deep1.html", "sub/"]
    assert docs["a.html"]["text"] == "A\n\ndeeper" and docs["a.html"]["source"] == warc_file.split("/")[-1]
    assert result.counts["skipped"] == {"mime": 1, "status": 2}  # file.txt; the 301 and the 404
    assert result.counts["damaged"] == {} and result.counts["records"] == 1 + 2 * 8


# -- servers that answer slowly, and seeds that redirect ------------------------------------------

DRIP_BYTES = 30  # sent one a second: 30 s when nothing cuts the fetch short


class _Routes(BaseHTTPRequestHandler):
    """Answers from server.routes: path -> (status, headers, body), "drip-body" (headers at once,
    then the body a byte a second) or "drip-all" (status line and headers a byte a second too)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path, (404, {}, b"not here"))
        try:
            if route == "drip-all":
                self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + b" " * DRIP_BYTES)
            elif route == "drip-body":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(DRIP_BYTES))
                self.end_headers()
                self.wfile.flush()
                self._drip(b"x" * DRIP_BYTES)
            else:
                status, headers, body = route
                self.send_response(status)
                for name, value in {"Content-Type": "text/html", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
        except OSError:  # the crawler hung up
            pass

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if self.server.stop.wait(1.0):
                return


@pytest.fixture
def servers():
    """serve(routes) -> (server, base URL) of a new server on 127.0.0.1; routes may be set later."""
    made = []

    def serve(routes=None):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Routes)
        server.routes, server.requests, server.stop = routes or {}, [], threading.Event()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        made.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in made:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _page(*links: str) -> tuple:
    return 200, {}, "".join(f'<a href="{link}">{link}</a> ' for link in links).encode()


def _redirect(to: str) -> tuple:
    return 302, {"Location": to}, b""


@pytest.mark.parametrize("route", ["drip-body", "drip-all"])
def test_a_fetch_ends_at_its_deadline(servers, route):
    _, base = servers({"/slow": route})
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=f"{base}/slow.*deadline of 1.5 s"):
        with build_opener(Deadline(f"{base}/slow", 1.5)).open(f"{base}/slow", timeout=10) as resp:
            resp.read()
    assert 1.5 <= time.monotonic() - start < 2.5  # a per-read timeout of 10 s never fires: a byte comes each second


def test_slow_page_and_slow_robots_txt_end_at_the_deadline_and_the_crawl_goes_on(servers, tmp_path):
    """A page whose body comes a byte a second, and (on another seed's origin) a robots.txt whose
    very status line does: each is given up at fetch_deadline_s and counted in errors; the rest of
    the crawl is fetched as usual."""
    slow_robots, robots_base = servers({"/robots.txt": "drip-all", "/": _page()})
    site, base = servers(
        {"/": _page("a.html", "slow.html", "b.html"), "/a.html": _page(), "/b.html": _page(), "/slow.html": "drip-body"}
    )
    out = _out(tmp_path)
    start = time.monotonic()
    result = crawl(CrawlConfig(seeds=[f"{base}/", f"{robots_base}/"], fetch_deadline_s=2, timeout_s=10), out)
    took = time.monotonic() - start
    assert result["errors"] == 2 and result["status"] == {"200": 3}
    assert _urls(_records(out), base) == ["/", "/a.html", "/b.html"]
    assert "/slow.html" in site.requests and slow_robots.requests == ["/robots.txt"]
    assert 4 <= took < 7, took  # two deadlines of 2 s; dripping to the end would take 2 x 30 s


def test_another_port_of_the_seed_host_is_another_site(servers, tmp_path):
    other, other_base = servers({"/x.html": _page()})
    _, base = servers({"/": _page(f"{other_base}/x.html", "/y.html"), "/y.html": _page()})
    result = crawl(CrawlConfig(seeds=[f"{base}/"]), _out(tmp_path))
    assert result["pages"] == 2 and other.requests == []

    port = other_base.rsplit(":", 1)[1]
    out = _out(tmp_path, "allowed")
    crawl(CrawlConfig(seeds=[f"{base}/"], scope="allow-list", allow_hosts=[f"127.0.0.1:{port}"]), out)
    assert _urls(_records(out), "http://127.0.0.1:") == [f"{base.rsplit(':', 1)[1]}/", f"{port}/x.html"]


def test_a_seed_redirect_chain_puts_only_its_landing_origin_in_scope(servers, tmp_path):
    """seed -> hop (another port) -> landing (a third): all three fetched; links on the landing
    page to the landing origin and the seed's are followed, to the hop's origin not."""
    hop, hop_base = servers()
    landing, landing_base = servers()
    seed, seed_base = servers()
    seed.routes = {"/": _redirect(f"{hop_base}/"), "/s.html": _page()}
    hop.routes = {"/": _redirect(f"{landing_base}/"), "/h.html": _page()}
    landing.routes = {"/": _page("/l.html", f"{hop_base}/h.html", f"{seed_base}/s.html"), "/l.html": _page()}
    out = _out(tmp_path)
    result = crawl(CrawlConfig(seeds=[f"{seed_base}/"]), out)
    assert _urls(_records(out), "") == [
        f"{seed_base}/",
        f"{hop_base}/",
        f"{landing_base}/",
        f"{landing_base}/l.html",
        f"{seed_base}/s.html",
    ]
    assert result["errors"] == 0 and "/h.html" not in hop.requests
    assert out.read_json("state.json")["origins"] == sorted([seed_base, landing_base])


def test_a_seed_redirect_loop_or_too_many_redirects_is_an_error(servers, tmp_path):
    a, a_base = servers()
    b, b_base = servers()
    a.routes = {"/loop": _redirect(f"{b_base}/back"), **{f"/r{i}": _redirect(f"/r{i + 1}") for i in range(9)}}
    b.routes = {"/back": _redirect(f"{a_base}/loop")}
    out = _out(tmp_path)
    result = crawl(CrawlConfig(seeds=[f"{a_base}/loop"]), out)
    assert result["errors"] == 1 and result["status"] == {"302": 2}

    out = _out(tmp_path, "long")
    result = crawl(CrawlConfig(seeds=[f"{a_base}/r0"]), out)
    # r0 -> r1 ... -> r5 followed; the sixth redirect is not
    assert result["errors"] == 1 and _urls(_records(out), a_base) == [f"/r{i}" for i in range(MAX_SEED_REDIRECTS + 1)]
