"""Benchmark scoring: every eval file in ../shared/data/eval loads (HellaSwag in JSONL and in
llama.cpp's text layout, PIQA, ARC-Easy/Challenge, WinoGrande, WSC, LAMBADA, COPA) with lm-eval's
prompts, scores on its real items with a tiny model, lm-eval's token split, batched scores equal
one-by-one scores, and acc/acc_norm/LAMBADA follow their definitions."""

from __future__ import annotations

import gzip
import json
import math

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from model.gpt import GPT, MODERN, GPTConfig
from model.tasks import Item, accuracy, encode_pair, evaluate_task, load_task, score_pairs
from pipeline.tokenize import TokenizeConfig, sample_texts, train_tokenizer

FILES = {
    "hellaswag_val.klosax-preprocessed.jsonl.gz": 10042,
    "hellaswag_val_full.txt.bz2": 10042,
    "llm-foundry/piqa.jsonl": 1838,
    "llm-foundry/arc_easy.jsonl": 2376,
    "llm-foundry/arc_challenge.jsonl": 1172,
    "llm-foundry/winogrande.jsonl": 1267,
    "llm-foundry/winograd_wsc.jsonl": 273,
    "llm-foundry/lambada_openai.jsonl": 5153,
    "llm-foundry/copa.jsonl": 100,
    "llm-foundry/hellaswag_small.jsonl": 4,
}
# The first item of each file as lm-eval prompts it: (context of the gold choice, gold continuation).
FIRST = {
    "llm-foundry/piqa.jsonl": (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        " Provide the guinea pig with a cage full of a few inches of bedding made of "
        "ripped paper strips, you will also need to supply it with a water bottle and "
        "a food dish.",
    ),
    "llm-foundry/arc_easy.jsonl": (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.",
    ),
    "llm-foundry/arc_challenge.jsonl": (
        "Question: An astronomer observes that a planet rotates faster after a "
        "meteorite impact. Which is the most likely effect of this increase "
        "in rotation?\nAnswer:",
        " Planetary days will become shorter.",
    ),
    "llm-foundry/copa.jsonl": ("The man turned on the faucet therefore", " water flowed from the spout."),
    "llm-foundry/winogrande.jsonl": (
        "Sarah was a much better surgeon than Maria so Maria",
        " always got the easier cases.",
    ),
    "hellaswag_val_full.txt.bz2": (
        "Roof shingle removal: A man is sitting on a roof. he",
        " starts pulling up roofing on a roof.",
    ),
    "llm-foundry/lambada_openai.jsonl": ("In my palm is a clear stone", " signs"),
}


@pytest.fixture(scope="module")
def tokenizer():
    from tests.fixtures.data import require_data

    with gzip.open(require_data("text/gutenberg-top-authors-subset.jsonl.gz"), "rt") as f:
        text = json.loads(f.readline())["text"][:300_000]
    config = TokenizeConfig(vocab_size=1024, sample_chars=300_000)
    return train_tokenizer(sample_texts([pa.table({"text": [text]})], config), config)


@pytest.mark.parametrize("name", FILES)
def test_every_eval_file_loads(name, shared_data):
    items = load_task(str(shared_data(f"eval/{name}")))
    assert len(items) == FILES[name]
    first = items[0]
    if isinstance(first, tuple):
        assert first[1].startswith(" ") and not first[0].endswith(" ")
    else:
        assert 0 <= first.gold < len(first.continuations) == len(first.contexts) == len(first.choices)
        assert all(k == " " + c or k.endswith(c) for k, c in zip(first.continuations, first.choices))
    if name.startswith("hellaswag_val"):
        assert first.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he" and first.gold == 3
    if name in FIRST:
        context, continuation = FIRST[name]
        if isinstance(first, tuple):
            assert first[0].startswith(context) and first[1] == continuation
        else:
            assert (first.contexts[first.gold], first.continuations[first.gold]) == (context, continuation)


def test_hellaswag_text_layout_equals_jsonl(shared_data):
    """llama.cpp's six-lines-per-item file and the JSONL made from it give the same 10,042 items."""
    text = load_task(str(shared_data("eval/hellaswag_val_full.txt.bz2")))
    jsonl = load_task(str(shared_data("eval/hellaswag_val.klosax-preprocessed.jsonl.gz")))
    assert text == jsonl


def _loglik(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """One pair scored alone, as lm-eval does: the last block_size + 1 tokens, the continuation's end."""
    block = model.config.block_size
    seq = (ctx + cont)[-(block + 1) :]
    cont = cont[-(len(seq) - 1) :]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0][0].float(), -1)[len(seq) - 1 - len(cont) :]
    return float(logp[range(len(cont)), cont].sum()), logp.argmax(-1).tolist() == cont


@pytest.mark.parametrize("name", [n for n in FILES if n != "llm-foundry/hellaswag_small.jsonl"])
def test_each_format_scores_real_items(name, tokenizer, shared_data):
    """The first items of every real file, scored batched, give the metrics that one-by-one log
    likelihoods give: acc/acc_norm for multiple choice, last-word acc and per-word perplexity for LAMBADA."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=96, n_layer=2, n_head=2, n_embd=32, **MODERN)).eval()
    items = load_task(str(shared_data(f"eval/{name}")), limit=5)
    res = evaluate_task(model, tokenizer, items, batch_size=3, device="cpu")
    assert res["items"] == 5
    if isinstance(items[0], tuple):
        alone = [_loglik(model, *encode_pair(tokenizer, c, w)) for c, w in items]
        assert res["acc"] == sum(g for _, g in alone) / 5
        assert res["perplexity"] == pytest.approx(math.exp(-sum(s for s, _ in alone) / 5), rel=1e-4)
        assert set(res) == {"items", "acc", "perplexity"}
    else:
        alone = [
            [_loglik(model, *encode_pair(tokenizer, c, k))[0] for c, k in zip(it.contexts, it.continuations)]
            for it in items
        ]
        assert res == accuracy(items, alone)


def test_bad_file_is_named(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"query": "q", "choices": ["a"], "gold": 0}\n{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"x.jsonl line 2: unknown record layout with keys \['foo'\]"):
        load_task(str(tmp_path / "x.jsonl"))


def test_token_split_follows_lm_eval(tokenizer):
    ctx, cont = encode_pair(tokenizer, "The cat sat on the", " mat.")
    assert tokenizer.decode(ctx) == "The cat sat on the" and tokenizer.decode(cont) == " mat."
    moved = encode_pair(tokenizer, "The cat sat on the ", "mat.")  # trailing space moves to the continuation
    assert moved == (ctx, cont)
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert encode_pair(tokenizer, "", " mat.") == ([eot], cont)


def test_batched_scores_equal_one_by_one(tokenizer, shared_data):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=96, n_layer=2, n_head=2, n_embd=32, **MODERN)).eval()
    items = load_task(str(shared_data("eval/llm-foundry/piqa.jsonl")), limit=6)
    pairs = [encode_pair(tokenizer, c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
    assert any(len(c) + len(k) > 97 for c, k in pairs)  # some are cut on the left
    assert all(len(k) < 97 for c, k in pairs)
    batched = score_pairs(model, pairs, batch_size=5, device="cpu")
    for (ctx, cont), (score, greedy) in zip(pairs, batched):
        alone, alone_greedy = _loglik(model, ctx, cont)
        assert score == pytest.approx(alone, abs=1e-4)
        assert greedy == alone_greedy


def test_acc_acc_norm_and_lambada(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    item = Item(["Q:"] * 2, [" a", " a b c d e f"], gold=1, choices=["a", "a b c d e f"])
    pairs = [encode_pair(tokenizer, "Q:", k) for k in item.continuations]
    (s0, _), (s1, _) = score_pairs(model, pairs, 2, "cpu")
    res = evaluate_task(model, tokenizer, [item], 2, "cpu")
    assert res["acc"] == float(s1 > s0) and res["acc_norm"] == float(s1 / 11 > s0 / 1)
    lam = [("The cat sat on the", " mat"), ("Once upon a", " time")]
    out = evaluate_task(model, tokenizer, lam, 2, "cpu")
    scores = score_pairs(model, [encode_pair(tokenizer, *p) for p in lam], 2, "cpu")
    assert out["perplexity"] == pytest.approx(math.exp(-sum(s for s, _ in scores) / 2))  # per word, as lm-eval
    assert out["acc"] == sum(g for _, g in scores) / 2
