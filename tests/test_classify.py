"""Classification fine-tuning (model/classify.py) on the real SMS Spam Collection: exact resume,
head-only training, predict, the metrics, and a tiny run that beats the majority class."""

from __future__ import annotations

import json
import random

import pytest
import torch

from model.classify import CHECKPOINT, CLASSIFIER, ClassifyConfig, classify, predict
from model.classify_data import read_labelled
from model.classify_metrics import classification_report, report_markdown
from model.gpt import GPT, GPTConfig
from pipeline.tokenize import TokenizeConfig, train_tokenizer
from tests.fixtures.data import require_data
from tests.fixtures.train import kill_at_step, run_killed

SMS = "classification/SMSSpamCollection.tsv"
SPAM = [
    "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! "
    "To claim call 09061701461. Claim code KL341. Valid 12 hours only.",
    "FREE entry in 2 a weekly comp to win FA Cup final tkts. Text FA to 87121 to receive entry, T&C's apply",
]
HAM = ["Ok lar... Joking wif u oni...", "I'll be home soon, do you want me to pick up anything for dinner?"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster, and far faster on a shared machine (no spinning on a busy core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small GPT (a train output's model.pt layout) and a BPE trained on the SMS texts."""
    sms = require_data(SMS)
    folder = tmp_path_factory.mktemp("base")
    tokenizer = train_tokenizer([t.text for t in read_labelled(str(sms))], TokenizeConfig(vocab_size=512))
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=512, n_layer=2, n_head=2, n_embd=32, block_size=128))
    torch.save({"model": gpt.state_dict(), "config": gpt.config.model_dump(), "vocab_size": 512}, folder / "model.pt")
    return {"model": str(folder / "model.pt"), "tokenizer": str(folder), "data": str(sms), "gpt": gpt}


def _config(data: str, **groups) -> ClassifyConfig:
    c = ClassifyConfig(
        data_file=data,
        trainable="all",
        optimizer={"learning_rate": 3e-3, "weight_decay": 0.1},
        schedule={"max_steps": 12, "warmup_steps": 2, "min_lr": 3e-4},
        data={"batch_size": 8},
        eval={"interval": 6, "batches": 2},
        log={"interval": 3},
        checkpoint={"interval": 4, "minutes": 0},
        launch={"device": "cpu"},
    )
    return c.updated(**groups)


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_resume_after_a_stop_gives_bitwise_the_same_weights(base, tmp_path):
    c = _config(base["data"])
    whole = classify(base["model"], base["tokenizer"], c, str(tmp_path / "a"))
    stopped = classify(base["model"], base["tokenizer"], c, str(tmp_path / "b"), stop_after=7)
    assert stopped["steps"] == 7 and not stopped["completed"] and not (tmp_path / "b" / CLASSIFIER).exists()
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["step"] == 4  # resumes from here
    resumed = classify(base["model"], base["tokenizer"], c, str(tmp_path / "b"))
    a, b = _weights(tmp_path / "a" / CLASSIFIER), _weights(tmp_path / "b" / CLASSIFIER)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == whole["history"] and resumed["test"] == whole["test"]
    assert [h["step"] for h in whole["history"] if "val_accuracy" in h] == [6, 12]
    with pytest.raises(ValueError, match="another run .*optimizer.learning_rate"):
        classify(base["model"], base["tokenizer"], c.updated(optimizer={"learning_rate": 1e-3}), str(tmp_path / "b"))


def test_sigkill_at_a_random_step_then_resume_gives_bitwise_the_same_weights(base, tmp_path):
    """A real SIGKILL in another process at a random step (checkpoints every 4 steps), resumed here."""
    c = _config(base["data"], log={"interval": 1})
    whole = classify(base["model"], base["tokenizer"], c, str(tmp_path / "a"))
    step = random.randrange(1, c.schedule.max_steps)
    args = {"base": base["model"], "tok": base["tokenizer"], "config": c.model_dump(), "out": str(tmp_path / "b")}
    run_killed(
        "torch.set_num_threads(1)\n"
        "from model.classify import ClassifyConfig, classify\n"
        "classify(a['base'], a['tok'], ClassifyConfig.model_validate(a['config']), a['out'], log=log)\n",
        args,
        kill_at_step(step),
    )
    assert not (tmp_path / "b" / CLASSIFIER).exists(), f"killed at step {step}"
    resumed = classify(base["model"], base["tokenizer"], c, str(tmp_path / "b"))
    a, b = _weights(tmp_path / "a" / CLASSIFIER), _weights(tmp_path / "b" / CLASSIFIER)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"killed at step {step}"
    assert resumed["test"] == whole["test"]


def test_head_only_training_changes_only_the_head(base, tmp_path):
    c = _config(base["data"], trainable="head", schedule={"max_steps": 5, "warmup_steps": 1})
    summary = classify(base["model"], base["tokenizer"], c, str(tmp_path))
    assert summary["trainable_params"] == 32 * 2
    after, before = _weights(tmp_path / CLASSIFIER), base["gpt"].state_dict()
    assert all(torch.equal(after[f"gpt.{k}"], v) for k, v in before.items())
    assert after["head.weight"].shape == (2, 32)
    assert summary["history"][-1]["loss"] != summary["history"][0]["loss"]  # the head did learn


def test_tiny_sms_run_beats_the_majority_class_and_predicts(base, tmp_path, capsys):
    """Balanced set: the majority class is 50%. The full set's majority (ham) is 86.6%."""
    c = _config(base["data"], schedule={"max_steps": 260, "warmup_steps": 10}, eval={"interval": 130, "batches": 20})
    summary = classify(base["model"], base["tokenizer"], c, str(tmp_path))
    test = summary["test"]
    assert summary["split"]["test"] == {"ham": 150, "spam": 150} and test["examples"] == 300
    assert test["accuracy"] > 0.8, test
    assert summary["max_tokens"] == 128 and summary["texts_cut"]["train"] < 50, summary["texts_cut"]
    out = predict(str(tmp_path), SPAM + HAM)
    assert [p["label"] for p in out] == ["spam", "spam", "ham", "ham"], out
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in out)
    from flows.cli import main

    assert main(["predict", str(tmp_path), SPAM[0], HAM[0]]) == 0  # crawl2llm predict: one JSON line per text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["text"], x["label"]) for x in lines] == [(SPAM[0], "spam"), (HAM[0], "ham")]


def test_metrics_on_a_known_confusion():
    # 10 texts: 4 ham right, 1 ham called spam; 3 spam right, 2 spam called ham
    truth = [0] * 5 + [1] * 5
    predicted = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    r = classification_report(truth, predicted, ["ham", "spam"])
    assert r["confusion"] == [[4, 1], [2, 3]] and r["accuracy"] == 0.7
    spam = r["per_class"]["spam"]
    assert spam["precision"] == 3 / 4 and spam["recall"] == 3 / 5 and spam["support"] == 5
    assert spam["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    ham = r["per_class"]["ham"]
    assert ham["precision"] == 4 / 6 and ham["recall"] == 4 / 5
    assert r["macro"]["recall"] == pytest.approx(0.7)
    table = report_markdown(r)
    assert "Accuracy **70.00%** of 10 examples." in table and "| spam | 2 | 3 |" in table


def test_config_errors(base):
    with pytest.raises(ValueError, match="one process"):
        ClassifyConfig(launch={"nproc_per_node": 2, "parallel": "ddp"})
    with pytest.raises(ValueError, match="split must be"):
        ClassifyConfig(split=(0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="needs data_file"):
        classify(base["model"], base["tokenizer"], ClassifyConfig(launch={"device": "cpu"}), "/nonexistent/x")


def test_export_of_a_classify_output_gives_predicts_probabilities(base, tmp_path):
    """`crawl2llm export` of a classify output: transformers' *ForSequenceClassification with the
    labels, whose probabilities for new texts are predict()'s."""
    import transformers

    from flows.cli import main

    c = _config(base["data"], schedule={"max_steps": 3, "warmup_steps": 1})
    classify(base["model"], base["tokenizer"], c, str(tmp_path / "out"))
    assert main(["export", str(tmp_path / "out"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.id2label == {0: "ham", 1: "spam"}
    ours = predict(str(tmp_path / "out"), SPAM + HAM)
    for text, mine in zip(SPAM + HAM, ours):
        with torch.no_grad():
            probs = hf(**tok(text, return_tensors="pt")).logits.softmax(-1)[0]
        assert probs.tolist() == pytest.approx([mine["probabilities"][k] for k in ("ham", "spam")], abs=1e-5)
    assert main(["export", str(tmp_path / "nothing" / "classify" / "x"), str(tmp_path / "hf2")]) == 2
