"""How long ingest's default extractor takes on pathological pages (docs/INGEST.md, "Pathological pages").

    .venv/bin/python benchmarks/pathological_html.py [--mb 10]

1. Why the depth guard exists: resiliparse's main-content pass on 5,000 / 10,000 / 20,000 nested
   <div>s, called directly (no guard), against plain extraction of the same tree.
2. Pages of --mb MB (ingest's max_record_bytes is 10 MB) through pipeline.ingest.html_to_text with
   the default config, the guard included: nested elements (skipped as html_too_deep), many flat
   elements, formatting tags never closed. One process, wall seconds.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts this checkout first on sys.path)

from pipeline.ingest import HtmlTooDeep, IngestConfig, html_to_text

PAGES = {  # name: (repeated opening, repeated closing)
    "nested <div>": (b"<div>", b"</div>"),
    "nested <table><tr><td>": (b"<table><tr><td>", b""),
    "nested <ul><li>": (b"<ul><li>", b""),
    "flat <span>a</span>": (b"<span>a</span>", b""),
    "<p><b><i><a> never closed": (b"<p><b><i><a href=x>t", b""),
}


def depth_series() -> None:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    print("| nested <div>s | parse s | plain text s | main content s |\n|---:|---:|---:|---:|")
    for n in (5_000, 10_000, 20_000):
        t0 = time.perf_counter()
        tree = HTMLTree.parse("<html><body>" + "<div>" * n + "x" + "</div>" * n)
        t1 = time.perf_counter()
        extract_plain_text(tree, main_content=False)
        t2 = time.perf_counter()
        extract_plain_text(tree, main_content=True)
        t3 = time.perf_counter()
        print(f"| {n:,} | {t1 - t0:.3f} | {t2 - t1:.3f} | {t3 - t2:.3f} |")


def pages(mb: float) -> None:
    size = int(mb * 1_000_000)
    print(f"\n| page ({mb:g} MB) | tags | seconds | result |\n|---|---:|---:|---|")
    for name, (opening, closing) in PAGES.items():
        n = (size - 30) // (len(opening) + len(closing))
        html = b"<html><body>" + opening * n + b"x" + closing * n
        t0 = time.perf_counter()
        try:
            text = html_to_text(html, "utf-8", IngestConfig())[1]
            result = f"extracted, {len(text):,} chars"
        except HtmlTooDeep:
            result = "skipped, html_too_deep"
        print(f"| {name} | {n * opening.count(b'<'):,} | {time.perf_counter() - t0:.2f} | {result} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=10, help="size of each pathological page in MB (default 10)")
    args = ap.parse_args()
    depth_series()
    pages(args.mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
