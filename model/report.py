"""What an evaluation's artifacts show: its summary rows, its markdown report, and the table that
compares every evaluation in a store. Plain functions of evaluation results (no Prefect), kept
apart from model.evaluate so changing a report does not invalidate the evaluations themselves."""

from __future__ import annotations

import posixpath

from model.tasks import GPT2_124M_REFERENCE
from storage import Store


def summary_rows(res: dict) -> list[dict]:
    """metric/value rows: every number of the result, benchmarks and texts as name.metric."""
    rows = [{"metric": k, "value": v} for k, v in res.items() if not isinstance(v, (list, dict))]
    for group in ("texts", "tasks"):
        rows += [
            {"metric": f"{name}.{m}", "value": v}
            for name, scores in res.get(group, {}).items()
            for m, v in scores.items()
        ]
    return rows


def markdown(res: dict, model_url: str) -> str:
    """The evaluation report: perplexity on held-out shards and texts, benchmarks beside GPT-2
    124M's published scores, samples."""
    md = ["# Evaluation", "", f"Model: `{model_url}`", ""]
    shape = res.get("model", {})
    if shape:
        md += ["- " + ", ".join(f"**{k}** {v}" for k, v in shape.items() if v is not None), ""]
    src = res.get("source", {})
    if src.get("tokens_seen") is not None:
        md += [f"- **trained**: {src.get('steps')} steps, {src['tokens_seen']:,} tokens", ""]
    md += [
        "## Perplexity",
        "",
        "| text | documents | tokens | bytes | loss | perplexity | bits per byte |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    bpb = res.get("bits_per_byte")
    md.append(
        f"| held-out token shards | | {res.get('val_tokens')} | {res.get('val_bytes')} | {res['val_loss']:.4f} | "
        f"{res['perplexity']:.2f} | {'' if bpb is None else f'{bpb:.4f}'} |"
    )
    for name, t in res.get("texts", {}).items():
        md.append(
            f"| {name} | {t['documents']} | {t['tokens']} | {t['bytes']} | {t['loss']:.4f} | "
            f"{t['perplexity']:.2f} | {t['bits_per_byte']:.4f} |"
        )
    if res.get("texts"):
        md += [
            "",
            "Texts are scored in windows of block_size tokens moving on by `stride` tokens, every token "
            "once; bits per byte divide by the text's UTF-8 bytes, so they compare across tokenizers.",
        ]
    if res.get("tasks"):
        md += [
            "",
            "## Benchmarks",
            "",
            "| benchmark | items | metric | this model | GPT-2 124M (lm-eval) |",
            "|---|---:|---|---:|---:|",
        ]
        for task, scores in res["tasks"].items():
            for m, v in scores.items():
                if m != "items":
                    ref = GPT2_124M_REFERENCE.get(task, {}).get(m)
                    md.append(f"| {task} | {scores['items']} | {m} | {v:.4f} | {'' if ref is None else ref} |")
    md += ["", "## Samples", ""]
    for s in res.get("samples", []):
        md += [f"**{s['prompt']}**{s['completion']}", ""]
    return "\n".join(md)


def read_evaluations(store: Store) -> list[dict]:
    """The manifest of every committed evaluation in a store."""
    found = store.fs.glob(posixpath.join(store.root, "evaluate", "*", "manifest.json"))
    return [store.stage("evaluate", posixpath.basename(posixpath.dirname(p))).read_manifest() for p in sorted(found)]


def comparison_rows(manifests: list[dict]) -> list[dict]:
    """One row per evaluation: which model (train fingerprint or file hash), its shape and training,
    held-out loss/perplexity/bits per byte, each text's bits per byte and each benchmark's scores.
    Rows are sorted by tokens trained; every row has every column (None where it has no value)."""
    rows = []
    for m in manifests:
        res, up = m.get("counts", {}), m.get("upstream", {})
        shape, src = res.get("model", {}), res.get("source", {})
        tokens = src.get("tokens_seen") if src.get("tokens_seen") is not None else shape.get("tokens_seen")
        row = {
            "evaluation": m.get("fingerprint", "")[:12],
            "checkpoint": f"train/{up['fingerprint'][:12]}"
            if "fingerprint" in up
            else f"sha256:{up.get('model_sha256', '?')[:12]}",
            "source": src.get("url"),
            "architecture": shape.get("architecture"),
            "params": shape.get("params", res.get("params")),
        }
        row |= {k: shape.get(k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
        row |= {
            "tokens_trained": tokens,
            "val_loss": _round(res.get("val_loss")),
            "val_perplexity": _round(res.get("perplexity")),
            "val_bpb": _round(res.get("bits_per_byte")),
        }
        for name, t in sorted(res.get("texts", {}).items()):
            row[f"{name} bpb"] = _round(t.get("bits_per_byte"))
        for task, scores in sorted(res.get("tasks", {}).items()):
            row |= {f"{task} {k}": _round(v) for k, v in scores.items() if k != "items"}
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    rows.sort(key=lambda r: (r["tokens_trained"] is None, r["tokens_trained"] or 0, r["evaluation"]))
    return [{c: r.get(c) for c in columns} for r in rows]


def _round(v):
    return round(v, 4) if isinstance(v, float) else v
