"""The sft flow: instruction tuning of a train output's model (model/sft.py), cached in
store/sft/{fingerprint} and resumable from its checkpoints like the train flow."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts
from flows.config import Location
from flows.stages import summary
from flows.training import loss_chart
from flows.tuning import commit_tuned, folder_files, in_processes, run_tuning
from model.sft import TOKENIZER_DIR, SFTConfig
from model.source import resolve
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint


def _describe(event: dict) -> list[str]:
    step, lines = event.get("step", 0), []
    if "loss" in event:
        lines.append(f"step {step} loss {event['loss']:.4f} lr {event.get('lr', 0):.2e}")
    if "val_loss" in event:
        lines.append(f"step {step} held-out answer loss {event['val_loss']:.4f}")
    return lines


@task(task_run_name="sft-{out.fingerprint}", cache_policy=NO_CACHE)
def _sft_task(out: StageDir, model_path: str, tokenizer_path: str, config: SFTConfig) -> dict:
    return run_tuning(
        out,
        config.schedule.max_steps,
        in_processes(("model.sft:sft", "model.sft:SFTConfig"), [model_path, tokenizer_path], config, out),
        _describe,
        lambda local: folder_files(local, "model.pt", TOKENIZER_DIR),
    )


@flow(name="sft")
def sft(source: Location, config: SFTConfig = SFTConfig()) -> dict:
    """Instruction-tune a pretrained model; killed and re-run, it resumes from its last
    checkpoint.

    Args:
        source: the model to tune: a train output ({store}/train/{fingerprint}), an sft output, a
            model.pt or a checkpoint (model/source.py).
        config: the instruction files (data.files), their rendering, and the training groups.
    """
    access.check({"source": source, "config.data.files": config.data.files})
    src = resolve(source)
    code = BY_NAME["sft"].code_version()
    upstream = {**src.identity, "data": [file_identity(p) for p in config.data.files]}
    out = src.store.stage("sft", fingerprint("sft", code, config, upstream))

    def train() -> dict:
        result = _sft_task(out, src.model_path, src.tokenizer_path, config)
        for side in ("before", "after"):
            result.get(side, {}).pop("seconds", None)
        return result

    manifest = {"config": config, "code": code, "upstream": upstream, "model": "model.pt"}
    cached, seconds, timing = commit_tuned(out, train, {**manifest, "tokenizer": f"{TOKENIZER_DIR}/tokenizer.json"})
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
        judge = counts.get(side, {}).get("judge")
        if judge:
            rows.append({"metric": f"judge score 0-100 ({side})", "value": judge["mean_score"]})
            rows.append(
                {"metric": f"judge replies not a score ({side})", "value": judge["unparsable"] + judge["out_of_range"]}
            )
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
    if "judge" in after:
        cells = [f"{d['judge']['mean_score']:.1f}" if d.get("judge", {}).get("mean_score") is not None else "" for d in (before, after)]  # fmt: skip
        lines.append(f"| judge score 0-100 ({after['judge']['judge']['model']}) | {cells[0]} | {cells[1]} |")
    lines += ["", f"{after.get('prompts', 0)} held-out prompts, greedy answers; records {counts.get('records')}.", ""]
    if after.get("tasks"):
        lines += ["| benchmark (items) | base zero-shot | base chat | tuned zero-shot | tuned chat |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, t in after["tasks"].items():
            b = before.get("tasks", {}).get(name, {})
            cells = [f"{d['acc']:.4f}" if d else "" for d in (b.get("zero_shot"), b.get("chat"), t["zero_shot"], t["chat"])]  # fmt: skip
            lines.append(f"| {name} ({t['chat']['items']}) | " + " | ".join(cells) + " |")
        lines += ["", "acc; chat: the context as the user's turn, each choice scored as the start of the answer.", ""]
    for i, a in enumerate(after.get("samples", [])):
        b = before.get("samples", [])[i] if i < len(before.get("samples", [])) else None
        lines += [f"## {a['record']}", "", "```", a["prompt"], "```", "", f"**reference:** {a['reference']}", ""]
        if b:
            lines += [f"**base:** {b['answer']}", ""]
        lines += [f"**tuned:** {a['answer']}", ""]
    return "\n".join(lines)
