"""What of an input file's location may be written down, and where credentials for reading it come from.

A URL as typed may carry secrets: a user name and password (`http://user:pass@host/...`) or a
presigned query (`?X-Amz-Signature=...`). They are needed to read the file, but rows, manifests,
stats, ledger records, fingerprints and our log lines only ever hold `public_name`: the URL without
userinfo, query and fragment. A re-signed presigned URL is then the same file (same name, size and
ETag), so caching survives re-signing.

Local paths are recorded relative to what the user named (pipeline/inputs.py); on their own, by
their file name: the machine's absolute path says nothing about the data and differs per machine.

Credentials belong outside URLs, because Prefect stores a flow run's parameters as given: HTTP(S)
reads honour ~/.netrc (or the file $NETRC names) and the proxy variables (aiohttp's trust_env), S3
reads the usual AWS environment and profiles (s3fs/botocore).
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit, urlunsplit

import fsspec.config

# Every HTTP(S) filesystem fsspec makes from now on (in this process and in the worker processes,
# which import this module too) reads credentials from ~/.netrc and proxies from the environment,
# and sends each URL exactly as written: a signature covers the URL's spelling, which yarl would
# otherwise rewrite (%2F to /, %3A to :), so S3 and GCS refuse it.
_HTTP = fsspec.config.conf.setdefault("http", {})
_HTTP.setdefault("client_kwargs", {}).setdefault("trust_env", True)
_HTTP.setdefault("encoded", True)

SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# A URL inside free text (an error message): its query or userinfo is cut out by redact().
URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def has_scheme(entry: str) -> bool:
    """Whether `entry` is a URL (http://, s3://, file://...) rather than a plain path."""
    return bool(SCHEME.match(entry))


def is_local_url(entry: str) -> bool:
    return not has_scheme(entry) or entry.lower().startswith(("file://", "local://"))


def strip_secrets(url: str) -> str:
    """The URL without userinfo, query and fragment (a plain path is returned as it is)."""
    if not has_scheme(url) or ("@" not in url and "?" not in url and "#" not in url):
        return url  # as written, not as urlsplit would re-spell it
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def public_name(url: str) -> str:
    """How a file is recorded when nothing better is known: a URL without its secrets, a local
    path by its file name."""
    return strip_secrets(url) if not is_local_url(url) else posixpath.basename(url.rstrip("/"))


def has_userinfo(url: str) -> bool:
    return has_scheme(url) and "@" in urlsplit(url).netloc


def userinfo_error(url: str, what: str = "input URL") -> str:
    """One line saying why a URL with a user name or password is refused and where they go instead."""
    return (
        f"{what} holds a user name or password: {strip_secrets(url)}; URLs are recorded (Prefect keeps flow "
        f"parameters as given), so name it without them and put the credentials in ~/.netrc (or the file "
        f"$NETRC names) for HTTP(S), or in the AWS environment or profile for s3://"
    )


def redact(text: str) -> str:
    """`text` (an error message) with every URL in it stripped of userinfo, query and fragment."""
    return URL_IN_TEXT.sub(lambda m: strip_secrets(m.group(0)), text)
