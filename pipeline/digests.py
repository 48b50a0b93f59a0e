"""WARC-Block-Digest and WARC-Payload-Digest checks: without them a corrupted but decodable record
(a zstd frame without a checksum, a flipped bit in a stored .warc) passes as good text."""

from __future__ import annotations

import base64
import binascii
import hashlib

ALGORITHMS = {"sha1": "sha1", "sha-1": "sha1", "sha256": "sha256", "sha-256": "sha256", "md5": "md5"}


def digest_ok(value: str | None, data: bytes) -> bool | None:
    """Whether `data` matches a WARC digest header value (`sha1:BASE32`, also base16 or base64), or
    None when there is no digest or its algorithm or encoding is unknown (nothing to check)."""
    if not value:
        return None
    name, sep, encoded = value.strip().partition(":")
    algorithm = ALGORITHMS.get(name.strip().lower())
    if not sep or algorithm is None:
        return None
    expected = _decode(encoded.strip(), hashlib.new(algorithm).digest_size)
    if expected is None:
        return None
    return hashlib.new(algorithm, data).digest() == expected


def _decode(encoded: str, size: int) -> bytes | None:
    """The digest bytes of base32, base16 or base64 text, whichever gives `size` bytes."""
    for decode in (
        lambda t: base64.b32decode(t.upper() + "=" * (-len(t) % 8)),
        bytes.fromhex,
        lambda t: base64.b64decode(t + "=" * (-len(t) % 4)),
    ):
        try:
            raw = decode(encoded)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == size:
            return raw
    return None
