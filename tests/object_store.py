"""A folder served on 127.0.0.1 the way S3 and CloudFront serve crawl files (byte ranges, ETags),
optionally answering 503 Slow Down to the first requests, as a throttled bucket does; optionally
only to requests with HTTP basic auth, or with a presigned query, as a private bucket does."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import threading
from base64 import b64encode
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _ObjectStoreHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_head(self):
        if self.server.throttle > 0:
            self.server.throttle -= 1
            self.server.throttled += 1
            self.send_error(503, "Slow Down")
            return None
        if (
            self.server.auth
            and self.headers.get("Authorization") != "Basic " + b64encode(self.server.auth.encode()).decode()
        ):
            self.send_error(401, "Unauthorized")
            return None
        if self.server.signed is not None and not self._signed():
            self.send_error(403, "SignatureDoesNotMatch")
            return None
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return None
        start, end = 0, len(data) - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            first, _, last = self.headers["Range"][6:].partition("-")
            start, end = int(first or 0), min(int(last) if last else end, end)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def _signed(self) -> bool:
        """A GET whose query holds one of the server's signatures, the expiry and the credential
        exactly as signed: a URL presigned for GET refuses HEAD, as S3 does."""
        raw = urlsplit(self.path).query
        query = parse_qs(raw)
        return (
            self.command == "GET"
            and query.get("X-Amz-Signature", [""])[0] in self.server.signed
            and "X-Amz-Expires" in query
            and f"X-Amz-Credential={CREDENTIAL.replace('/', '%2F')}&" in raw
        )


CREDENTIAL = "AKIAEXAMPLE/20990101/us-east-1/s3/aws4_request"  # sent %-quoted: its slashes must stay quoted


def presigned(url: str, signature: str) -> str:
    """`url` with a query like an S3 presigned URL's."""
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL.replace('/', '%2F')}"
        f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
    )


@contextlib.contextmanager
def object_store(root, server_out: list | None = None):
    """Base URL (ending in /) serving `root`; `server_out` receives the server, whose `throttle`
    is the number of next requests to answer with 503 and `throttled` how many were, `auth`
    ("user:password") the basic auth it requires and `signed` (a set) the presigned-query
    signatures it accepts (None: no query needed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_ObjectStoreHandler, directory=str(root)))
    server.throttle = server.throttled = 0
    server.auth, server.signed = "", None
    if server_out is not None:
        server_out.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
