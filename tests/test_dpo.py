"""Preference tuning (model/dpo.py): the loss against hand-computed values, log 2 at the start, the
reference table reused, reward accuracy rising on the book's pairs, and exact resume after a
stop and after a real SIGKILL."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from model.dpo import DPOConfig, DPOLossConfig, compute_reference, dpo, preference_loss
from model.gpt import GPT, GPTConfig
from model.sft_data import DataError
from pipeline.tokenize import TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data
from tests.fixtures.train import kill_at_step, run_killed

BOOK = "preference/rasbt-ch07-instruction-data-with-preference.json"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tokenizer with the chat tokens, a tiny GPT and 80 of the book's pairs."""
    folder = tmp_path_factory.mktemp("base")
    records = json.loads(require_data(BOOK).read_text())
    data = folder / "pairs.json"
    data.write_text(json.dumps(records[:80]))
    texts = [r["instruction"] + " " + r["input"] + " " + r["chosen"] + " " + r["rejected"] for r in records]
    tok = train_tokenizer(texts, TokenizeConfig(vocab_size=512))
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=96, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    torch.save(
        {"model": model.state_dict(), "config": cfg.model_dump(), "vocab_size": cfg.vocab_size}, folder / "model.pt"
    )
    return folder, data


def _config(data, **groups) -> DPOConfig:
    c = {
        "data": {"files": [str(data)], "batch_size": 4, "val_fraction": 0.1, "test_fraction": 0.1},
        "optimizer": {"learning_rate": 1e-3},
        "schedule": {"max_steps": 10, "warmup_steps": 0, "min_lr": 1e-3},
        "eval": {"interval": 5, "samples": 1, "answer_tokens": 4},
        "log": {"interval": 1},
        "checkpoint": {"interval": 4, "minutes": 0, "async_save": False},
        "launch": {"device": "cpu"},
    }
    for group, values in groups.items():
        c[group] = {**c.get(group, {}), **values}
    return DPOConfig.model_validate(c)


def test_the_losses_match_their_formulas():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.5))
    h = (-10 + 11) - (-12 + 11.5)  # 1.5
    loss, chosen, rejected = preference_loss(pc, pr, rc, rr, DPOLossConfig(beta=0.1))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))), rel=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1, -0.05))
    smooth = preference_loss(pc, pr, rc, rr, DPOLossConfig(beta=0.1, label_smoothing=0.2))[0].item()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert smooth == pytest.approx(-0.8 * math.log(sig(0.15)) - 0.2 * math.log(sig(-0.15)), rel=1e-6)
    ipo = preference_loss(pc, pr, rc, rr, DPOLossConfig(kind="ipo", beta=0.1))[0].item()
    assert ipo == pytest.approx((h - 5) ** 2, rel=1e-6)
    assert DPOLossConfig(kind="ipo").reduction == "mean" and DPOLossConfig().reduction == "sum"


@pytest.fixture(scope="module")
def whole(base, tmp_path_factory):
    """An uninterrupted run with the reference computed inside."""
    folder, data = base
    out = tmp_path_factory.mktemp("whole")
    return out, dpo(str(folder / "model.pt"), str(folder), _config(data), str(out))


def _same_weights(a_dir, b_dir) -> bool:
    a, b = torch.load(a_dir / "model.pt")["model"], torch.load(b_dir / "model.pt")["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_starts_at_log_2_and_the_held_out_reward_accuracy_rises(whole):
    out, s = whole
    assert s["history"][0]["loss"] == pytest.approx(math.log(2), abs=0.02)  # policy == reference at step 0
    assert s["pairs"] == {"train": 64, "validation": 8, "test": 8} and s["completed"]
    assert s["test"]["reward_accuracy"] > 0.5 and s["test"]["margin"] > 0
    assert s["test"]["chosen_reward"] > s["test"]["rejected_reward"] and s["test"]["kl_per_token"] > 0
    assert [h["step"] for h in s["history"] if "val_reward_accuracy" in h] == [5, 10]
    assert s["timing"]["reference_seconds"] > 0 and (out / "tokenizer" / "tokenizer_config.json").exists()
    assert {"prompt", "chosen", "rejected", "before", "after"} <= s["samples"][0].keys()


def test_a_given_reference_table_gives_the_same_run_and_a_foreign_one_is_refused(base, whole, tmp_path):
    folder, data = base
    c = _config(data)
    table = compute_reference(str(folder / "model.pt"), str(folder), c)
    assert table.num_rows == 80 and (table.column("chosen_tokens").to_numpy() > 0).all()
    again = dpo(str(folder / "model.pt"), str(folder), c, str(tmp_path / "given"), reference=table)
    assert _same_weights(whole[0], tmp_path / "given") and "reference_seconds" not in again["timing"]
    with pytest.raises(ValueError, match="does not fit these pairs"):
        dpo(str(folder / "model.pt"), str(folder), c, str(tmp_path / "x"), reference=table.slice(0, 10))


def test_a_stopped_run_resumes_to_bitwise_the_same_weights(base, whole, tmp_path):
    folder, data = base
    c = _config(data)
    stopped = dpo(str(folder / "model.pt"), str(folder), c, str(tmp_path), stop_after=6)
    assert not stopped["completed"] and not (tmp_path / "model.pt").exists()
    resumed = dpo(str(folder / "model.pt"), str(folder), c, str(tmp_path))
    assert _same_weights(whole[0], tmp_path)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole[1]["history"]]
    with pytest.raises(ValueError, match="another config .*loss.beta"):
        dpo(str(folder / "model.pt"), str(folder), _config(data, loss={"beta": 0.5}), str(tmp_path), stop_after=1)


def test_sigkill_at_a_random_step_then_resume_gives_bitwise_the_same_weights(base, whole, tmp_path):
    folder, data = base
    c = _config(data, checkpoint={"async_save": True})
    step = random.randrange(1, c.schedule.max_steps)
    args = {"base": str(folder / "model.pt"), "tok": str(folder), "config": c.model_dump(), "out": str(tmp_path)}
    run_killed(
        "torch.set_num_threads(1)\n"
        "from model.dpo import DPOConfig, dpo\n"
        "dpo(a['base'], a['tok'], DPOConfig.model_validate(a['config']), a['out'], log=log)\n",
        args,
        kill_at_step(step),
    )
    assert not (tmp_path / "model.pt").exists(), f"killed at step {step}"
    dpo(str(folder / "model.pt"), str(folder), c, str(tmp_path))
    assert _same_weights(whole[0], tmp_path), f"killed at step {step}"


def test_ipo_trains_too_and_bad_pairs_are_named(base, tmp_path):
    folder, data = base
    s = dpo(
        str(folder / "model.pt"),
        str(folder),
        _config(data, loss={"kind": "ipo"}, schedule={"max_steps": 3}),
        str(tmp_path / "ipo"),
    )
    assert s["loss"] == {"kind": "ipo", "beta": 0.1, "logps": "mean"}
    assert s["history"][0]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=0.01)  # h = 0 at the start
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl: record 1: `rejected` is missing"):
        dpo(str(folder / "model.pt"), str(folder), _config(bad), str(tmp_path / "bad"))
