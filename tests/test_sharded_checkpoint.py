"""model.sharded_checkpoint's folders of shards: commit, keep 2, stale saves removed, damage named,
a copy on a remote store restored; and, in 2 FSDP2 processes, that each rank's memory grows by its
shard at load, not by the whole state (benchmarks/sharded_checkpoint_memory.py measures it)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from model import sharded_checkpoint
from model.gpt import GPT
from model.train import TrainConfig, make_optimizer
from storage import Store

C = TrainConfig(model={"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}, launch={"device": "cpu"})


def trained(seed: int):
    """A small GPT and its AdamW after one step (moments exist), in this one process."""
    torch.manual_seed(seed)
    model = GPT(C.gpt_config(64))
    optimizer = make_optimizer(model, C, "cpu")
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[1].backward()
    optimizer.step()
    return model, optimizer


def test_saves_commit_keep_two_and_load_bitwise(tmp_path):
    model, optimizer = trained(0)
    for step in (2, 4, 6):
        path = sharded_checkpoint.save(str(tmp_path), step, model, optimizer, {"step": step}, keep=2)
    assert path == str(tmp_path / "step-6") and sharded_checkpoint.latest(str(tmp_path)) == path
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "step-4", "step-6"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"step": 6, "folder": "step-6"}
    assert torch.load(tmp_path / "step-6" / "state.pt", weights_only=True) == {"step": 6}
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    assert "model.tok_emb.weight" in stored and "model.lm_head.weight" not in stored  # the tied matrix once

    fresh, fresh_opt = trained(1)
    sharded_checkpoint.load(path, fresh, fresh_opt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert all(
        torch.equal(value, loaded["state"][i][k])
        for i, moments in saved["state"].items()
        for k, value in moments.items()
    )

    # Resumed from step 4 by a run that then saves step 5: step 6 is a future this run abandoned.
    sharded_checkpoint.save(str(tmp_path), 5, model, optimizer, {"step": 5}, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "step-4", "step-5"]


def test_a_killed_save_leaves_what_the_next_start_removes_and_damage_is_named(tmp_path):
    model, optimizer = trained(0)
    assert sharded_checkpoint.latest(str(tmp_path)) is None
    path = sharded_checkpoint.save(str(tmp_path), 2, model, optimizer, {"step": 2}, keep=2)
    (tmp_path / "step-4.saving-123").mkdir()
    (tmp_path / "step-4.saving-123" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / "latest.json.saving-123").write_text("{")
    assert sorted(os.path.basename(p) for p in sharded_checkpoint.remove_stale(str(tmp_path))) == [
        "latest.json.saving-123",
        "step-4.saving-123",
    ]
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "step-2"]

    shard = tmp_path / "step-2" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # cut short
    with pytest.raises(
        RuntimeError,
        match=r"sharded checkpoint .*step-2 \(named by .*latest.json\) is "
        r"incomplete, missing __0_0.distcp",
    ):
        sharded_checkpoint.latest(str(tmp_path))
    shard.unlink()
    with pytest.raises(RuntimeError, match="incomplete, missing __0_0.distcp"):
        sharded_checkpoint.latest(str(tmp_path))
    (tmp_path / "latest.json").write_text("not json")
    with pytest.raises(RuntimeError, match=r"checkpoint pointer .*latest.json is unreadable"):
        sharded_checkpoint.latest(str(tmp_path))
    assert path


def test_a_copy_on_a_memory_store_restores_a_lost_cache(tmp_path):
    """As the train flow does on a remote store: each committed folder is uploaded (its files, then
    the pointer), folders no longer kept are dropped there too; a wiped cache is fetched back."""
    out = Store("memory://c2l-sharded-test").stage("train", "lost-cache")
    cache = tmp_path / "cache"
    folder = str(cache / "checkpoints")
    model, optimizer = trained(0)
    for step in (2, 4, 6):
        sharded_checkpoint.upload(
            out, str(cache), sharded_checkpoint.save(folder, step, model, optimizer, {"step": step}, keep=2)
        )
    assert {r.split("/")[1] for r in out.list("checkpoints")} == {"latest.json", "step-4", "step-6"}
    before = {p: open(os.path.join(folder, "step-6", p), "rb").read() for p in os.listdir(f"{folder}/step-6")}
    for root, dirs, files in os.walk(cache, topdown=False):
        for name in files:
            os.remove(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    assert sharded_checkpoint.restore(out, str(cache), "checkpoints")
    assert sharded_checkpoint.latest(folder) == f"{folder}/step-6"
    assert {p: open(os.path.join(folder, "step-6", p), "rb").read() for p in os.listdir(f"{folder}/step-6")} == before
    assert not sharded_checkpoint.restore(out, str(cache), "checkpoints")  # the cache has it: nothing fetched


def test_each_rank_holds_only_its_shard_at_load(tmp_path):
    """2 FSDP2 processes on gloo: loading the folder of shards grows a rank's peak resident set by
    about its shard (its moments, and the zero gradients DCP makes them with), well under the
    whole state, which loading one file of whole tensors on every rank takes and more; the loaded
    shards equal the saved ones bitwise. Peak = VmHWM reset just before the load (see the benchmark)."""
    from benchmarks.sharded_checkpoint_memory import main

    rows = main(["--n-layer=2", "--n-head=2", "--n-embd=256", "--vocab=4096", f"--out={tmp_path}"])
    assert [r["rank"] for r in rows] == [0, 1]
    for r in rows:
        assert r["bitwise"]
        assert r["whole_bytes"] > 25 * 2**20 and r["shard_bytes"] < 0.55 * r["whole_bytes"]
        assert r["whole_load_peak"] >= r["whole_bytes"]  # the measure sees a whole-state load
        assert r["sharded_load_peak"] <= 1.1 * r["shard_bytes"] + 2**20
        assert r["sharded_load_peak"] < 0.6 * r["whole_bytes"]
