"""A lock file in the store, so that two runs writing the same stage output do its work once.

`{store}/{stage}/{fingerprint}.lock`, beside the output, holds its owner as JSON: a random token,
pid, host, when it was taken and its last heartbeat. It is created exclusively (storage/store.py:
a hard link on a local disk), rewritten every `heartbeat_s` by a background thread and removed on
release. A second writer waits while the lock lives, then usually finds the output committed (a
cache hit). It takes the lock over when it is stale: unchanged for `stale_s` as the waiter watches
it (so clocks of different machines need not agree), or held by a pid that no longer runs on this
host (a killed run: taken over at once, and the crawl resumes from its checkpoint).

Taking over renames the stale file aside and checks that it moved what it judged stale; a lock
that changed in between is put back. On object stores (no rename, no exclusive create) creation is
check-then-put and takeover a delete: two writers starting at the same instant may both hold the
lock there. Write-once files keep the output correct in that case; the lock only saves the work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Callable

from storage.store import StageDir, create_exclusive, is_local, replace_file

HEARTBEAT_S = 10.0
STALE_S = 120.0
POLL_S = 1.0
REPORT_S = 30.0  # how often a waiter says again whom it waits for


def lock_path(out: StageDir) -> str:
    return f"{out.path}.lock"


class StoreLock:
    """`with StoreLock(fs, path):` holds the lock for the block; `log` hears about waits and takeovers."""

    def __init__(
        self,
        fs,
        path: str,
        log: Callable[[str], None] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        poll_s: float = POLL_S,
    ):
        self.fs, self.path, self.log = fs, path, log or (lambda msg: None)
        self.heartbeat_s, self.stale_s, self.poll_s = heartbeat_s, stale_s, poll_s
        self.token = uuid.uuid4().hex
        self.lost = False  # set by the heartbeat when another writer took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lock file ---------------------------------------------------------------------------
    def _body(self, since: float) -> bytes:
        owner = {
            "token": self.token,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pidns": _pidns(),
            "since": since,
            "beat": time.time(),
        }
        return (json.dumps(owner, sort_keys=True) + "\n").encode()

    def _read(self) -> bytes | None:
        try:
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    # -- taking and giving back --------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, waiting as long as a live writer holds it."""
        watched, seen_at, reported = None, 0.0, None
        while True:
            self.since = time.time()
            if create_exclusive(self.fs, self.path, self._body(self.since)):
                self._thread = threading.Thread(target=self._heartbeat, name=f"lock {self.path}", daemon=True)
                self._thread.start()
                return
            held = self._read()
            if held is None:
                continue  # released just now: try again
            now = time.monotonic()
            if held != watched:
                watched, seen_at = held, now
            owner = _owner(held)
            why = _dead(owner) or (f"no heartbeat for {self.stale_s:g} s" if now - seen_at >= self.stale_s else "")
            if why:
                self.log(f"taking over the lock {self.path} of pid {owner.get('pid')} on {owner.get('host')}: {why}")
                self._break(held)
                continue
            if reported is None or now - reported >= REPORT_S:
                self.log(
                    f"waiting for lock {self.path} held by pid {owner.get('pid')} on {owner.get('host')} "
                    f"since {_clock(owner.get('since'))}"
                )
                reported = now
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and _owner(held).get("token") == self.token:
            self.fs.rm(self.path)

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- heartbeat and takeover --------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self._read()
            if held is None or _owner(held).get("token") != self.token:
                self.lost = True
                self.log(
                    f"lost the lock {self.path} to another writer (this run was stalled past "
                    f"{self.stale_s:g} s); committed files stay write-once"
                )
                return
            replace_file(self.fs, self.path, self._body(self.since))

    def _break(self, stale: bytes) -> None:
        """Remove the lock file if it still holds `stale`."""
        if not is_local(self.fs):
            if self._read() == stale:
                self.fs.rm(self.path)
            return
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)  # atomic: of two waiters breaking it, one moves it
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                moved = f.read()
            if moved != stale:  # it beat or was taken over since we looked: put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
        finally:
            os.remove(aside)


def _owner(held: bytes) -> dict:
    try:
        owner = json.loads(held)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}


def _pidns() -> int | None:
    """Linux's pid namespace of this process: containers sharing a host name do not share pids."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _clock(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "?"


def _dead(owner: dict) -> str:
    """Why the owner is known dead ('' when it may be alive): its pid is gone on this very host."""
    pid = owner.get("pid")
    here = owner.get("host") == socket.gethostname() and owner.get("pidns") == _pidns()
    if not here or not isinstance(pid, int):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is not running"
    except PermissionError:
        pass  # another user's live process
    return ""


def stage_lock(out: StageDir, log: Callable[[str], None] | None = None, **timing: float) -> StoreLock:
    """The lock of one stage output."""
    return StoreLock(out.fs, lock_path(out), log, **timing)
