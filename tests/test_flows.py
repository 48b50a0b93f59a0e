"""Each flow through a real Prefect server: caching, invalidation, artifacts, clear errors."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.data import require_data
from tests.fixtures.flow_inputs import WARCS, tiny_config
from tests.fixtures.prefect_runs import task_states

pytestmark = pytest.mark.slow

AFTER_QUALITY = ["quality", "pii", "tokenize", "train", "evaluate"]


@pytest.fixture
def inputs(shared_data):
    return [str(shared_data(rel)) for rel in WARCS]


def _latest_artifacts(keys: list[str]) -> dict[str, dict]:
    """key -> the newest artifact with that key (as the API returns it)."""
    from prefect import get_client

    # 3.8.8's clients send null flow/task run filters, which the server rejects: post the filter itself
    with get_client(sync_client=True) as client:
        found = client._client.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}, "sort": "CREATED_DESC", "limit": 50}
        ).json()
    out: dict = {}
    for a in found:
        out.setdefault(a["key"], a)
    return out


def key(*parts: str) -> str:
    from flows.artifacts import key as artifact_key

    return artifact_key(*parts)


def _opens(api: str, data: str) -> bytes:
    """What the browser gets for a link artifact's target (its data is `[text](link)`): a link
    relative to the UI's origin, into the store browser."""
    import re
    import urllib.request

    link = re.fullmatch(r"\[.*\]\((/crawl2llm-store/[^)]+)\)", data, re.S).group(1)
    with urllib.request.urlopen(api.removesuffix("/api") + link, timeout=30) as r:
        assert r.status == 200
        return r.read()


def test_pipeline_runs_caches_and_invalidates_downstream_only(prefect_api, tmp_path, inputs):
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    copa = str(require_data("eval/llm-foundry/copa.jsonl"))
    config = PipelineConfig.model_validate(
        tiny_config(str(tmp_path / "store"), inputs, evaluate={"tasks": {"copa": copa}, "task_limit": 40})
    )
    first = pipeline(config)
    assert list(first) == ["ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"]
    assert not any(r["cached"] for r in first.values())
    assert first["ingest"]["counts"]["docs_kept"] > 20
    assert first["tokenize"]["counts"]["train_tokens"] > 10_000
    assert first["evaluate"]["counts"]["perplexity"] > 1
    copa_scores = first["evaluate"]["counts"]["tasks"]["copa"]
    assert copa_scores["items"] == 40 and 0 <= copa_scores["acc"] <= 1 and 0 <= copa_scores["acc_norm"] <= 1
    train_keys = {
        what: key("train", what, first["train"]["fingerprint"][:16])
        for what in ("summary", "checkpoint", "model", "loss-curve")
    }
    eval_report = key("evaluate", "report", first["evaluate"]["fingerprint"][:16])
    artifacts = _latest_artifacts([*train_keys.values(), eval_report])
    assert "| copa | 40 | acc_norm |" in artifacts.pop(eval_report)["data"]
    assert set(artifacts) == set(train_keys.values())
    assert "latest.pt" in artifacts[train_keys["checkpoint"]]["data"]
    assert _opens(prefect_api, artifacts[train_keys["model"]]["data"]).startswith(b"PK")  # torch's zip format
    assert {"metric": "MFU (this run)", "value": "unknown"} in json.loads(artifacts[train_keys["summary"]]["data"])
    for stage in ("ingest", "dedup", "quality", "pii", "tokenize"):  # each stage: table, report, link to its output
        keys = [key(stage, what, first[stage]["fingerprint"][:16]) for what in ("summary", "report", "output")]
        published = _latest_artifacts(keys)
        assert len(published) == 3 and first[stage]["fingerprint"] in published[keys[1]]["data"]
        listing = _opens(prefect_api, published[keys[2]]["data"]).decode()  # the output folder, in the browser
        assert "manifest.json" in listing and first[stage]["url"] in listing, stage
        if stage == "pii":  # what was scrubbed, per type: pii replaces spans, it removes no document
            assert "| PII type | spans replaced |" in published[keys[1]]["data"]
        rows = json.loads(published[keys[0]]["data"])
        assert not any(isinstance(r["value"], (dict, list)) for r in rows), stage  # no [object Object] in the UI
    summary = _latest_artifacts([key("pipeline-summary", "evaluate", first["evaluate"]["fingerprint"][:16])])
    [text] = [a["data"] for a in summary.values()]
    assert "7 stage(s)" in text and "7 ran, 0 cached" in text and "| quality | ran |" in text

    state = pipeline(config, return_state=True)
    again = state.result()
    assert all(r["cached"] for r in again.values()), {k: r["cached"] for k, r in again.items()}
    assert {k: r["url"] for k, r in again.items()} == {k: r["url"] for k, r in first.items()}
    from prefect import get_client

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        children = client._client.post(
            "/flow_runs/filter",
            json={
                "flow_runs": {"parent_flow_run_id": {"any_": [str(parent.id)]}},
                "limit": 50,
                "sort": "EXPECTED_START_TIME_ASC",
            },
        ).json()
    assert [c["name"] for c in children] == [f"{parent.name}-{stage}" for stage in first]  # the UI's subflow list
    states = task_states(state.state_details.flow_run_id)
    assert any(name.startswith("quality-") for name in states), states
    assert all(s == "Cached" for s in states.values()), sorted(states.items())

    changed = config.model_copy(deep=True)
    changed.quality = type(config.quality).model_validate(
        {**config.quality.model_dump(), **_one_quality_change(config.quality)}
    )
    third = pipeline(changed)
    assert third["ingest"]["cached"] and third["dedup"]["cached"]
    assert not any(third[s]["cached"] for s in AFTER_QUALITY), {k: r["cached"] for k, r in third.items()}


def _one_quality_change(quality) -> dict:
    """Loosen the first numeric threshold field of the quality config."""
    for name, value in quality.model_dump().items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return {name: value - 1}
    raise AssertionError("quality config has no integer threshold to change")


def test_missing_input_stops_before_any_work(prefect_api, tmp_path, inputs):
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline
    from pipeline.inputs import InputError

    config = PipelineConfig.model_validate(
        tiny_config(str(tmp_path / "store"), [*inputs, str(tmp_path / "nope.warc.gz")])
    )
    with pytest.raises(InputError, match="nope.warc.gz"):
        pipeline(config)
    assert not (tmp_path / "store" / "ingest").exists()


def test_stage_flow_on_its_own_with_memory_store(prefect_api, shared_data):
    """Any fsspec URL works as a store; memory:// runs shards inline in this process."""
    from flows.stages import dedup, ingest

    r = ingest([str(shared_data("warc/resiliparse-warcfile.warc.gz"))], store="memory://c2l-flow-test")
    assert r["url"].startswith("memory://") and r["counts"]["docs_in"] > 0
    d = dedup(r["url"])
    assert d["counts"]["docs_in"] == r["counts"]["docs_kept"]
    # A new threshold keeps step 1 (signatures, bucket keys) and re-runs pairs, clusters and apply.
    import fsspec

    from pipeline.dedup import DedupConfig

    again = dedup(r["url"], DedupConfig(threshold=0.9))
    assert not again["cached"] and again["fingerprint"] != d["fingerprint"]
    fs = fsspec.filesystem("memory")
    steps = {step: len(fs.ls(f"/c2l-flow-test/{step}")) for step in ("dedup-signatures", "dedup-pairs", "dedup")}
    assert steps == {"dedup-signatures": 1, "dedup-pairs": 2, "dedup": 2}


def test_a_failed_shard_leaves_one_traceback_in_the_log(prefect_api, shared_data, monkeypatch):
    """The shard's task run logs the traceback; the flow above it logs the error's message and where
    that traceback is, not the same traceback again."""
    import time as _time

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.stages import ingest
    from pipeline.failpoints import FailpointError

    monkeypatch.setenv("CRAWL2LLM_FAILPOINT", "ingest:0@raise")
    state = ingest(
        [str(shared_data("warc/resiliparse-warcfile.warc.gz"))], store="memory://c2l-one-traceback", return_state=True
    )
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), FailpointError)
    with get_client(sync_client=True) as client:
        deadline = _time.monotonic() + 10
        while True:  # the log handler sends in batches
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])), limit=200
            )
            flow_error = [
                log.message for log in logs if log.task_run_id is None and "Encountered exception" in log.message
            ]
            if flow_error or _time.monotonic() > deadline:
                break
            _time.sleep(0.5)
    task_logs = "\n".join(log.message for log in logs if log.task_run_id is not None)
    assert task_logs.count("Traceback (most recent call last)") == 1, task_logs[-3000:]
    assert flow_error and "Traceback" not in flow_error[0] and "task run ingest-00000" in flow_error[0], flow_error


def test_editing_a_url_blocklist_file_reruns_ingest(prefect_api, tmp_path, shared_data):
    from flows.stages import ingest
    from pipeline.ingest import IngestConfig

    lists = tmp_path / "domains.txt"
    lists.write_text("nothing.example\n")
    config = IngestConfig(url_blocklist_files=[str(lists)])
    inputs = [str(shared_data("warc/resiliparse-warcfile.warc.gz"))]
    first = ingest(inputs, config, store=str(tmp_path / "store"))
    assert ingest(inputs, config, store=str(tmp_path / "store"))["cached"]
    lists.write_text("nothing.example\nanother.example\n")  # same name, new contents
    again = ingest(inputs, config, store=str(tmp_path / "store"))
    assert not again["cached"] and again["url"] != first["url"]


@pytest.fixture
def trained_run(prefect_api, tmp_path, shared_data):
    """A tiny real run: a committed stage of real book paragraphs, tokenized and trained by the flows."""
    import gzip

    import pyarrow as pa

    from flows.stages import tokenize
    from flows.training import train
    from model.train import TrainConfig
    from pipeline.tokenize import TokenizeConfig
    from storage import Store

    with gzip.open(shared_data("text/gutenberg-top-authors-subset.jsonl.gz"), "rt") as f:
        book = json.loads(f.readline())
    paras = [p for p in book["text"][:120_000].split("\n\n") if p.strip()]
    docs = Store(str(tmp_path / "store")).stage("pii", "books")
    docs.write_parquet(
        "data/part-00000.parquet", pa.table({"id": [f"b/{i}" for i in range(len(paras))], "text": paras})
    )
    docs.commit({"shards": [{"index": 0}]})
    tok = tokenize(docs.url(), TokenizeConfig(vocab_size=512, min_frequency=2), workers_n=0)
    run = train(
        tok["url"],
        TrainConfig(
            model={"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
            schedule={"max_steps": 12, "warmup_steps": 2},
            data={"batch_size": 4},
            eval={"interval": 6, "batches": 1},
            checkpoint={"interval": 6},
            launch={"device": "cpu"},
        ),
    )
    return {"tokenize": tok, "train": run, "store": tmp_path / "store"}


def test_evaluate_takes_any_checkpoint_and_compares_runs(trained_run, tmp_path, shared_data):
    """A train output, its model.pt, its last checkpoint, a copy of that checkpoint elsewhere: each
    evaluated once and cached after; a text file's perplexity and bits per byte in the result and
    the report; the evaluation-runs table has a row per evaluation in the store."""
    import gzip
    import shutil
    from pathlib import Path

    from flows.training import evaluate
    from model.evaluate import EvalConfig

    with gzip.open(shared_data("text/gutenberg-heldout-authors-val.jsonl.gz"), "rt") as f:
        held = json.loads(f.readline())["text"][10_000:14_000]
    texts = tmp_path / "heldout.jsonl"
    texts.write_text(json.dumps({"text": held}) + "\n")
    config = EvalConfig(
        max_new_tokens=4,
        val_batches=2,
        device="cpu",
        text_files={"heldout": str(texts)},
        tasks={"copa": str(shared_data("eval/llm-foundry/copa.jsonl"))},
        task_limit=8,
    )
    run_url = trained_run["train"]["url"]
    first = evaluate(run_url, config)
    res = first["counts"]
    assert not first["cached"]
    assert res["texts"]["heldout"]["bytes"] == len(held.encode("utf-8")) and res["texts"]["heldout"]["stride"] == 32
    assert res["bits_per_byte"] > 0 and res["texts"]["heldout"]["bits_per_byte"] > 0
    assert res["source"]["tokens_seen"] == trained_run["train"]["counts"]["tokens_seen"] == 12 * 4 * 32
    assert res["source"]["url"] == f"train/{trained_run['train']['fingerprint']}"  # the store may move
    assert res["model"]["architecture"] == "gpt2" and res["tasks"]["copa"]["items"] == 8
    report_key = key("evaluate", "report", first["fingerprint"][:16])
    report = _latest_artifacts([report_key])[report_key]["data"]
    assert "| heldout | 1 |" in report and "| held-out token shards |" in report

    folder = Path(run_url)
    assert evaluate(run_url, config)["cached"]
    same = evaluate(str(folder / "model.pt"), config)  # a train output's model.pt is that train output
    assert same["cached"] and same["fingerprint"] == first["fingerprint"]

    ckpt = evaluate(str(folder / "checkpoints" / "latest.pt"), config)
    assert not ckpt["cached"] and ckpt["counts"]["model"]["step"] == 12
    assert ckpt["counts"]["val_loss"] == pytest.approx(res["val_loss"], rel=1e-6)  # the last checkpoint = model.pt

    # A run still training: checkpoints and upstream.json, no manifest (copied elsewhere).
    running = tmp_path / "running"
    shutil.copytree(folder / "checkpoints", running / "checkpoints")
    shutil.copy(folder / "upstream.json", running / "upstream.json")
    again = evaluate(str(running), config)
    assert again["cached"] and again["fingerprint"] == ckpt["fingerprint"]  # same bytes, same data
    loose = tmp_path / "loose.pt"
    shutil.copy(folder / "checkpoints" / "latest.pt", loose)
    with pytest.raises(ValueError, match="data=<store>/tokenize/<fingerprint>"):
        evaluate(str(loose), config)
    named = evaluate(str(loose), config.model_copy(update={"data": trained_run["tokenize"]["url"]}))
    assert named["cached"] and named["fingerprint"] == ckpt["fingerprint"]

    from flows.artifacts import store_key
    from storage import Store

    runs_key = store_key(Store(str(trained_run["store"])).url, "evaluation-runs")  # one history per store
    table = json.loads(_latest_artifacts([runs_key])[runs_key]["data"])
    assert len(table) == len(list((trained_run["store"] / "evaluate").glob("*/manifest.json"))) == 2
    by_eval = {r["evaluation"]: r for r in table}
    row = by_eval[first["fingerprint"][:12]]
    assert row["checkpoint"] == f"train/{trained_run['train']['fingerprint'][:12]}"
    assert row["tokens_trained"] == 12 * 4 * 32 and row["n_embd"] == 32 and row["vocab_size"] == 512
    assert row["val_bpb"] == round(res["bits_per_byte"], 4)
    assert row["heldout bpb"] == round(res["texts"]["heldout"]["bits_per_byte"], 4)
    assert row["copa acc"] == round(res["tasks"]["copa"]["acc"], 4) and "copa acc_norm" in row
    assert by_eval[ckpt["fingerprint"][:12]]["checkpoint"].startswith("sha256:")

    # The same sources export to a transformers folder with `crawl2llm export`; a wrong source is an error.
    transformers = pytest.importorskip("transformers")
    import torch

    from flows.cli import main
    from model.evaluate import load_model

    assert main(["export", str(running), str(tmp_path / "hf")]) == 0
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "hf2")]) == 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))(held[:400], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = load_model(str(folder / "model.pt"))(ids[:, :32])[0]
        assert (hf(ids[:, :32]).logits - ours).abs().max().item() < 1e-4


def test_sft_then_dpo_flows_tune_and_cache(trained_run, tmp_path, shared_data):
    """The sft flow on a train output and a few of the book's records: store/sft/{fp} with the
    model, a chat tokenizer folder and the before/after figures; a re-run is cached. Its output is
    a model by URL (export, serve), and dpo tunes it, its reference log-probs cached on their own."""
    from flows.sft import sft
    from model.sft import SFTConfig

    records = json.loads(shared_data("instruct/rasbt-ch07-instruction-data.json").read_text())[:20]
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps(records))
    config = SFTConfig(
        data={"files": [str(data)], "batch_size": 4, "val_fraction": 0.1, "test_fraction": 0.1},
        schedule={"max_steps": 4, "warmup_steps": 1, "min_lr": 1e-5},
        eval={"interval": 2, "answer_tokens": 4, "prompts": 2, "samples": 1},
        checkpoint={"interval": 2, "async_save": False},
        launch={"device": "cpu"},
    )
    first = sft(trained_run["train"]["url"], config)
    again = sft(trained_run["train"]["url"], config)
    assert not first["cached"] and again["cached"] and again["fingerprint"] == first["fingerprint"]
    out = trained_run["store"] / "sft" / first["fingerprint"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.pt").exists() and (out / "tokenizer" / "tokenizer_config.json").exists()
    counts = manifest["counts"]
    assert counts["steps"] == 4 and {"answer_loss", "end_share"} <= counts["after"].keys() <= counts["before"].keys()
    assert manifest["upstream"]["fingerprint"] == trained_run["train"]["fingerprint"]

    # The output is a model to use by its URL: exported with its chat template, served, evaluated.
    import torch
    import transformers
    from tokenizers import Tokenizer

    from flows.cli import main
    from model.chat import ChatFormat
    from model.evaluate import load_model
    from model.serving import open_engine

    url = first["url"]
    assert main(["export", url, str(tmp_path / "hf")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    chat = ChatFormat(Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json")))
    talk = [{"role": "user", "content": records[0]["instruction"]}]
    ids = hf_tok.apply_chat_template(talk, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids == chat.render(talk, add_generation_prompt=True)[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    assert hf.config.eos_token_id == chat.tokenizer.token_to_id("<|end|>")
    tuned = load_model(str(out / "model.pt"))
    with torch.no_grad():
        x = torch.tensor([ids[-tuned.config.block_size :]])
        assert (hf(x).logits - tuned(x)[0]).abs().max().item() < 1e-4
    engine = open_engine(url, device="cpu")
    assert engine.chat is not None and engine.tokenizer.get_vocab_size() == chat.tokenizer.get_vocab_size()
    # `crawl2llm judge`: its held-out answers scored by a judge behind `serve`: a random GPT with a
    # context long enough for the rubric, whose replies are counted, not asserted to be scores
    from model.gpt import GPT
    from tests.fixtures.serve import serving

    judge_cfg = tuned.config.model_copy(update={"block_size": 512})
    weights = {
        "model": GPT(judge_cfg).state_dict(),
        "config": judge_cfg.model_dump(),
        "vocab_size": judge_cfg.vocab_size,
    }
    torch.save(weights, tmp_path / "judge.pt")
    tok_file = str(out / "tokenizer" / "tokenizer.json")
    with serving(str(tmp_path / "judge.pt"), "--tokenizer", tok_file, "--name", "j", "--max-tokens", "8") as served:
        assert main(["judge", url, "--url", served + "/v1", "--model", "j", "--prompts", "2", "--out", str(tmp_path / "j.json")]) == 0  # fmt: skip
    judged = json.loads((tmp_path / "j.json").read_text())
    assert judged["items"] == 2 and judged["scored"] + judged["unparsable"] + judged["out_of_range"] == 2
    assert main(["judge", url, "--url", "http://127.0.0.1:9/v1", "--model", "x"]) == 2

    # DPO on the sft output: the reference's log-probs are computed once, reused with another beta.
    from flows.dpo import dpo
    from model.dpo import DPOConfig

    pairs = json.loads(shared_data("preference/rasbt-ch07-instruction-data-with-preference.json").read_text())[:24]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    prefs = {
        "data": {"files": [str(tmp_path / "pairs.json")], "batch_size": 4},
        "schedule": {"max_steps": 3, "warmup_steps": 0, "min_lr": 1e-4},
        "optimizer": {"learning_rate": 1e-4},
        "eval": {"interval": 3, "samples": 1, "answer_tokens": 4},
        "checkpoint": {"async_save": False},
        "launch": {"device": "cpu"},
    }
    tuned = dpo(url, DPOConfig.model_validate(prefs))
    assert not tuned["cached"] and not tuned["reference"]["cached"] and tuned["reference"]["pairs"] == 24
    other = dpo(url, DPOConfig.model_validate({**prefs, "loss": {"beta": 0.5}}))
    assert not other["cached"] and other["reference"]["cached"]
    assert other["reference"]["url"] == tuned["reference"]["url"] and other["fingerprint"] != tuned["fingerprint"]
    assert dpo(url, DPOConfig.model_validate(prefs))["cached"]
    d = json.loads((trained_run["store"] / "dpo" / tuned["fingerprint"] / "manifest.json").read_text())
    assert (
        d["upstream"]["stage"] == "sft" and {"reward_accuracy", "margin", "kl_per_token"} <= d["counts"]["test"].keys()
    )
    assert main(["export", tuned["url"], str(tmp_path / "hf-dpo")]) == 0  # a dpo output is a chat model too

    # The same sft in 2 DDP processes of half the batch: the flow starts torchrun; the same steps.
    two = config.model_copy(
        update={
            "data": config.data.model_copy(update={"batch_size": 2}),
            "launch": config.launch.model_copy(update={"nproc_per_node": 2, "parallel": "ddp"}),
        }
    )
    ddp = sft(trained_run["train"]["url"], two)
    assert not ddp["cached"] and ddp["counts"]["steps"] == 4 and "answer_loss" in ddp["counts"]["after"]
    assert (trained_run["store"] / "sft" / ddp["fingerprint"] / "launch" / "run.json").exists()


def test_classify_flow_fine_tunes_a_train_output_and_caches_it(trained_run, shared_data):
    """The classify flow on a train output and the SMS set: store/classify/{fp} with the classifier,
    its tokenizer and the test metrics; a re-run is cached; predict reads the output."""
    from flows.classify import classify
    from model.classify import ClassifyConfig, predict

    config = ClassifyConfig(
        data_file=str(shared_data("classification/SMSSpamCollection.tsv")),
        schedule={"max_steps": 4, "warmup_steps": 1, "min_lr": 1e-5},
        eval={"interval": 2, "batches": 2},
        checkpoint={"interval": 2, "minutes": 0},
        launch={"device": "cpu"},
    )
    first = classify(trained_run["train"]["url"], config)
    again = classify(trained_run["train"]["url"], config)
    assert not first["cached"] and again["cached"] and again["fingerprint"] == first["fingerprint"]
    out = trained_run["store"] / "classify" / first["fingerprint"]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["steps"] == 4 and counts["split"]["test"] == {"ham": 150, "spam": 150}
    assert {"accuracy", "per_class", "confusion"} <= counts["test"].keys()
    said = predict(first["url"], ["Free entry! Text WIN to 80086 now", "see you at dinner"])
    assert [set(s["probabilities"]) for s in said] == [{"ham", "spam"}] * 2
