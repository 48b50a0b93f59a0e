"""Stage output directories on any fsspec filesystem, with atomic writes and a manifest commit point.

Layout of one stage output:

    {root}/{stage}/{fingerprint}/manifest.json           written last: the stage's commit point
    {root}/{stage}/{fingerprint}/data/part-NNNNN.*        one file (or a few) per shard
    {root}/{stage}/{fingerprint}/removed/part-NNNNN.parquet
    {root}/{stage}/{fingerprint}/stats/part-NNNNN.json    written last for a shard: its commit point

Every file is written to a unique temporary name and then put into place once: a committed file is
never rewritten (its bytes, mtime and inode stay as the first writer left them). A second writer of
the same file leaves it alone, which is right because outputs are a pure function of the
fingerprint. Only files meant to change (the crawl's state.json checkpoint) are written with
`replace=True`. A killed run leaves only temporary files, which nothing trusts.

Exclusive on a local disk: the temporary file is hard-linked to the final name, which fails when
the name exists. On object stores (s3://, gs://, memory://) it is a check, then a put: two writers
at the same instant could both put, which the stage lock (storage/lock.py) makes rare.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import uuid
import zlib
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from storage.fingerprint import canonical_json
from storage.manifest import MANIFESTS, Manifest, ShardStats, checked

TMP_MARK = ".tmp-"


def protocol(fs) -> str:
    """An fsspec filesystem's protocol name (some list several: the first)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs) -> bool:
    return protocol(fs) in ("file", "local")


class StoreError(RuntimeError):
    """A store file is missing or damaged."""


class Store:
    """A root directory (local path or fsspec URL) holding every stage's outputs."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/") or "/"
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.fs.makedirs(self.root, exist_ok=True)

    def stage(self, name: str, fp: str) -> "StageDir":
        return StageDir(self, name, fp)

    def holds(self, path: str) -> bool:
        """Whether a path on this store's filesystem is inside its root, once `..` steps are resolved."""
        root = posixpath.normpath(self.root).rstrip("/") + "/"
        return (posixpath.normpath(path) + "/").startswith(root)

    def relative(self, url: str) -> str:
        """`url` as a path inside this store (train/{fp}/model.pt) when it is one, else as given:
        what a manifest records must not depend on where the store sits."""
        fs, path = fsspec.core.url_to_fs(url.rstrip("/"))
        root = self.root.rstrip("/") + "/"
        return path[len(root) :] if type(fs) is type(self.fs) and path.startswith(root) else url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"


class StageDir:
    """One stage output, named by its fingerprint."""

    def __init__(self, store: Store, name: str, fp: str):
        self.store, self.name, self.fingerprint = store, name, fp
        self.fs = store.fs
        self.path = posixpath.join(store.root, name, fp)
        self.written: dict[str, dict] = {}  # rel -> size and CRC-32 of each file written, for the next shard stats

    # -- paths -------------------------------------------------------------------------------
    def abspath(self, rel: str) -> str:
        """`rel` may climb out of the folder (`../{fp}/data/...`: a manifest naming another output's
        file) but never out of the store: paths come from manifests, and a damaged or forged one
        must not make a stage read or write files elsewhere. Raises StoreError naming both."""
        path = posixpath.normpath(posixpath.join(self.path, rel)) if rel else self.path
        where = f"{self.name}/{self.fingerprint}"
        if not self.store.holds(self.path):
            raise StoreError(
                f"stage output {where!r}, named in a manifest, leaves the store {self.store.url}: "
                f"that manifest is damaged or forged"
            )
        if not self.store.holds(path):
            raise StoreError(
                f"{self.store.url}/{where}/manifest.json names {rel!r}, which leaves the store: "
                f"the manifest is damaged or forged"
            )
        return path

    def url(self, rel: str = "") -> str:
        """A URL a person or another program can open (local paths stay plain paths)."""
        p = self.abspath(rel)
        proto = protocol(self.fs)
        return p if proto in ("file", "local") else f"{proto}://{p.lstrip('/')}"

    @staticmethod
    def part(kind: str, index: int, ext: str) -> str:
        return f"{kind}/part-{index:05d}.{ext}"

    # -- commit points -----------------------------------------------------------------------
    def is_committed(self) -> bool:
        return self.fs.exists(self.abspath("manifest.json"))

    def read_manifest(self) -> dict:
        """The manifest, checked against its contract (storage/manifest.py)."""
        try:
            data = self.read_json("manifest.json")
        except FileNotFoundError as e:
            raise StoreError(f"{self.name} output {self.url()} has no manifest: it was never committed") from e
        return checked(MANIFESTS.get(self.name, Manifest), data, self.url("manifest.json"), StoreError)

    def commit(self, manifest: dict) -> dict:
        """Write the manifest last; from now on the stage output is complete and immutable. When
        another writer committed first, its manifest stays (the same, for the same fingerprint)."""
        body = {"stage": self.name, "fingerprint": self.fingerprint, **manifest}
        checked(MANIFESTS.get(self.name, Manifest), body, f"the manifest for {self.url()}", ValueError)
        if self.write_once("manifest.json", _pretty_json(body)):
            return body
        return self.read_manifest()

    def shard_done(self, index: int) -> bool:
        return self.fs.exists(self.abspath(self.part("stats", index, "json")))

    def read_shard_stats(self, index: int) -> dict:
        rel = self.part("stats", index, "json")
        return checked(ShardStats, self.read_json(rel), self.url(rel), StoreError)

    def commit_shard(self, index: int, stats: dict) -> dict:
        """Write a shard's stats after its data files: the stats file marks the shard done. It records
        the size and CRC-32 of every file written since the last commit (`files`), so a run that
        reuses the shard can tell a damaged or missing file (storage/verify.py). Returns the stats."""
        stats = {**stats, "files": dict(sorted(self.written.items()))}
        checked(ShardStats, stats, f"the stats of {self.name} shard {index}", ValueError)
        self.write_bytes(self.part("stats", index, "json"), _pretty_json(stats))
        self.written = {}
        return stats

    def uncommit_shard(self, index: int, files) -> None:
        """Undo a damaged shard's commit so it is done again: its stats file first (so nothing trusts
        the shard from here on), then its files, which write-once writes would otherwise keep. The one
        exception to committed files being immutable: these no longer hold what was committed."""
        for rel in [self.part("stats", index, "json"), *files]:
            if self.exists(rel):
                self.fs.rm(self.abspath(rel))

    # -- atomic, write-once writes -----------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, replace: bool = False) -> str:
        """Write `rel` unless it exists (then it is left as it is); `replace`: a file meant to change."""
        if replace or not self.exists(rel):
            with self._atomic(rel, replace) as f:
                f.write(data)
        else:  # another writer's copy: the same bytes (outputs are a function of the fingerprint)
            self.written[rel] = file_record(len(data), zlib.crc32(data))
        return self.abspath(rel)

    def upload(self, rel: str, local_path: str) -> str:
        """Copy a local file to `rel`, replacing it, streamed (a checkpoint may not fit in memory twice)."""
        with open(local_path, "rb") as src, self._atomic(rel, replace=True) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        return self.abspath(rel)

    def download(self, rel: str, local_path: str) -> str:
        """Copy `rel` to a local file, streamed; the local file appears whole or not at all."""
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        tmp = f"{local_path}.tmp-{os.getpid()}"
        with self.fs.open(self.abspath(rel), "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        os.replace(tmp, local_path)
        return local_path

    def write_once(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` unless it exists; False when it did (another writer was first)."""
        return create_exclusive(self.fs, self.abspath(rel), data)

    @contextlib.contextmanager
    def _atomic(self, rel: str, replace: bool = False):
        """A file object whose bytes appear under `rel` only if the block ends without error, and
        then only if `rel` does not exist yet (or `replace`)."""
        final = self.abspath(rel)
        tmp = _temporary(self.fs, final)
        try:
            with self.fs.open(tmp, "wb") as raw:
                f = _Checksummed(raw)
                yield f
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        self.written[rel] = file_record(f.size, f.crc)
        _put(self.fs, tmp, final, replace)

    @contextlib.contextmanager
    def parquet_writer(self, rel: str, schema: pa.Schema):
        """A pq.ParquetWriter for writing a large shard batch by batch in bounded memory; the file
        appears under `rel` only when the block ends without error."""
        with self._atomic(rel) as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
            yield writer

    def write_json(self, rel: str, obj: Any, replace: bool = False) -> str:
        return self.write_bytes(rel, _pretty_json(obj), replace)

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return self.write_bytes(rel, buf.getvalue())

    def write_arrow(self, rel: str, table: pa.Table) -> str:
        """Arrow IPC file: memory-mappable, which is what the training loader wants."""
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        return self.write_bytes(rel, sink.getvalue().to_pybytes())

    # -- reads -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.abspath(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.abspath(rel), "rb") as f:
            return f.read()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self._reading(rel):
            with self.fs.open(self.abspath(rel), "rb") as f:
                return pq.read_table(f, columns=columns)

    def read_arrow(self, rel: str) -> pa.Table:
        with self._reading(rel):
            with self.fs.open(self.abspath(rel), "rb") as f:
                return ipc.open_file(pa.BufferReader(f.read())).read_all()

    def map_arrow(self, rel: str) -> pa.Table:
        """An Arrow IPC file, memory-mapped: taking a few rows reads only their pages."""
        with self._reading(rel):
            return ipc.open_file(pa.memory_map(self.local_path(rel))).read_all()

    @contextlib.contextmanager
    def _reading(self, rel: str):
        """A missing or unreadable stored file as a StoreError naming it (Arrow's own errors name none)."""
        try:
            yield
        except FileNotFoundError as e:
            raise StoreError(f"missing shard file {self.url(rel)}") from e
        except pa.ArrowInvalid as e:  # a truncated or changed file; an OSError may be the network's
            raise StoreError(
                f"damaged shard file {self.url(rel)} ({one_line_error(e)}); `crawl2llm verify` "
                "checks the store; running the stage that wrote it again (or the pipeline) redoes "
                "that shard"
            ) from e

    def sizes(self) -> dict[str, int]:
        """Every committed file of this output (relative path -> bytes) from one listing: cheap on
        object stores too, where each file's info would be a request of its own."""
        if not self.fs.exists(self.path):
            return {}
        found = self.fs.find(self.path, detail=True)
        return {
            posixpath.relpath(p, self.path): info["size"]
            for p, info in found.items()
            if TMP_MARK not in posixpath.basename(p) and info.get("type") != "directory"
        }

    def list(self, sub: str) -> list[str]:
        """Committed files under a sub-folder (relative paths, sorted, temporary files left out)."""
        base = self.abspath(sub)
        if not self.fs.exists(base):
            return []
        out = []
        for p in self.fs.find(base):
            if TMP_MARK not in posixpath.basename(p):
                out.append(posixpath.relpath(p, self.path))
        return sorted(out)

    def local_path(self, rel: str) -> str:
        """The path on this machine of a stored file, for libraries that need one (mmap, torch)."""
        if is_local(self.fs):
            return self.abspath(rel)
        cached = fsspec.open_local(f"simplecache::{self.url(rel)}")
        return cached if isinstance(cached, str) else cached[0]


def open_stage(url: str) -> StageDir:
    """A committed stage output named by its URL: {root}/{stage}/{fingerprint}."""
    fs, path = fsspec.core.url_to_fs(url.rstrip("/"))
    fp, name = posixpath.basename(path), posixpath.basename(posixpath.dirname(path))
    root_url = url.rstrip("/")[: -len(f"/{name}/{fp}")] or "/"
    sd = Store(root_url).stage(name, fp)
    if not sd.is_committed():
        raise StoreError(f"{url} is not a committed stage output (no manifest.json): run that stage first")
    return sd


def one_line_error(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def file_record(size: int, crc: int) -> dict:
    """What a shard's stats record of one of its files: its size and CRC-32 (8 hex digits)."""
    return {"size": size, "crc32": f"{crc & 0xFFFFFFFF:08x}"}


class _Checksummed(io.RawIOBase):
    """A writable file that counts the bytes and CRC-32 of what goes through it to `raw`: the
    checksum costs no second read of the file (zlib.crc32 runs at ~2.8 GB/s, docs/BENCHMARKS.md)."""

    def __init__(self, raw):
        self.raw, self.size, self.crc = raw, 0, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.raw.write(b)  # buffered file objects (fsspec's, local files) take every byte
        self.crc = zlib.crc32(b, self.crc)
        self.size += memoryview(b).nbytes
        return memoryview(b).nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:  # the raw file is closed by its own `with`
        if not self.closed:
            self.raw.flush()
        super().close()


def _temporary(fs, final: str) -> str:
    """A unique temporary name beside `final` (its folder made first)."""
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    return f"{final}{TMP_MARK}{uuid.uuid4().hex}"


def _put(fs, tmp: str, final: str, replace: bool) -> bool:
    """Move the finished file `tmp` to `final`; unless `replace`, only when `final` does not exist.
    Returns whether `final` now holds this file. `tmp` is gone afterwards either way."""
    try:
        if replace:
            fs.mv(tmp, final)
            return True
        if is_local(fs):
            try:
                os.link(tmp, final)  # fails when the name exists, so one writer wins
                return True
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: check, then rename, as elsewhere
                pass
        if fs.exists(final):
            return False
        fs.mv(tmp, final)
        return True
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def create_exclusive(fs, path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (storage/lock.py's lock files)."""
    if fs.exists(path):
        return False
    tmp = _temporary(fs, path)
    fs.pipe_file(tmp, data)
    return _put(fs, tmp, path, replace=False)


def replace_file(fs, path: str, data: bytes) -> None:
    """Write `path` whole, replacing what it held (a lock's heartbeat)."""
    tmp = _temporary(fs, path)
    fs.pipe_file(tmp, data)
    _put(fs, tmp, path, replace=True)


def _pretty_json(obj: Any) -> bytes:
    return (json.dumps(json.loads(canonical_json(obj)), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
