"""Training and evaluation flows: one task each, resumable from the checkpoints in the store."""

from __future__ import annotations

import json
import os
import shlex

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from flows import access, artifacts
from flows.common import Timer, run_locked
from flows.config import Location
from flows.stages import open_stage, summary
from model import checkpoints, sharded_checkpoint
from model.evaluate import EvalConfig
from model.report import comparison_rows, markdown, read_evaluations, summary_rows
from model.source import UPSTREAM_FILE, resolve
from model.source import token_files as _token_files
from model.train import CHECKPOINT, TrainConfig
from pipeline.failpoints import failpoint
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint, is_local


def local_dir(out: StageDir) -> str:
    """Training writes checkpoints to a local folder: the stage folder itself on a local store."""
    if is_local(out.fs):
        out.fs.makedirs(out.path, exist_ok=True)
        return out.path
    path = os.path.join(
        os.environ.get("CRAWL2LLM_CACHE", os.path.expanduser("~/.cache/crawl2llm")), out.name, out.fingerprint
    )
    os.makedirs(path, exist_ok=True)
    return path


@task(task_run_name="train-{out.fingerprint}", cache_policy=NO_CACHE)
def _train_task(out: StageDir, train_files: list[str], val_files: list[str], vocab: int, config: TrainConfig) -> dict:
    """Train in this process, or under torchrun when the config asks for more than one process
    (model.launch; its events drive the same progress bar, artifact and log lines)."""
    from model.launch import launch
    from model.train import train as run_train

    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="training steps done")
    max_steps = config.schedule.max_steps
    bar = tqdm(total=max_steps, desc="train", unit="step", leave=False)
    losses: list[tuple[int, float]] = []

    def log(event: dict) -> None:
        step = event.get("step", 0)
        failpoint(f"train:step:{step}")
        if "loss" in event:
            losses.append((step, event["loss"]))
            bar.n = step
            bar.set_postfix(loss=f"{event['loss']:.3f}")
            if step % max(1, max_steps // 20) == 0 or step == max_steps:
                update_progress_artifact(progress, 100.0 * step / max_steps)
                mfu = event.get("mfu")
                logger.info(
                    "step %d loss %.4f lr %.2e grad norm %.3f %.0f tok/s MFU %s%s",
                    step,
                    event["loss"],
                    event.get("lr", 0),
                    event.get("grad_norm", 0),
                    event.get("tokens_per_s", 0),
                    "unknown" if mfu is None else f"{100 * mfu:.1f}%",
                    " (update skipped by the loss guard)" if event.get("skipped") else "",
                )
            elif event.get("skipped"):
                logger.warning("step %d: update skipped by the loss guard (loss %.4f)", step, event["loss"])
        if "val_loss" in event:
            logger.info("step %d val_loss %.4f", step, event["val_loss"])
        if "checkpoint" in event and remote:  # FSDP2's is a folder of shards
            kind = sharded_checkpoint if os.path.isdir(event["checkpoint"]) else checkpoints
            kind.upload(out, local, event["checkpoint"])

    def announce(cmd: list[str]) -> None:
        logger.info("torchrun: %s", shlex.join(cmd))
        if config.launch.nnodes > 1:
            logger.info(
                "run the same command on each of the other %d machines (out_dir and token files on storage they share)",
                config.launch.nnodes - 1,
            )

    local = local_dir(out)
    remote = os.path.abspath(local) != os.path.abspath(out.path)
    if remote and checkpoints.restore(out, local, CHECKPOINT):
        logger.info("resuming from the store's checkpoint %s (not in this machine's cache)", out.url(CHECKPOINT))
    if remote and sharded_checkpoint.restore(out, local, os.path.dirname(CHECKPOINT)):
        logger.info(
            "resuming from the store's sharded checkpoint in %s (not in this machine's cache)",
            out.url(os.path.dirname(CHECKPOINT)),
        )
    try:
        if config.processes == 1:
            result = run_train(train_files, val_files, vocab, config, local, log=log)
        else:
            result = launch(
                train_files, val_files, vocab, config, local, log=log, run_id=out.fingerprint, on_command=announce
            )
    finally:
        bar.close()
    update_progress_artifact(progress, 100.0)
    return result


@flow(name="train")
def train(source: Location, config: TrainConfig = TrainConfig()) -> dict:
    """Pretrain a GPT on a tokenize output; killed and re-run, it resumes from its last checkpoint.

    Args:
        source: the tokenize output to train on (a folder or URL, {store}/tokenize/{fingerprint}).
        config: the model's shape, the optimizer, the schedule, the device and the processes.
    """
    access.check({"source": source})
    tok = open_stage(source)
    code = BY_NAME["train"].code_version()  # model.train and what it imports
    upstream = {"stage": tok.name, "fingerprint": tok.fingerprint}
    out = tok.store.stage("train", fingerprint("train", code, config, upstream))

    def work() -> tuple[bool, float, dict | None]:  # under the output's lock: one training writes its folder
        cached, timing = out.is_committed(), None
        with Timer() as t:
            if not cached:
                train_files, val_files, vocab = _token_files(tok)
                local = local_dir(out)
                with open(os.path.join(local, UPSTREAM_FILE), "w") as f:  # lets evaluate find a checkpoint's data
                    json.dump({"tokenize": tok.url()}, f)
                result = _train_task(out, train_files, val_files, vocab, config)
                if os.path.abspath(local) != os.path.abspath(out.path):
                    with open(os.path.join(local, "model.pt"), "rb") as f:
                        out.write_bytes("model.pt", f.read())
                timing = result["timing"]  # not in the manifest: it differs between identical runs
                result = {k: v for k, v in result.items() if k != "timing"}
                out.commit(
                    {
                        "config": config,
                        "code": code,
                        "upstream": upstream,
                        "vocab_size": vocab,
                        "model": "model.pt",
                        "tokenizer": tok.read_manifest()["tokenizer"],
                        "counts": result,
                    }
                )
        return cached, t.seconds, timing

    cached, seconds, timing = run_locked(out, work)
    manifest = out.read_manifest()
    _publish_training(out, manifest, seconds, cached, timing)
    return summary(out, manifest, cached)


def _publish_training(out: StageDir, manifest: dict, seconds: float, cached: bool, timing: dict | None) -> None:
    counts = manifest["counts"]
    rows = [{"metric": k, "value": v} for k, v in counts.items() if not isinstance(v, (list, dict))]
    rows += [{"metric": "cached", "value": str(cached)}, {"metric": "wall seconds", "value": round(seconds, 2)}]
    if timing:
        mfu = timing.get("mfu")
        rows += [
            {"metric": "device", "value": timing.get("device")},
            {"metric": "tokens/s (this run)", "value": timing.get("tokens_per_s")},
            {"metric": "MFU (this run)", "value": "unknown" if mfu is None else f"{100 * mfu:.1f}%"},
        ]
    artifacts.table(rows, artifacts.output_key(out, "summary"), f"train {out.fingerprint}")
    artifacts.output_link(out, artifacts.output_key(out, "model"), "final model weights", "model.pt")
    local = local_dir(out)
    sharded = os.path.join(os.path.dirname(CHECKPOINT), sharded_checkpoint.POINTER)  # FSDP2's
    found = [rel for rel in (CHECKPOINT, sharded) if os.path.exists(os.path.join(local, rel))]
    if found:
        root = out.url() if os.path.abspath(local) == os.path.abspath(out.path) else os.path.abspath(local)
        artifacts.folder_link(
            root,
            artifacts.output_key(out, "checkpoint"),
            "last resumable checkpoint (weights, optimizer, data position, RNG)",
            found[0],
        )
    history = counts.get("history", [])
    if history:
        artifacts.markdown(loss_chart(history), artifacts.output_key(out, "loss-curve"), "loss curve")


def loss_chart(history: list[dict]) -> str:
    """The loss curve (every logged step's train loss, every evaluation's validation loss) as a PNG
    data URI above a table of about 20 rows: the UI empties inline SVG, and image artifacts need a
    public URL."""
    from flows.chart import data_uri, line_chart_png

    train = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    lines = ["# Training loss", ""]
    if train or val:
        png = line_chart_png([("train", train), ("validation", val)], "step", "cross-entropy loss (nats/token)")
        losses = [p[1] for p in train + val]
        lines += [
            f"![loss curve: train and validation loss per step]({data_uri(png)})",
            "",
            f"{len(train)} train and {len(val)} validation points, steps {history[0]['step']}–"
            f"{history[-1]['step']}; loss from {max(losses):.3f} to {min(losses):.3f}.",
            "",
        ]
    lines += ["| step | train loss | val loss |", "|---:|---:|---:|"]
    every = -(-len(history) // 20)  # about 20 rows, and every evaluation
    for i, h in enumerate(history):
        if h.get("val_loss") is not None or i % every == 0 or i == len(history) - 1:
            cells = [f"{h[k]:.4f}" if h.get(k) is not None else "" for k in ("loss", "val_loss")]
            lines.append(f"| {h['step']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


@task(task_run_name="evaluate-{out.fingerprint}", cache_policy=NO_CACHE)
def _eval_task(out: StageDir, model_path: str, tokenizer_path: str, val_files: list[str], config: EvalConfig) -> dict:
    from model.evaluate import evaluate as run_eval

    return run_eval(model_path, tokenizer_path, val_files, config)


@flow(name="evaluate")
def evaluate(source: Location, config: EvalConfig = EvalConfig()) -> dict:
    """Held-out loss, perplexity and bits per byte (validation shards and config.text_files),
    benchmarks (config.tasks) and samples for any checkpoint: a train output URL, a model.pt or
    checkpoint file, or a folder holding one (model.source). Cached on the model's identity, the
    config and each text and benchmark file's identity.

    Args:
        source: a train output ({store}/train/{fingerprint}), a model.pt or training checkpoint, or a
            folder holding one.
        config: what to measure (held-out loss, text files, benchmarks) and the samples to generate.
    """
    access.check(
        {
            "source": source,
            "config.data": config.data,
            "config.tasks": config.tasks,
            "config.text_files": config.text_files,
        }
    )
    src = resolve(source, config.data)
    code = BY_NAME["evaluate"].code_version()
    files = {
        group: {n: file_identity(p) for n, p in sorted(paths.items())}
        for group, paths in (("tasks", config.tasks), ("texts", config.text_files))
        if paths
    }
    upstream = {**src.identity, **files}
    # config.data is in the identity as the tokenize fingerprint it names, not as a path
    out = src.store.stage("evaluate", fingerprint("evaluate", code, config.model_dump(exclude={"data"}), upstream))

    def work() -> bool:
        cached = out.is_committed()
        if not cached:
            result = _eval_task(out, src.model_path, src.tokenizer_path, src.val_files, config)
            result["source"] = {"url": src.store.relative(source), **src.trained}
            out.commit({"config": config, "code": code, "upstream": upstream, "counts": result})
        return cached

    cached = run_locked(out, work)
    manifest = out.read_manifest()
    res = manifest["counts"]
    artifacts.table(summary_rows(res), artifacts.output_key(out, "summary"), f"evaluation of {source}")
    artifacts.markdown(markdown(res, src.model_path), artifacts.output_key(out, "report"), "evaluation report")
    artifacts.table(
        comparison_rows(read_evaluations(src.store)),
        artifacts.store_key(src.store.url, "evaluation-runs"),
        f"every evaluation in {src.store.url}, by tokens trained",
    )
    return summary(out, manifest, cached)
