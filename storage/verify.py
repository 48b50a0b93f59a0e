"""Is a committed shard still what was committed? The sizes and CRC-32s its stats record, checked.

A shard's stats file (`stats/part-N.json`, its commit point) records the size and CRC-32 of every
file the shard wrote (`files`, storage/store.py). A run that reuses committed shards checks them
first (`repair`): the sizes from one listing of the output, and on a local disk the CRC-32s too,
reading the files back at ~2.8 GB/s, far less than computing them cost (docs/BENCHMARKS.md). On
object stores the reuse check is sizes only: a CRC would download every file again. A damaged shard
is uncommitted (stats, then files) and done again; shards are deterministic, so the redone files
equal the lost ones and nothing downstream changes. `verify_store` is `crawl2llm verify`: every
file's size and CRC-32, everywhere. Stats written before sizes were recorded (no `files`) are
trusted as they are: no output of that code is reused anyway, since `pipeline/shard_steps.py` changed
with them and names every fingerprint.
"""

from __future__ import annotations

import posixpath
import re
import zlib
from typing import Callable, Iterator

import fsspec

from storage.store import StageDir, Store, is_local

CHUNK = 8 << 20
STATS = re.compile(r"stats/part-(\d+)\.json")


def file_crc(sd: StageDir, rel: str, progress: Callable[[int], None] | None = None) -> int:
    """CRC-32 of a stored file, streamed."""
    crc = 0
    with sd.fs.open(sd.abspath(rel), "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
            if progress:
                progress(len(chunk))
    return crc


def committed(sizes: dict[str, int]) -> list[int]:
    """The shard indexes whose stats file is in a listing (StageDir.sizes)."""
    return sorted(int(m.group(1)) for rel in sizes if (m := STATS.fullmatch(rel)))


def shard_problems(
    sd: StageDir, stats: dict, sizes: dict[str, int], crc: bool, progress: Callable[[int], None] | None = None
) -> list[str]:
    """What is wrong with a committed shard's files (empty: nothing), each naming the file."""
    problems = []
    for rel, want in (stats.get("files") or {}).items():
        size = sizes.get(rel)
        if size is None:
            problems.append(f"{sd.url(rel)} is missing")
        elif size != want["size"]:
            problems.append(f"{sd.url(rel)} has {size} bytes, committed with {want['size']}")
        elif crc:
            got = f"{file_crc(sd, rel, progress):08x}"
            if got != want["crc32"]:
                problems.append(f"{sd.url(rel)} has CRC-32 {got}, committed with {want['crc32']}")
        elif progress:
            progress(size)
    return problems


def read_stats(sd: StageDir, index: int) -> dict | None:
    """A shard's stats, or None when the stats file itself is unreadable."""
    try:
        stats = sd.read_shard_stats(index)
    except ValueError:  # not JSON (a JSONDecodeError or a UnicodeDecodeError)
        return None
    return stats if isinstance(stats, dict) and isinstance(stats.get("files", {}), dict) else None


def damaged_shards(
    sd: StageDir, indexes=None, crc: bool | None = None, sizes: dict[str, int] | None = None
) -> dict[int, list[str]]:
    """The committed shards among `indexes` (all when None) whose files are not what was committed:
    index -> problems. `crc`: check CRC-32s too (default: on a local disk only)."""
    crc = is_local(sd.fs) if crc is None else crc
    sizes = sd.sizes() if sizes is None else sizes
    done = committed(sizes)
    found = {}
    for i in done if indexes is None else sorted(set(indexes) & set(done)):
        stats = read_stats(sd, i)
        problems = (
            [f"{sd.url(StageDir.part('stats', i, 'json'))} is unreadable"]
            if stats is None
            else shard_problems(sd, stats, sizes, crc)
        )
        if problems:
            found[i] = problems
    return found


def repair(sd: StageDir, indexes, warn: Callable[[str], None], crc: bool | None = None) -> dict[int, dict]:
    """Uncommit every damaged shard among `indexes` (a warning for each, naming the stage, shard and
    files), so the run does it again. Returns the damaged shards: index -> their problems and the
    files their stats recorded (empty when unreadable), for `redone_differently`."""
    sizes = sd.sizes()
    damaged = {}
    for i, problems in damaged_shards(sd, indexes, crc, sizes).items():
        warn(f"{sd.name} {sd.fingerprint[:16]} shard {i}: {'; '.join(problems)}: doing the shard again")
        recorded = (read_stats(sd, i) or {}).get("files") or {}
        mine = f"part-{i:05d}."  # an unreadable stats file names no files: those of the shard's own name
        sd.uncommit_shard(i, recorded or [r for r in sizes if mine in posixpath.basename(r)])
        damaged[i] = {"problems": problems, "files": recorded}
    return damaged


def redone_differently(
    sd: StageDir, damaged: dict[int, dict], results: dict[int, dict], warn: Callable[[str], None]
) -> list[int]:
    """The repaired shards whose new files differ from what was committed (shards are deterministic,
    so only changed inputs do that), with a warning: outputs made from the old bytes do not know."""
    changed = [i for i, was in damaged.items() if was["files"] and results[i].get("files") != was["files"]]
    for i in changed:
        warn(
            f"{sd.name} {sd.fingerprint[:16]} shard {i} was done again with other bytes than were committed "
            "(its input changed in place?): outputs made from the old shard may be stale; delete them to redo them"
        )
    return changed


def shard_intact(sd: StageDir, index: int, warn: Callable[[str], None]) -> bool:
    """Whether one committed shard may be reused, from its own files' sizes (no listing of the whole
    output); uncommitted with a warning when not."""
    stats = read_stats(sd, index)
    files = (stats or {}).get("files") or {}
    sizes = {StageDir.part("stats", index, "json"): 0}
    for rel in files:
        try:
            sizes[rel] = sd.fs.size(sd.abspath(rel))
        except FileNotFoundError:
            pass
    if stats is not None and not damaged_shards(sd, [index], sizes=sizes):
        return True
    repair(sd, [index], warn)
    return False


# -- the whole store: crawl2llm verify ----------------------------------------------------------


def stage_outputs(url: str) -> list[StageDir]:
    """The stage outputs holding committed shards: `url` itself when it is one ({root}/{stage}/{fp}),
    else every one in the store at `url`."""
    fs, path = fsspec.core.url_to_fs(url.rstrip("/"))
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no such store or stage output")
    if fs.exists(posixpath.join(path, "stats")):
        fp, name = posixpath.basename(path), posixpath.basename(posixpath.dirname(path))
        return [Store(url.rstrip("/")[: -len(f"/{name}/{fp}")] or "/").stage(name, fp)]
    store = Store(url)
    found = sorted(store.fs.glob(posixpath.join(store.root, "*", "*", "stats")))
    if not found:
        raise FileNotFoundError(
            f"{url} holds no committed shard ({{stage}}/{{fingerprint}}/stats/): name a store or one stage output in it"
        )
    return [
        store.stage(
            posixpath.basename(posixpath.dirname(posixpath.dirname(p))), posixpath.basename(posixpath.dirname(p))
        )
        for p in found
    ]


def verify_outputs(outputs: list[StageDir], progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Per stage output: its committed shards, files and bytes, and every problem found, checking
    each file's size and CRC-32 (`progress` gets the bytes as they are read)."""
    for sd in outputs:
        sizes = sd.sizes()
        row = {
            "output": f"{sd.name}/{sd.fingerprint}",
            "shards": 0,
            "files": 0,
            "bytes": 0,
            "unrecorded": 0,
            "problems": [],
        }
        for i in committed(sizes):
            stats = read_stats(sd, i)
            row["shards"] += 1
            if stats is None:
                row["problems"].append(f"{sd.url(StageDir.part('stats', i, 'json'))} is unreadable")
                continue
            if "files" not in stats:
                row["unrecorded"] += 1
            files = stats.get("files") or {}
            row["files"] += len(files)
            row["bytes"] += sum(f["size"] for f in files.values())
            row["problems"] += shard_problems(sd, stats, sizes, crc=True, progress=progress)
        yield row


def recorded_bytes(outputs: list[StageDir]) -> int:
    """The bytes the committed shards of `outputs` record: what a full verify reads."""
    total = 0
    for sd in outputs:
        sizes = sd.sizes()
        for i in committed(sizes):
            stats = read_stats(sd, i) or {}
            total += sum(f["size"] for f in (stats.get("files") or {}).values())
    return total
