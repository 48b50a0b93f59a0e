"""Batches of a fixed set of items in a seeded order, a new permutation each epoch: the data order
of the tuning stages (rows of SFT, pairs of DPO). The position (epoch, index) is the whole state,
so a resume reads the same batches as an unbroken run; an epoch's tail continues into the next
epoch's start, so every batch has batch_size items."""

from __future__ import annotations

from typing import Callable

import torch


class EpochBatches:
    """batch_size of the items 0..n-1 at a time, collate(indices) making the batch."""

    def __init__(self, n: int, batch_size: int, seed: int, collate: Callable[[list[int]], object], what: str = "item"):
        if n < 1:
            raise ValueError(f"no {what}s to make batches of")
        self.n, self.batch_size, self.seed, self.collate, self.what = n, batch_size, seed, collate, what
        self.epoch = self.index = 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    @property
    def position(self) -> str:
        return f"epoch {self.epoch}, {self.what} {self.index} of {self.n}"

    def next_indices(self) -> list[int]:
        take: list[int] = []
        while len(take) < self.batch_size:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            n = min(self.batch_size - len(take), self.n - self.index)
            take += self._order[self.index : self.index + n]
            self.index += n
        return take

    def next(self):
        return self.collate(self.next_indices())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()
