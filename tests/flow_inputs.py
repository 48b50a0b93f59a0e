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
            "max_steps": 30,
            "batch_size": 4,
            "block_size": 32,
            "n_layer": 2,
            "n_head": 2,
            "n_embd": 32,
            "warmup_steps": 5,
            "eval_interval": 10,
            "eval_batches": 2,
            "checkpoint_interval": 10,
        },
        "evaluate": {"max_new_tokens": 8, "val_batches": 2},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
