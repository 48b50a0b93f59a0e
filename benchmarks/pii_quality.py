"""PII stage quality and throughput against plain presidio, same recognizers, same run.

    .venv/bin/python benchmarks/pii_quality.py                 # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/pii_quality.py --gutenberg 1000 # fewer book windows

Quality, on presidio-research's labelled texts in ../shared/data/pii (generated_large and
synth_dataset_v2; generated_small is a sample of the large file), for each entity type the stage
handles by default plus SSN: recall by span overlap (a gold span counts as found when a found span
of the same type overlaps it), recall by value (the gold value no longer occurs in the scrubbed
text, like tests/test_pii.py), and precision (found spans overlapping a gold span of the same type).
(a) plain presidio: AnalyzerEngine with a blank spaCy pipeline (spacy.blank('en') saved to disk,
what a user without a downloaded model gets) and the same recognizers, on each whole document;
(b) ours: pipeline.pii.scrub with the same entity list.

Throughput per core (the process pinned to one core; CPU seconds): plain presidio with the blank
spaCy pipeline, plain presidio with NoOpNlpEngine, and ours, each warmed up first, on three corpora:
the labelled texts (PII-dense: most contain digits), Gutenberg books cut into ~200-word windows,
and the web text the ingest stage extracts from ../shared/data/warc (every language kept).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import DATA as SHARED_DATA
from common import machine, pin

from pipeline.pii import (
    PiiConfig,
    Span,
    analyzer,
    presidio_spans,
    replace_spans,
    resolve_overlaps,
    scan,
    scrub,
)
from pipeline.schema import docs_from_rows

DATA = Path(SHARED_DATA)
LABELLED = ["pii/presidio-generated_large.json", "pii/presidio-synth_dataset_v2.json"]
TYPES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN"]


def blank_spacy_engine(entities: list[str], folder: str):
    """presidio AnalyzerEngine on spacy.blank('en') saved to `folder`, with our recognizers."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    spacy.blank("en").to_disk(folder)
    nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": folder}])
    nlp.load()
    return AnalyzerEngine(nlp_engine=nlp, registry=analyzer(tuple(entities)).registry, supported_languages=["en"])


def engine_spans(engine, text: str, config: PiiConfig) -> list[Span]:
    return sorted(
        Span(r.start, r.end, r.entity_type, float(r.score))
        for r in engine.analyze(
            text, language="en", entities=list(config.entities), score_threshold=config.score_threshold
        )
    )


def quality(records: list[dict], found: list[list[tuple[int, int, str]]], scrubbed: list[str]) -> dict:
    """Per type: gold, found, recall (overlap), recall (value gone), precision (overlap)."""
    out = {}
    for t in TYPES:
        gold = hit = gone = n_found = good = 0
        for rec, spans, text in zip(records, found, scrubbed):
            golds = [g for g in rec["spans"] if g["entity_type"] == t]
            mine = [s for s in spans if s[2] == t]
            gold += len(golds)
            hit += sum(any(s[0] < g["end_position"] and g["start_position"] < s[1] for s in mine) for g in golds)
            gone += sum(g["entity_value"] not in text for g in golds)
            n_found += len(mine)
            good += sum(any(s[0] < g["end_position"] and g["start_position"] < s[1] for g in golds) for s in mine)
        out[t] = {
            "gold": gold,
            "found": n_found,
            "recall": hit / gold if gold else float("nan"),
            "recall_value": gone / gold if gold else float("nan"),
            "precision": good / n_found if n_found else float("nan"),
        }
    return out


def web_docs() -> list[dict]:
    from pipeline.ingest import IngestConfig, ingest_file

    rows = []
    for path in sorted((DATA / "warc").glob("*.warc.gz")):
        rows += ingest_file(str(path), IngestConfig(languages=[])).kept.select(["text", "language"]).to_pylist()
    return rows


def gutenberg_docs(n: int) -> list[dict]:
    from dedup_corpus import windows

    return [{"text": d["text"], "language": "en"} for d in windows()[:n]]


def timed(fn, docs: list[dict]) -> float:
    fn(docs[:20])  # warm-up: phonenumbers loads region metadata, tldextract its suffix list
    t0 = time.process_time()
    fn(docs)
    return time.process_time() - t0


def throughput(corpora: dict[str, list[dict]], config: PiiConfig, blank) -> list[dict]:
    noop = analyzer(tuple(config.entities))
    methods = {
        "presidio, blank spaCy": lambda docs: [engine_spans(blank, d["text"], config) for d in docs],
        "presidio, NoOpNlpEngine": lambda docs: [engine_spans(noop, d["text"], config) for d in docs],
        "ours (pipeline.pii.scrub)": lambda docs: scrub(
            docs_from_rows([{"id": str(i), **d} for i, d in enumerate(docs)]), config
        ),
    }
    rows = []
    for corpus, docs in corpora.items():
        mb = sum(len(d["text"].encode()) for d in docs) / 1e6
        base = None
        for name, fn in methods.items():
            cpu = timed(fn, docs)
            base = base or cpu
            rows.append(
                {
                    "corpus": corpus,
                    "docs": len(docs),
                    "mb": mb,
                    "method": name,
                    "cpu_s": cpu,
                    "docs_s": len(docs) / cpu,
                    "mb_s": mb / cpu,
                    "speedup": base / cpu,
                }
            )
    return rows


def phone_floor(corpora: dict[str, list[dict]], config: PiiConfig) -> dict[str, tuple[float, int]]:
    """Per corpus: wall seconds our run spends inside phonenumbers' own parse-and-verify (the
    per-region validity check presidio's answer depends on) and the number of those calls. Measured
    in a separate run, with a wrapper around the call, after the fast path has checked its sources."""
    import phonenumbers.phonenumbermatcher as pm

    from pipeline.pii import _phone_fast

    assert _phone_fast() is not None, "the phone fast path is off: phonenumbers or presidio changed"
    original, spent = pm.PhoneNumberMatcher._parse_and_verify, [0.0, 0]

    def timed(self, candidate, offset):
        t0 = time.perf_counter()
        try:
            return original(self, candidate, offset)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += 1

    out = {}
    pm.PhoneNumberMatcher._parse_and_verify = timed
    try:
        for corpus, docs in corpora.items():
            spent[:] = [0.0, 0]
            scrub(docs_from_rows([{"id": str(i), **d} for i, d in enumerate(docs)]), config)
            out[corpus] = (spent[0], spent[1])
    finally:
        pm.PhoneNumberMatcher._parse_and_verify = original
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gutenberg", type=int, default=3000, help="Gutenberg windows for throughput")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    args = ap.parse_args()
    pinned = pin(args.core if args.core >= 0 else None)
    config = PiiConfig(entities=TYPES)
    records = [r for f in LABELLED for r in json.loads((DATA / f).read_text())]
    with tempfile.TemporaryDirectory() as tmp:
        blank = blank_spacy_engine(config.entities, os.path.join(tmp, "blank_en"))
        texts = [r["full_text"] for r in records]
        plain = [engine_spans(blank, t, config) for t in texts]
        noop = [presidio_spans(t, config) for t in texts]
        fast = scan(texts, config)[0]
        same = (sum(a == b for a, b in zip(plain, noop)), sum(a == b for a, b in zip(fast, noop)))
        plain = [resolve_overlaps(s) for s in plain]
        plain_text = [replace_spans(t, s, config) for t, s in zip(texts, plain)]
        result = scrub(docs_from_rows([{"id": str(i), "text": t} for i, t in enumerate(texts)]), config)
        ours = [resolve_overlaps(s) for s in fast]
        q_plain, q_ours = (
            quality(records, plain, plain_text),
            quality(records, ours, result.kept.column("text").to_pylist()),
        )
        corpora = {
            "labelled PII texts": [{"text": t, "language": "en"} for t in texts],
            "Gutenberg windows": gutenberg_docs(args.gutenberg),
            "web (ingest of shared/data/warc)": web_docs(),
        }
        rows = throughput(corpora, config, blank)
        floor = phone_floor(corpora, config)
    m = machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; pinned to core {args.core}: {pinned}\n")
    print(
        f"Labelled texts: {len(records)} ({', '.join(f.split('/')[-1] for f in LABELLED)}). Same spans and "
        f"scores as presidio with NoOpNlpEngine on the whole text: plain presidio (blank spaCy) in "
        f"{same[0]}/{len(texts)} texts, ours in {same[1]}/{len(texts)}.\n"
    )
    print(
        "| type | gold | plain: found | plain: recall (overlap) | plain: recall (value gone) | plain: precision "
        "| ours: found | ours: recall (overlap) | ours: recall (value gone) | ours: precision |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in TYPES:
        a, b = q_plain[t], q_ours[t]
        print(
            f"| {t} | {a['gold']} | {a['found']} | {a['recall']:.3f} | {a['recall_value']:.3f} | {a['precision']:.3f} "
            f"| {b['found']} | {b['recall']:.3f} | {b['recall_value']:.3f} | {b['precision']:.3f} |"
        )
    print("\n| corpus | docs | MB | method | CPU s | docs/s per core | MB/s per core | speed-up vs blank spaCy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['docs']} | {r['mb']:.2f} | {r['method']} | {r['cpu_s']:.2f} | {r['docs_s']:.0f} "
            f"| {r['mb_s']:.3f} | {r['speedup']:.1f}x |"
        )
    print(
        "\nphonenumbers' parse-and-verify inside our run (the per-region checks presidio's answer needs), "
        "and the speed-up it alone allows:\n"
    )
    print("| corpus | calls | seconds | presidio (blank spaCy) CPU s | ceiling from these calls alone |")
    print("|---|---|---|---|---|")
    for corpus, (secs, calls) in floor.items():
        base = next(r["cpu_s"] for r in rows if r["corpus"] == corpus)
        print(f"| {corpus} | {calls} | {secs:.2f} | {base:.2f} | {base / max(secs, 1e-9):.1f}x |")
    print(
        json.dumps(
            {"phone_floor": floor, "quality": {"plain": q_plain, "ours": q_ours}, "throughput": rows, "machine": m},
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
