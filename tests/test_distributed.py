"""Training in 2 processes (torchrun, gloo, CPU) against one process with the same global batch, on
real Gutenberg tokens: the same losses and weights with DDP and with FSDP2, exact resume, resume at
another world size, the Prefect flow, and failures that name their cause."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from model import sharded_checkpoint
from model.data import Batches, TokenStream
from model.launch import launch, torchrun_command
from model.train import CHECKPOINT, TrainConfig, train
from tests.fixtures.train import CONFIG, losses, run, sha

SINGLE = CONFIG.updated(schedule={"max_steps": 8}, eval={"interval": 4}, checkpoint={"interval": 4})
# The same global batch (8 windows a step) as 2 processes x 4.
DDP = SINGLE.updated(data={"batch_size": 4}, launch={"nproc_per_node": 2, "parallel": "ddp"})
FSDP = DDP.updated(launch={"parallel": "fsdp"})
_RUNS: dict = {}


def run2(corpus, out, config, stop_after=None) -> tuple[dict, list[dict]]:
    """tests.fixtures.train.run, in processes started by torchrun."""
    events: list[dict] = []
    return launch(
        corpus["train"], corpus["val"], corpus["vocab"], config, str(out), log=events.append, stop_after=stop_after
    ), events


def once(name: str, tmp_path_factory, go) -> dict:
    """go(out) run once per session, for every test that compares against it."""
    if name not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        summary, events = go(out)
        _RUNS[name] = {"out": out, "summary": summary, "events": events}
    return _RUNS[name]


@pytest.fixture
def single(corpus, tmp_path_factory):
    """One process, batch 8: the reference."""
    return once("single", tmp_path_factory, lambda out: run(corpus, out, SINGLE))


@pytest.fixture
def ddp(corpus, tmp_path_factory):
    """2 DDP processes, batch 4 each, uninterrupted."""
    return once("ddp", tmp_path_factory, lambda out: run2(corpus, out, DDP))


def weights(out) -> dict:
    return torch.load(out / "model.pt", weights_only=True)["model"]


def assert_close_runs(events, reference, rel=1e-5) -> None:
    """Per-step loss and gradient norm, and validation losses, within rel of the reference run's."""
    for key in ("loss", "grad_norm", "val_loss"):
        mine = {e["step"]: e[key] for e in events if key in e}
        theirs = {e["step"]: e[key] for e in reference if key in e and e["step"] in mine}
        assert mine and mine.keys() == theirs.keys(), key
        for step in mine:
            assert mine[step] == pytest.approx(theirs[step], rel=rel), (key, step)


def assert_close_weights(a, b, atol=1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=atol) for k in wa)


def test_ranks_take_disjoint_slices_of_the_single_process_batch(corpus):
    stream = TokenStream(corpus["train"])
    whole = Batches(stream, 32, 8, seed=5)
    ranks = [Batches(stream, 32, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(whole.n_windows // 8 + 3):  # across an epoch boundary
        x, y = whole.next()
        parts = [b.next() for b in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(b.state_dict() == whole.state_dict() for b in ranks)  # one global position
    assert whole.epoch == 1
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        Batches(stream, 32, 4, seed=5, rank=2, world_size=2)


def test_ddp_matches_one_process_with_the_same_global_batch(single, ddp):
    s, events = ddp["summary"], ddp["events"]
    assert [e["step"] for e in events if "loss" in e] == list(range(1, 9))  # rank 0 alone reports
    assert_close_runs(events, single["events"])
    assert s["tokens_seen"] == single["summary"]["tokens_seen"] == 8 * 8 * 32
    assert s["final_val_loss"] == pytest.approx(single["summary"]["final_val_loss"], rel=1e-5)
    assert_close_weights(ddp["out"], single["out"])
    assert sha(ddp["out"] / "model.pt") != sha(single["out"] / "model.pt")  # close, not bitwise: sums reorder
    assert not list(ddp["out"].glob("**/*.tmp-*"))


def test_ddp_stop_and_resume_is_bitwise_and_resumes_in_one_process(corpus, ddp, single, tmp_path):
    """Stopped after step 6 (checkpoint at 4): resumed in 2 processes, the same losses and model.pt
    bytes as the uninterrupted 2-process run; resumed in one process with batch 8 (the same global
    batch), the same losses within float rounding."""
    first, ev1 = run2(corpus, tmp_path / "two", DDP, stop_after=6)
    assert first["steps"] == 6 and not (tmp_path / "two" / "model.pt").exists()
    ckpt = torch.load(tmp_path / "two" / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["rng_ranks"]) == 2 and ckpt["batches"]["cursor"] == 4 * 8
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    second, ev2 = run2(corpus, tmp_path / "two", DDP)
    assert [e["step"] for e in ev2 if "loss" in e] == [5, 6, 7, 8]
    assert losses(ev1 + ev2) == losses(ddp["events"])
    assert sha(tmp_path / "two" / "model.pt") == sha(ddp["out"] / "model.pt")
    strip = lambda s: {k: v for k, v in s.items() if k != "timing"}  # noqa: E731
    assert strip(second) == strip(ddp["summary"])

    _, events = run(corpus, tmp_path / "one", SINGLE)
    assert [e["step"] for e in events if "loss" in e] == [5, 6, 7, 8]
    assert_close_runs(events, single["events"])
    assert_close_weights(tmp_path / "one", single["out"])


@pytest.fixture
def fsdp(corpus, tmp_path_factory):
    """2 FSDP2 processes, batch 4 each, uninterrupted."""
    return once("fsdp", tmp_path_factory, lambda out: run2(corpus, out, FSDP))


def stopped_at_4(run_out, out) -> None:
    """out as a run stopped between its checkpoints at steps 4 and 8 leaves it: run_out's step-4."""
    shutil.copytree(run_out / "checkpoints", out / "checkpoints")
    shutil.rmtree(out / "checkpoints" / "step-8")
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "folder": "step-4"}))


def test_fsdp_matches_one_process_and_resumes_bitwise_from_shards(corpus, single, ddp, fsdp, tmp_path):
    """FSDP2 checkpoints are folders of shards (model.sharded_checkpoint): stopped after step 6
    (checkpoint at 4) and resumed, the same losses, summary and model.pt bytes as the uninterrupted
    FSDP2 run, whose losses are one process's within float rounding."""
    assert_close_runs(fsdp["events"], single["events"])
    assert_close_runs(fsdp["events"], ddp["events"], rel=1e-6)
    assert_close_weights(fsdp["out"], single["out"])
    first, ev1 = run2(corpus, tmp_path, FSDP, stop_after=6)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-4"]
    assert json.loads((folder / "latest.json").read_text()) == {"step": 4, "folder": "step-4"}
    assert [e["checkpoint"] for e in ev1 if "checkpoint" in e] == [str(folder / "step-4")]
    assert sorted(p.name for p in (folder / "step-4").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "state.pt",
    ]
    state = torch.load(folder / "step-4" / "state.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng_ranks"]) == 2 and "model" not in state
    second, ev2 = run2(corpus, tmp_path, FSDP)
    assert [e["step"] for e in ev2 if "loss" in e] == [5, 6, 7, 8]
    assert losses(ev1 + ev2) == losses(fsdp["events"])
    assert sha(tmp_path / "model.pt") == sha(fsdp["out"] / "model.pt")
    strip = lambda s: {k: v for k, v in s.items() if k != "timing"}  # noqa: E731
    assert strip(second) == strip(fsdp["summary"])
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-4", "step-8"]  # keep 2
    tied = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert tied["lm_head.weight"].data_ptr() == tied["tok_emb.weight"].data_ptr()  # the tied matrix saved once


def test_fsdp_shards_resume_in_one_process(corpus, single, fsdp, tmp_path):
    """DCP reshards: the 2-process checkpoint at step 4 resumes in one process with batch 8 (the
    same global batch), the losses of one process within float rounding."""
    stopped_at_4(fsdp["out"], tmp_path)
    _, events = run(corpus, tmp_path, SINGLE)
    assert [e["step"] for e in events if "loss" in e] == [5, 6, 7, 8]
    assert_close_runs(events, single["events"])
    assert_close_weights(tmp_path, single["out"])
    assert (tmp_path / "checkpoints" / "latest.pt").exists()  # one process goes on in single files
    assert sharded_checkpoint.newer_than(str(tmp_path / CHECKPOINT)) is None  # latest.pt's step 8 is newer
    assert sharded_checkpoint.newer_than(str(fsdp["out"] / CHECKPOINT)) == str(fsdp["out"] / "checkpoints" / "step-8")


def test_an_fsdp_checkpoint_folder_evaluates_as_its_model(fsdp):
    """Evaluation reads a folder of shards in one process: step 8's weights are model.pt's, bitwise."""
    import fsspec

    from model.evaluate import load_checkpoint
    from model.source import _model_file

    folder = fsdp["out"] / "checkpoints"
    fs = fsspec.filesystem("file")
    assert _model_file(fs, str(folder / "latest.json"), "latest") == str(folder / "step-8")
    shutil.move(fsdp["out"] / "model.pt", fsdp["out"] / "model.pt.aside")
    try:
        assert _model_file(fs, str(fsdp["out"]), "run") == str(folder / "step-8")
    finally:
        shutil.move(fsdp["out"] / "model.pt.aside", fsdp["out"] / "model.pt")
    model, trained = load_checkpoint(str(folder / "step-8"))
    assert trained == {"step": 8, "tokens_seen": 8 * 8 * 32}
    whole = weights(fsdp["out"])
    assert model.state_dict().keys() == whole.keys()
    assert all(torch.equal(v, whole[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_dropout_differs_per_rank_and_resumes_bitwise(corpus, tmp_path):
    """With dropout each rank draws its own masks; the checkpoint keeps every rank's RNG, so a
    stopped 2-process run still resumes to the very bytes of an uninterrupted one."""
    config = DDP.updated(model={"dropout": 0.1})
    _, ev_whole = run2(corpus, tmp_path / "whole", config)
    _, ev1 = run2(corpus, tmp_path / "resumed", config, stop_after=6)
    rngs = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["rng_ranks"]
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    _, ev2 = run2(corpus, tmp_path / "resumed", config)
    assert losses(ev1 + ev2) == losses(ev_whole)
    assert sha(tmp_path / "resumed" / "model.pt") == sha(tmp_path / "whole" / "model.pt")


def test_a_failing_follower_stops_the_processes(corpus, tmp_path):
    """An error in the parent's log callback (a failpoint, a cancelled task) ends torchrun and its
    workers before it propagates: nothing goes on training behind the caller's back."""

    def log(event: dict) -> None:
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        launch(
            corpus["train"],
            corpus["val"],
            corpus["vocab"],
            DDP.updated(schedule={"max_steps": 10_000}),
            str(tmp_path),
            log=log,
        )
    events = tmp_path / "launch" / "events.jsonl"
    size = events.stat().st_size
    time.sleep(1.5)
    assert events.stat().st_size == size and size < 10_000 * 100


def test_launch_failures_name_their_cause(corpus, tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)torchrun exited with status 1.*does not fit vocab_size 100"):
        launch(corpus["train"], corpus["val"], 100, DDP, str(tmp_path))
    with pytest.raises(ValueError, match=r"asks for 2 processes .* but 1 run: start several with torchrun"):
        train(corpus["train"], corpus["val"], corpus["vocab"], DDP, str(tmp_path))
    with pytest.raises(ValueError, match="parallel 'none' cannot run 2 processes .* use 'ddp' or 'fsdp'"):
        TrainConfig(launch={"nproc_per_node": 2})
    with pytest.raises(ValueError, match="rdzv_endpoint is needed when nnodes > 1"):
        TrainConfig(launch={"nnodes": 2, "parallel": "ddp"})


def test_resume_takes_another_split_of_the_same_global_batch_only(corpus, single, tmp_path):
    shutil.copytree(single["out"], tmp_path, dirs_exist_ok=True)
    with pytest.raises(ValueError, match=r"another config \(data.batch_size: 8 -> 4\)"):
        run(corpus, tmp_path, SINGLE.updated(data={"batch_size": 4}))
    done, events = run(corpus, tmp_path, SINGLE.updated(data={"batch_size": 4, "grad_accum_steps": 2}))
    assert done["steps"] == 8 and not events


def test_torchrun_commands():
    one_node = torchrun_command(DDP, "run.json")
    assert one_node[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        "--standalone",
        "-m",
        "model.launch",
        "--args-json",
        "run.json",
    ]
    nodes = torchrun_command(DDP.updated(launch={"nnodes": 2, "rdzv_endpoint": "node0:29400"}), "run.json", "fp")
    assert nodes[4:8] == ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=fp"]


@pytest.mark.slow
def test_train_flow_with_two_processes(prefect_api, corpus, single, tmp_path):
    """nproc_per_node=2 in the flow's config: torchrun under the task, the same result as one process."""
    from flows.training import train as train_flow
    from storage import Store

    tok = Store(str(tmp_path / "store")).stage("tokenize", "t0")
    rels = {}
    for split in ("train", "val"):
        with open(corpus[split][0], "rb") as f:
            rels[split] = f"data/{split}/part-00000.arrow"
            tok.write_bytes(rels[split], f.read())
    tok.commit(
        {
            "shards": [{"index": 0, **rels}],
            "train_order": [0],
            "vocab_size": corpus["vocab"],
            "tokenizer": {"stage": "tokenizer", "fingerprint": "none", "file": "data/tokenizer.json"},
        }
    )
    result = train_flow(tok.url(), DDP)
    counts = result["counts"]
    assert not result["cached"] and counts["completed"] and counts["steps"] == 8
    assert counts["final_train_loss"] == pytest.approx(single["summary"]["final_train_loss"], rel=1e-5)
    assert counts["final_val_loss"] == pytest.approx(single["summary"]["final_val_loss"], rel=1e-5)
    out = tmp_path / "store" / "train" / result["fingerprint"]
    assert_close_weights(out, single["out"])
    assert train_flow(tok.url(), DDP)["cached"]
