"""Token shards to training batches.

The tokenize stage writes Arrow IPC files with one row per document (`tokens`, EOT last). Here the
files are memory-mapped and read as one long stream of tokens, in file order. The stream is cut into
non-overlapping windows of block_size + 1 tokens (inputs and the same tokens shifted by one); an
epoch visits every window once, in a seeded order, so no data is seen twice before all is seen once.

Under W processes the order and the position are global: each micro-batch draws the next
batch_size x W windows of that order, exactly what one process with batch_size x W would draw, and
rank r takes the r-th slice of batch_size. So the ranks never share a window, and a checkpointed
position means the same thing at any world size.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from storage.config import ConfigError


class TokenStream:
    """The concatenated `tokens` of Arrow IPC token files, memory-mapped (nothing read until sliced)."""

    def __init__(self, files: list[str]):
        if not files:
            raise ValueError("no token files given")
        self.files = [str(f) for f in files]
        self.chunks: list[np.ndarray] = []
        self.file_tokens: list[int] = []
        self._file_chunks: list[list[np.ndarray]] = []
        for path in self.files:
            chunks = _read_tokens(path)
            self._file_chunks.append(chunks)
            self.chunks += chunks
            self.file_tokens.append(sum(len(c) for c in chunks))
        self.chunks = [c for c in self.chunks if len(c)]
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])  # chunk i covers [starts[i], starts[i+1])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64 (copied out of the mapped files; may span file boundaries)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"token range [{start}, {stop}) outside a stream of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            chunk, base = self.chunks[i], int(self.starts[i])
            n = min(stop, base + len(chunk)) - pos
            out[pos - start : pos - start + n] = chunk[pos - base : pos - base + n]
            pos += n
            i += 1
        return out

    def max_token(self, cache_dir: str | None = None) -> int:
        """The largest token id (checks the stream fits a vocabulary). Each file's maximum takes a
        pass over its tokens once; it is kept in cache_dir (default: $CRAWL2LLM_CACHE/token-max),
        keyed by the file's path, size, mtime and identity, so the next start on it reads no token."""
        if cache_dir is None:
            cache_dir = os.path.join(
                os.environ.get("CRAWL2LLM_CACHE", os.path.expanduser("~/.cache/crawl2llm")), "token-max"
            )
        return max(
            (
                _file_max(path, chunks, ident, cache_dir)
                for path, chunks, ident in zip(self.files, self._file_chunks, self.identity())
            ),
            default=-1,
        )

    def identity(self) -> list[dict]:
        """Per file: name, token count and a checksum of its first and last 4096 tokens. Cheap (no
        pass over the data) and enough to tell a resume that its token files were swapped."""
        out = []
        for path, chunks in zip(self.files, self._file_chunks):
            flat = [c for c in chunks if len(c)]
            head = flat[0][:4096].tobytes() if flat else b""
            tail = flat[-1][-4096:].tobytes() if flat else b""
            out.append(
                {"file": os.path.basename(path), "tokens": sum(len(c) for c in chunks), "crc": zlib.crc32(head + tail)}
            )
        return out

    def describe(self) -> str:
        return ", ".join(f"{f} ({n} tokens)" for f, n in zip(self.files, self.file_tokens))


def _file_max(path: str, chunks: list[np.ndarray], ident: dict, cache_dir: str) -> int:
    """The largest token id of one file, from the cache or one pass (then cached)."""
    st = os.stat(path)
    key = json.dumps(
        {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **ident}, sort_keys=True
    )
    entry = os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    try:
        with open(entry) as f:
            cached = json.load(f)
        if cached["key"] == key:
            return int(cached["max_token"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or an unreadable entry: count again
    top = max((int(c.max()) for c in chunks if len(c)), default=-1)
    try:  # a cache that cannot be written costs the next start one more pass, nothing else
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{entry}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "max_token": top}, f)
        os.replace(tmp, entry)
    except OSError:
        pass
    return top


def _read_tokens(path: str) -> list[np.ndarray]:
    """The flattened `tokens` values of one file, one zero-copy numpy view per record batch."""
    try:
        reader = ipc.open_file(pa.memory_map(path, "r"))
    except FileNotFoundError:
        raise FileNotFoundError(f"token file not found: {path}") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path} is not an Arrow IPC token file: {e}") from None
    if "tokens" not in reader.schema.names:
        raise ValueError(f"{path} has no `tokens` column (columns: {reader.schema.names})")
    kind = reader.schema.field("tokens").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or kind.value_type not in (
        pa.uint16(),
        pa.uint32(),
    ):
        raise ValueError(f"{path}: `tokens` must be list<uint16> or list<uint32>, not {kind}")
    chunks = []
    for b in range(reader.num_record_batches):
        values = reader.get_batch(b).column("tokens").flatten()
        if values.null_count:
            raise ValueError(f"{path}: record batch {b} has {values.null_count} null tokens")
        chunks.append(values.to_numpy(zero_copy_only=True))
    return chunks


class Batches:
    """Endless (x, y) batches of packed windows; state_dict() pins the exact position for resume.

    batch_size is this process's share; rank and world_size pick the share (see the module doc)."""

    def __init__(
        self, stream: TokenStream, block_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.stream, self.block_size, self.batch_size, self.seed = stream, block_size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_windows = len(stream) // (block_size + 1)
        if self.n_windows == 0:
            raise too_short(stream, block_size)
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) of the next batch (see next_rows)."""
        rows = self.next_rows()
        return rows[:, :-1], rows[:, 1:]

    def next_rows(self) -> torch.Tensor:
        """This rank's slice of the next batch_size x world_size windows of the current epoch
        (rolling over into the next epoch), as one (batch_size, block_size + 1) tensor."""
        picks, wanted = [], self.batch_size * self.world_size
        while len(picks) < wanted:
            if self.cursor == self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(wanted - len(picks), self.n_windows - self.cursor)
            picks += self._order[self.cursor : self.cursor + take].tolist()
            self.cursor += take
        mine = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return window_rows(self.stream, mine, self.block_size)

    def state_dict(self) -> dict:
        """The global position (the same on every rank); batch_size is the global micro-batch."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "n_windows": self.n_windows,
            "block_size": self.block_size,
            "batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """The batch split may differ from the saved one: the position counts windows, not batches."""
        mine = self.state_dict()
        for key in ("seed", "n_windows", "block_size"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"cannot resume batches: saved {key}={state[key]} but now {key}={mine[key]} "
                    f"(the token files or the config changed)"
                )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)


class Prefetcher:
    """Batches.next() run one micro-batch ahead in a thread (numpy's copies release the GIL), so the
    next batch is ready when the step wants it; on CUDA each batch arrives in pinned memory as one
    contiguous (B, T+1) block, copied to the device with one non_blocking copy and sliced there.

    state_dict() is the position of the next batch the loop will take, not of the one prefetched,
    so a checkpoint resumes exactly."""

    def __init__(self, batches: Batches, device: str):
        from concurrent.futures import ThreadPoolExecutor

        self.batches, self.device, self.pin = batches, device, device == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._submit()

    def _submit(self) -> None:
        # The worker is idle here (its last result was taken), so this state is consistent.
        self._state = self.batches.state_dict()
        self._next = self._pool.submit(self._load)

    def _load(self) -> torch.Tensor:
        rows = self.batches.next_rows()
        return rows.pin_memory() if self.pin else rows

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) on the device."""
        rows = self._next.result()
        self._submit()
        rows = rows.to(self.device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    @property
    def position(self) -> str:
        return f"data epoch {self._state['epoch']} window {self._state['cursor']}"

    def state_dict(self) -> dict:
        return dict(self._state)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def window_rows(stream: TokenStream, windows: list[int], block_size: int) -> torch.Tensor:
    """The given windows as one contiguous (len(windows), block_size + 1) int64 tensor."""
    w = block_size + 1
    return torch.from_numpy(np.stack([stream.slice(i * w, (i + 1) * w) for i in windows]))


def windows_to_batch(stream: TokenStream, windows: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (both (len(windows), block_size) int64) of the given windows."""
    rows = window_rows(stream, windows, block_size)
    return rows[:, :-1], rows[:, 1:]


def too_short(stream: TokenStream, block_size: int) -> ConfigError:
    """The error for token files too short for one window: a config (block_size) that does not fit the data."""
    return ConfigError(
        f"block_size: {len(stream)} tokens is less than one window of block_size + 1 = "
        f"{block_size + 1} tokens: {stream.describe()}; use a smaller block_size or more data"
    )


def sequential_batches(
    stream: TokenStream, block_size: int, batch_size: int, max_batches: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows 0, 1, 2, ... in order, for evaluation (max_batches=0: all; the last batch may be short)."""
    n = len(stream) // (block_size + 1)
    if n == 0:
        raise too_short(stream, block_size)
    if max_batches:
        n = min(n, max_batches * batch_size)
    for start in range(0, n, batch_size):
        yield windows_to_batch(stream, list(range(start, min(n, start + batch_size))), block_size)
