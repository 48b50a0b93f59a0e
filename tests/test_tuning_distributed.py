"""SFT and DPO in 2 processes (torchrun, gloo, CPU) against one process with the same global batch:
the same per-step losses and weights with DDP and FSDP2, and a stopped DDP run resumed in 2
processes bitwise equal to the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from model.dpo import DPOConfig, dpo
from model.launch import launch_entry
from model.sft import SFTConfig, sft
from tests.fixtures.data import require_data
from tests.fixtures.tuning import tiny_base

SFT = ("model.sft:sft", "model.sft:SFTConfig")
DPO = ("model.dpo:dpo", "model.dpo:DPOConfig")
TWO = {"nproc_per_node": 2, "parallel": "ddp", "device": "cpu"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    return folder, tiny_base(folder, records=48, dropout=0.0)


def _sft_config(data, batch: int, **launch) -> SFTConfig:
    return SFTConfig.model_validate(
        {
            "data": {"files": [str(data)], "batch_size": batch, "val_fraction": 0.1, "test_fraction": 0.1},
            "optimizer": {"learning_rate": 3e-3},
            "schedule": {"max_steps": 8, "warmup_steps": 2, "min_lr": 3e-4},
            "eval": {"interval": 4, "answer_tokens": 4, "prompts": 2, "samples": 0, "before": False},
            "log": {"interval": 1},
            "checkpoint": {"interval": 4, "minutes": 0, "async_save": False},
            "launch": {"device": "cpu", **launch},
        }
    )


def _losses(events: list[dict], key: str = "loss") -> dict[int, float]:
    return {e["step"]: e[key] for e in events if key in e}


def _weights(out) -> dict:
    return torch.load(out / "model.pt", weights_only=True)["model"]


def _close(a: dict, b: dict, rel: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=rel) for k in a)


@pytest.fixture(scope="module")
def single(base, tmp_path_factory):
    folder, data = base
    out, events = tmp_path_factory.mktemp("single"), []
    sft(str(folder / "model.pt"), str(folder), _sft_config(data, 8), str(out), log=events.append)
    return out, events


def _two(folder, data, out, config, stop_after=None, entry=SFT):
    events: list[dict] = []
    summary = launch_entry(entry, [str(folder / "model.pt"), str(folder)], config, str(out), events.append, stop_after)
    return summary, events


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sft_in_two_processes_matches_one_with_the_same_global_batch(base, single, tmp_path, parallel):
    """2 processes x 4 rows step as 1 process x 8 rows: the loss is the mean over both ranks' answer
    tokens (not a mean of the ranks' means), so losses, validation losses and weights agree."""
    folder, data = base
    summary, events = _two(folder, data, tmp_path, _sft_config(data, 4, **{**TWO, "parallel": parallel}))
    assert summary["completed"] and summary["after"]["prompts"] == 2
    assert _close(_losses(events), _losses(single[1])) and len(_losses(events)) == 8
    assert _close(_losses(events, "val_loss"), _losses(single[1], "val_loss"))
    a, b = _weights(tmp_path), _weights(single[0])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_sft_stopped_in_two_processes_resumes_bitwise(base, tmp_path):
    folder, data = base
    c = _sft_config(data, 4, **TWO)
    _two(folder, data, tmp_path / "whole", c)
    stopped, _ = _two(folder, data, tmp_path / "resumed", c, stop_after=5)
    assert not stopped["completed"] and not (tmp_path / "resumed" / "model.pt").exists()
    _, events = _two(folder, data, tmp_path / "resumed", c)
    assert sorted(_losses(events)) == [5, 6, 7, 8]  # from the step-4 checkpoint
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_in_two_ddp_processes_matches_one(base, tmp_path):
    folder, _ = base
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(json.loads(require_data("preference/rasbt-ch07-instruction-data-with-preference.json").read_text())[:40]))  # fmt: skip

    def config(batch: int, **launch) -> DPOConfig:
        return DPOConfig.model_validate(
            {
                "data": {"files": [str(pairs)], "batch_size": batch, "val_fraction": 0.1, "test_fraction": 0.1},
                "optimizer": {"learning_rate": 1e-3},
                "schedule": {"max_steps": 6, "warmup_steps": 0, "min_lr": 1e-3},
                "eval": {"interval": 3, "samples": 0},
                "log": {"interval": 1},
                "checkpoint": {"interval": 3, "minutes": 0, "async_save": False},
                "launch": {"device": "cpu", **launch},
            }
        )

    one: list[dict] = []
    alone = dpo(str(folder / "model.pt"), str(folder), config(8), str(tmp_path / "one"), log=one.append)
    summary, two = _two(folder, None, tmp_path / "two", config(4, **TWO), entry=DPO)
    assert _close(_losses(two), _losses(one)) and _close(_losses(two, "val_reward_accuracy"), _losses(one, "val_reward_accuracy"))  # fmt: skip
    assert summary["test"]["reward_accuracy"] == pytest.approx(alone["test"]["reward_accuracy"], abs=1e-6)
