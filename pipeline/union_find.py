"""Union-find over 0..n-1 in numpy, fed pairs in large batches: no Python loop per pair.

Every set's root is its smallest member (a root is only ever linked under a smaller one), so the
representative of a set does not depend on the order pairs arrive in. Memory: one int64 per
element, plus the batch being merged.
"""

from __future__ import annotations

import numpy as np


class DisjointSets:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        """Roots of the elements x. Each round halves the paths it walks (pointer jumping), so a
        long chain takes a logarithmic number of rounds."""
        parent = self.parent
        node = np.asarray(x, np.int64)
        while True:
            up = parent[node]
            moving = up != node
            if not moving.any():
                return node
            grand = parent[up]
            parent[node[moving]] = grand[moving]  # path halving on every walked node at once
            node = np.where(moving, grand, node)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of a[i] and b[i] for every i."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        while len(a):
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
            # Link each larger root under the smaller one. When one root meets several pairs in a
            # round, it takes the smallest; the others are merged again next round.
            np.minimum.at(self.parent, hi, lo)
            a, b = lo, hi

    def roots(self) -> np.ndarray:
        """The root of every element (paths fully compressed)."""
        parent = self.parent
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                return parent
            parent[:] = up
