"""The classify flow: fine-tune a train output's GPT as a text classifier (model.classify), cached
at {store}/classify/{fingerprint} and resumable from its checkpoints like training."""

from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts
from flows.common import Timer, run_locked
from flows.config import Location
from flows.stages import summary
from model import checkpoints
from model.classify import CHECKPOINT, CLASSIFIER, TOKENIZER, ClassifyConfig
from model.classify_metrics import report_markdown
from model.source import resolve
from pipeline.failpoints import failpoint
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint, is_local


def local_dir(out: StageDir) -> str:
    """Checkpoints are written to a local folder: the stage folder itself on a local store."""
    if is_local(out.fs):
        out.fs.makedirs(out.path, exist_ok=True)
        return out.path
    path = os.path.join(
        os.environ.get("CRAWL2LLM_CACHE", os.path.expanduser("~/.cache/crawl2llm")), "classify", out.fingerprint
    )
    os.makedirs(path, exist_ok=True)
    return path


@task(task_run_name="classify-{out.fingerprint}", cache_policy=NO_CACHE)
def _classify_task(out: StageDir, model_path: str, tokenizer_path: str, config: ClassifyConfig) -> dict:
    from model.classify import classify as run_classify

    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="fine-tuning steps done")
    max_steps = config.schedule.max_steps
    local = local_dir(out)
    remote = os.path.abspath(local) != os.path.abspath(out.path)

    def log(event: dict) -> None:
        step = event.get("step", 0)
        failpoint(f"classify:step:{step}")
        if "loss" in event and (step % max(1, max_steps // 20) == 0 or step == max_steps):
            update_progress_artifact(progress, 100.0 * step / max_steps)
            logger.info("step %d loss %.4f lr %.2e", step, event["loss"], event.get("lr", 0))
        if "val_accuracy" in event:
            logger.info("step %d validation accuracy %.2f%%", step, 100 * event["val_accuracy"])
        if "checkpoint" in event and remote:
            checkpoints.upload(out, local, event["checkpoint"])

    if remote and checkpoints.restore(out, local, CHECKPOINT):
        logger.info("resuming from the store's checkpoint %s (not in this machine's cache)", out.url(CHECKPOINT))
    result = run_classify(model_path, tokenizer_path, config, local, log=log)
    if remote:
        for name in (CLASSIFIER, TOKENIZER):
            out.upload(name, os.path.join(local, name))
    update_progress_artifact(progress, 100.0)
    return result


@flow(name="classify")
def classify(source: Location, config: ClassifyConfig = ClassifyConfig()) -> dict:
    """Fine-tune a pretrained GPT as a text classifier on labelled texts (config.data_file: the SMS
    Spam Collection's .tsv, a .csv or JSON Lines); killed and re-run, it resumes from its last
    checkpoint. Test-split accuracy, per-class precision/recall/F1 and the confusion matrix are in
    its summary and report artifacts; `crawl2llm predict OUTPUT TEXT...` classifies new texts.

    Args:
        source: the train output whose model is fine-tuned ({store}/train/{fingerprint}).
        config: the labelled data and its split, the head, what trains, and the training groups.
    """
    access.check({"source": source, "config.data_file": config.data_file})
    if not config.data_file:
        raise ValueError("classify needs config.data_file: the labelled texts (.tsv, .csv or JSON Lines)")
    src = resolve(source)
    code = BY_NAME["classify"].code_version()
    upstream = {**src.identity, "data": file_identity(config.data_file)}
    # the data file is in the identity by its content, not its path
    fp = fingerprint("classify", code, config.model_dump(exclude={"data_file"}), upstream)
    out = src.store.stage("classify", fp)

    def work() -> tuple[bool, float, dict | None]:
        cached, timing = out.is_committed(), None
        with Timer() as t:
            if not cached:
                result = _classify_task(out, src.model_path, src.tokenizer_path, config)
                timing = result.pop("timing")  # not in the manifest: it differs between identical runs
                out.commit(
                    {
                        "config": config,
                        "code": code,
                        "upstream": upstream,
                        "model": CLASSIFIER,
                        "tokenizer": TOKENIZER,
                        "counts": result,
                    }
                )
        return cached, t.seconds, timing

    cached, seconds, timing = run_locked(out, work)
    manifest = out.read_manifest()
    _publish(out, manifest, seconds, cached, timing)
    return summary(out, manifest, cached)


def _publish(out: StageDir, manifest: dict, seconds: float, cached: bool, timing: dict | None) -> None:
    from flows.training import loss_chart

    counts = manifest["counts"]
    test = counts.get("test", {})
    rows = [{"metric": k, "value": v} for k, v in counts.items() if not isinstance(v, (list, dict))]
    rows += [
        {"metric": "test accuracy", "value": test.get("accuracy")},
        {"metric": "cached", "value": str(cached)},
        {"metric": "wall seconds", "value": round(seconds, 2)},
    ]
    if timing:
        rows.append({"metric": "device", "value": timing.get("device")})
    artifacts.table(rows, artifacts.output_key(out, "summary"), f"classify {out.fingerprint}")
    artifacts.output_link(out, artifacts.output_key(out, "model"), "classifier weights", CLASSIFIER)
    if test:
        per_class = [
            {"class": label, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
            for label, m in test["per_class"].items()
        ]
        artifacts.table(per_class, artifacts.output_key(out, "per-class"), "test split: per-class metrics")
        confusion = [
            {"true \\ predicted": label, **dict(zip(test["labels"], row))}
            for label, row in zip(test["labels"], test["confusion"])
        ]
        artifacts.table(confusion, artifacts.output_key(out, "confusion"), "test split: confusion matrix")
        artifacts.markdown(
            "# Test split\n\n" + report_markdown(test), artifacts.output_key(out, "report"), "classification report"
        )
    history = counts.get("history", [])
    if history:
        chart = loss_chart(history)
        val = [(h["step"], h["val_accuracy"]) for h in history if "val_accuracy" in h]
        if val:
            chart += "\n\n| step | validation accuracy |\n|---:|---:|\n"
            chart += "\n".join(f"| {s} | {100 * a:.2f}% |" for s, a in val)
        artifacts.markdown(chart, artifacts.output_key(out, "loss-curve"), "loss curve")
