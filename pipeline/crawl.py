"""Crawl: seed URLs to WARC files, breadth first and politely (robots.txt, per-host delay).

Every fetched URL is recorded as a WARC request and response record, whatever its status or type;
links are followed only from HTML 200 responses. Redirects are not followed inside one fetch: the
3xx is recorded and its Location joins the frontier like a link, so scope, robots.txt, exclusions
and de-duplication apply to it too. A seed's redirects are followed whatever the scope, up to
MAX_SEED_REDIRECTS, and the origin the seed lands on joins the scope (a site that moved to https
or www. is still crawled); the origins in between do not.

Each fetch (a page, or a robots.txt with its redirects) has a wall-clock deadline, fetch_deadline_s
(pipeline/deadline.py): a server that sends a byte a second holds the crawl that long at most.

The crawl checkpoints state.json after each WARC file, so a killed crawl resumes from its last
file and re-fetches at most one file's worth of pages. Record ids are derived from the URL and the
page's sequence number, so re-crawling an unchanged site gives the same ids; WARC-Date is the real
time of the fetch.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
import urllib.robotparser
from collections import Counter, deque
from html.parser import HTMLParser
from typing import Callable, Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from pipeline import warc
from pipeline.charset import decode_html
from pipeline.deadline import Deadline, build_opener
from pipeline.http_message import content_type, gunzip
from pipeline.stage import StageConfig
from storage import StageDir

STATE = "state.json"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left alone when re-quoting a URL's path and query (everything already legal in a URL).
URL_SAFE = "/?#[]@!$&'()*+,;=:%-._~"
# What a failed fetch raises: socket errors, timeouts and the deadline, bad URLs, broken HTTP.
FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)
# Redirects followed from a seed before its landing origin joins the scope; one more is an error.
MAX_SEED_REDIRECTS = 5


class CrawlConfig(StageConfig):
    """What to crawl and how politely."""

    model_config = ConfigDict(title="Seed URLs")  # what the form's crawl-or-none switch reads

    seeds: list[str] = Field(
        ...,
        min_length=1,
        description="Start URLs (http or https). Seeds are always fetched "
        "(robots.txt permitting); links are followed from them.",
    )
    max_pages: int = Field(200, ge=1, description="Stop after recording this many pages (any status).")
    max_depth: int = Field(
        5,
        ge=0,
        description="Links followed from a seed at most this many times (0: seeds only). "
        "A redirect does not count as a step.",
    )
    scope: Literal["same-origin", "allow-list"] = Field(
        "same-origin",
        description="Which links to follow: those on a seed's origin (scheme, host and port: "
        "another port is another site) or the origin a seed's redirects end on, "
        "or those on a host in allow_hosts.",
    )
    allow_hosts: list[str] = Field(
        [],
        description="Hosts in scope when scope is allow-list, as host or host:port "
        "(without a port, any port); a host also matches its subdomains "
        "(docs.python.org matches python.org).",
    )
    respect_robots: bool = Field(
        True, description="Obey robots.txt (fetched once per origin with our user agent), including its Crawl-delay."
    )
    delay_s: float = Field(0.0, ge=0, description="Seconds between two requests to the same host and port.")
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds to wait on a connection or on one read before giving up on a URL (counted in errors).",
    )
    fetch_deadline_s: float = Field(
        60.0,
        gt=0,
        description="Seconds one fetch (a page, or a robots.txt with its "
        "redirects) may take in all, however slowly the server "
        "sends; past it the URL is given up (counted in errors).",
    )
    user_agent: str = Field(
        "crawl2llm/0.1 (+https://github.com/crawl2llm)",
        min_length=1,
        description="Sent with every request, and the name robots.txt rules are matched against.",
    )
    pages_per_file: int = Field(50, ge=1, description="Pages per WARC file; the crawl checkpoints after each file.")
    max_page_bytes: int = Field(
        5_000_000, ge=1, description="Bodies are cut at this many bytes (the record is marked WARC-Truncated: length)."
    )
    exclude_patterns: list[str] = Field(
        [],
        description="Regular expressions; a link or redirect target matching any of them (re.search) is not fetched.",
    )
    mime_types: list[str] = Field(
        ["text/html", "application/xhtml+xml"], description="Content-Types of 200 responses whose links are followed."
    )

    @field_validator("scope", mode="before")
    @classmethod
    def _renamed_scope(cls, scope):
        if scope == "same-host":
            raise ValueError("'same-host' is now 'same-origin' (scheme, host and port of a seed)")
        return scope

    @field_validator("seeds")
    @classmethod
    def _http_seeds(cls, seeds: list[str]) -> list[str]:
        for seed in seeds:
            if normalize_url(seed) is None:
                raise ValueError(f"seed {seed!r} is not an http:// or https:// URL with a host")
        return seeds

    @field_validator("exclude_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"exclude pattern {p!r} is not a valid regular expression: {e}") from None
        return patterns

    @field_validator("allow_hosts")
    @classmethod
    def _bare_hosts(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            name, colon, port = h.rpartition(":") if ":" in h else (h, "", "")
            if (
                not name
                or any(c in name for c in "/:@[] \t\r\n")
                or colon
                and not (port.isdigit() and 1 <= int(port) <= 65535)
            ):
                raise ValueError(
                    f"allow_hosts entry {h!r} must be a host name such as 'example.com', "
                    "or host:port such as 'example.com:8080'"
                )
        return hosts

    @model_validator(mode="after")
    def _allow_list_needs_hosts(self) -> "CrawlConfig":
        if self.scope == "allow-list" and not self.allow_hosts:
            raise ValueError("scope 'allow-list' needs at least one host in allow_hosts")
        return self


def origin(url: str) -> str:
    """scheme://host[:port] of a normalized URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The one spelling of a URL the frontier keys on (no fragment, lower-case scheme and host, no
    default port, path at least '/'), or None when it is not a fetchable http(s) URL."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = quote(parts.path or "/", safe=URL_SAFE)
    return urlunsplit((scheme, netloc, path, quote(parts.query, safe=URL_SAFE), ""))


class _Links(HTMLParser):
    """hrefs of <a> and <area>, resolved against the page URL or its <base href>."""

    def __init__(self, url: str):
        super().__init__(convert_charrefs=True)
        self.base, self.links = url, []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if not href:
            return
        if tag == "base":
            self.base = urljoin(self.base, href)
        elif tag in ("a", "area"):
            self.links.append((self.base, href))


def extract_links(html: str, url: str) -> list[str]:
    """Normalized http(s) links of a page, in document order, without repeats."""
    parser = _Links(url)
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient, but a page must never stop the crawl
        pass
    links = (normalize_url(href, base) for base, href in parser.links)
    return list(dict.fromkeys(link for link in links if link))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """3xx comes back as an HTTPError, so the crawler records it and decides about Location itself."""

    def http_error_302(self, req, fp, code, msg, headers):
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _Fetched:
    """One HTTP exchange, as it goes into the WARC file."""

    def __init__(self, status: int, request: bytes, response: bytes, body: bytes, headers, truncated: bool):
        self.status, self.request, self.response, self.body = status, request, response, body
        self.headers, self.truncated = headers, truncated


def crawl(config: CrawlConfig, out: StageDir, progress: Callable[[int, int], None] | None = None) -> dict:
    """Crawl into `out` (a StageDir): data/part-NNNNN.warc.gz and state.json. Returns counts.

    Resumes from state.json when present. Raises RuntimeError when not a single page was fetched.
    """
    return _Crawler(config, out, progress).run()


class _Crawler:
    def __init__(self, config: CrawlConfig, out: StageDir, progress):
        self.config, self.out, self.progress = config, out, progress
        self.exclude = [re.compile(p) for p in config.exclude_patterns]
        self.robots: dict[str, urllib.robotparser.RobotFileParser | str] = {}
        self.last_request: dict[str, float] = {}
        self.first_errors: list[str] = []
        self.buffer: list[bytes] = []  # one request+response pair per page not yet in a file
        self.buffer_date: str | None = None
        if out.exists(STATE):
            self._load(out.read_json(STATE))
        else:
            seeds = list(dict.fromkeys(normalize_url(s) for s in config.seeds))
            # (url, depth, the seed's redirect chain that led here: [] for a seed, None off such a chain)
            self.queue = deque((s, 0, []) for s in seeds)
            self.seen = set(seeds)
            self.origins = sorted({origin(s) for s in seeds})
            self.pages = self.files = self.errors = self.robots_blocked = self.bytes = 0
            self.status: Counter = Counter()
        self._drop_stale_files()

    # -- state -------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "queue": [list(item) for item in self.queue],
            "seen": sorted(self.seen),
            "origins": self.origins,
            "pages": self.pages,
            "files": self.files,
            "errors": self.errors,
            "robots_blocked": self.robots_blocked,
            "bytes": self.bytes,
            "status": dict(self.status),
        }

    def _load(self, state: dict) -> None:
        self.queue = deque((url, depth, chain) for url, depth, chain in state["queue"])
        self.seen, self.origins = set(state["seen"]), list(state["origins"])
        self.pages, self.files, self.errors = state["pages"], state["files"], state["errors"]
        self.robots_blocked, self.bytes = state["robots_blocked"], state["bytes"]
        self.status = Counter(state["status"])

    def _drop_stale_files(self) -> None:
        """A run killed between writing a WARC file and its checkpoint leaves a file the resumed run
        will write again (or, if the site changed, not at all): remove it so no stale file is listed."""
        for rel in self.out.list("data"):
            name = rel.rsplit("/", 1)[-1]
            if name.startswith("part-") and int(name[5:10]) >= self.files:
                self.out.fs.rm(self.out.abspath(rel))

    def _flush(self) -> None:
        """Write the buffered pages as the next WARC file, then checkpoint."""
        if self.buffer:
            rel = self.out.part("data", self.files, "warc.gz")
            name = rel.rsplit("/", 1)[-1]
            info = warc.warcinfo_record(
                name,
                self.buffer_date,
                {
                    "robots": "obey" if self.config.respect_robots else "ignore",
                    "http-header-user-agent": self.config.user_agent,
                    "description": f"crawl of {', '.join(self.config.seeds)}",
                },
            )
            data = info + b"".join(self.buffer)
            self.out.write_bytes(rel, data)
            self.files += 1
            self.bytes += len(data)
            self.buffer, self.buffer_date = [], None
        self.out.write_json(STATE, self._state(), replace=True)  # the one file of a stage meant to change

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        while self.queue and self.pages < self.config.max_pages:
            url, depth, chain = self.queue.popleft()
            if not self._allowed_by_robots(url):
                continue
            fetched = self._fetch(url)
            if fetched is None:
                continue
            self._record(url, fetched)
            self._follow(url, depth, chain, fetched)
            if len(self.buffer) >= self.config.pages_per_file:
                self._flush()
            if self.progress:
                self.progress(self.pages, self.config.max_pages)
        if self.pages == 0:
            why = "; ".join(self.first_errors) or "nothing was in scope"
            raise RuntimeError(
                f"crawl fetched no page from seeds {', '.join(self.config.seeds)} "
                f"({self.errors} fetch errors, {self.robots_blocked} blocked by robots.txt): {why}"
            )
        self._flush()
        return {
            "pages": self.pages,
            "files": self.files,
            "status": dict(sorted(self.status.items())),
            "errors": self.errors,
            "robots_blocked": self.robots_blocked,
            "bytes": self.bytes,
        }

    def _record(self, url: str, f: _Fetched) -> None:
        date = warc.warc_date(time.time())
        self.buffer_date = self.buffer_date or date
        info = warc.warcinfo_id(self.out.part("data", self.files, "warc.gz").rsplit("/", 1)[-1])
        req_id = warc.record_id(url, "request", self.pages)
        self.buffer.append(
            warc.request_record(url, f.request, date, req_id, warcinfo=info)
            + warc.response_record(
                url,
                f.response,
                date,
                warc.record_id(url, "response", self.pages),
                concurrent_to=req_id,
                warcinfo=info,
                truncated="length" if f.truncated else None,
            )
        )
        self.pages += 1
        self.status[str(f.status)] += 1

    def _follow(self, url: str, depth: int, chain: list[str] | None, f: _Fetched) -> None:
        """Queue a redirect's target (same depth) or an HTML page's links (one deeper). The end of a
        seed's redirect chain puts its origin in scope: the seed moved (http→https, www.)."""
        if 300 <= f.status < 400 and f.headers.get("Location"):
            target = normalize_url(f.headers["Location"], url)
            if chain is not None:
                self._follow_seed_redirect(url, chain, target)
            else:
                self._enqueue([target] if target else [], depth)
            return
        if chain and self.config.scope == "same-origin" and origin(url) not in self.origins:
            self.origins = sorted({*self.origins, origin(url)})
        mime, charset = content_type(f.headers.get("Content-Type", ""))
        if f.status != 200 or mime not in self.config.mime_types or depth >= self.config.max_depth:
            return
        body = f.body
        if (f.headers.get("Content-Encoding") or "").lower() in ("gzip", "x-gzip"):  # sent despite identity
            body, problem = gunzip(body, self.config.max_page_bytes)
            if problem:
                return
        self._enqueue(extract_links(decode_html(body, charset)[0], url), depth + 1)

    def _follow_seed_redirect(self, url: str, chain: list[str], target: str | None) -> None:
        """A seed's redirect is followed in any origin (in allow-list scope, only onto allowed
        hosts); a loop, or more than MAX_SEED_REDIRECTS of them, is an error."""
        hops = [*chain, url]
        if target in hops:
            self.errors += 1
            self._note_error(url, f"redirect loop back to {target}")
        elif len(hops) > MAX_SEED_REDIRECTS:
            self.errors += 1
            self._note_error(url, f"seed {hops[0]} redirects more than {MAX_SEED_REDIRECTS} times")
        elif (
            target
            and target not in self.seen
            and not self._excluded(target)
            and (self.config.scope == "same-origin" or self._in_scope(target))
        ):
            self.seen.add(target)
            self.queue.append((target, 0, hops))

    def _enqueue(self, links: list[str], depth: int) -> None:
        for link in links:
            if link in self.seen or not self._in_scope(link) or self._excluded(link):
                continue
            self.seen.add(link)
            self.queue.append((link, depth, None))

    def _excluded(self, url: str) -> bool:
        return any(p.search(url) for p in self.exclude)

    def _in_scope(self, url: str) -> bool:
        if self.config.scope == "same-origin":
            return origin(url) in self.origins
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]
        return any(_host_matches(host, port, allowed) for allowed in self.config.allow_hosts)

    # -- network -----------------------------------------------------------------------------
    def _wait_for(self, url: str, extra_delay: float = 0.0) -> None:
        """Politeness: keep delay_s (or robots.txt's Crawl-delay) between requests to one host."""
        host = urlsplit(url).netloc
        delay = max(self.config.delay_s, extra_delay)
        last = self.last_request.get(host)
        if last is not None and delay > 0:
            time.sleep(max(0.0, last + delay - time.monotonic()))
        self.last_request[host] = time.monotonic()

    def _allowed_by_robots(self, url: str) -> bool:
        """robots.txt per origin (RFC 9309): 4xx means no rules, 5xx means keep out. When robots.txt
        cannot be read at all (no answer, or none complete within fetch_deadline_s) the origin is
        not crawled and its URLs count as errors."""
        if not self.config.respect_robots:
            return True
        site = origin(url)
        if site not in self.robots:
            self.robots[site] = self._read_robots(site)
        rules = self.robots[site]
        if isinstance(rules, str):
            self.errors += 1
            self._note_error(url, rules)
            return False
        if rules.can_fetch(self.config.user_agent, url):
            return True
        self.robots_blocked += 1
        self._note_error(url, "disallowed by robots.txt")
        return False

    def _read_robots(self, site: str) -> urllib.robotparser.RobotFileParser | str:
        url = site + "/robots.txt"
        rules = urllib.robotparser.RobotFileParser(url)
        self._wait_for(site)
        request = urllib.request.Request(url, headers={"User-Agent": self.config.user_agent})
        opener = build_opener(Deadline(url, self.config.fetch_deadline_s))  # redirects followed (RFC 9309)
        try:
            with opener.open(request, timeout=self.config.timeout_s) as resp:
                body = resp.read(512_000)  # Google reads the first 500 KiB
            rules.parse(body.decode("utf-8", errors="replace").splitlines())
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                rules.disallow_all = True
            else:
                rules.allow_all = True
        except FETCH_ERRORS as e:
            return f"robots.txt of {site} unreachable: {_reason(e)}"
        return rules

    def _fetch(self, url: str) -> _Fetched | None:
        """GET one URL; None (counted in errors) when no HTTP response came back."""
        rules = self.robots.get(origin(url))
        crawl_delay = (
            rules.crawl_delay(self.config.user_agent) if isinstance(rules, urllib.robotparser.RobotFileParser) else None
        )
        self._wait_for(url, float(crawl_delay or 0))
        headers = {
            "User-Agent": self.config.user_agent,
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "Accept-Encoding": "identity",
        }
        request = urllib.request.Request(url, headers=headers)
        opener = build_opener(Deadline(url, self.config.fetch_deadline_s), _NoRedirect)
        try:
            try:
                resp = opener.open(request, timeout=self.config.timeout_s)
            except urllib.error.HTTPError as e:  # 3xx, 4xx, 5xx: still a response to record
                resp = e
            raw = resp.fp if isinstance(resp, urllib.error.HTTPError) else resp  # http.client's response
            with resp:
                body = resp.read(self.config.max_page_bytes + 1) if raw is not None else b""
                status, reason, resp_headers = resp.status, resp.reason, resp.headers
                version = getattr(raw, "version", 11)
        except FETCH_ERRORS as e:
            self.errors += 1
            self._note_error(url, _reason(e))
            return None
        truncated = len(body) > self.config.max_page_bytes
        body = body[: self.config.max_page_bytes]
        return _Fetched(
            status,
            _request_bytes(url, headers),
            _response_bytes(version, status, reason, resp_headers, body),
            body,
            resp_headers,
            truncated,
        )

    def _note_error(self, url: str, why: str) -> None:
        if len(self.first_errors) < 3:
            self.first_errors.append(f"{url}: {why}")


def _host_matches(host: str, port: int, allowed: str) -> bool:
    """An allow_hosts entry (host or host:port) covers the host and its subdomains, on its port
    (any port when it names none)."""
    name, _, want = allowed.lower().rpartition(":") if ":" in allowed else (allowed.lower(), "", "")
    return (host == name or host.endswith("." + name)) and (not want or int(want) == port)


def _reason(error: Exception) -> str:
    return str(getattr(error, "reason", None) or error) or type(error).__name__


def _request_bytes(url: str, headers: dict) -> bytes:
    """The request as urllib sends it: request line, Host, our headers, Connection: close."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


def _response_bytes(version: int, status: int, reason: str, headers, body: bytes) -> bytes:
    """Status line, headers and body as recorded. urllib has already undone chunking, so the
    Transfer-Encoding header is kept under X-Crawler-Transfer-Encoding (Common Crawl's convention)
    and Content-Length states the body actually recorded."""
    lines = [f"HTTP/{'1.0' if version == 10 else '1.1'} {status} {' '.join(str(reason or '').split())}"]
    declared = None
    for name, value in headers.items():
        value = " ".join(str(value).split())
        if name.lower() == "transfer-encoding":
            name = "X-Crawler-Transfer-Encoding"
        elif name.lower() == "content-length":
            declared = value
            if value == str(len(body)):
                lines.append(f"{name}: {value}")
                continue
            name = "X-Crawler-Content-Length"
        lines.append(f"{name}: {value}")
    if declared != str(len(body)):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + body
