"""A wall-clock deadline over one blocking urllib fetch, on top of the per-operation timeout.

A socket timeout bounds each connect or read on its own, so a server that sends one byte a second
never trips it and one fetch can last hours. Under a Deadline every socket operation of the fetch
(TCP connect, TLS handshake, each read of the status line, headers and body, across the redirects
urllib follows) waits at most until the deadline, and each read first checks it: the fetch ends at
the deadline with DeadlineExceeded, and closing the response closes its socket. The one wait it
cannot cut short is the DNS lookup (getaddrinfo takes no timeout).
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import time
import urllib.request


class DeadlineExceeded(TimeoutError):
    """A fetch ran past its deadline. A TimeoutError (an OSError), so code that catches socket
    errors catches it too."""


class Deadline:
    """The moment one fetch must be over."""

    def __init__(self, url: str, seconds: float):
        self.url, self.seconds = url, seconds
        self.end = time.monotonic() + seconds
        self.capped = False  # whether the last wait() was cut short by the deadline

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self.url} took longer than the fetch deadline of {self.seconds:g} s")

    def wait(self, timeout) -> float:
        """How long the next socket operation may block: `timeout`, or less when the deadline is
        nearer. Raises DeadlineExceeded once the deadline has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.exceeded()
        self.capped = not isinstance(timeout, (int, float)) or left < timeout  # None: urllib's "no timeout"
        return left if self.capped else timeout

    def timed_out(self, error: TimeoutError) -> TimeoutError:
        """What a socket timeout means: the deadline, when it was the deadline that set the wait."""
        return self.exceeded() if self.capped else error


def build_opener(deadline: Deadline, *handlers) -> urllib.request.OpenerDirector:
    """urllib.request.build_opener(*handlers) whose http and https connections keep `deadline`.
    One opener per fetch: redirects it follows share the fetch's deadline."""
    return urllib.request.build_opener(*handlers, _HTTPHandler(deadline), _HTTPSHandler(deadline))


class _Reads(io.RawIOBase):
    """The reads of a response's socket, each waiting at most until the deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: Deadline, timeout):
        self.raw, self.sock, self.deadline, self.timeout = raw, sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.sock.settimeout(self.deadline.wait(self.timeout))
        try:
            return self.raw.readinto(buffer)
        except TimeoutError as e:
            raise self.deadline.timed_out(e) from None

    def close(self) -> None:
        if not self.closed:
            self.raw.close()  # the socket's makefile() reference: the last one closes the socket
        super().close()


class _Response(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: Deadline, timeout, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_Reads(self.fp.detach(), sock, deadline, timeout))


class _Timed:
    """Mixed into an http.client connection: connect, handshake and reads keep the deadline."""

    def __init__(self, *args, deadline: Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self._create_connection = self._open_socket  # http.client's hook for opening the socket
        self.response_class = functools.partial(_Response, deadline=deadline, timeout=self.timeout)

    def _open_socket(self, address, timeout, source_address=None):
        sock = socket.create_connection(address, self.deadline.wait(timeout), source_address)
        sock.settimeout(self.deadline.wait(timeout))  # bounds the whole TLS handshake, and sending the request
        return sock

    def connect(self):
        try:
            super().connect()
        except TimeoutError as e:
            raise self.deadline.timed_out(e) from None


class _HTTPConnection(_Timed, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Timed, http.client.HTTPSConnection):
    pass


_TIMED = {http.client.HTTPConnection: _HTTPConnection, http.client.HTTPSConnection: _HTTPSConnection}


class _DeadlineHandler:
    """Mixed into urllib's HTTP(S)Handler: its connections are the timed ones."""

    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_TIMED[http_class], deadline=self.deadline), req, **kwargs)


class _HTTPHandler(_DeadlineHandler, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineHandler, urllib.request.HTTPSHandler):
    pass
