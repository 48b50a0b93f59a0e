"""Labelled texts (model/classify_data.py): the SMS Spam Collection balanced and split as the book
does it, the other formats, and errors naming the line."""

from __future__ import annotations

import json

import pytest

from model.classify_data import balance, class_counts, encode, read_labelled, split
from model.sft_data import DataError
from pipeline.tokenize import TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data

SMS = "classification/SMSSpamCollection.tsv"


def test_sms_spam_balanced_and_split_as_the_book_does():
    texts = read_labelled(str(require_data(SMS)))
    assert len(texts) == 5574 and class_counts(texts) == {"ham": 4827, "spam": 747}
    balanced = balance(texts, seed=123)
    assert class_counts(balanced) == {"ham": 747, "spam": 747}
    assert balance(texts, seed=123) == balanced and balance(texts, seed=1) != balanced
    train, val, test = split(balanced, (0.7, 0.1, 0.2), seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # the book's sizes
    assert not {t.where for t in train} & {t.where for t in test}
    tok = train_tokenizer([t.text for t in train], TokenizeConfig(vocab_size=1024))
    ids, labels, cut = encode(test, tok, ["ham", "spam"], max_tokens=32)
    assert len(ids) == 300 and set(labels) == {0, 1} and max(map(len, ids)) == 32 and cut > 0
    assert tok.decode(ids[labels.index(1)]) in test[labels.index(1)].text


def test_csv_and_jsonl_and_bad_lines_are_named(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\nbad day,neg\n')
    assert [(t.text, t.label) for t in read_labelled(str(tmp_path / "a.csv"))] == [
        ("hello, world", "pos"),
        ("bad day", "neg"),
    ]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x", "label": 1}) + "\n" + json.dumps({"text": 3}) + "\n")
    with pytest.raises(DataError, match=r"b.jsonl: record 2: `text` is missing or not a string"):
        read_labelled(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.tsv").write_text("spam\tWin now\nno tab here\n")
    with pytest.raises(DataError, match=r"c.tsv: line 2: expected `label<TAB>text`"):
        read_labelled(str(tmp_path / "c.tsv"))
    (tmp_path / "d.csv").write_text("body,label\nx,y\n")
    with pytest.raises(DataError, match=r"d.csv: no column text"):
        read_labelled(str(tmp_path / "d.csv"))


def test_classification_report_counts_by_hand():
    from model.classify_metrics import classification_report, report_markdown

    truth = [0, 0, 0, 1, 1, 2]
    said = [0, 1, 0, 1, 0, 2]
    r = classification_report(truth, said, ["ham", "spam", "other"])
    assert r["accuracy"] == 4 / 6 and r["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert r["per_class"]["ham"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    assert r["per_class"]["spam"]["precision"] == 0.5 and r["per_class"]["other"]["f1"] == 1.0
    text = report_markdown(r)
    assert "Accuracy **66.67%** of 6 examples." in text and "| spam | 1 | 1 | 0 |" in text
