"""The sft flow: instruction tuning of a train output's model (model/sft.py), cached in
store/sft/{fingerprint} and resumable from its checkpoints like the train flow."""

from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts
from flows.common import Timer, run_locked
from flows.config import Location
from flows.stages import open_stage, summary
from flows.training import local_dir, loss_chart
from model import checkpoints
from model.sft import TOKENIZER_DIR, SFTConfig
from model.source import tokenizer_file
from model.train import CHECKPOINT
from pipeline.failpoints import failpoint
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint


@task(task_run_name="sft-{out.fingerprint}", cache_policy=NO_CACHE)
def _sft_task(out: StageDir, model_path: str, tokenizer_path: str, config: SFTConfig) -> dict:
    from model.sft import sft as run_sft

    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="tuning steps done")
    max_steps = config.schedule.max_steps
    local = local_dir(out)
    remote = os.path.abspath(local) != os.path.abspath(out.path)
    if remote and checkpoints.restore(out, local, CHECKPOINT):
        logger.info("resuming from the store's checkpoint %s", out.url(CHECKPOINT))

    def log(event: dict) -> None:
        step = event.get("step", 0)
        failpoint(f"sft:step:{step}")
        if "loss" in event and (step % max(1, max_steps // 20) == 0 or step == max_steps):
            update_progress_artifact(progress, 100.0 * step / max_steps)
            logger.info("step %d loss %.4f lr %.2e", step, event["loss"], event.get("lr", 0))
        if "val_loss" in event:
            logger.info("step %d held-out answer loss %.4f", step, event["val_loss"])
        if "checkpoint" in event and remote:
            checkpoints.upload(out, local, event["checkpoint"])

    result = run_sft(model_path, tokenizer_path, config, local, log=log)
    update_progress_artifact(progress, 100.0)
    if remote:  # the model and its tokenizer folder go to the store
        names = ["model.pt"] + [os.path.join(TOKENIZER_DIR, n) for n in os.listdir(os.path.join(local, TOKENIZER_DIR))]
        for name in names:
            with open(os.path.join(local, name), "rb") as f:
                out.write_bytes(name, f.read())
    return result


@flow(name="sft")
def sft(source: Location, config: SFTConfig = SFTConfig()) -> dict:
    """Instruction-tune the model of a train output; killed and re-run, it resumes from its last
    checkpoint.

    Args:
        source: the train output whose model.pt is the base ({store}/train/{fingerprint}).
        config: the instruction files (data.files), their rendering, and the training groups.
    """
    access.check({"source": source, "config.data.files": config.data.files})
    base = open_stage(source)
    if base.name != "train":
        raise ValueError(f"{source} is a {base.name} output; sft takes a train output")
    manifest = base.read_manifest()
    code = BY_NAME["sft"].code_version()
    upstream = {
        "stage": base.name,
        "fingerprint": base.fingerprint,
        "data": [file_identity(p) for p in config.data.files],
    }
    out = base.store.stage("sft", fingerprint("sft", code, config, upstream))

    def work() -> tuple[bool, float, dict | None]:
        cached, timing = out.is_committed(), None
        with Timer() as t:
            if not cached:
                model_path = base.local_path(manifest.get("model", "model.pt"))
                result = _sft_task(out, model_path, tokenizer_file(base), config)
                timing = result.pop("timing")  # not in the manifest: it differs between identical runs
                for side in ("before", "after"):
                    if side in result:
                        result[side].pop("seconds", None)
                out.commit(
                    {
                        "config": config,
                        "code": code,
                        "upstream": upstream,
                        "model": "model.pt",
                        "tokenizer": f"{TOKENIZER_DIR}/tokenizer.json",
                        "counts": result,
                    }
                )
        return cached, t.seconds, timing

    cached, seconds, timing = run_locked(out, work)
    manifest = out.read_manifest()
    _publish(out, manifest, seconds, cached, timing)
    return summary(out, manifest, cached)


def _publish(out: StageDir, manifest: dict, seconds: float, cached: bool, timing: dict | None) -> None:
    counts = manifest["counts"]
    rows = [{"metric": k, "value": v} for k, v in counts.items() if not isinstance(v, (list, dict))]
    for side in ("before", "after"):
        for k in ("answer_loss", "perplexity", "end_share"):
            if side in counts:
                rows.append({"metric": f"{k} ({side})", "value": round(counts[side][k], 4)})
    rows += [{"metric": "cached", "value": str(cached)}, {"metric": "wall seconds", "value": round(seconds, 2)}]
    if timing:
        rows.append({"metric": "device", "value": timing.get("device")})
    artifacts.table(rows, artifacts.output_key(out, "summary"), f"sft {out.fingerprint}")
    artifacts.output_link(out, artifacts.output_key(out, "model"), "tuned model weights", "model.pt")
    if counts.get("history"):
        artifacts.markdown(loss_chart(counts["history"]), artifacts.output_key(out, "loss-curve"), "loss curve")
    artifacts.markdown(report_markdown(counts), artifacts.output_key(out, "report"), "sft report")


def report_markdown(counts: dict) -> str:
    """Before/after figures on the held-out split and sample answers, side by side."""
    lines = ["# Instruction tuning", "", "| | base | tuned |", "|---|---:|---:|"]
    before, after = counts.get("before", {}), counts.get("after", {})
    for k, what in (("answer_loss", "held-out answer loss"), ("perplexity", "perplexity"), ("end_share", "answers ending with the end token")):  # fmt: skip
        cells = [f"{d[k]:.4f}" if k in d else "" for d in (before, after)]
        lines.append(f"| {what} | {cells[0]} | {cells[1]} |")
    lines += ["", f"{after.get('prompts', 0)} held-out prompts, greedy answers; records {counts.get('records')}.", ""]
    for i, a in enumerate(after.get("samples", [])):
        b = before.get("samples", [])[i] if i < len(before.get("samples", [])) else None
        lines += [f"## {a['record']}", "", "```", a["prompt"], "```", "", f"**reference:** {a['reference']}", ""]
        if b:
            lines += [f"**base:** {b['answer']}", ""]
        lines += [f"**tuned:** {a['answer']}", ""]
    return "\n".join(lines)
