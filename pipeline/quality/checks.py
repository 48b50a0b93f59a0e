"""What every recipe's rules are made of: a measured signal against its limit (Check), and the
small counts more than one recipe uses."""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple


class Check(NamedTuple):
    """One measured signal against its limit: `upper` limits must not be exceeded, lower ones reached.
    `field` is the name the detail shows (the flat config name of before the recipes were nested,
    so removal details read the same)."""

    signal: str
    value: float
    limit: float
    field: str
    upper: bool
    note: str = ""

    def failed(self) -> bool:
        return self.value > self.limit if self.upper else self.value < self.limit

    def detail(self) -> str:
        value = f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)
        text = f"{self.signal}={value} {'>' if self.upper else '<'} {self.field}={self.limit}"
        return f"{text} ({self.note})" if self.note else text


# Each rule: (doc, its recipe's config) -> its checks, measured lazily so the filter can stop at the
# first failure.
Checks = Iterator[Check]


def at_most(signal: str, value: float, field: str, limit: float) -> Check:
    return Check(signal, value, limit, field, True)


def at_least(signal: str, value: float, field: str, limit: float) -> Check:
    return Check(signal, value, limit, field, False)


def count(signal: str, value: int) -> Check:
    """A signal with no limit: measured and reported, never failing."""
    return Check(signal, value, math.inf, "", True)


def ratio(n: float, d: float) -> float:
    return n / d if d else 0.0


def repeats(parts: list[str]) -> tuple[int, int]:
    """How many parts repeat an earlier part, and their characters."""
    seen: set[str] = set()
    n = chars = 0
    for part in parts:
        if part in seen:
            n, chars = n + 1, chars + len(part)
        else:
            seen.add(part)
    return n, chars
