"""The class head (model/classifier.py): pooling, which weights train, and export to transformers'
*ForSequenceClassification with the same logits."""

from __future__ import annotations

import pytest
import torch

from model.classifier import Classifier, pad_batch, set_trainable
from model.export import export_classifier
from model.gpt import GPT, GPT2, MODERN, GPTConfig
from pipeline.tokenize import PAD, TokenizeConfig, train_tokenizer

TEXTS = [
    "Win a free prize now, call today!",
    "Are we still meeting for lunch?",
    "URGENT: your account",
    "ok see you at 5",
    "Naïve café 日本語 🙂",
] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, TokenizeConfig(vocab_size=320, min_frequency=1))


def _classifier(tokenizer, arch, pooling="last"):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=64, **arch))
    return Classifier(gpt, 3, pooling).eval()


def test_padding_does_not_change_a_texts_logits(tokenizer):
    for pooling in ("last", "mean"):
        clf = _classifier(tokenizer, GPT2, pooling)
        ids = [tokenizer.encode(t).ids for t in TEXTS[:5]]
        pad = tokenizer.token_to_id(PAD)
        with torch.no_grad():
            together = clf(*pad_batch(ids, pad))
            alone = torch.cat([clf(*pad_batch([x], pad)) for x in ids])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_trainable_choices(tokenizer):
    clf = _classifier(tokenizer, MODERN)
    head = clf.head.weight.numel()
    assert set_trainable(clf, "head") == head
    last = sum(p.numel() for p in clf.gpt.blocks[-1].parameters()) + clf.gpt.ln_f.weight.numel()
    assert set_trainable(clf, 1) == head + last
    assert not any(p.requires_grad for p in clf.gpt.blocks[0].parameters())
    assert set_trainable(clf, "all") == sum(p.numel() for p in clf.parameters())
    with pytest.raises(ValueError, match="'head', 'all' or 0..2"):
        set_trainable(clf, 3)


@pytest.mark.parametrize(
    "arch, name",
    [
        (GPT2, "GPT2ForSequenceClassification"),
        (MODERN, "Qwen3ForSequenceClassification"),
        ({**MODERN, "qk_norm": False}, "LlamaForSequenceClassification"),
    ],
)
def test_export_gives_transformers_the_same_logits(tokenizer, tmp_path, arch, name):
    from transformers import AutoModelForSequenceClassification

    clf = _classifier(tokenizer, arch)
    tok_file = tmp_path / "tokenizer.json"
    tokenizer.save(str(tok_file))
    config = export_classifier(clf, str(tok_file), ["ham", "spam", "other"], str(tmp_path / "hf"))
    assert config["architectures"] == [name] and config["id2label"] == {0: "ham", 1: "spam", 2: "other"}
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    ids = [tokenizer.encode(t).ids for t in TEXTS[:5]]
    idx, lengths = pad_batch(ids, tokenizer.token_to_id(PAD))
    with torch.no_grad():
        ours = clf(idx, lengths)
        theirs = hf(input_ids=idx, attention_mask=(torch.arange(idx.size(1)) < lengths[:, None]).long()).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no transformers twin"):
        export_classifier(_classifier(tokenizer, arch, "mean"), str(tok_file), ["a", "b", "c"], str(tmp_path / "x"))
