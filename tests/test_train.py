"""Training and evaluation of a tiny GPT on real Gutenberg tokens: exact resume after a stop or a
real SIGKILL, the LR schedule, gradient accumulation, config checks, and deterministic evaluation."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from model.data import TokenStream
from model.evaluate import EvalConfig, describe, evaluate, load_checkpoint, load_model, token_bytes
from model.gpt import GPT, MODERN
from model.guard import TrainingDiverged
from model.train import CHECKPOINT, FLAT_KEYS, GROUPS, TrainConfig, lr_at, make_optimizer, train
from pipeline.tokenize import EOT
from tests.fixtures.train import CONFIG, losses, run, sha, train_killed


def test_run_learns_and_reports(baseline, corpus):
    s, events = baseline["summary"], baseline["events"]
    assert s["steps"] == 40 and s["completed"] is True
    assert s["tokens_seen"] == 40 * 8 * 32
    assert json.loads(json.dumps(s)) == s  # JSON-ready
    steps = [e for e in events if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, 41))
    assert set(steps[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"}
    assert steps[0]["mfu"] is None  # a CPU has no peak in the table: "unknown", never a made-up figure
    assert [e["step"] for e in events if "val_loss" in e] == [10, 20, 30, 40]
    # The loss curve: the train loss of every logged step, the validation loss at each evaluation.
    assert [(h["step"], h["loss"]) for h in s["history"]] == [(e["step"], e["loss"]) for e in steps]
    assert [h["step"] for h in s["history"] if "val_loss" in h] == [10, 20, 30, 40]
    assert s["final_val_loss"] == s["history"][-1]["val_loss"] and s["final_train_loss"] == steps[-1]["loss"]
    # Real learning: from uniform (ln 512 = 6.24) to well below it, on held-out text too.
    assert steps[0]["loss"] > 6.0 and s["final_train_loss"] < 5.6 and s["final_val_loss"] < 5.6
    assert s["history"][9]["val_loss"] > s["final_val_loss"]
    saved = torch.load(baseline["out"] / "model.pt", weights_only=True)
    assert saved["vocab_size"] == corpus["vocab"] and saved["config"]["n_embd"] == 32
    assert s["params"] == load_model(str(baseline["out"] / "model.pt")).num_params()
    assert set(s["timing"]) == {"seconds", "steps_this_run", "tokens_per_s", "device", "peak_flops", "mfu"}
    assert s["timing"]["device"] == "cpu" and s["timing"]["mfu"] is None and s["skipped_steps"] == 0
    model = load_model(str(baseline["out"] / "model.pt"))
    assert s["flops_per_token"] == model.flops_per_token(32)


def test_stop_and_resume_is_bitwise_identical(baseline, corpus, tmp_path):
    """Stopped after step 25 (last checkpoint at 20), then resumed: same losses, same model.pt bytes."""
    first, ev1 = run(corpus, tmp_path, stop_after=25)
    assert first["steps"] == 25 and first["completed"] is False
    assert not (tmp_path / "model.pt").exists()
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 20
    second, ev2 = run(corpus, tmp_path)
    assert [e["step"] for e in ev2 if "loss" in e] == list(range(21, 41))
    assert losses(ev1 + ev2) == losses(baseline["events"])
    assert [e["lr"] for e in ev2 if "loss" in e] == [e["lr"] for e in baseline["events"] if "loss" in e][20:]
    strip = lambda s: {k: v for k, v in s.items() if k != "timing"}  # noqa: E731
    assert strip(second) == strip(baseline["summary"])
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")
    # Running a finished run again trains nothing and rewrites the same bytes.
    third, ev3 = run(corpus, tmp_path)
    assert not ev3 and strip(third) == strip(baseline["summary"])
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")


def test_resume_after_a_real_kill(baseline, corpus, tmp_path):
    """SIGKILL in another process at step 23 or the first logged step after the step-20 checkpoint
    committed (a background save may take a few steps), resume here: the same model.pt as the
    uninterrupted run."""
    train_killed(
        corpus,
        tmp_path,
        "saved = []\n"
        "def log(e):\n"
        "    if e.get('checkpoint') and e['step'] == 20:\n"
        "        saved.append(20)\n"
        "    if e.get('step', 0) >= 23 and 'loss' in e and saved:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 20
    assert not (tmp_path / "model.pt").exists()
    summary, events = run(corpus, tmp_path)
    assert [e["step"] for e in events if "loss" in e] == list(range(21, 41))
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 20}
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")


def test_lr_schedule_depends_on_the_plan_only():
    c = TrainConfig(optimizer={"learning_rate": 1e-3}, schedule={"max_steps": 100, "warmup_steps": 10, "min_lr": 1e-4})
    lrs = [lr_at(s, c) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay
    assert lrs[55] == pytest.approx((1e-3 + 1e-4) / 2)  # halfway down the cosine
    assert lr_at(100, c) == pytest.approx(1e-4) and lr_at(500, c) == pytest.approx(1e-4)
    assert lr_at(0, c.updated(schedule={"warmup_steps": 0})) == pytest.approx(1e-3)
    # Warmup-stable-decay: flat at the peak, then linear to min_lr over the last 20% of the steps.
    wsd = c.updated(schedule={"decay": "wsd", "decay_fraction": 0.2})
    lrs = [lr_at(s, wsd) for s in range(101)]
    assert lrs[:10] == [lr_at(s, c) for s in range(10)]
    assert all(lr == pytest.approx(1e-3) for lr in lrs[9:81])
    assert lrs[90] == pytest.approx((1e-3 + 1e-4) / 2) and lrs[100] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101]))


def test_weight_decay_on_matrices_only():
    c = CONFIG.updated(model={"bias": True})
    model = GPT(c.gpt_config(512))
    decay, no_decay = make_optimizer(model, c, "cpu").param_groups
    assert decay["weight_decay"] == c.optimizer.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.tok_emb.weight for p in decay["params"])


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    """4 x 2 micro-batches draw the same windows as one batch of 8, so training matches closely."""
    short = CONFIG.updated(schedule={"max_steps": 8}, eval={"interval": 4})
    big, ev_big = run(corpus, tmp_path / "big", short)
    acc, ev_acc = run(corpus, tmp_path / "acc", short.updated(data={"batch_size": 4, "grad_accum_steps": 2}))
    assert acc["tokens_seen"] == big["tokens_seen"]
    for a, b in zip(losses(ev_acc).values(), losses(ev_big).values()):
        assert a == pytest.approx(b, rel=1e-4)
    wa = torch.load(tmp_path / "acc" / "model.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "big" / "model.pt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wb)


def test_bfloat16_autocast_on_cpu(corpus, tmp_path):
    s, _ = run(
        corpus, tmp_path, CONFIG.updated(schedule={"max_steps": 3}, launch={"dtype": "bfloat16"}, eval={"interval": 3})
    )
    assert s["steps"] == 3 and math.isfinite(s["final_train_loss"]) and math.isfinite(s["final_val_loss"])


def test_resume_refuses_a_changed_config(baseline, corpus, tmp_path):
    ten = CONFIG.updated(schedule={"max_steps": 10})
    run(corpus, tmp_path, ten)
    with pytest.raises(
        ValueError, match=r"another config \(optimizer.learning_rate: 0.003 -> 0.001, schedule.max_steps: 10 -> 12\)"
    ):
        run(corpus, tmp_path, CONFIG.updated(schedule={"max_steps": 12}, optimizer={"learning_rate": 1e-3}))
    with pytest.raises(ValueError, match="vocab_size: 512 -> 600"):
        train(corpus["train"], corpus["val"], 600, ten, str(tmp_path))
    # Evaluation and checkpoint cadence do not change the weights: resuming with new ones is fine.
    s, _ = run(corpus, tmp_path, ten.updated(eval={"interval": 5}))
    assert s["steps"] == 10


def test_bad_inputs_are_named(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"token id \d+ does not fit vocab_size 100: .*part-00000.arrow"):
        train(corpus["train"], corpus["val"], 100, CONFIG, str(tmp_path))
    with pytest.raises(ValueError, match=r"less than one window of block_size \+ 1 = 50001 tokens: .*val/part-00000"):
        train(
            corpus["train"],
            corpus["val"],
            corpus["vocab"],
            CONFIG.updated(model={"block_size": 50_000}),
            str(tmp_path),
        )
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError):
        TrainConfig(n_layers=3)
    with pytest.raises(ValueError):
        TrainConfig(model={"n_layers": 3})
    with pytest.raises(ValueError):
        TrainConfig(launch={"device": "tpu"})
    assert all(f.description for f in TrainConfig.model_fields.values())
    assert all(f.description for group in GROUPS.values() for f in group.model_fields.values())
    assert all(f.description for f in EvalConfig.model_fields.values())


def test_modern_architecture_resumes_bitwise_and_checkpointing_changes_nothing(corpus, tmp_path):
    """RoPE + RMSNorm + SwiGLU + QK-norm + untied head: learns, resumes bitwise after a stop, and
    activation checkpointing (recompute in backward) gives the very same losses and weights."""
    modern = CONFIG.updated(model=MODERN, schedule={"max_steps": 12}, eval={"interval": 6}, checkpoint={"interval": 5})
    whole, ev_whole = run(corpus, tmp_path / "whole", modern)
    assert ev_whole[0]["loss"] > 6.0 and whole["final_train_loss"] < ev_whole[0]["loss"] - 0.2
    run(corpus, tmp_path / "resumed", modern, stop_after=7)
    _, ev_rest = run(corpus, tmp_path / "resumed", modern)
    assert losses(ev_rest) == {k: v for k, v in losses(ev_whole).items() if k > 5}
    assert sha(tmp_path / "resumed" / "model.pt") == sha(tmp_path / "whole" / "model.pt")
    ckpt, ev_ckpt = run(corpus, tmp_path / "ckpt", modern.updated(launch={"activation_checkpointing": True}))
    assert losses(ev_ckpt) == losses(ev_whole)
    assert sha(tmp_path / "ckpt" / "model.pt") == sha(tmp_path / "whole" / "model.pt")
    saved = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    assert saved["config"]["positions"] == "rotary" and "lm_head.weight" in saved["model"]
    assert "pos_emb.weight" not in saved["model"] and "rope_cos" not in saved["model"]


def test_loss_guard_skips_or_stops_a_diverging_run(corpus, tmp_path):
    """An absurd learning rate blows the loss up: 'stop' names the step and the data position,
    'skip' skips updates until too many in a row, 'off' lets the run go on."""
    bad = CONFIG.updated(
        optimizer={"learning_rate": 50.0, "grad_clip": 0},
        schedule={"min_lr": 50.0, "warmup_steps": 0, "max_steps": 30},
        eval={"interval": 30},
        guard={"spike_factor": 1.5},
    )
    with pytest.raises(TrainingDiverged, match=r"step \d+: .*\(data epoch 0 window \d+\); guard.mode='stop'"):
        run(corpus, tmp_path / "stop", bad.updated(guard={"mode": "stop"}))
    with pytest.raises(TrainingDiverged, match="6 updates in a row skipped"):
        run(corpus, tmp_path / "skip", bad.updated(guard={"max_skipped": 5}))
    s, events = run(corpus, tmp_path / "off", bad.updated(guard={"mode": "off"}))
    assert s["completed"] and s["skipped_steps"] == 0 and not any(e.get("skipped") for e in events)


def test_token_bytes_count_utf8_bytes(corpus):
    tok = corpus["tokenizer"]
    sizes = token_bytes(tok)
    assert sizes[tok.token_to_id(EOT)] == 0
    text = "\n\n".join(corpus["docs"].column("text").to_pylist()[:300]) + " naïve “café” 🙂"
    ids = tok.encode(text).ids
    assert int(sizes[ids].sum()) == len(text.encode("utf-8"))


def test_evaluate_is_deterministic_and_consistent(baseline, corpus):
    model_path = str(baseline["out"] / "model.pt")
    config = EvalConfig(max_new_tokens=20, val_batches=0, batch_size=16, device="cpu")
    a = evaluate(model_path, corpus["tokenizer_path"], corpus["val"], config)
    b = evaluate(model_path, corpus["tokenizer_path"], corpus["val"], config)
    assert a == b and json.loads(json.dumps(a)) == a
    n_val = len(TokenStream(corpus["val"]))
    assert a["val_tokens"] == n_val // 33 * 32  # every window, none twice
    assert a["perplexity"] == pytest.approx(math.exp(a["val_loss"]))
    assert a["bits_per_byte"] == pytest.approx(a["val_loss"] * a["val_tokens"] / math.log(2) / a["val_bytes"])
    assert 1.5 < a["val_bytes"] / a["val_tokens"] < 4  # English BPE at vocab 512
    assert a["val_loss"] < math.log(corpus["vocab"]) - 0.5  # trained: far better than uniform
    # The training-time val_loss covered the first 4 batches of 8 windows; evaluate sees the same start.
    first = evaluate(model_path, corpus["tokenizer_path"], corpus["val"], config.model_copy(update={"val_batches": 2}))
    assert first["val_loss"] == pytest.approx(baseline["summary"]["final_val_loss"], rel=1e-5)
    assert [s["prompt"] for s in a["samples"]] == config.prompts
    assert all(isinstance(s["completion"], str) and s["completion"] for s in a["samples"])
    other = evaluate(
        model_path, corpus["tokenizer_path"], corpus["val"], config.model_copy(update={"seed": 1, "val_batches": 1})
    )
    assert other["samples"] != a["samples"]


def test_a_training_checkpoint_loads_as_a_model(baseline, corpus):
    """checkpoints/latest.pt (the whole training config, optimizer and all) gives the same network as
    model.pt, and says how far training got; evaluate takes either."""
    final, trained = load_checkpoint(str(baseline["out"] / CHECKPOINT))
    assert trained == {"step": 40, "tokens_seen": 40 * 8 * 32}
    assert load_checkpoint(str(baseline["out"] / "model.pt"))[1] == {"step": None, "tokens_seen": None}
    model = load_model(str(baseline["out"] / "model.pt"))
    assert final.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), model.state_dict().values()))
    assert describe(model) == {
        "architecture": "gpt2",
        "params": model.num_params(),
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 32,
        "vocab_size": corpus["vocab"],
    }
    config = EvalConfig(max_new_tokens=4, val_batches=2, device="cpu")
    from_ckpt = evaluate(str(baseline["out"] / CHECKPOINT), corpus["tokenizer_path"], corpus["val"], config)
    assert from_ckpt["model"]["tokens_seen"] == 40 * 8 * 32
    assert (
        from_ckpt["val_loss"]
        == evaluate(str(baseline["out"] / "model.pt"), corpus["tokenizer_path"], corpus["val"], config)["val_loss"]
    )


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found: .*missing.pt"):
        load_model(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt is not a readable model file"):
        load_model(str(tmp_path / "junk.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a crawl2llm model file"):
        load_model(str(tmp_path / "other.pt"))


def test_padded_vocab_rows_are_never_predicted_sampled_or_scored():
    """vocab_multiple 64 pads 500 ids to 512 rows. With the padded head rows made huge, a padded
    id would win every argmax and softmax: the logits have 500 columns, generation (greedy and
    sampled) never emits an id >= 500, and the loss is the same as with those rows at zero."""
    from model.generate import generate
    from model.gpt import GPTConfig

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=500, vocab_multiple=64, block_size=32, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False
        )
    ).eval()
    assert model.lm_head.weight.shape[0] == model.tok_emb.weight.shape[0] == 512
    x = torch.randint(0, 500, (4, 32))
    with torch.no_grad():
        model.lm_head.weight[500:] = 0.0
        _, loss_zero = model(x[:, :-1], x[:, 1:])
        model.lm_head.weight[500:] = 100.0 * model.lm_head.weight[:12].sign()
        logits, loss = model(x[:, :-1], x[:, 1:])
        chunked = model(x[:, :-1], x[:, 1:], loss_chunks=3)[1]
    assert logits.shape[-1] == 500 and model(x)[0].shape[-1] == 500
    assert loss == loss_zero and chunked == pytest.approx(loss.item(), rel=1e-6)
    for temperature in (0.0, 1.0):
        out = generate(model, x[:, :4], 24, temperature=temperature, generator=torch.Generator().manual_seed(1))
        assert out.max().item() < 500


def test_vocab_padding_default_and_checkpoints_from_before_it(baseline, corpus, tmp_path):
    """The default pads to a multiple of 64 (512 stays 512). A training checkpoint written before
    vocab_multiple existed (unpadded) resumes when the padded size is the same, and a resume that
    would change the rows is refused naming vocab_multiple; an old model.pt loads unpadded."""
    assert TrainConfig().model.vocab_multiple == 64 and CONFIG.gpt_config(500).padded_vocab == 512
    old = torch.load(baseline["out"] / "checkpoints" / "step-30.pt", weights_only=True)
    del old["config"]["model"]["vocab_multiple"]
    (tmp_path / "checkpoints").mkdir()
    torch.save(old, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"another config \(model.vocab_multiple: 1 -> 100\)"):
        run(corpus, tmp_path, CONFIG.updated(model={"vocab_multiple": 100}))
    _, events = run(corpus, tmp_path)
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 30}
    saved = torch.load(baseline["out"] / "model.pt", weights_only=True)
    del saved["config"]["vocab_multiple"]
    torch.save(saved, tmp_path / "old-model.pt")
    assert load_model(str(tmp_path / "old-model.pt")).config.padded_vocab == 512


def test_compile_auto_is_off_on_cpu(corpus, tmp_path, monkeypatch):
    """compile 'auto' (the default) compiles on CUDA only: a CPU run never calls torch.compile;
    compile: true does."""
    assert TrainConfig().launch.compile == "auto" and TrainConfig(launch={"compile": True}).launch.compile is True

    def refuse(*a, **k):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", refuse)
    short = CONFIG.updated(schedule={"max_steps": 2}, eval={"interval": 2}, launch={"compile": "auto"})
    assert run(corpus, tmp_path / "auto", short)[0]["completed"]
    with pytest.raises(AssertionError, match="torch.compile called"):
        run(corpus, tmp_path / "on", short.updated(launch={"compile": True}))


def test_token_maximum_is_cached_by_file_identity(corpus, tmp_path):
    """A token file's maximum id is counted once and kept by its path, size, mtime and identity:
    a doctored cache entry is what the next check reads (no pass over the tokens); touching the
    file makes it count again."""
    import os

    stream = TokenStream(corpus["train"])
    top = stream.max_token(str(tmp_path))
    assert top == max(int(c.max()) for c in stream.chunks) and top < corpus["vocab"]
    [entry] = list(tmp_path.iterdir())
    cached = json.loads(entry.read_text())
    entry.write_text(json.dumps({**cached, "max_token": 10**6}))
    assert TokenStream(corpus["train"]).max_token(str(tmp_path)) == 10**6
    st = os.stat(corpus["train"][0])
    os.utime(corpus["train"][0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    try:
        assert TokenStream(corpus["train"]).max_token(str(tmp_path)) == top
    finally:
        os.utime(corpus["train"][0], ns=(st.st_atime_ns, st.st_mtime_ns))


# The nested config of CONFIG as the flat keys of before the groups (the names checkpoints and YAML
# files written then use): every old key, and the deprecated "schedule" (the decay's name) among them.
FLAT = {
    "block_size": 32,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "batch_size": 8,
    "max_steps": 40,
    "warmup_steps": 5,
    "learning_rate": 3e-3,
    "min_lr": 3e-4,
    "eval_interval": 10,
    "eval_batches": 4,
    "checkpoint_interval": 10,
    "device": "cpu",
    "log_interval": 1,
}


def test_flat_keys_give_the_nested_config_with_a_deprecation_warning():
    """Each flat key of before the groups lands in its group, warning with the old and the new name;
    a flat key and its new place both given must agree; every old key has exactly one new place."""
    with pytest.warns(DeprecationWarning) as caught:
        flat = TrainConfig(**FLAT)
    assert flat == CONFIG and flat.model_dump() == CONFIG.model_dump()
    said = {str(w.message) for w in caught}
    assert "train.max_steps is deprecated: use train.schedule.max_steps" in said
    assert "train.eval_interval is deprecated: use train.eval.interval" in said and len(said) == len(FLAT)
    with pytest.warns(DeprecationWarning) as caught:  # "schedule" is a group too: a string is the old key
        assert TrainConfig.model_validate({"schedule": "wsd", "max_steps": 9}).schedule.decay == "wsd"
    assert "train.schedule is deprecated: use train.schedule.decay" in {str(w.message) for w in caught}
    with pytest.warns(DeprecationWarning, match="train.loss_guard is deprecated: use train.guard.mode"):
        mixed = TrainConfig(loss_guard="stop", guard={"spike_factor": 2.0}, schedule={"max_steps": 7})
    assert (mixed.guard.mode, mixed.guard.spike_factor, mixed.schedule.max_steps) == ("stop", 2.0, 7)
    with pytest.raises(ValueError, match="max_steps .* and schedule.max_steps .* different values"):
        TrainConfig(max_steps=5, schedule={"max_steps": 6})
    with pytest.warns(DeprecationWarning):  # the same value twice is no conflict
        assert TrainConfig(max_steps=6, schedule={"max_steps": 6}).schedule.max_steps == 6
    # Every field of every group is the new place of exactly one old key (no field left out).
    new_places = sorted(f"{g}.{f}" for g, f in FLAT_KEYS.values())
    assert new_places == sorted(f"{g}.{f}" for g, cls in GROUPS.items() for f in cls.model_fields)
    assert len(new_places) == len(set(new_places)) == 46


def test_a_checkpoint_with_a_flat_config_resumes(baseline, corpus, tmp_path):
    """A checkpoint written before the groups holds its config as flat keys: it resumes bitwise,
    evaluates with its step and tokens seen, and a changed field is refused under its new name."""
    old = torch.load(baseline["out"] / "checkpoints" / "step-30.pt", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = {
            old_key: TrainConfig.model_validate(old["config"]).model_dump()[group][field]
            for old_key, (group, field) in FLAT_KEYS.items()
        }
    old["config"] = flat
    (tmp_path / "checkpoints").mkdir()
    torch.save(old, tmp_path / CHECKPOINT)
    assert load_checkpoint(str(tmp_path / CHECKPOINT))[1] == {"step": 30, "tokens_seen": 30 * 8 * 32}
    with pytest.raises(ValueError, match=r"another config \(optimizer.weight_decay: 0.1 -> 0.2\)"):
        run(corpus, tmp_path, CONFIG.updated(optimizer={"weight_decay": 0.2}))
    _, events = run(corpus, tmp_path, CONFIG.updated(eval={"interval": 5}))  # a resumable change
    assert losses(events) == {k: v for k, v in losses(baseline["events"]).items() if k > 30}
    assert sha(tmp_path / "model.pt") == sha(baseline["out"] / "model.pt")


def test_the_step_takes_any_batch_source_and_loss(baseline, corpus, tmp_path):
    """setup() then train_step() on the pretraining batches and lm_loss is train()'s first step,
    bitwise; the same step minimizes another objective from another source (here: the loss on the
    last target of each window only, from a fixed batch), as instruction tuning will."""
    from model.data import Prefetcher
    from model.gpt import IGNORE_INDEX
    from model.train import lm_loss, setup, train_step

    run_ = setup(corpus["train"], corpus["val"], corpus["vocab"], CONFIG, str(tmp_path / "a"))
    feed = Prefetcher(run_.batches, run_.device)
    try:
        first = train_step(run_, feed, lm_loss)
    finally:
        feed.close()
    assert run_.step == 1 and first.loss.item() == losses(baseline["events"])[1]

    class Fixed:
        position = "a fixed batch"

        def __init__(self, x, y):
            self.batch = (x, y)

        def next(self):
            return self.batch

    tokens = next(iter(TokenStream(corpus["val"]).chunks))
    x = torch.as_tensor(tokens[: 8 * 33].astype("int64")).view(8, 33)
    y = x[:, 1:].clone()
    y[:, :-1] = IGNORE_INDEX  # only the last position of each window is trained on
    run_ = setup(corpus["train"], corpus["val"], corpus["vocab"], CONFIG, str(tmp_path / "b"))
    steps = [train_step(run_, Fixed(x[:, :-1], y), lm_loss).loss.item() for _ in range(5)]
    assert run_.step == 5 and steps[-1] < steps[0]
