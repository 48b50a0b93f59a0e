"""The dpo flow: preference tuning of an sft (or train) output's model (model/dpo.py). The
reference's log-probabilities are an output of their own, {store}/dpo-reference/{fingerprint},
keyed by the model, the pair files and how pairs are cut, not by the loss: a second DPO run with
another beta or learning rate reads them. The tuned model is cached at {store}/dpo/{fingerprint}
and resumable from its checkpoints like the other training stages."""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import access, artifacts
from flows.common import run_locked
from flows.config import Location
from flows.stages import summary
from flows.training import loss_chart
from flows.tuning import commit_tuned, folder_files, in_processes, run_tuning
from model.dpo import TOKENIZER_DIR, DPOConfig
from model.source import resolve
from pipeline.stage_table import BY_NAME
from storage import StageDir, file_identity, fingerprint

REFERENCE_FILE = "logps.arrow"


@task(task_run_name="dpo-reference-{out.fingerprint}", cache_policy=NO_CACHE)
def _reference_task(out: StageDir, model_path: str, tokenizer_path: str, config: DPOConfig) -> dict:
    from model.dpo import compute_reference

    t = time.perf_counter()
    table = compute_reference(model_path, tokenizer_path, config)
    out.write_arrow(REFERENCE_FILE, table)
    return {"pairs": table.num_rows, "seconds": round(time.perf_counter() - t, 3)}


def _describe(event: dict) -> list[str]:
    step, lines = event.get("step", 0), []
    if "loss" in event:
        lines.append(f"step {step} loss {event['loss']:.4f} lr {event.get('lr', 0):.2e}")
    if "val_reward_accuracy" in event:
        lines.append(
            f"step {step} held-out reward accuracy {event['val_reward_accuracy']:.3f} margin {event['val_margin']:.4f}"
        )
    return lines


@task(task_run_name="dpo-{out.fingerprint}", cache_policy=NO_CACHE)
def _dpo_task(out: StageDir, ref: StageDir, model_path: str, tokenizer_path: str, config: DPOConfig) -> dict:
    entry = ("model.dpo:dpo", "model.dpo:DPOConfig")
    table = {"reference": ref.local_path(REFERENCE_FILE)}
    return run_tuning(
        out,
        config.schedule.max_steps,
        in_processes(entry, [model_path, tokenizer_path], config, out, table),
        _describe,
        lambda local: folder_files(local, "model.pt", TOKENIZER_DIR),
    )


@flow(name="dpo")
def dpo(source: Location, config: DPOConfig = DPOConfig()) -> dict:
    """Preference-tune a chat model against a frozen reference (itself): DPO or IPO on pairs of
    answers people preferred and rejected; held-out reward accuracy, margins and KL in the report.
    Killed and re-run, it resumes from its last checkpoint.

    Args:
        source: the model to tune and the reference: an sft output ({store}/sft/{fingerprint}), or a
            train output.
        config: the pair files (data.files), the loss (beta, kind) and the training groups.
    """
    access.check({"source": source, "config.data.files": config.data.files})
    if not config.data.files:
        raise ValueError("dpo needs config.data.files: preference pairs (JSON list or JSON Lines)")
    src = resolve(source)
    code = BY_NAME["dpo"].code_version()
    data = [file_identity(p) for p in config.data.files]
    cut = {"max_len": config.data.max_len, "skip_bad": config.data.skip_bad, "dtype": config.launch.dtype}
    ref = src.store.stage("dpo-reference", fingerprint("dpo-reference", code, cut, {**src.identity, "data": data}))

    def reference() -> tuple[bool, dict]:
        if ref.is_committed():
            return True, ref.read_manifest()["counts"]
        counts = _reference_task(ref, src.model_path, src.tokenizer_path, config)
        ref.commit({"config": cut, "code": code, "upstream": {**src.identity, "data": data}, "counts": counts})
        return False, counts

    ref_cached, ref_counts = run_locked(ref, reference)
    # the data files are in the identity by their content, not their paths
    upstream = {**src.identity, "data": data, "reference": ref.fingerprint}
    out = src.store.stage("dpo", fingerprint("dpo", code, config.model_dump(exclude={"data": {"files"}}), upstream))

    manifest = {
        "config": config,
        "code": code,
        "upstream": upstream,
        "model": "model.pt",
        "tokenizer": f"{TOKENIZER_DIR}/tokenizer.json",
    }
    cached, seconds, timing = commit_tuned(
        out, lambda: _dpo_task(out, ref, src.model_path, src.tokenizer_path, config), manifest
    )
    manifest = out.read_manifest()
    _publish(out, manifest, seconds, cached, timing, ref_cached, ref_counts)
    result = summary(out, manifest, cached)
    result["reference"] = {"url": ref.url(), "cached": ref_cached, **ref_counts}
    return result


def _publish(out: StageDir, manifest: dict, seconds: float, cached: bool, timing, ref_cached: bool, ref: dict) -> None:
    counts = manifest["counts"]
    test = counts.get("test", {})
    rows = [{"metric": k, "value": v} for k, v in counts.items() if not isinstance(v, (list, dict))]
    rows += [{"metric": f"test {k}", "value": round(v, 4)} for k, v in test.items() if isinstance(v, float)]
    rows += [
        {"metric": "reference log-probs", "value": "cached" if ref_cached else f"computed in {ref.get('seconds')} s"},
        {"metric": "cached", "value": str(cached)},
        {"metric": "wall seconds", "value": round(seconds, 2)},
    ]
    if timing:
        rows.append({"metric": "device", "value": timing.get("device")})
    artifacts.table(rows, artifacts.output_key(out, "summary"), f"dpo {out.fingerprint}")
    artifacts.output_link(out, artifacts.output_key(out, "model"), "tuned model weights", "model.pt")
    if counts.get("history"):
        artifacts.markdown(loss_chart(counts["history"]), artifacts.output_key(out, "loss-curve"), "loss curve")
    artifacts.markdown(report_markdown(counts), artifacts.output_key(out, "report"), "dpo report")


def report_markdown(counts: dict) -> str:
    """Held-out preference figures over training, at the end, and sample answers before and after."""
    test = counts.get("test", {})
    loss = counts.get("loss", {})
    lines = [
        "# Preference tuning",
        "",
        f"{loss.get('kind', 'sigmoid')} loss, beta {loss.get('beta')}, log-probs {loss.get('logps')}; pairs "
        f"{counts.get('pairs')}, {counts.get('pairs_cut', 0)} cut to {counts.get('max_len')} tokens.",
        "",
        "| step | train loss | val loss | val reward accuracy | val margin | val KL/token |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for h in counts.get("history", []):
        if "val_reward_accuracy" in h:
            cells = [h.get(k) for k in ("loss", "val_loss", "val_reward_accuracy", "val_margin", "val_kl_per_token")]
            lines.append(f"| {h['step']} | " + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
    if test:
        lines += ["", f"**Test split ({test.get('pairs')} pairs):** reward accuracy {test['reward_accuracy']:.4f}, "
                  f"margin {test['margin']:.4f}, chosen answer likelier than rejected: "
                  f"{test['logp_preference']:.4f} (reference: {test.get('reference_logp_preference', float('nan')):.4f})"
                  + (f", KL/token to the reference {test['kl_per_token']:.5f}" if "kl_per_token" in test else "") + "."]  # fmt: skip
    for s in counts.get("samples", []):
        lines += ["", f"## {s['record']}", "", "```", s["prompt"], "```", "", f"**chosen:** {s['chosen']}", "",
                  f"**rejected:** {s['rejected']}", ""]  # fmt: skip
        if "before" in s:
            lines += [f"**reference:** {s['before']}", ""]
        lines += [f"**tuned:** {s['after']}"]
    return "\n".join(lines)
