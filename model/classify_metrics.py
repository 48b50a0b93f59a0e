"""What a classifier's report says: accuracy, per-class precision, recall and F1 (with their macro
means), and the confusion matrix (rows: the true class, columns: the predicted one)."""

from __future__ import annotations


def classification_report(truth: list[int], predicted: list[int], labels: list[str]) -> dict:
    if len(truth) != len(predicted) or not truth:
        raise ValueError(f"need as many predictions as answers, and some: {len(truth)} vs {len(predicted)}")
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(truth, predicted):
        matrix[t][p] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        said = sum(matrix[r][i] for r in range(k))
        real = sum(matrix[i])
        precision = tp / said if said else 0.0
        recall = tp / real if real else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": real}
    macro = {m: sum(c[m] for c in per_class.values()) / k for m in ("precision", "recall", "f1")}
    return {
        "accuracy": sum(matrix[i][i] for i in range(k)) / len(truth),
        "examples": len(truth),
        "per_class": per_class,
        "macro": macro,
        "confusion": matrix,
        "labels": labels,
    }


def report_markdown(report: dict) -> str:
    """The report as the markdown tables an artifact shows."""
    labels = report["labels"]
    lines = [
        f"Accuracy **{100 * report['accuracy']:.2f}%** of {report['examples']} examples.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, c in report["per_class"].items():
        lines.append(f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    m = report["macro"]
    lines += [
        f"| macro mean | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | |",
        "",
        "| true \\ predicted | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    lines += [
        f"| {label} | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(labels, report["confusion"])
    ]
    return "\n".join(lines)
