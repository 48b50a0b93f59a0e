"""URL blocklist for ingest: drop pages by domain or by a word in the URL, before any extraction.

Domains match themselves and their subdomains (`example.com` blocks `www.example.com`, not
`badexample.com`). Words match whole tokens of the lower-cased URL split at every character that
is not a letter or digit (`casino` blocks `/casino-bonus/`, not `/occasional/`). Lists come from
the config and from files with one entry per line (`#` starts a comment), such as the UT1 lists
many crawl pipelines use; files may be local paths or fsspec URLs.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import fsspec

TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")


class UrlFilter:
    """Built once per shard from the config; `why_blocked(url)` is the per-document check."""

    def __init__(
        self, domains: list[str] = (), words: list[str] = (), domain_files: list[str] = (), word_files: list[str] = ()
    ):
        self.domains = {_domain(d) for d in [*domains, *_read_lists(domain_files)] if _domain(d)}
        self.words = {w.strip().lower() for w in [*words, *_read_lists(word_files)] if w.strip()}

    def __bool__(self) -> bool:
        return bool(self.domains or self.words)

    def why_blocked(self, url: str | None) -> str | None:
        """'domain D' or 'word W' naming the entry that blocks this URL, else None."""
        if not url:
            return None
        try:
            host = (urlsplit(url).hostname or "").rstrip(".")
        except ValueError:
            host = ""
        if self.domains and host:
            labels = host.split(".")
            for i in range(len(labels)):
                if ".".join(labels[i:]) in self.domains:
                    return f"domain {'.'.join(labels[i:])}"
        if self.words:
            for token in TOKEN_SPLIT.split(url.lower()):
                if token in self.words:
                    return f"word {token}"
        return None


def _domain(entry: str) -> str:
    """A bare lower-case host name from a list entry (tolerates URLs and leading dots)."""
    entry = entry.strip().lower()
    if "://" in entry:
        entry = urlsplit(entry).hostname or ""
    return entry.strip(".").split("/")[0]


def _read_lists(urls: list[str]) -> list[str]:
    entries = []
    for url in urls:
        try:
            with fsspec.open(url, "rt", encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        entries.append(line)
        except FileNotFoundError:
            raise FileNotFoundError(f"URL blocklist file not found: {url}") from None
    return entries
