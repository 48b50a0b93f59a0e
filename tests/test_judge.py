"""The LLM judge (model/judge.py) through our own `crawl2llm serve`: a tiny model tuned with our SFT
to answer every prompt with "87" is the judge; the sft stage's evaluation and `crawl2llm judge`
read its replies over real HTTP. Replies that are not a score are counted, an endpoint that
cannot be reached is an error naming it."""

from __future__ import annotations

import json

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.judge import Judge, JudgeError, judge_answers, parse_score
from model.sft import SFTConfig, sft
from pipeline.tokenize import TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data
from tests.fixtures.serve import serving

INSTRUCT = "instruct/rasbt-ch07-instruction-data.json"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("87", (87.0, "ok")),
        (" Score: 92.5\n", (92.5, "ok")),
        ("100", (100.0, "ok")),
        ("I'd say 140", (None, "out_of_range")),
        ("-3", (None, "out_of_range")),
        ("excellent", (None, "unparsable")),
        ("", (None, "unparsable")),
    ],
)
def test_replies_parse_to_a_score_or_say_why_not(reply, expected):
    assert parse_score(reply) == expected


def _sft_config(data, **eval_fields) -> SFTConfig:
    return SFTConfig.model_validate(
        {
            "data": {"files": [str(data)], "batch_size": 8, "val_fraction": 0.1, "test_fraction": 0.2},
            "optimizer": {"learning_rate": 3e-3},
            "schedule": {"max_steps": 60, "warmup_steps": 5, "min_lr": 3e-4},
            "eval": {"interval": 60, "answer_tokens": 6, "prompts": 4, "samples": 1, "before": False, **eval_fields},
            "checkpoint": {"interval": 0, "minutes": 0, "async_save": False},
            "launch": {"device": "cpu"},
        }
    )


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """Our serve, on a tiny GPT our SFT taught to answer "87" to anything."""
    folder = tmp_path_factory.mktemp("judge")
    records = json.loads(require_data(INSTRUCT).read_text())[:40]
    tok = train_tokenizer([r["instruction"] + " " + r["output"] for r in records] * 3, TokenizeConfig(vocab_size=400))
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=256, n_layer=1, n_head=2, n_embd=32)
    torch.save(
        {"model": GPT(cfg).state_dict(), "config": cfg.model_dump(), "vocab_size": cfg.vocab_size}, folder / "base.pt"
    )
    data = folder / "always87.json"
    data.write_text(
        json.dumps([{"instruction": r["instruction"], "input": r["input"], "output": "87"} for r in records])
    )
    sft(str(folder / "base.pt"), str(folder), _sft_config(data), str(folder / "judge"))
    tuned = folder / "judge"
    with serving(str(tuned / "model.pt"), "--tokenizer", str(tuned / "tokenizer" / "tokenizer.json"), "--name", "judge87") as url:  # fmt: skip
        yield url + "/v1", folder, records


def test_the_judge_scores_through_our_serve(judge_server):
    url, _, records = judge_server
    items = [{"prompt": r["instruction"], "reference": r["output"], "answer": "no idea", "record": str(i)} for i, r in enumerate(records[:3])]  # fmt: skip
    result = judge_answers(Judge(url, "judge87"), items)
    assert result["items"] == 3 and result["scored"] == 3 and result["mean_score"] == 87.0
    assert [s["reply"].strip() for s in result["per_item"]] == ["87"] * 3
    with pytest.raises(JudgeError, match="answered 404: .*model"):
        judge_answers(Judge(url, "another-model"), items[:1])
    with pytest.raises(JudgeError, match=r"judge http://127.0.0.1:9/v1/chat/completions cannot be reached"):
        judge_answers(Judge("http://127.0.0.1:9/v1", "x", timeout=2), items[:1])
    with pytest.raises(JudgeError, match=r"\$NO_SUCH_KEY_VAR \(the API key\) is not set"):
        judge_answers(Judge(url, "judge87", api_key_env="NO_SUCH_KEY_VAR"), items[:1])


def test_sft_evaluation_is_judged_when_a_judge_is_named(judge_server, tmp_path):
    """An SFT run whose config names our serve as judge: the tuned model's 4 held-out answers are
    scored (all 87 by this judge), in the summary beside the loss."""
    url, folder, records = judge_server
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(records))
    c = _sft_config(data, judge_url=url, judge_model="judge87")
    c = c.model_copy(update={"schedule": c.schedule.model_copy(update={"max_steps": 4})})
    summary = sft(str(folder / "base.pt"), str(folder), c, str(tmp_path / "tuned"))
    judged = summary["after"]["judge"]
    assert judged["items"] == 4 and judged["mean_score"] == 87.0 and judged["judge"]["model"] == "judge87"
    assert [x["record"] for x in judged["per_item"]] == [f"{data}: record {n}" for n in range(29, 33)]
