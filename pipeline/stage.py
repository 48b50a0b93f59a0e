"""The one small interface every text stage follows (after datatrove's pipeline steps).

A stage is a pydantic config plus a function `table -> ShardResult`. Counts are deterministic
(they go into the manifest, which must be byte-identical across resumed runs); timings are kept
apart by the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import DOC_SCHEMA, REMOVED_SCHEMA
from storage.config import (  # noqa: F401 (pipeline.stage.X as before)
    MAX_INT,
    ConfigError,
    StageConfig,
    one_line,
    require_files,
)


@dataclass
class ShardResult:
    kept: pa.Table
    removed: pa.Table
    counts: dict = field(default_factory=dict)
    # Damaged input records with their place (pipeline/damage.py), the first ones only.
    damaged_records: list = field(default_factory=list)


def split_by_reason(
    table: pa.Table,
    reasons: list[str | None],
    details: list[str | None] | None = None,
    extra_counts: dict | None = None,
) -> ShardResult:
    """Split `table` into kept rows (reason None) and removed rows (with their reason), with counts.

    Counts always hold docs_in, docs_kept, docs_removed, removed (per reason), chars_in, chars_kept.
    """
    table = table.select(DOC_SCHEMA.names).cast(DOC_SCHEMA)
    keep_mask = pa.array([r is None for r in reasons], pa.bool_())
    kept = table.filter(keep_mask)
    drop_idx = [i for i, r in enumerate(reasons) if r is not None]
    removed = table.take(pa.array(drop_idx, pa.int64()))
    removed = removed.append_column("reason", pa.array([reasons[i] for i in drop_idx], pa.string()))
    removed = removed.append_column(
        "detail", pa.array([details[i] if details else None for i in drop_idx], pa.string())
    )
    counts = {
        "docs_in": table.num_rows,
        "docs_kept": kept.num_rows,
        "docs_removed": removed.num_rows,
        "removed": dict(sorted(Counter(r for r in reasons if r is not None).items())),
        "chars_in": _chars(table),
        "chars_kept": _chars(kept),
    }
    if extra_counts:
        counts.update(extra_counts)
    return ShardResult(kept, removed.cast(REMOVED_SCHEMA), counts)


def _chars(table: pa.Table) -> int:
    if table.num_rows == 0:
        return 0
    return int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0)


def merge_counts(a: dict, b: dict) -> dict:
    """Add two count dicts (nested dicts added key by key); used to total shard counts."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = merge_counts(out.get(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
        else:
            out[k] = v
    return dict(sorted(out.items()))


# Control characters other than tab and line breaks, C1 controls (cp1252 read as latin-1) and U+FFFD:
# what a wrong decoding leaves. The same set as pipeline.charset.ODD_CHARS, in RE2's syntax.
_BINARY_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x{9F}\x{FFFD}]"


def text_kinds(table: pa.Table) -> dict:
    """How many documents are not English (by their language column) and how many look binary (over
    1% control or replacement characters): a stage reports what went through it, not only what it
    removed."""
    if table.num_rows == 0:
        return {"docs_binary_like": 0, "docs_non_english": 0}
    text = table.column("text")
    odd = pc.count_substring_regex(text, _BINARY_CHARS)
    binary = pc.sum(pc.greater(pc.multiply(odd, 100), pc.utf8_length(text))).as_py() or 0
    non_english = 0
    if "language" in table.column_names:
        lang = table.column("language")
        non_english = pc.sum(pc.and_(pc.is_valid(lang), pc.not_equal(lang, "en"))).as_py() or 0
    return {"docs_binary_like": int(binary), "docs_non_english": int(non_english)}
