"""Stage output directories on any fsspec filesystem, with atomic writes and a manifest commit point.

Layout of one stage output:

    {root}/{stage}/{fingerprint}/manifest.json           written last: the stage's commit point
    {root}/{stage}/{fingerprint}/data/part-NNNNN.*        one file (or a few) per shard
    {root}/{stage}/{fingerprint}/removed/part-NNNNN.parquet
    {root}/{stage}/{fingerprint}/stats/part-NNNNN.json    written last for a shard: its commit point

Every file is written to a unique temporary name and renamed into place. Outputs are a pure
function of the fingerprint, so two runs writing the same stage at once write identical bytes and
the last rename wins harmlessly; a killed run leaves only temporary files, which nothing trusts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from storage.fingerprint import canonical_json

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
        return path[len(root):] if type(fs) is type(self.fs) and path.startswith(root) else url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"


class StageDir:
    """One stage output, named by its fingerprint."""

    def __init__(self, store: Store, name: str, fp: str):
        self.store, self.name, self.fingerprint = store, name, fp
        self.fs = store.fs
        self.path = posixpath.join(store.root, name, fp)

    # -- paths -------------------------------------------------------------------------------
    def abspath(self, rel: str) -> str:
        """`rel` may climb out of the folder (`../{fp}/data/...`: a manifest naming another output's
        file) but never out of the store: paths come from manifests, and a damaged or forged one
        must not make a stage read or write files elsewhere. Raises StoreError naming both."""
        path = posixpath.normpath(posixpath.join(self.path, rel)) if rel else self.path
        where = f"{self.name}/{self.fingerprint}"
        if not self.store.holds(self.path):
            raise StoreError(f"stage output {where!r}, named in a manifest, leaves the store {self.store.url}: "
                             f"that manifest is damaged or forged")
        if not self.store.holds(path):
            raise StoreError(f"{self.store.url}/{where}/manifest.json names {rel!r}, which leaves the store: "
                             f"the manifest is damaged or forged")
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
        try:
            return self.read_json("manifest.json")
        except FileNotFoundError as e:
            raise StoreError(f"{self.name} output {self.url()} has no manifest: it was never committed") from e

    def commit(self, manifest: dict) -> dict:
        """Write the manifest last; from now on the stage output is complete and immutable."""
        body = {"stage": self.name, "fingerprint": self.fingerprint, **manifest}
        self.write_bytes("manifest.json", _pretty_json(body))
        return body

    def shard_done(self, index: int) -> bool:
        return self.fs.exists(self.abspath(self.part("stats", index, "json")))

    def read_shard_stats(self, index: int) -> dict:
        return self.read_json(self.part("stats", index, "json"))

    def commit_shard(self, index: int, stats: dict) -> None:
        """Write a shard's stats after its data files: the stats file marks the shard done."""
        self.write_bytes(self.part("stats", index, "json"), _pretty_json(stats))

    # -- atomic writes -----------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        with self._atomic(rel) as f:
            f.write(data)
        return self.abspath(rel)

    def write_once(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` unless it exists; False when it did (another writer was first).
        Exclusive on a local disk (a hard link fails on an existing name); elsewhere a check, then a
        rename, so two writers at the same instant could both succeed there."""
        final = self.abspath(rel)
        if self.fs.exists(final):
            return False
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        try:
            if is_local(self.fs):
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return False
            else:
                self.fs.mv(tmp, final)
            return True
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    @contextlib.contextmanager
    def _atomic(self, rel: str):
        """A file object whose bytes appear under `rel` only if the block ends without error."""
        final = self.abspath(rel)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        self.fs.mv(tmp, final)

    @contextlib.contextmanager
    def parquet_writer(self, rel: str, schema: pa.Schema):
        """A pq.ParquetWriter for writing a large shard batch by batch in bounded memory; the file
        appears under `rel` only when the block ends without error."""
        with self._atomic(rel) as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
            yield writer

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, _pretty_json(obj))

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
        try:
            with self.fs.open(self.abspath(rel), "rb") as f:
                return pq.read_table(f, columns=columns)
        except FileNotFoundError as e:
            raise StoreError(f"missing shard file {self.url(rel)}") from e

    def read_arrow(self, rel: str) -> pa.Table:
        with self.fs.open(self.abspath(rel), "rb") as f:
            return ipc.open_file(pa.BufferReader(f.read())).read_all()

    def map_arrow(self, rel: str) -> pa.Table:
        """An Arrow IPC file, memory-mapped: taking a few rows reads only their pages."""
        try:
            return ipc.open_file(pa.memory_map(self.local_path(rel))).read_all()
        except FileNotFoundError as e:
            raise StoreError(f"missing shard file {self.url(rel)}") from e

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


def _pretty_json(obj: Any) -> bytes:
    return (json.dumps(json.loads(canonical_json(obj)), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
