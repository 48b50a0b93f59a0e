"""Write-once store files and the stage lock (storage/lock.py): waiting, heartbeat, stale and dead
owners taken over, a lost lock noticed, and two processes never inside at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from storage import Store
from storage.lock import StoreLock, lock_path, stage_lock


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_ino


def test_a_committed_file_is_never_rewritten(tmp_path):
    sd = Store(str(tmp_path)).stage("ingest", "fp")
    path = sd.write_bytes("data/part-00000.parquet", b"first")
    before = _stat(path)
    time.sleep(0.01)
    sd.write_bytes("data/part-00000.parquet", b"second")
    sd.commit_shard(0, {"index": 0, "seconds": 1.0})
    sd.commit_shard(0, {"index": 0, "seconds": 2.0})  # a second writer's stats: its own timing
    schema = pa.schema([("x", pa.int64())])
    with sd.parquet_writer("data/part-00000.parquet", schema) as w:  # a streamed write of it is dropped too
        w.write_table(pa.table({"x": [1]}, schema=schema))
    assert sd.read_bytes("data/part-00000.parquet") == b"first" and _stat(path) == before
    assert sd.read_shard_stats(0)["seconds"] == 1.0
    assert sd.commit({"counts": {"n": 1}})["counts"] == {"n": 1}
    manifest = _stat(sd.abspath("manifest.json"))
    assert sd.commit({"counts": {"n": 2}})["counts"] == {"n": 1}  # the stored manifest, not the second
    assert _stat(sd.abspath("manifest.json")) == manifest
    assert not [p for p in (tmp_path / "ingest" / "fp").rglob("*") if ".tmp-" in p.name]


def test_replace_is_for_files_meant_to_change(tmp_path):
    sd = Store(str(tmp_path)).stage("crawl", "fp")
    sd.write_json("state.json", {"pages": 1}, replace=True)
    sd.write_json("state.json", {"pages": 2}, replace=True)
    assert sd.read_json("state.json") == {"pages": 2}


def test_write_once_on_an_object_store():
    sd = Store("memory://c2l-write-once").stage("tokenize", "fp")
    sd.write_bytes("data/x.arrow", b"first")
    sd.write_bytes("data/x.arrow", b"second")
    assert sd.read_bytes("data/x.arrow") == b"first"
    assert sd.write_once("data/y", b"1") and not sd.write_once("data/y", b"2")


def _lock(tmp_path, log=None, **timing) -> StoreLock:
    return stage_lock(Store(str(tmp_path)).stage("crawl", "fp"), log, **timing)


def test_a_second_writer_waits_for_the_first(tmp_path):
    msgs: list[str] = []
    first = _lock(tmp_path)
    first.acquire()
    path = lock_path(Store(str(tmp_path)).stage("crawl", "fp"))
    owner = json.loads(open(path).read())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    got = []
    waiter = threading.Thread(target=lambda: got.append(_lock(tmp_path, msgs.append, poll_s=0.02).__enter__()))
    waiter.start()
    time.sleep(0.5)
    assert not got and msgs == [
        f"waiting for lock {path} held by pid {os.getpid()} on {socket.gethostname()} "
        f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['since']))}"
    ]
    first.release()
    waiter.join(5)
    assert got and json.loads(open(path).read())["token"] == got[0].token
    got[0].release()
    assert not os.path.exists(path) and os.listdir(os.path.dirname(path)) == []


def test_heartbeat_keeps_a_slow_writer_s_lock(tmp_path):
    holder = _lock(tmp_path, heartbeat_s=0.05)
    holder.acquire()
    path = holder.path
    beats = {json.loads(open(path).read())["beat"]}
    got = []
    waiter = threading.Thread(target=lambda: got.append(_lock(tmp_path, stale_s=0.4, poll_s=0.02).__enter__()))
    waiter.start()
    for _ in range(10):  # 1 s: more than twice stale_s, and the heartbeat never lets it go stale
        time.sleep(0.1)
        beats.add(json.loads(open(path).read())["beat"])
    assert not got and len(beats) >= 5
    holder.release()
    waiter.join(5)
    assert got and not holder.lost
    got[0].release()


def _foreign_lock(path: str, **owner) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"token": "theirs", "pid": 1, "host": "elsewhere", "since": 0, "beat": 0, **owner}, f)


def test_a_lock_without_heartbeat_is_taken_over_after_stale_s(tmp_path):
    msgs: list[str] = []
    lock = _lock(tmp_path, msgs.append, stale_s=0.5, poll_s=0.02)
    _foreign_lock(lock.path)  # another machine's writer that stopped beating
    t0 = time.monotonic()
    with lock:
        waited = time.monotonic() - t0
        assert json.loads(open(lock.path).read())["token"] == lock.token
    assert 0.5 <= waited < 3
    assert msgs[0].startswith(f"waiting for lock {lock.path} held by pid 1 on elsewhere")
    assert msgs[-1] == f"taking over the lock {lock.path} of pid 1 on elsewhere: no heartbeat for 0.5 s"
    assert os.listdir(os.path.dirname(lock.path)) == []  # nothing left aside


def test_a_dead_owner_on_this_host_is_taken_over_at_once(tmp_path):
    from storage.lock import _pidns

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: no such process now
    msgs: list[str] = []
    lock = _lock(tmp_path, msgs.append, stale_s=60)
    _foreign_lock(lock.path, pid=pid, host=socket.gethostname(), pidns=_pidns(), beat=time.time())
    t0 = time.monotonic()
    with lock:
        assert time.monotonic() - t0 < 2
    assert msgs == [
        f"taking over the lock {lock.path} of pid {pid} on {socket.gethostname()}: pid {pid} is not running"
    ]


def test_a_live_owner_on_this_host_is_not_taken_over(tmp_path):
    from storage.lock import _pidns

    lock = _lock(tmp_path, stale_s=60, poll_s=0.02)
    _foreign_lock(lock.path, pid=os.getppid(), host=socket.gethostname(), pidns=_pidns())
    waiter = threading.Thread(target=lock.acquire, daemon=True)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # still waiting: the owner runs
    os.remove(lock.path)  # the owner releases
    waiter.join(5)
    assert not waiter.is_alive()
    lock.release()


def test_a_writer_notices_it_lost_its_lock(tmp_path):
    msgs: list[str] = []
    holder = _lock(tmp_path, msgs.append, heartbeat_s=0.05)
    holder.acquire()
    _foreign_lock(holder.path)  # a waiter judged it stale and took it over
    time.sleep(0.3)
    holder.release()
    assert holder.lost and "lost the lock" in msgs[0]
    assert json.loads(open(holder.path).read())["token"] == "theirs"  # release leaves the new owner's lock


def test_lock_on_an_object_store():
    sd = Store("memory://c2l-lock").stage("train", "fp")
    with stage_lock(sd) as a:
        assert sd.fs.exists(lock_path(sd))
        with pytest.raises(TimeoutError):
            _try_for(stage_lock(sd, poll_s=0.02), 0.3)
    assert not a.lost and not sd.fs.exists(lock_path(sd))


def _try_for(lock: StoreLock, seconds: float) -> None:
    done = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), done.set()), daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError
    lock.release()


def _hold(root: str, log_file: str, n: int) -> None:
    for _ in range(n):
        with stage_lock(Store(root).stage("crawl", "fp"), poll_s=0.005):
            with open(log_file, "a") as f:
                f.write(f"in {os.getpid()}\n")
            time.sleep(0.01)
            with open(log_file, "a") as f:
                f.write(f"out {os.getpid()}\n")


def test_two_processes_are_never_inside_at_once(tmp_path):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "store"), str(log), 20)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 120
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("in ") and leave == "out " + enter[3:]
