"""The contracts between stages: what a stage output's manifest and a shard's stats file hold.

Validated when written (StageDir.commit, commit_shard) and when read (read_manifest,
read_shard_stats), so a stage that writes a wrong manifest fails where it writes it, and a damaged
or foreign file fails naming the file, not three stages later with a KeyError. The files stay plain
JSON dicts (the models allow more fields than they name): stage code reads them as dicts, and the
bytes on disk do not change.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ShardStats(_Open):
    """A shard's stats file: its commit point. `outputs` names its files by kind (data, removed,
    train, val...); `files` the size and CRC-32 of each file written (storage/verify.py)."""

    index: int = Field(ge=0)
    outputs: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, Any] = Field(default_factory=dict)
    seconds: float = Field(0.0, ge=0)
    files: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ShardEntry(_Open):
    """One shard in a manifest: its index and its files by kind."""

    index: int = Field(ge=0)


class Manifest(_Open):
    """A committed stage output. Deterministic: no timings, the same bytes for the same fingerprint."""

    stage: str
    fingerprint: str
    config: Any = None
    code: str | None = None
    upstream: Any = None
    shards: list[ShardEntry] = Field(default_factory=list)
    counts: dict[str, Any] = Field(default_factory=dict)


class TokenizerRef(_Open):
    stage: str
    fingerprint: str
    file: str


class TokenizeManifest(Manifest):
    """A tokenize output: training reads its tokenizer, vocabulary size and seeded shard order."""

    tokenizer: TokenizerRef
    vocab_size: int = Field(ge=1)
    train_order: list[int]


class DedupManifest(Manifest):
    """A dedup output: its LSH totals and what later increments need to check against it."""

    lsh: dict[str, Any]
    increments: list[dict[str, Any]]


MANIFESTS: dict[str, type[Manifest]] = {"tokenize": TokenizeManifest, "dedup": DedupManifest}


def tokenize_manifest(
    config,
    code: str,
    upstream,
    tokenizer: dict,
    vocab_size: int,
    train_order: list[int],
    shards: list[dict] | None = None,
    counts: dict | None = None,
) -> dict:
    """The fields a tokenize output's manifest holds besides shards and counts: written in one place
    for a tokenize stage and for the union of an incremental series' outputs."""
    body = {
        "config": config,
        "code": code,
        "upstream": upstream,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "train_order": train_order,
    }
    if shards is not None:
        body["shards"] = shards
    if counts is not None:
        body["counts"] = counts
    return body


def checked(model: type[BaseModel], data: Any, where: str, error: type[Exception]) -> Any:
    """`data` unchanged when it fits `model`; else `error` naming `where` and the first problems."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'top level'}: {err['msg']}" for err in e.errors()[:3]
        )
        raise error(f"{where} is not a valid {model.__name__}: {problems}") from None
    return data
