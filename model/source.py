"""Any checkpoint, resolved to what evaluating or exporting it needs: the weights file, the
tokenizer, the validation shards of the data it was trained on, and an identity for caching.

A source is a train output URL ({store}/train/{fingerprint}) or an sft output's (the tuned model,
its tokenizer with the chat tokens and its chat template), a model file (a model.pt, or a
training checkpoint such as checkpoints/latest.pt, or FSDP2's checkpoints/latest.json and the
step-N folder it names), or a folder holding one (its model.pt, else its checkpoints/latest.pt,
else its checkpoints/latest.json). The tokenize output comes from the train output's manifest, or, for a run
still training (no manifest yet), from the upstream.json the train flow writes beside its
checkpoints. `data` (a tokenize output URL) names one for a model file found anywhere else, and
overrides the others.

Identity: a train output's model.pt is named by the train fingerprint, any other file by the sha256
of its bytes (a checkpoint that further training overwrote is another model, a copy of a file the
same one), and both by the tokenize output whose tokenizer and validation shards go with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field

import fsspec

from storage import StageDir, Store, is_local, open_stage, protocol

UPSTREAM_FILE = "upstream.json"  # beside a run's checkpoints: {"tokenize": URL of its tokenize output}


@dataclass
class ModelSource:
    model_path: str  # the weights file on this machine
    tokenizer_path: str
    val_files: list[str]
    store: Store  # where evaluations of it are written: its tokenize output's store
    identity: dict  # what a fingerprint of an evaluation holds for the model
    trained: dict = field(default_factory=dict)  # steps and tokens_seen, when a train manifest says
    chat_template: str | None = None  # a chat-tuned model's (sft): exports carry it


def token_files(tok: StageDir) -> tuple[list[str], list[str], int]:
    """Local paths of a tokenize output's train shards in its train_order (the seeded shuffle), its
    validation shards in index order, and its vocabulary size."""
    manifest = tok.read_manifest()
    by_index = {s["index"]: s for s in manifest["shards"]}
    train = [tok.local_path(by_index[i]["train"]) for i in manifest.get("train_order", sorted(by_index))]
    return train, val_files(tok), manifest["vocab_size"]


def val_files(tok: StageDir) -> list[str]:
    """Local paths of a tokenize output's validation shards, in index order (the train shards stay
    where they are: on object storage, fetching them would copy the corpus)."""
    return [tok.local_path(s["val"]) for s in tok.read_manifest()["shards"]]


def tokenizer_file(tok: StageDir) -> str:
    """Local path of the tokenizer.json a tokenize output encoded with."""
    ref = tok.read_manifest()["tokenizer"]
    return tok.store.stage(ref["stage"], ref["fingerprint"]).local_path(ref.get("file", "data/tokenizer.json"))


def resolve(source: str, data: str = "") -> ModelSource:
    """The ModelSource of a train output URL, a model or checkpoint file, or a folder holding one."""
    fs, path = fsspec.core.url_to_fs(source.rstrip("/"))
    if fs.isdir(path) and fs.exists(posixpath.join(path, "manifest.json")):
        return _from_run(open_stage(source), source, data)
    model = _model_file(fs, path, source)
    folder = posixpath.dirname(model)
    if posixpath.basename(folder) == "checkpoints":
        folder = posixpath.dirname(folder)
    run = open_stage(_url(fs, folder)) if fs.exists(posixpath.join(folder, "manifest.json")) else None
    if run is not None and posixpath.basename(model) == "model.pt":
        return _from_run(run, source, data)  # a train output's own model: the same evaluation as its URL
    tok_url = data or _recorded_upstream(fs, folder, run)
    if not tok_url:
        raise ValueError(
            f"{source}: no train manifest or {UPSTREAM_FILE} beside it says which tokenize output it "
            f"was trained on; name one with data=<store>/tokenize/<fingerprint>"
        )
    tok = _tokenize(tok_url)
    if fs.isdir(model) and not is_local(fs):
        raise ValueError(
            f"{source}: an FSDP2 checkpoint folder is read on this machine only; copy "
            f"{_url(fs, model)} here, or evaluate the run's model.pt"
        )
    local = model if is_local(fs) else fsspec.open_local(f"simplecache::{_url(fs, model)}")
    return ModelSource(
        local,
        tokenizer_file(tok),
        val_files(tok),
        tok.store,
        {"model_sha256": _sha256(local), "tokenize": tok.fingerprint},
    )


def _from_run(run: StageDir, source: str, data: str) -> ModelSource:
    manifest = run.read_manifest()
    if run.name == "classify":
        raise ValueError(
            f"{source} is a classify output: a classifier, not a language model "
            f"(`crawl2llm predict` runs it, `crawl2llm export` exports it)"
        )
    if run.name != "train":
        return _tuned(run, manifest, source, data)
    tok = (
        _tokenize(data) if data else run.store.stage(manifest["upstream"]["stage"], manifest["upstream"]["fingerprint"])
    )
    counts = manifest.get("counts", {})
    return ModelSource(
        run.local_path(manifest.get("model", "model.pt")),
        tokenizer_file(tok),
        val_files(tok),
        run.store,
        {"stage": run.name, "fingerprint": run.fingerprint, "tokenize": tok.fingerprint},
        {"steps": counts.get("steps"), "tokens_seen": counts.get("tokens_seen")},
    )


def _tuned(run: StageDir, manifest: dict, source: str, data: str) -> ModelSource:
    """A language model tuned from a train output (sft): its own weights and tokenizer (the chat
    tokens added), the validation shards of the pretraining data its upstream names."""
    up = manifest.get("upstream", {})
    if "model" not in manifest or "tokenizer" not in manifest or "stage" not in up:
        raise ValueError(
            f"{source} is a {run.name} output, not a model; give a train or sft output, a model file or a checkpoint"
        )
    base = _from_run(run.store.stage(up["stage"], up["fingerprint"]), source, data)
    return ModelSource(
        run.local_path(manifest["model"]),
        run.local_path(manifest["tokenizer"]),
        base.val_files,
        run.store,
        {"stage": run.name, "fingerprint": run.fingerprint, "tokenize": base.identity["tokenize"]},
        {"steps": manifest.get("counts", {}).get("steps")},
        _chat_template(run, manifest["tokenizer"]),
    )


def _chat_template(run: StageDir, tokenizer: str) -> str | None:
    """The chat template of the tokenizer_config.json beside a run's tokenizer (an sft output's)."""
    rel = posixpath.join(posixpath.dirname(tokenizer), "tokenizer_config.json")
    return run.read_json(rel).get("chat_template") if run.exists(rel) else None


def _tokenize(url: str) -> StageDir:
    tok = open_stage(url)
    if tok.name != "tokenize":
        raise ValueError(f"{url} is a {tok.name} output, not a tokenize output")
    return tok


def _model_file(fs, path: str, source: str) -> str:
    """The weights file, or an FSDP2 checkpoint folder (checkpoints/step-N, which latest.json names)."""
    if posixpath.basename(path) == "latest.json" and fs.isfile(path):
        with fs.open(path, "rb") as f:
            return posixpath.join(posixpath.dirname(path), json.load(f)["folder"])
    if fs.isfile(path) or fs.isfile(posixpath.join(path, ".metadata")):
        return path
    if fs.isdir(path):
        for rel in ("model.pt", "checkpoints/latest.pt", "checkpoints/latest.json"):
            if fs.isfile(posixpath.join(path, rel)):
                return _model_file(fs, posixpath.join(path, rel), source)
        raise FileNotFoundError(f"{source} holds neither model.pt nor checkpoints/latest.pt or latest.json")
    raise FileNotFoundError(f"model not found: {source} (give a train output, a model file or a checkpoint)")


def _recorded_upstream(fs, folder: str, run: StageDir | None) -> str:
    """The tokenize output a run in `folder` trains on: its manifest's, or its upstream.json's."""
    if run is not None:
        up = run.read_manifest()["upstream"]
        return run.store.stage(up["stage"], up["fingerprint"]).url()
    marker = posixpath.join(folder, UPSTREAM_FILE)
    if fs.exists(marker):
        with fs.open(marker, "rb") as f:
            return json.load(f)["tokenize"]
    return ""


def _url(fs, path: str) -> str:
    return path if is_local(fs) else f"{protocol(fs)}://{path.lstrip('/')}"


def _sha256(path: str) -> str:
    """Of a file's bytes; of a checkpoint folder, of each file's name and sha256, in name order."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(f"{name}\0{_sha256(os.path.join(path, name))}\n".encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()
