"""Preference pairs (model/preference_data.py): the book's DPO set and hh-rlhf's transcripts render
to exactly the chat format's ids of the whole conversation; bad records are named; fitting cuts."""

from __future__ import annotations

import json

import pytest

from model.chat import ChatFormat
from model.preference_data import Pair, fit, read_pairs, render_pairs, transcript_messages
from model.sft_data import DataError, read_records
from pipeline.tokenize import TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data

BOOK = "preference/rasbt-ch07-instruction-data-with-preference.json"
HH = "preference/hh-rlhf-harmless-base-test.jsonl.gz"


@pytest.fixture(scope="module")
def book():
    return read_records(str(require_data(BOOK)))


@pytest.fixture(scope="module")
def fmt(book):
    texts = [r["instruction"] + " " + r["input"] + " " + r["chosen"] + " " + r["rejected"] for r in book]
    return ChatFormat(train_tokenizer(texts, TokenizeConfig(vocab_size=1024)))


def _whole(fmt: ChatFormat, prompt: list[dict], answer: str) -> list[int]:
    return fmt.render(prompt + [{"role": "assistant", "content": answer}])[0]


def test_the_books_pairs_are_the_chat_format_of_the_whole_conversation(book, fmt):
    pairs, skipped = render_pairs(book, fmt, BOOK)
    assert len(pairs) == 1100 and not skipped
    r, p = book[1], pairs[1]
    user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
    prompt = [{"role": "user", "content": user}]
    assert p.prompt + p.chosen == _whole(fmt, prompt, r["chosen"])
    assert p.prompt + p.rejected == _whole(fmt, prompt, r["rejected"])
    assert p.prompt[-1] == fmt.role_id["assistant"] and p.chosen[-1] == p.rejected[-1] == fmt.end_id


def test_hh_rlhf_transcripts_split_at_the_last_answer_and_bad_ones_are_named(fmt):
    path = str(require_data(HH))
    pairs, skipped = read_pairs([path], fmt, skip_bad=True)
    assert len(pairs) == 2307 and len(skipped) == 5  # 5 pairs differ before their last answer
    assert skipped[0].startswith(f"{path}: record 1255: `chosen` and `rejected` differ at turn 4")
    first = read_records(path)[0]
    chosen = transcript_messages(first["chosen"])
    assert pairs[0].prompt + pairs[0].chosen == fmt.render(chosen)[0]
    assert len(chosen) > 2 and chosen[0]["role"] == "user" and chosen[-1]["role"] == "assistant"
    with pytest.raises(DataError, match="record 1255: `chosen` and `rejected` differ"):
        read_pairs([path], fmt)


@pytest.mark.parametrize(
    "record, why",
    [
        ([1], "not a JSON object"),
        ({"instruction": "x", "chosen": "a"}, "`rejected` is missing"),
        ({"instruction": "x", "chosen": "a", "rejected": 3}, "`rejected` is not a string"),
        ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "`prompt`: message 0"),
        ({"chosen": "Human: hi", "rejected": "\n\nHuman: hi\n\nAssistant: no"}, "`chosen`: a transcript starts"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"}, "the same"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: ho\n\nAssistant: a"}, "differ at turn 1"),
    ],
)
def test_bad_pairs_say_which_record_and_why(fmt, tmp_path, record, why):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=f"pairs.jsonl: record 2: .*{why}"):
        read_pairs([str(path)], fmt)


def test_fit_keeps_the_end_of_the_prompt_then_cuts_the_answers():
    pair = Pair(list(range(10)), [100] * 4, [200] * 6, "r")
    assert fit(pair, 16) == (list(range(10)), [100] * 4, [200] * 6, False)
    prompt, chosen, rejected, cut = fit(pair, 12)
    assert prompt == list(range(4, 10)) and chosen == [100] * 4 and rejected == [200] * 6 and cut
    prompt, chosen, rejected, cut = fit(pair, 8)  # the prompt keeps half the room, the answers are cut
    assert prompt == list(range(6, 10)) and chosen == [100] * 4 and rejected == [200] * 4 and cut
