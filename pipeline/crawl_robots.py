"""Politeness toward each site: its robots.txt, read once per origin (RFC 9309), and the delay kept
between two requests to one host (delay_s, or robots.txt's Crawl-delay when longer).

Apart from the crawl loop (pipeline/crawl.py) so the rules a site sets us are in one place; the
loop decides what a refusal counts as.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import urllib.robotparser
from urllib.parse import urlsplit

from pipeline.crawl_fetch import FETCH_ERRORS, error_reason
from pipeline.crawl_urls import origin
from pipeline.deadline import Deadline, build_opener


class Politeness:
    """robots.txt rules per origin and the time of the last request per host, for one crawl."""

    def __init__(self, user_agent: str, delay_s: float, timeout_s: float, fetch_deadline_s: float):
        self.user_agent, self.delay_s = user_agent, delay_s
        self.timeout_s, self.fetch_deadline_s = timeout_s, fetch_deadline_s
        self.robots: dict[str, urllib.robotparser.RobotFileParser | str] = {}
        self.last_request: dict[str, float] = {}

    def wait_for(self, url: str, extra_delay: float = 0.0) -> None:
        """Keep delay_s (or extra_delay, when longer) between requests to one host."""
        host = urlsplit(url).netloc
        delay = max(self.delay_s, extra_delay)
        last = self.last_request.get(host)
        if last is not None and delay > 0:
            time.sleep(max(0.0, last + delay - time.monotonic()))
        self.last_request[host] = time.monotonic()

    def rules(self, url: str) -> urllib.robotparser.RobotFileParser | str:
        """The robots.txt rules of the URL's origin, read on first use: 4xx means no rules, 5xx
        means keep out. A string says why robots.txt could not be read at all (no answer, or none
        complete within fetch_deadline_s)."""
        site = origin(url)
        if site not in self.robots:
            self.robots[site] = self._read_robots(site)
        return self.robots[site]

    def crawl_delay(self, url: str) -> float:
        """robots.txt's Crawl-delay for our user agent on the URL's origin, 0 when none was read."""
        rules = self.robots.get(origin(url))
        delay = rules.crawl_delay(self.user_agent) if isinstance(rules, urllib.robotparser.RobotFileParser) else None
        return float(delay or 0)

    def _read_robots(self, site: str) -> urllib.robotparser.RobotFileParser | str:
        url = site + "/robots.txt"
        rules = urllib.robotparser.RobotFileParser(url)
        self.wait_for(site)
        request = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
        opener = build_opener(Deadline(url, self.fetch_deadline_s))  # redirects followed (RFC 9309)
        try:
            with opener.open(request, timeout=self.timeout_s) as resp:
                body = resp.read(512_000)  # Google reads the first 500 KiB
            rules.parse(body.decode("utf-8", errors="replace").splitlines())
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                rules.disallow_all = True
            else:
                rules.allow_all = True
        except FETCH_ERRORS as e:
            return f"robots.txt of {site} unreachable: {error_reason(e)}"
        return rules
