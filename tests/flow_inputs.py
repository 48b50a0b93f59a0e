"""Small real inputs and a tiny pipeline config shared by the flow tests."""

from __future__ import annotations

WARCS = [
    "warc/dolma-sample-0000.warc.gz",
    "warc/dolma-sample-0001.warc.gz",
    "warc/resiliparse-warcfile.warc.gz",
    "warc/ukwa-govuk-BL-20140325121225068.warc.gz",
    "text/dolma-ccnet-cc_en_head-0091.jsonl.gz",
    "text/dolma-ccnet-cc_en_head-0174.jsonl.gz",
]


def tiny_config(store: str, inputs: list[str], **overrides) -> dict:
    """Every stage real, sized to run in seconds on 2 cores."""
    cfg = {
        "store": store,
        "inputs": inputs,
        "ingest": {"shard_bytes": 200_000},  # several shards (the big WARC is cut), as on real crawls
        "tokenize": {"vocab_size": 512, "min_frequency": 2},
        "train": {
            "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
            "schedule": {"max_steps": 30, "warmup_steps": 5},
            "data": {"batch_size": 4},
            "eval": {"interval": 10, "batches": 2},
            "checkpoint": {"interval": 10},
        },
        "evaluate": {"max_new_tokens": 8, "val_batches": 2},
    }
    return _merge(cfg, overrides)


def _merge(base: dict, changes: dict) -> dict:
    """base with changes laid over it, mappings merged key by key at every depth."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
