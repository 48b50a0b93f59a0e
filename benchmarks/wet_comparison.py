"""Common Crawl's own WET text of a page against our ingest text of the same page's WARC record.

    .venv/bin/python benchmarks/wet_comparison.py [--data ../shared/data]

Reads warc/cc-whirlwind.warc.wet.gz (CC-MAIN-2024-22's text of an.wikipedia.org/wiki/Escopete) and
warc/cc-whirlwind.warc.gz (the same capture as HTML) with pipeline/ingest.py's ingest_file, once per
extractor setting, and prints sizes, line counts, bag-of-words precision/recall/F1 of our text with
the WET text as the reference (the scoring of benchmarks/extraction_quality.py, single tokens), and
a few lines found on one side only. docs/INGEST.md discusses the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import DATA
from extraction_quality import WORD, overlap

from pipeline.ingest import IngestConfig, ingest_file

DEFAULT_DATA = Path(DATA)
VARIANTS = {
    "resiliparse (default)": {},
    "resiliparse main_content=False": {"main_content": False},
    "trafilatura": {"extractor": "trafilatura"},
}


def page_text(path: Path, **settings) -> tuple[str, str]:
    """(url, text) of the one document of a whirlwind file; every language and length is kept."""
    result = ingest_file(str(path), IngestConfig(languages=[], min_chars=0, **settings))
    [doc] = result.kept.to_pylist()
    return doc["url"], doc["text"]


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def normalized(line: str) -> str:
    """A line compared by its words only, so bullets and spacing do not count as differences."""
    return " ".join(WORD.findall(line)).lower()


def one_side_only(lines: list[str], other: list[str], limit: int) -> list[str]:
    other_keys = {normalized(line) for line in other}
    out = [line for line in lines if normalized(line) and normalized(line) not in other_keys]
    return out[:limit]


def describe(text: str) -> dict:
    return {
        "chars": len(text),
        "bytes": len(text.encode("utf-8")),
        "lines": len(lines_of(text)),
        "tokens": len(WORD.findall(text)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared/data folder")
    ap.add_argument("--examples", type=int, default=6, help="lines to show from each side")
    args = ap.parse_args()
    wet_url, wet = page_text(args.data / "warc" / "cc-whirlwind.warc.wet.gz")
    report = {"url": wet_url, "wet": describe(wet), "ours": {}}
    print(f"page: {wet_url}\nWET text: {json.dumps(report['wet'])}\n")
    print("| our text | chars | lines | tokens | P vs WET | R vs WET | F1 vs WET |")
    print("|---|---|---|---|---|---|---|")
    texts = {}
    for name, settings in VARIANTS.items():
        url, ours = page_text(args.data / "warc" / "cc-whirlwind.warc.gz", **settings)
        assert url == wet_url, (url, wet_url)
        texts[name] = ours
        row = {**describe(ours), **{k: round(v, 3) for k, v in overlap(wet, ours, n=1).items()}}
        report["ours"][name] = row
        print(
            f"| {name} | {row['chars']} | {row['lines']} | {row['tokens']} | {row['precision']:.3f} "
            f"| {row['recall']:.3f} | {row['f1']:.3f} |"
        )
    ours = texts["resiliparse (default)"]
    only_wet = one_side_only(lines_of(wet), lines_of(ours), args.examples)
    only_ours = one_side_only(lines_of(ours), lines_of(wet), args.examples)
    print("\nlines only in the WET text (first few):")
    print("\n".join(f"  {line[:100]}" for line in only_wet))
    print("lines only in our default text (first few):")
    print("\n".join(f"  {line[:100]}" for line in only_ours) or "  (none)")
    report["only_wet"], report["only_ours"] = only_wet, only_ours
    print()
    print(json.dumps({"benchmark": "wet_comparison", **report}, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
