"""Instruction data (model/sft_data.py): the formats users bring, errors that name the record, the
book's split, and packed rows whose attention never crosses an example."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from model.chat import ChatFormat
from model.gpt import GPT, GPT2, MODERN, GPTConfig
from model.sft_data import IGNORE, DataError, pack, read_records, render_records, split_examples
from pipeline.tokenize import PAD, TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data

INSTRUCT = "instruct/rasbt-ch07-instruction-data.json"


@pytest.fixture(scope="module")
def records():
    return read_records(str(require_data(INSTRUCT)))


@pytest.fixture(scope="module")
def fmt(records):
    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in records]
    return ChatFormat(train_tokenizer(texts, TokenizeConfig(vocab_size=1024)))


def test_the_books_instruction_set_renders_and_splits_as_the_book_does(records, fmt):
    examples, skipped = render_records(records, fmt, INSTRUCT)
    assert len(examples) == 1100 and not skipped
    train, val, test = split_examples(examples, val_fraction=0.05, test_fraction=0.10)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert test[0].record == f"{INSTRUCT}: record 936" and val[0].record == f"{INSTRUCT}: record 1046"
    first = records[0]
    trained = [i for i, m in zip(examples[0].ids, examples[0].mask) if m]
    assert fmt.tokenizer.decode(trained, skip_special_tokens=False) == first["output"] + "<|end|>"
    assert fmt.tokenizer.decode(examples[0].ids, skip_special_tokens=False).startswith(
        f"<|user|>{first['instruction']}\n\n{first['input']}<|end|><|assistant|>"
    )


def test_alpaca_prompt_trains_on_the_response_and_end_of_text(records, fmt):
    examples, _ = render_records(records[:3], fmt, INSTRUCT, prompt="alpaca")
    text = fmt.tokenizer.decode(examples[1].ids, skip_special_tokens=False)
    assert text.startswith("Below is an instruction") and "### Input:\nHe go to the park every day." in text
    trained = [i for i, m in zip(examples[1].ids, examples[1].mask) if m]
    assert fmt.tokenizer.decode(trained, skip_special_tokens=False) == records[1]["output"] + "<|endoftext|>"


def test_chat_jsonl_gz_and_bad_records_are_named(tmp_path, fmt):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    lines = [
        good,
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"instruction": "x"},
        [1, 2],
        {"messages": [{"role": "robot", "content": "x"}]},
    ]
    path = tmp_path / "chat.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")
    records = read_records(str(path))
    with pytest.raises(DataError, match=r"chat.jsonl.gz: record 2: no assistant message"):
        render_records(records, fmt, "chat.jsonl.gz")
    examples, skipped = render_records(records, fmt, "chat.jsonl.gz", skip_bad=True)
    assert len(examples) == 1 and [s.split(": ")[1] for s in skipped] == [
        "record 2",
        "record 3",
        "record 4",
        "record 5",
    ]
    assert "`output` is missing" in skipped[1] and "not a JSON object" in skipped[2] and "role 'robot'" in skipped[3]
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataError, match=r"broken.jsonl: line 2 is not valid JSON"):
        read_records(str(tmp_path / "broken.jsonl"))


def test_rows_hold_every_trained_token_once_and_cut_what_does_not_fit(records, fmt):
    examples, _ = render_records(records[:200], fmt, INSTRUCT)
    pad = fmt.tokenizer.token_to_id(PAD)
    for packing in (True, False):
        rows = pack(examples, 128, pad, packing=packing)
        long = sum(len(e.ids) > 129 for e in examples)
        assert rows.truncated == long
        want = sorted(t for e in examples for t, m in zip(e.ids[1:129], e.mask[1:129]) if m)
        assert sorted(rows.targets[rows.targets != IGNORE].tolist()) == want
        assert (rows.tokens[rows.segments == 0] == pad).all() and (rows.targets[rows.segments == 0] == IGNORE).all()
    assert len(pack(examples, 128, pad)) < len(examples) // 2  # packing fills rows


@pytest.mark.parametrize("arch", [GPT2, MODERN], ids=["gpt2", "modern"])
def test_packed_examples_see_only_themselves(fmt, records, arch):
    """Each example's logits in a packed row equal its logits alone: attention and positions restart."""
    examples, _ = render_records(records[:6], fmt, INSTRUCT)
    rows = pack(examples, 256, fmt.tokenizer.token_to_id(PAD))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, n_layer=2, n_head=2, n_embd=32, block_size=256, **arch)).eval()
    with torch.no_grad():
        logits, _ = model(rows.tokens, segments=rows.segments, positions=rows.positions)
        checked = 0
        for r in range(len(rows)):
            for s in rows.segments[r].unique().tolist():
                if s == 0:
                    continue
                where = rows.segments[r] == s
                alone, _ = model(rows.tokens[r][where].unsqueeze(0))
                torch.testing.assert_close(logits[r][where], alone[0], rtol=1e-5, atol=1e-5)
                checked += 1
    assert checked == 6 and len(rows) < 6
