"""Instruction tuning (model/sft.py): exact resume, answer-only loss, bad records named, and a tiny
run on the book's records that lowers the held-out answer loss."""

from __future__ import annotations

import json
import random

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.sft import SFTConfig, masked_loss, sft
from model.sft_data import IGNORE, DataError
from tests.fixtures.data import require_data
from tests.fixtures.train import kill_at_step, run_killed
from tests.fixtures.tuning import tiny_base

INSTRUCT = "instruct/rasbt-ch07-instruction-data.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tokenizer without chat tokens (sft adds them) and a tiny pretrained-shaped GPT."""
    folder = tmp_path_factory.mktemp("base")
    return folder, tiny_base(folder)


def _config(path, **changes) -> SFTConfig:
    c = {
        "data": {"files": [str(path)], "batch_size": 4, "val_fraction": 0.1, "test_fraction": 0.1},
        "optimizer": {"learning_rate": 3e-3},
        "schedule": {"max_steps": 12, "warmup_steps": 2, "min_lr": 3e-4},
        "eval": {"interval": 6, "answer_tokens": 8, "prompts": 3, "samples": 1},
        "checkpoint": {"interval": 4, "minutes": 0, "async_save": False},
        "launch": {"device": "cpu"},
    }
    for group, values in changes.items():
        c[group] = {**c.get(group, {}), **values}
    return SFTConfig.model_validate(c)


def _resumable(data, **changes) -> SFTConfig:
    """The resume tests' config: every step logged (the kill's trigger), no evaluation of the base."""
    return _config(data, eval={"before": False}, log={"interval": 1}, **changes)


@pytest.fixture(scope="module")
def whole(base, tmp_path_factory):
    """An uninterrupted run, the reference of the resume tests."""
    folder, data = base
    out = tmp_path_factory.mktemp("whole")
    return out, sft(str(folder / "model.pt"), str(folder), _resumable(data), str(out))


def _same_weights(a_dir, b_dir) -> bool:
    a = torch.load(a_dir / "model.pt")["model"]
    b = torch.load(b_dir / "model.pt")["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_run_resumes_to_bitwise_the_same_weights(base, whole, tmp_path):
    folder, data = base
    c = _resumable(data)
    stopped = sft(str(folder / "model.pt"), str(folder), c, str(tmp_path / "resumed"), stop_after=6)
    assert not stopped["completed"] and not (tmp_path / "resumed" / "model.pt").exists()
    resumed = sft(str(folder / "model.pt"), str(folder), c, str(tmp_path / "resumed"))
    assert _same_weights(whole[0], tmp_path / "resumed")
    assert [h["loss"] for h in whole[1]["history"]] == [h["loss"] for h in resumed["history"]]
    assert (whole[0] / "tokenizer" / "tokenizer_config.json").exists()
    assert whole[1]["chat_tokens_added"] == 4 and whole[1]["after"]["prompts"] == 3


def test_sigkill_at_a_random_step_then_resume_gives_bitwise_the_same_weights(base, whole, tmp_path):
    """A real SIGKILL in another process at a random step (checkpoints every 4 steps, written in
    the background as by default), resumed here."""
    folder, data = base
    c = _resumable(data, checkpoint={"async_save": True})
    step = random.randrange(1, c.schedule.max_steps)
    args = {"base": str(folder / "model.pt"), "tok": str(folder), "config": c.model_dump(), "out": str(tmp_path)}
    run_killed(
        "from model.sft import SFTConfig, sft\n"
        "sft(a['base'], a['tok'], SFTConfig.model_validate(a['config']), a['out'], log=log)\n",
        args,
        kill_at_step(step),
    )
    assert not (tmp_path / "model.pt").exists(), f"killed at step {step}"
    resumed = sft(str(folder / "model.pt"), str(folder), c, str(tmp_path))
    assert _same_weights(whole[0], tmp_path), f"killed at step {step}"
    assert resumed["history"][-1]["loss"] == whole[1]["history"][-1]["loss"]


def test_only_assistant_tokens_are_trained(base):
    """Each packed row's trained targets are exactly its records' answers and <|end|>; with
    assistant_only off, every next token is trained on."""
    from model.chat import add_chat_tokens
    from model.sft import load_tokenizer, prepare
    from model.sft_data import pack

    folder, data = base
    records = json.loads(data.read_text())
    tok = load_tokenizer(str(folder))
    add_chat_tokens(tok)
    train, _, _, _ = prepare(_config(data), tok)
    rows = pack(train, 128, 0)
    by_ids = {tuple(ex.ids[:-1]): int(ex.record.rsplit(" ", 1)[1]) for ex in train}
    checked = 0
    for r in range(len(rows)):
        for s in set(rows.segments[r].tolist()) - {0}:
            seg = rows.segments[r] == s
            n = by_ids[tuple(rows.tokens[r][seg].tolist())]
            target = rows.targets[r][seg]
            answer = tok.decode(target[target != IGNORE].tolist(), skip_special_tokens=False)
            assert answer == records[n - 1]["output"] + "<|end|>"
            checked += 1
    assert checked == len(train) == 48
    everything, _, _, _ = prepare(_config(data, data={"assistant_only": False}), tok)
    all_rows = pack(everything, 128, 0)
    assert int((all_rows.targets != IGNORE).sum()) == sum(len(ex.ids) - 1 for ex in everything if len(ex.ids) <= 129)
    assert int((rows.targets != IGNORE).sum()) < int((all_rows.targets != IGNORE).sum()) / 2
    # and the loss reads nothing else: a batch whose prompt targets are all changed has the same loss
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, n_embd=16))
    batch = {k: getattr(rows, k)[:2] for k in ("tokens", "targets", "segments", "positions")}
    assert torch.isfinite(masked_loss(model, batch))


def test_a_bad_record_is_named_by_file_and_record(base, tmp_path):
    folder, _ = base
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: record 2: `output` is missing"):
        sft(str(folder / "model.pt"), str(folder), _config(bad), str(tmp_path / "out"))


def test_tuning_on_the_books_records_lowers_the_held_out_answer_loss(base, tmp_path):
    folder, data = base
    c = _config(data, schedule={"max_steps": 30}, checkpoint={"interval": 0})
    out = sft(str(folder / "model.pt"), str(folder), c, str(tmp_path / "out"))
    assert out["completed"] and out["records"] == {"train": 48, "validation": 6, "test": 6}
    assert out["after"]["answer_loss"] < out["before"]["answer_loss"] - 0.5
    assert out["final_val_loss"] < out["history"][0]["loss"]
    assert len(out["after"]["samples"]) == 1 and out["after"]["samples"][0]["record"].endswith("record 49")


def test_benchmarks_are_scored_zero_shot_and_through_the_chat_format_before_and_after(base, tmp_path):
    folder, data = base
    hellaswag = str(require_data("eval/hellaswag_val.klosax-preprocessed.jsonl.gz"))
    c = _config(data, eval={"tasks": [hellaswag], "task_items": 8}, schedule={"max_steps": 2})
    summary = sft(str(folder / "model.pt"), str(folder), c, str(tmp_path))
    for side in ("before", "after"):
        scores = summary[side]["tasks"]["hellaswag_val"]
        assert scores["zero_shot"]["items"] == scores["chat"]["items"] == 8
        assert 0 <= scores["chat"]["acc"] <= 1 and 0 <= scores["zero_shot"]["acc_norm"] <= 1
    with pytest.raises(FileNotFoundError, match="eval.tasks: no such benchmark file: .*none.jsonl"):
        sft(
            str(folder / "model.pt"),
            str(folder),
            _config(data, eval={"tasks": [str(tmp_path / "none.jsonl")]}),
            str(tmp_path / "x"),
        )


def test_bfloat16_autocast_acts_and_still_trains(base, tmp_path):
    """launch.dtype bfloat16 (autocast, on the CPU too): other losses than float32, and falling."""
    folder, data = base
    runs = {
        dtype: sft(
            str(folder / "model.pt"),
            str(folder),
            _config(data, launch={"dtype": dtype}, eval={"before": False}, log={"interval": 1}),
            str(tmp_path / dtype),
        )  # fmt: skip
        for dtype in ("float32", "bfloat16")
    }
    fp32, bf16 = ([h["loss"] for h in runs[d]["history"]] for d in ("float32", "bfloat16"))
    assert fp32 != bf16 and fp32[0] == pytest.approx(bf16[0], rel=0.02)
    assert bf16[-1] < bf16[0] and runs["bfloat16"]["completed"]
