"""The classify flow: fine-tune a train output's GPT as a text classifier (model.classify), cached
at {store}/classify/{fingerprint} and resumable from its checkpoints like training."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts
from flows.config import Location
from flows.stages import summary
from flows.tuning import commit_tuned, run_tuning
from model.classify import CLASSIFIER, TOKENIZER, ClassifyConfig
from model.classify_metrics import report_markdown
from model.source import resolve
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint


def _describe(event: dict) -> list[str]:
    step, lines = event.get("step", 0), []
    if "loss" in event:
        lines.append(f"step {step} loss {event['loss']:.4f} lr {event.get('lr', 0):.2e}")
    if "val_accuracy" in event:
        lines.append(f"step {step} validation accuracy {100 * event['val_accuracy']:.2f}%")
    return lines


@task(task_run_name="classify-{out.fingerprint}", cache_policy=NO_CACHE)
def _classify_task(out: StageDir, model_path: str, tokenizer_path: str, config: ClassifyConfig) -> dict:
    from model.classify import classify as run_classify

    return run_tuning(
        out,
        config.schedule.max_steps,
        lambda local, log: run_classify(model_path, tokenizer_path, config, local, log=log),
        _describe,
        lambda local: [CLASSIFIER, TOKENIZER],
    )


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

    manifest = {"config": config, "code": code, "upstream": upstream, "model": CLASSIFIER, "tokenizer": TOKENIZER}
    cached, seconds, timing = commit_tuned(
        out, lambda: _classify_task(out, src.model_path, src.tokenizer_path, config), manifest
    )
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
