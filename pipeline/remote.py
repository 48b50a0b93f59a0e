"""Reading crawl files over the network: large sequential reads, retries when the server throttles.

Common Crawl's S3 bucket and its HTTP front answer 503 (SlowDown) under load, and connections drop
on multi-GB reads. A shard's work is all-or-nothing (its files appear only when it finishes), so
the simple correct retry is to run the whole shard again, after an exponential backoff. Errors that
another try cannot fix (a missing file, a parse error) are raised at once.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Callable, TypeVar

import fsspec

from storage.locations import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

# Remote files are read sequentially in blocks this large: a few requests per file, not thousands.
REMOTE_BLOCK_BYTES = 16 << 20
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeTooSkewed",
}
TRANSIENT_ERRNO = {
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


def open_input(url: str):
    """A binary file object for an input: remote ones with large read-ahead blocks."""
    if "://" in url and not url.startswith("file://"):
        return fsspec.open(url, "rb", block_size=REMOTE_BLOCK_BYTES, cache_type="readahead")
    return fsspec.open(url, "rb")


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may succeed: throttling, server errors, dropped connections."""
    from aiohttp import ClientConnectionError, ClientPayloadError

    for e in _chain(error):  # fsspec reports a throttled HEAD as FileNotFoundError *from* the 503
        status = getattr(e, "status", None) or getattr(e, "code", None)  # aiohttp; urllib
        if isinstance(status, int) and status in TRANSIENT_STATUS:
            return True
        response = getattr(e, "response", None)  # botocore's ClientError, under s3fs
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in TRANSIENT_S3_CODES:
            return True
        if isinstance(e, (ConnectionError, TimeoutError, ClientConnectionError, ClientPayloadError)):
            return True
        if getattr(e, "errno", None) in TRANSIENT_ERRNO:
            return True
    return False


class RemoteReadError(OSError):
    """A read failed with an error whose message quoted a URL's secrets (aiohttp names the URL it
    asked for, presigned query included): the same error, told without them."""


def with_retries(work: Callable[[], T], what: str, tries: int = 6, base_delay_s: float = 2.0) -> tuple[T, int]:
    """(work(), retries it took). Transient errors are retried after 2, 4, 8, … seconds (±50%).

    Log lines and an error that gets out (Prefect stores and shows both) carry no URL secrets."""
    for attempt in range(tries):
        try:
            return work(), attempt
        except Exception as e:
            said = redact(str(e))
            if attempt == tries - 1 or not is_transient(e):
                if said != str(e):
                    raise RemoteReadError(f"{what}: {said}") from None
                raise
            delay = base_delay_s * 2**attempt * random.uniform(0.5, 1.5)
            log.warning("%s: %s (try %d of %d); again in %.1f s", what, said, attempt + 1, tries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _chain(error: BaseException):
    """The error and its causes: fsspec and aiohttp wrap the one that says what happened."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
