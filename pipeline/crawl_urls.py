"""The crawler's URL rules: the one spelling of a URL the frontier keys on, the links of a page, and
which hosts an allow_hosts entry covers.

Apart from the crawl loop (pipeline/crawl.py) so what counts as the same URL, and as a link, is read
and tested on its own; CrawlConfig's seed check uses the same normalize_url.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left alone when re-quoting a URL's path and query (everything already legal in a URL).
URL_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


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


def in_allowed_hosts(url: str, allow_hosts: list[str]) -> bool:
    """Whether a normalized URL is on a host that one of the allow_hosts entries covers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]
    return any(host_matches(host, port, allowed) for allowed in allow_hosts)


def host_matches(host: str, port: int, allowed: str) -> bool:
    """An allow_hosts entry (host or host:port) covers the host and its subdomains, on its port
    (any port when it names none)."""
    name, _, want = allowed.lower().rpartition(":") if ":" in allowed else (allowed.lower(), "", "")
    return (host == name or host.endswith("." + name)) and (not want or int(want) == port)
