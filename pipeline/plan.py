"""The plan of a run, without Prefect: where every output of every per-increment stage goes.

An output is named by its fingerprint, which follows from the config, the code and the inputs'
identities alone, so the plan is known before any work: the incremental runs check it against the
store to start at the first output that is missing, every stage flow lands where it was planned,
and tests read cache keys off it (tests/test_stage_table.py). A plain run is one increment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline import dedup_run
from pipeline.stage_table import BY_NAME, DOC_STAGES, load, previous
from storage import StageDir, Store, file_identity, fingerprint

if TYPE_CHECKING:  # the configs' modules load presidio and resiliparse; naming an output needs neither
    from pipeline.dedup import DedupConfig
    from pipeline.ingest import IngestConfig
    from pipeline.tokenize import TokenizeConfig


def ingest_output(store: str, config: IngestConfig, identities) -> tuple[StageDir, str, object]:
    """Where ingest of these inputs (each file's identity, or a crawl output's) writes; the plan's first
    output, and what the ingest flow writes."""
    upstream = identities
    if config.url_blocklist_files:  # what the lists hold, not only their names, decides the output
        upstream = {"inputs": upstream, "url_blocklists": [file_identity(f) for f in config.url_blocklist_files]}
    code = BY_NAME["ingest"].code_version()
    return Store(store).stage("ingest", fingerprint("ingest", code, config, upstream)), code, upstream


def dedup_output(up: StageDir, config: DedupConfig, previous: StageDir | None) -> tuple[StageDir, str, dict]:
    """Where dedup of `up` (after the increments up to `previous`) writes."""
    code = BY_NAME["dedup"].code_version()
    o = dedup_run.outputs(up, config, previous, code)
    return o.out, code, o.upstream


def filter_output(name: str, up: StageDir, config) -> tuple[StageDir, str, dict]:
    """Where filter stage `name` of `up` writes. A secret the config names (pii's pseudonym key) is
    part of the fingerprint by its id, never itself (the stage's `secret_id`)."""
    stage = BY_NAME[name]
    code = stage.code_version()
    upstream = {"stage": up.name, "fingerprint": up.fingerprint}
    secret_id = load(stage.secret_id)(config) if stage.secret_id else None
    inputs = upstream if secret_id is None else {**upstream, "secret_id": secret_id}
    return up.store.stage(name, fingerprint(name, code, config, inputs)), code, upstream


def tokenize_outputs(
    up: StageDir, config: TokenizeConfig, tokenizer: StageDir | None = None
) -> tuple[StageDir, StageDir, str]:
    """The tokenizer (trained on `up`, or the one given) and where the token shards of `up` go."""
    code = BY_NAME["tokenize"].code_version()
    upstream = {"stage": up.name, "fingerprint": up.fingerprint}
    tok = tokenizer or up.store.stage("tokenizer", fingerprint("tokenizer", code, config, upstream))
    inputs = upstream if tokenizer is None else {**upstream, "tokenizer": tokenizer.fingerprint}
    return tok, up.store.stage("tokenize", fingerprint("tokenize", code, config, inputs)), code


def plan(config, records: list[dict]) -> list[dict[str, StageDir]]:
    """Every increment's stage outputs (and increment 0's tokenizer), whether written or not: each
    per-increment stage of the table reads the one before it."""
    plans, previous_dedup, tokenizer = [], None, None
    for rec in records:
        p = {"ingest": ingest_output(config.store, config.ingest, rec["files"])[0]}
        for name in DOC_STAGES:
            up = p[previous(name)]
            if name == "dedup":  # checked against the increments before it
                p[name] = previous_dedup = dedup_output(up, config.dedup, previous_dedup)[0]
            else:
                p[name] = filter_output(name, up, getattr(config, name))[0]
        up = p[previous("tokenize")]
        p["tokenizer"], p["tokenize"], _ = tokenize_outputs(up, config.tokenize, tokenizer)
        tokenizer = p["tokenizer"]
        plans.append(p)
    return plans
