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

This module is the crawl loop, its config and checkpoint; the URL rules are in crawl_urls.py, one
fetch and its WARC bytes in crawl_fetch.py, robots.txt and the per-host delay in crawl_robots.py.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from typing import Callable, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from pipeline import warc
from pipeline.charset import decode_html
from pipeline.crawl_fetch import FETCH_ERRORS, Fetched, error_reason, fetch
from pipeline.crawl_robots import Politeness
from pipeline.crawl_urls import extract_links, in_allowed_hosts, normalize_url, origin
from pipeline.http_message import content_type, gunzip
from pipeline.stage import StageConfig
from storage import StageDir

STATE = "state.json"
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


def crawl(config: CrawlConfig, out: StageDir, progress: Callable[[int, int], None] | None = None) -> dict:
    """Crawl into `out` (a StageDir): data/part-NNNNN.warc.gz and state.json. Returns counts.

    Resumes from state.json when present. Raises RuntimeError when not a single page was fetched.
    """
    return _Crawler(config, out, progress).run()


class _Crawler:
    def __init__(self, config: CrawlConfig, out: StageDir, progress):
        self.config, self.out, self.progress = config, out, progress
        self.exclude = [re.compile(p) for p in config.exclude_patterns]
        self.polite = Politeness(config.user_agent, config.delay_s, config.timeout_s, config.fetch_deadline_s)
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

    def _record(self, url: str, f: Fetched) -> None:
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

    def _follow(self, url: str, depth: int, chain: list[str] | None, f: Fetched) -> None:
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
        return in_allowed_hosts(url, self.config.allow_hosts)

    # -- network -----------------------------------------------------------------------------
    def _allowed_by_robots(self, url: str) -> bool:
        """robots.txt per origin (RFC 9309, pipeline/crawl_robots.py). When robots.txt cannot be
        read at all the origin is not crawled and its URLs count as errors."""
        if not self.config.respect_robots:
            return True
        rules = self.polite.rules(url)
        if isinstance(rules, str):
            self.errors += 1
            self._note_error(url, rules)
            return False
        if rules.can_fetch(self.config.user_agent, url):
            return True
        self.robots_blocked += 1
        self._note_error(url, "disallowed by robots.txt")
        return False

    def _fetch(self, url: str) -> Fetched | None:
        """GET one URL after the host's delay; None (counted in errors) when no HTTP response came back."""
        self.polite.wait_for(url, self.polite.crawl_delay(url))
        c = self.config
        try:
            return fetch(url, c.user_agent, c.timeout_s, c.fetch_deadline_s, c.max_page_bytes)
        except FETCH_ERRORS as e:
            self.errors += 1
            self._note_error(url, error_reason(e))
            return None

    def _note_error(self, url: str, why: str) -> None:
        if len(self.first_errors) < 3:
            self.first_errors.append(f"{url}: {why}")
