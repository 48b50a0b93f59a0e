"""HTML-to-text quality of our ingest extractors on the article-extraction benchmark (181 pages).

    .venv/bin/python benchmarks/extraction_quality.py [--data ../shared/data/html_extraction/scrapinghub-aeb]

Each page goes through pipeline/ingest.py's own html_to_text() (the function ingest calls), once per
extractor: resiliparse (the default, main_content on), trafilatura, and resiliparse with main_content
off for reference. Scores are the scrapinghub article-extraction-benchmark's: the text is split into
\\w+ tokens and compared with the ground-truth articleBody as multisets of token 4-grams (shingles);
per page precision = matched / predicted, recall = matched / true; precision is averaged over the
pages where something was predicted, recall over the pages that have a true text, and F1 is the
harmonic mean of the two averages (not a mean of per-page F1s). The same measure with single tokens
(bag of words, n=1) is reported too. "±" is 1.96 standard deviations of F1 over 1000 bootstrap
resamples of the pages. Time is the mean wall time of html_to_text per page, one process.

Prints a markdown table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ingest import ExtractTimeout, IngestConfig, html_to_text  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "html_extraction" / "scrapinghub-aeb"
VARIANTS = {
    "resiliparse (default)": IngestConfig(),
    "trafilatura": IngestConfig(extractor="trafilatura"),
    "resiliparse main_content=False": IngestConfig(main_content=False),
}
WORD = re.compile(r"\w+")


def shingles(text: str, n: int) -> Counter:
    """Multiset of n-grams of \\w+ tokens; a text shorter than n tokens is one shingle of all of them."""
    tokens = WORD.findall(text or "")
    if len(tokens) < n:
        return Counter([tuple(tokens)] if tokens else [])
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def page_scores(true: str, pred: str, n: int) -> tuple[float | None, float | None]:
    """(precision, recall) of one page; None where the benchmark leaves the page out of that mean."""
    t, p = shingles(true, n), shingles(pred, n)
    matched = sum((t & p).values())
    n_pred, n_true = sum(p.values()), sum(t.values())
    precision = matched / n_pred if n_pred else None
    recall = matched / n_true if n_true else None
    return precision, recall


def summarize(pairs: list[tuple[float | None, float | None]]) -> dict:
    """Mean precision, mean recall and the F1 of those two means."""
    precisions = [p for p, _ in pairs if p is not None]
    recalls = [r for _, r in pairs if r is not None]
    precision = statistics.mean(precisions) if precisions else 0.0
    recall = statistics.mean(recalls) if recalls else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def f1_interval(pairs: list, rounds: int = 1000, seed: int = 0) -> float:
    """1.96 standard deviations of F1 over bootstrap resamples of the pages."""
    rng = random.Random(seed)
    values = [summarize([pairs[rng.randrange(len(pairs))] for _ in pairs])["f1"] for _ in range(rounds)]
    return 1.96 * statistics.stdev(values)


def overlap(true: str, pred: str, n: int = 1) -> dict:
    """Precision, recall and F1 of `pred` against `true` for one pair of texts (also used by wet_comparison)."""
    precision, recall = page_scores(true, pred, n)
    return summarize([(precision, recall)])


def load_pages(data: Path) -> list[tuple[str, bytes, str]]:
    """(id, HTML bytes, ground-truth articleBody) for every page, in id order."""
    truth = json.loads((data / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for key in sorted(truth):
        html = gzip.decompress((data / "html" / f"{key}.html.gz").read_bytes())
        pages.append((key, html, truth[key].get("articleBody") or ""))
    return pages


def run_variant(pages: list, config: IngestConfig) -> tuple[list[str], float]:
    """Extracted text per page (empty after a timeout) and mean seconds per page."""
    html_to_text(pages[0][1], "utf-8", config)  # warm up: imports, models, caches
    texts, start = [], time.perf_counter()
    for _, html, _ in pages:
        try:
            texts.append(html_to_text(html, "utf-8", config)[1])  # the benchmark's pages are all UTF-8
        except ExtractTimeout:
            texts.append("")
    return texts, (time.perf_counter() - start) / len(pages)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with ground-truth.json and html/")
    args = ap.parse_args()
    pages = load_pages(args.data)
    results = {}
    for name, config in VARIANTS.items():
        texts, seconds = run_variant(pages, config)
        row = {"pages": len(pages), "ms_per_page": round(seconds * 1000, 2),
               "empty_pages": sum(1 for t in texts if not t.strip())}
        for n, label in ((4, "shingle4"), (1, "bow")):
            pairs = [page_scores(truth, text, n) for (_, _, truth), text in zip(pages, texts)]
            scores = summarize(pairs)
            row.update({f"{label}_{k}": round(v, 4) for k, v in scores.items()})
            row[f"{label}_f1_ci95"] = round(f1_interval(pairs), 4)
        results[name] = row
    print(f"{len(pages)} pages from {args.data}\n")
    print("| extractor | P (4-gram) | R (4-gram) | F1 (4-gram) | P (bag of words) | R (bag of words) "
          "| F1 (bag of words) | ms/page | empty |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['shingle4_precision']:.3f} | {r['shingle4_recall']:.3f} "
              f"| {r['shingle4_f1']:.3f} ± {r['shingle4_f1_ci95']:.3f} | {r['bow_precision']:.3f} "
              f"| {r['bow_recall']:.3f} | {r['bow_f1']:.3f} ± {r['bow_f1_ci95']:.3f} "
              f"| {r['ms_per_page']:.1f} | {r['empty_pages']} |")
    print()
    print(json.dumps({"benchmark": "extraction_quality", "results": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
