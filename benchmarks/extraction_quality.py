"""HTML-to-text quality of our ingest extractors on the article-extraction benchmark (181 pages).

    .venv/bin/python benchmarks/extraction_quality.py [--data ../shared/data/html_extraction/scrapinghub-aeb]
    .venv/bin/python benchmarks/extraction_quality.py --options   # resiliparse's options one by one

Each page goes through pipeline/extract.py's own html_to_text() (the function ingest calls), once per
extractor: resiliparse (the default, main_content on), trafilatura, and resiliparse with main_content
off for reference. Scores are the scrapinghub article-extraction-benchmark's: the text is split into
\\w+ tokens and compared with the ground-truth articleBody as multisets of token 4-grams (shingles);
per page precision = matched / predicted, recall = matched / true; precision is averaged over the
pages where something was predicted, recall over the pages that have a true text, and F1 is the
harmonic mean of the two averages (not a mean of per-page F1s). The same measure with single tokens
(bag of words, n=1) is reported too. "±" is 1.96 standard deviations of F1 over 1000 bootstrap
resamples of the pages. Time is the mean wall time of html_to_text per page, one process. The gap
between trafilatura and the default is given with a paired bootstrap 95% interval (the same
resampled pages for both).

--options scores resiliparse's extract_plain_text (main_content on) with each option of OPTION_SETS
on its own and in the combinations that led to the default: how the default was chosen.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_throughput import DATA  # noqa: E402

from pipeline.ingest import ExtractTimeout, IngestConfig, html_to_text  # noqa: E402

DEFAULT_DATA = Path(DATA) / "html_extraction" / "scrapinghub-aeb"
VARIANTS = {
    "resiliparse (default)": IngestConfig(),
    "trafilatura": IngestConfig(extractor="trafilatura"),
    "resiliparse main_content=False": IngestConfig(main_content=False),
}
# resiliparse options measured by --options; the last set is what html_to_text uses.
OPTION_SETS = [
    {},
    {"alt_texts": False},
    {"comments": False},
    {"post_meta": False},
    {"list_bullets": False},
    {"preserve_formatting": False},
    {"noscript": True},
    {"hidden_elements": True},
    {"form_fields": True},
    {"links": True},
    {"comments": False, "post_meta": False},
    {"comments": False, "alt_texts": False},
    {"alt_texts": False, "comments": False, "post_meta": False},
]
WORD = re.compile(r"\w+")


def shingles(text: str, n: int) -> Counter:
    """Multiset of n-grams of \\w+ tokens; a text shorter than n tokens is one shingle of all of them."""
    tokens = WORD.findall(text or "")
    if len(tokens) < n:
        return Counter([tuple(tokens)] if tokens else [])
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


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


def gap_interval(base: list, other: list, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of F1(other) - F1(base) over bootstrap resamples of the pages (paired)."""
    rng = random.Random(seed)
    gaps = []
    for _ in range(rounds):
        pick = [rng.randrange(len(base)) for _ in base]
        gaps.append(summarize([other[i] for i in pick])["f1"] - summarize([base[i] for i in pick])["f1"])
    gaps.sort()
    return gaps[int(0.025 * rounds)], gaps[int(0.975 * rounds) - 1]


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


def options_table(pages: list) -> None:
    """F1 of resiliparse's main-content extraction with each option set of OPTION_SETS."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    trees = [HTMLTree.parse(html.decode("utf-8", errors="replace")) for _, html, _ in pages]
    plain = [extract_plain_text(tree, main_content=True) for tree in trees]
    print(
        "| resiliparse option | F1 (4-gram) | F1 (bag of words) | lines dropped | of them in the truth |\n"
        "|---|---|---|---:|---:|"
    )
    for options in OPTION_SETS:
        texts = [extract_plain_text(tree, main_content=True, **options) for tree in trees]
        f1 = [
            summarize([page_scores(truth, text, n) for (_, _, truth), text in zip(pages, texts)])["f1"] for n in (4, 1)
        ]
        # lines of resiliparse's default output that this option removes, and how many are article text
        dropped = [
            (line, truth)
            for (_, _, truth), before, after in zip(pages, plain, texts)
            for line in _lines(before) - _lines(after)
        ]
        in_truth = sum(line in truth for line, truth in dropped)
        name = ", ".join(f"`{k}={v}`" for k, v in options.items()) or "resiliparse defaults"
        print(f"| {name} | {f1[0]:.3f} | {f1[1]:.3f} | {len(dropped)} | {in_truth} |")


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with ground-truth.json and html/")
    ap.add_argument("--options", action="store_true", help="score resiliparse's options one by one instead")
    args = ap.parse_args()
    pages = load_pages(args.data)
    if args.options:
        options_table(pages)
        return 0
    results, page_pairs = {}, {}
    for name, config in VARIANTS.items():
        texts, seconds = run_variant(pages, config)
        row = {
            "pages": len(pages),
            "ms_per_page": round(seconds * 1000, 2),
            "empty_pages": sum(1 for t in texts if not t.strip()),
        }
        for n, label in ((4, "shingle4"), (1, "bow")):
            pairs = [page_scores(truth, text, n) for (_, _, truth), text in zip(pages, texts)]
            page_pairs[name, n] = pairs
            scores = summarize(pairs)
            row.update({f"{label}_{k}": round(v, 4) for k, v in scores.items()})
            row[f"{label}_f1_ci95"] = round(f1_interval(pairs), 4)
        results[name] = row
    print(f"{len(pages)} pages from {args.data}\n")
    print(
        "| extractor | P (4-gram) | R (4-gram) | F1 (4-gram) | P (bag of words) | R (bag of words) "
        "| F1 (bag of words) | ms/page | empty |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['shingle4_precision']:.3f} | {r['shingle4_recall']:.3f} "
            f"| {r['shingle4_f1']:.3f} ± {r['shingle4_f1_ci95']:.3f} | {r['bow_precision']:.3f} "
            f"| {r['bow_recall']:.3f} | {r['bow_f1']:.3f} ± {r['bow_f1_ci95']:.3f} "
            f"| {r['ms_per_page']:.1f} | {r['empty_pages']} |"
        )
    low, high = gap_interval(page_pairs["resiliparse (default)", 4], page_pairs["trafilatura", 4])
    gap = results["trafilatura"]["shingle4_f1"] - results["resiliparse (default)"]["shingle4_f1"]
    print(f"\nF1 (4-gram) of trafilatura minus the default: {gap:.3f}, paired bootstrap 95%: {low:.3f} to {high:.3f}")
    print()
    print(
        json.dumps(
            {
                "benchmark": "extraction_quality",
                "results": results,
                "gap_shingle4_f1": round(gap, 4),
                "gap_ci95": [round(low, 4), round(high, 4)],
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
