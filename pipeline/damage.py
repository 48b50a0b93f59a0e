"""Damaged input records: how many of each kind, and where the first ones are, so a user can find
them (file, byte offset or line, record id) instead of only reading a count."""

from __future__ import annotations

from collections import Counter

# Damaged records listed by place per shard and in the stage report; the rest are only counted.
MAX_LISTED = 50


class DamageLog(Counter):
    """Counts of damage by kind (a Counter, so `log[kind] += 1` still counts), plus the first
    MAX_LISTED damaged records of a file with their place."""

    def __init__(self, source: str = ""):
        super().__init__()
        self.source = source
        self.listed: list[dict] = []

    def note(self, kind: str, offset: int | None, record_id: str | None = None) -> None:
        """Count one damaged record of `kind` at `offset` (bytes, or a line/row number)."""
        self[kind] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append({"file": self.source, "offset": offset, "record_id": record_id or None, "what": kind})


def merge_listed(*lists: list[dict]) -> list[dict]:
    """The first MAX_LISTED damaged records of several lists, in order."""
    out: list[dict] = []
    for rows in lists:
        out.extend(rows[: MAX_LISTED - len(out)])
    return out
