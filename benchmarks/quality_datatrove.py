"""Quality stage against datatrove's filters (issue 5): decision agreement per rule and per chain, the
causes of every disagreement with examples, and throughput per core, in one run.

    python3 -m venv /work/dt-venv && /work/dt-venv/bin/pip install 'datatrove[processing]==0.10.1' spacy pyarrow
    .venv/bin/python benchmarks/quality_datatrove.py --datatrove-python /work/dt-venv/bin/python   # ~10 min

datatrove runs in its own venv (its pins clash with ours) through benchmarks/datatrove_filters.py;
documents go to it and decisions come back as Parquet files in a temporary folder. Its English word
tokenizer is spacy.blank("en") with a sentencizer: no model or nltk download, works offline.

Corpus: the documents our ingest stage keeps (pipeline.ingest.ingest_file, default config: English,
>= 100 characters) from every archive in ../shared/data/warc and the two dolma CCNet JSONL files in
../shared/data/text, plus every Gutenberg book of ../shared/data/text cut into ~200-word windows of
whole paragraphs (benchmarks/dedup_corpus.py, the dedup benchmarks' corpus).

Per rule: our stage with only that rule on (filter_quality, QualityConfig(rules=[rule])) beside
datatrove's filter with only the matching check on (a check is off when its threshold is None, -1 or
False; FineWebQualityFilter has no off switch, so its other thresholds are set where they cannot
fail: line_punct_thr 0, short_line_thr 1, char_duplicates_ratio 1, new_line_ratio inf).
datatrove's GopherQualityFilter has one threshold for both the '#' and the ellipsis ratio
(max_symbol_word_ratio), checked hashes first: both rules run as one datatrove job and are told
apart by its reason string; a document that fails datatrove's hash check never reaches its ellipsis
check and is left out of gopher_ellipsis_ratio's row. For C4's line rules, which rewrite the text,
the kept texts are compared too (exactly, and with blank lines and line-edge spaces ignored).

Chains: (a) Gopher quality + Gopher repetition (our default families) against [GopherQualityFilter(),
GopherRepetitionFilter()]; (b) FineWeb's recipe [GopherRepetitionFilter(), GopherQualityFilter(),
C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter()] against our Gopher, C4
(without c4_line_punct) and FineWeb rules. A C4 rule pipeline.quality does not have yet is left out
(the table says so), and while none exists chain (b) runs without C4 on both sides.

Throughput: --timing-docs documents drawn at random from the corpus (0: all); ours = filter_quality
over one Arrow table of them, datatrove = a loop of the chain's .filter calls over prebuilt
Document objects; each process pinned to one core (os.sched_setaffinity), no file IO timed, best of
--repeats, one after the other (never both at once).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import DATA as SHARED_DATA
from common import machine
from dedup_corpus import windows

import pipeline.quality as Q
from pipeline.ingest import INPUT_SUFFIXES, IngestConfig, ingest_file
from pipeline.schema import docs_from_rows

DATA = Path(SHARED_DATA)
HELPER = Path(__file__).resolve().parent / "datatrove_filters.py"

GQ_OFF = dict(
    min_doc_words=None,
    max_doc_words=None,
    min_avg_word_length=None,
    max_avg_word_length=None,
    max_symbol_word_ratio=None,
    max_bullet_lines_ratio=None,
    max_ellipsis_lines_ratio=None,
    max_non_alpha_words_ratio=None,
    min_stop_words=None,
)
GR_OFF = dict(
    dup_line_frac=None,
    dup_para_frac=None,
    dup_line_char_frac=None,
    dup_para_char_frac=None,
    top_n_grams=[],
    dup_n_grams=[],
)
C4_OFF = dict(
    remove_citations=False,
    filter_no_terminal_punct=False,
    min_num_sentences=-1,
    min_words_per_line=-1,
    max_word_length=-1,
    filter_lorem_ipsum=False,
    filter_javascript=False,
    filter_curly_bracket=False,
    filter_policy=False,
)
FW_OFF = dict(line_punct_thr=0.0, short_line_thr=1.0, char_duplicates_ratio=1.0, new_line_ratio=float("inf"))

# our rule -> (datatrove job, the datatrove filter and the one check switched on)
SINGLE = {
    "gopher_word_count": ("GopherQualityFilter", dict(min_doc_words=50, max_doc_words=100_000)),
    "gopher_mean_word_length": ("GopherQualityFilter", dict(min_avg_word_length=3, max_avg_word_length=10)),
    "gopher_hash_ratio": ("GopherQualityFilter", dict(max_symbol_word_ratio=0.1)),
    "gopher_ellipsis_ratio": ("GopherQualityFilter", dict(max_symbol_word_ratio=0.1)),
    "gopher_bullet_lines": ("GopherQualityFilter", dict(max_bullet_lines_ratio=0.9)),
    "gopher_ellipsis_lines": ("GopherQualityFilter", dict(max_ellipsis_lines_ratio=0.3)),
    "gopher_alpha_words": ("GopherQualityFilter", dict(max_non_alpha_words_ratio=0.8)),
    "gopher_stop_words": ("GopherQualityFilter", dict(min_stop_words=2)),
    "gopher_dup_paragraphs": ("GopherRepetitionFilter", dict(dup_para_frac=0.3, dup_para_char_frac=0.2)),
    "gopher_dup_lines": ("GopherRepetitionFilter", dict(dup_line_frac=0.3, dup_line_char_frac=0.2)),
    "gopher_top_ngrams": ("GopherRepetitionFilter", dict(top_n_grams=[[2, 0.2], [3, 0.18], [4, 0.16]])),
    "gopher_dup_ngrams": (
        "GopherRepetitionFilter",
        dict(dup_n_grams=[[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]]),
    ),
    "c4_line_word_length": ("C4QualityFilter", dict(max_word_length=1000)),
    "c4_citations": ("C4QualityFilter", dict(remove_citations=True)),
    "c4_line_punct": ("C4QualityFilter", dict(filter_no_terminal_punct=True)),
    "c4_line_words": ("C4QualityFilter", dict(min_words_per_line=3)),
    "c4_line_javascript": ("C4QualityFilter", dict(filter_javascript=True)),
    "c4_line_policy": ("C4QualityFilter", dict(filter_policy=True)),
    "c4_lorem_ipsum": ("C4QualityFilter", dict(filter_lorem_ipsum=True)),
    "c4_curly_bracket": ("C4QualityFilter", dict(filter_curly_bracket=True)),
    "c4_min_sentences": ("C4QualityFilter", dict(min_num_sentences=5)),
    "fineweb_line_punct": ("FineWebQualityFilter", dict(line_punct_thr=0.12)),
    "fineweb_short_lines": ("FineWebQualityFilter", dict(short_line_thr=0.67)),
    "fineweb_dup_line_chars": ("FineWebQualityFilter", dict(char_duplicates_ratio=0.01)),
    "fineweb_newline_ratio": ("FineWebQualityFilter", dict(new_line_ratio=0.3)),
}
OFF = {
    "GopherQualityFilter": GQ_OFF,
    "GopherRepetitionFilter": GR_OFF,
    "C4QualityFilter": C4_OFF,
    "FineWebQualityFilter": FW_OFF,
}
C4_RULES = [r for r in SINGLE if r.startswith("c4_")]
C4_LINE_RULES = C4_RULES[:6]
SYMBOL_JOB = "gopher_symbol_ratio"  # the one datatrove job behind gopher_hash_ratio and gopher_ellipsis_ratio
CHAIN_NAMES = ("chain_gopher", "chain_fineweb")
DT_REASON = {"gopher_hash_ratio": "gopher_too_many_hashes", "gopher_ellipsis_ratio": "gopher_too_many_ellipsis"}

# the value each datatrove rule compares with its threshold (datatrove_filters.values), for the examples
SHOW = {
    "gopher_word_count": "dt_words",
    "gopher_mean_word_length": "dt_mean_word_length",
    "gopher_hash_ratio": "dt_hash_ratio",
    "gopher_ellipsis_ratio": "dt_ellipsis_ratio",
    "gopher_bullet_lines": "dt_bullet_lines",
    "gopher_ellipsis_lines": "dt_ellipsis_lines",
    "gopher_alpha_words": "dt_alpha_words",
    "gopher_stop_words": "dt_stop_words",
    "fineweb_line_punct": "dt_line_punct",
    "fineweb_short_lines": "dt_short_lines",
    "fineweb_dup_line_chars": "dt_dup_line_chars",
    "fineweb_newline_ratio": "dt_newline_ratio",
}


def corpus() -> list[dict]:
    """Ingest's documents from the WARC archives and CCNet JSONL, then the Gutenberg windows."""
    files = sorted(p for p in (DATA / "warc").iterdir() if p.is_file() and p.name.endswith(INPUT_SUFFIXES))
    files += sorted((DATA / "text").glob("dolma-ccnet-*.jsonl.gz"))
    docs = []
    for path in files:
        kind = "ccnet" if path.name.startswith("dolma-ccnet") else "warc"
        for text in ingest_file(str(path), IngestConfig()).kept.column("text").to_pylist():
            docs.append({"source": kind, "file": path.name, "text": text})
    docs += [{"source": "gutenberg", "file": d["id"], "text": d["text"]} for d in windows()]
    for i, d in enumerate(docs):
        d["id"] = f"{i:06d}"
    return docs


def our_signals(text: str, rule: str) -> str:
    """Our rule's measured values on one text (the stage's signals=True columns)."""
    config = Q.QualityConfig(rules=[rule], signals=True)
    kept = Q.filter_quality(docs_from_rows([{"id": "x", "text": text}]), config).kept
    return ", ".join(
        f"{c[len('signal_') :]}={kept.column(c)[0].as_py():.4g}"
        for c in kept.column_names
        if c.startswith("signal_") and kept.column(c)[0].as_py() is not None
    )


TOKENS = (
    "datatrove's words are spaCy tokens, punctuation marks included and \"don't\" split in two; ours "
    "are whitespace tokens trimmed of punctuation"
)
GENERIC = {
    "gopher_word_count": "word count: " + TOKENS,
    "gopher_mean_word_length": "mean word length: " + TOKENS,
    "gopher_hash_ratio": "denominator: datatrove divides by every spaCy token, punctuation included; we by words",
    "gopher_ellipsis_ratio": "denominator: datatrove divides by every spaCy token, punctuation included; we by words",
    "fineweb_newline_ratio": "denominator: datatrove divides by every spaCy token, punctuation included; we by words",
    "gopher_top_ngrams": "n-grams: datatrove's are of spaCy tokens (punctuation included) and its top n-gram length "
    "counts the spaces between words; ours are of trimmed words, spaces left out",
    "gopher_dup_ngrams": "n-grams: datatrove's are of spaCy tokens (punctuation included); ours of trimmed words",
    "gopher_ellipsis_lines": "denominator: datatrove divides by every line, blank ones included; we by non-blank lines",
    "gopher_bullet_lines": "denominator: datatrove divides by every line, blank ones included; we by non-blank lines",
    "gopher_dup_paragraphs": "paragraph split: ours at blank lines that may hold spaces (\\n\\s*\\n), datatrove's "
    "only at \\n\\n+ (a line of spaces keeps two paragraphs together)",
    "c4_min_sentences": "sentence splitting: spaCy's sentencizer (knows abbreviations, splits on some other marks) "
    "vs our Sentence_Terminal regex",
}


def cause(rule: str, side: str, d: dict, r: dict, our_detail: str | None, dt_reason: str | None) -> str:
    """The disagreement class of one document ('ours': only we drop it, 'dt': only datatrove does)."""
    if rule == "gopher_alpha_words" and side == "dt":
        return (
            "punctuation tokens (',' '.') count as words without a letter in datatrove's ratio"
            if r["dt_alpha_words_no_punct"] >= 0.8
            else "alpha words: " + TOKENS
        )
    if rule == "gopher_stop_words" and side == "dt":
        return (
            "datatrove matches stop words case-sensitively ('The' is not 'the')"
            if r["dt_stop_words_lower"] >= 2
            else "datatrove needs 2 distinct stop words; we count occurrences"
        )
    if rule in ("gopher_dup_lines", "gopher_dup_paragraphs") and side == "dt":
        key = "dt_dup_lines_nonblank" if rule == "gopher_dup_lines" else "dt_dup_paragraphs_nonblank"
        return (
            "datatrove counts whitespace-only lines/paragraphs (a lone no-break space) as repeats; we skip blank ones"
            if r[key] <= 0.3
            else "lines/paragraphs split or stripped differently"
        )
    if rule in C4_LINE_RULES and side == "ours" and (our_detail or "").startswith("lines_kept=0"):
        return (
            "every line dropped: we remove the emptied document, datatrove keeps it empty "
            "(its min_num_sentences, off here, is what removes it in the recipe)"
        )
    if rule == "c4_min_sentences" and side == "ours":
        blank = sum(not line.strip() for line in d["text"].splitlines())
        sentences = int((our_detail or "sentences=0 ").split("=")[1].split()[0])
        if sentences + blank >= 5:
            return (
                "datatrove counts every blank line as one sentence (split_into_sentences('') gives ['']) "
                "while C4's min-words line rule is off"
            )
    if rule in CHAIN_NAMES:
        return (
            f"first failing rule: ours {our_detail}"
            if side == "ours"
            else f"first failing check: datatrove's {dt_reason}"
        )
    return GENERIC.get(rule, "other")


def chain_jobs(c4: list[str]) -> dict:
    fineweb = [["GopherRepetitionFilter", {}], ["GopherQualityFilter", {}]]
    if c4:
        fineweb.append(["C4QualityFilter", {"filter_no_terminal_punct": False}])
    fineweb.append(["FineWebQualityFilter", {}])
    ours_b = [r for r in Q.RULES if r.startswith(("gopher_", "fineweb_")) or (r in c4 and r != "c4_line_punct")]
    return {
        "chain_gopher": (
            [["GopherQualityFilter", {}], ["GopherRepetitionFilter", {}]],
            list(Q.GOPHER_QUALITY) + list(Q.GOPHER_REPETITION),
        ),
        "chain_fineweb": (fineweb, ours_b),
    }


def datatrove_jobs(rules: list[str], chains: dict) -> list[dict]:
    jobs, seen = [], set()
    for rule in rules:
        name = SYMBOL_JOB if rule in DT_REASON else rule
        if name in seen:
            continue
        seen.add(name)
        cls, on = SINGLE[rule]
        jobs.append({"name": name, "filters": [[cls, {**OFF[cls], **on}]], "text": cls == "C4QualityFilter"})
    for name, (dt_chain, _) in chains.items():
        jobs.append({"name": name, "filters": dt_chain, "text": True})
    return jobs


def ours(table: pa.Table, rules: list[str]) -> tuple[dict, dict, dict]:
    """id -> reason (None: kept), id -> detail, id -> kept text."""
    res = Q.filter_quality(table, Q.QualityConfig(rules=rules))
    reasons = dict.fromkeys(table.column("id").to_pylist())
    removed = res.removed.select(["id", "reason", "detail"]).to_pylist()
    reasons.update({r["id"]: r["reason"] for r in removed})
    details = {r["id"]: r["detail"] for r in removed}
    texts = dict(zip(res.kept.column("id").to_pylist(), res.kept.column("text").to_pylist()))
    return reasons, details, texts


def lines_of(text: str | None) -> list[str] | None:
    return None if text is None else [line.strip() for line in text.splitlines() if line.strip()]


def first_difference(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i in range(max(len(la), len(lb))):
        x, y = (la[i] if i < len(la) else "<none>"), (lb[i] if i < len(lb) else "<none>")
        if x != y:
            return f"line {i}: ours {x[:100]!r} / datatrove {y[:100]!r}"
    return "same lines"


def run_datatrove_agree(py: str, tmp: Path, jobs: list[dict], parts: int) -> subprocess.Popen | list:
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    return [
        subprocess.Popen(
            [
                py,
                str(HELPER),
                "agree",
                "--corpus",
                str(tmp / "corpus.parquet"),
                "--jobs",
                str(tmp / "jobs.json"),
                "--out",
                str(tmp / f"dt-{k}.parquet"),
                "--part",
                str(k),
                "--parts",
                str(parts),
            ]
        )
        for k in range(parts)
    ]


def agreement(docs, ours_drop, dt_drop, ids) -> dict:
    c = Counter((ours_drop[i], dt_drop[i]) for i in ids)
    n = len(ids)
    return {
        "docs": n,
        "both_drop": c[(True, True)],
        "both_keep": c[(False, False)],
        "only_dt": c[(False, True)],
        "only_ours": c[(True, False)],
        "agree": (c[(True, True)] + c[(False, False)]) / n if n else float("nan"),
    }


def row(name: str, a: dict, extra: str = "") -> str:
    return (
        f"| {name} | {a['docs']} | {a['both_drop']} | {a['both_keep']} | {a['only_dt']} | {a['only_ours']} | "
        f"{100 * a['agree']:.2f}% |{extra}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datatrove-python",
        default="/work/dt-venv/bin/python",
        help="python of a venv with datatrove[processing]==0.10.1, spacy and pyarrow",
    )
    ap.add_argument("--examples", type=int, default=3, help="examples printed per rule and direction")
    ap.add_argument("--timing-docs", type=int, default=4000, help="documents timed (random sample; 0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gutenberg-docs", type=int, default=0, help="keep only this many Gutenberg windows (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    docs = corpus()
    if args.gutenberg_docs:
        web = [d for d in docs if d["source"] != "gutenberg"]
        docs = web + [d for d in docs if d["source"] == "gutenberg"][: args.gutenberg_docs]
    by_id = {d["id"]: d for d in docs}
    m = machine()
    sizes = Counter()
    for d in docs:
        sizes[d["source"]] += 1
        sizes[d["source"] + "_bytes"] += len(d["text"].encode())
    total_mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    print(
        f"corpus: {len(docs)} documents, {total_mb:.1f} MB: "
        + ", ".join(f"{s} {sizes[s]} docs {sizes[s + '_bytes'] / 1e6:.1f} MB" for s in ("warc", "ccnet", "gutenberg"))
        + f"; machine: {m['cores']} x {m['cpu']}"
    )

    rules = [r for r in Q.RULES if r in SINGLE]
    c4 = [r for r in C4_RULES if r in Q.RULES]
    missing = [r for r in SINGLE if r not in Q.RULES]
    unknown = [r for r in Q.RULES if r not in SINGLE]
    chains = chain_jobs(c4)
    table = docs_from_rows([{"id": d["id"], "text": d["text"], "source": d["file"]} for d in docs])

    with tempfile.TemporaryDirectory(prefix="quality-datatrove-") as tmp:
        tmp = Path(tmp)
        pq.write_table(table.select(["id", "text"]), tmp / "corpus.parquet")
        t0 = time.perf_counter()
        procs = run_datatrove_agree(args.datatrove_python, tmp, datatrove_jobs(rules, chains), parts=2)
        mine = {rule: ours(table, [rule]) for rule in rules}
        mine.update({name: ours(table, our_rules) for name, (_, our_rules) in chains.items()})
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"datatrove helper failed (exit {p.returncode})")
        dt = pa.concat_tables([pq.read_table(tmp / f"dt-{k}.parquet") for k in range(len(procs))]).to_pylist()
        print(f"agreement runs: {time.perf_counter() - t0:.0f} s wall (ours and datatrove on 2 processes)\n")
        dt = {r["id"]: r for r in dt}
        ids = [d["id"] for d in docs]

        print("### Per rule\n")
        print(
            "| rule | docs | both drop | both keep | only datatrove drops | only we drop | agreement | kept texts equal (exact / ignoring blank lines) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        disagreements = {}
        for rule in rules + list(chains):
            job = SYMBOL_JOB if rule in DT_REASON else rule
            reasons, _, texts = mine[rule]
            ours_drop = {i: reasons[i] is not None for i in ids}
            if rule in DT_REASON:
                dt_drop = {i: dt[i][f"reason_{job}"] == DT_REASON[rule] for i in ids}
                scope = [
                    i
                    for i in ids
                    if not (
                        rule == "gopher_ellipsis_ratio" and dt[i][f"reason_{job}"] == DT_REASON["gopher_hash_ratio"]
                    )
                ]
            else:
                dt_drop = {i: not dt[i][f"keep_{job}"] for i in ids}
                scope = ids
            a = agreement(docs, ours_drop, dt_drop, scope)
            extra = ""
            if rule in C4_LINE_RULES or rule in chains:
                both = [i for i in scope if not ours_drop[i] and not dt_drop[i]]
                exact = sum(texts[i] == dt[i][f"text_{job}"] for i in both)
                loose = sum(lines_of(texts[i]) == lines_of(dt[i][f"text_{job}"]) for i in both)
                extra = f" {exact}/{len(both)} / {loose}/{len(both)} |"
                a["text_differs"] = [i for i in both if lines_of(texts[i]) != lines_of(dt[i][f"text_{job}"])]
            else:
                extra = " |"
            name = (
                rule
                if rule not in chains
                else {
                    "chain_gopher": "**chain (a)** Gopher quality + repetition",
                    "chain_fineweb": "**chain (b)** FineWeb recipe",
                }[rule]
            )
            print(row(name, a, extra))
            disagreements[rule] = (
                [i for i in scope if ours_drop[i] and not dt_drop[i]],
                [i for i in scope if dt_drop[i] and not ours_drop[i]],
                a.get("text_differs", []),
            )
        if missing:
            print(f"\nnot in pipeline.quality yet (no row): {', '.join(missing)}")
        if unknown:
            print(f"\nour rules with no datatrove counterpart mapped here: {', '.join(unknown)}")
        if "gopher_ellipsis_ratio" in rules:
            n_hash = sum(dt[i][f"reason_{SYMBOL_JOB}"] == DT_REASON["gopher_hash_ratio"] for i in ids)
            print(
                f"\ngopher_ellipsis_ratio leaves out the {n_hash} documents datatrove's hash check drops first "
                "(one shared max_symbol_word_ratio)."
            )
        print(
            f"\nchain (a): ours {', '.join(chains['chain_gopher'][1])}; datatrove "
            f"{' -> '.join(f[0] for f in chains['chain_gopher'][0])}"
        )
        print(
            f"chain (b): ours {', '.join(chains['chain_fineweb'][1])}; datatrove "
            f"{' -> '.join(f[0] + ('(filter_no_terminal_punct=False)' if f[1] else '') for f in chains['chain_fineweb'][0])}"
        )

        print("\n### Disagreements: examples (ours vs datatrove)\n")
        rng = random.Random(args.seed)
        for rule, (only_ours, only_dt, text_differs) in disagreements.items():
            if not (only_ours or only_dt or text_differs):
                continue
            job = SYMBOL_JOB if rule in DT_REASON else rule
            reasons, details, texts = mine[rule]
            print(
                f"**{rule}**: only we drop {len(only_ours)}, only datatrove drops {len(only_dt)}"
                + (f", kept texts differ {len(text_differs)}" if text_differs else "")
                + "; by source: "
                + ", ".join(
                    f"{s} {sum(by_id[i]['source'] == s for i in only_ours)}/{sum(by_id[i]['source'] == s for i in only_dt)}"
                    for s in ("warc", "ccnet", "gutenberg")
                )
                + " (only we / only datatrove)\n"
            )
            classes = Counter()
            for side, pool in (("ours", only_ours), ("dt", only_dt)):
                for i in pool:
                    classes[
                        (
                            side,
                            cause(
                                rule,
                                side,
                                by_id[i],
                                dt[i],
                                reasons[i] if rule in CHAIN_NAMES else details.get(i),
                                dt[i][f"reason_{job}"],
                            ),
                        )
                    ] += 1
            for (side, label), n in sorted(classes.items(), key=lambda kv: -kv[1]):
                print(f"- class ({'only we drop' if side == 'ours' else 'only datatrove drops'}, {n} docs): {label}")
            print()
            for label, pool in (
                ("only we drop", only_ours),
                ("only datatrove drops", only_dt),
                ("kept texts differ", text_differs),
            ):
                for i in sorted(rng.sample(pool, min(args.examples, len(pool)))):
                    d, r = by_id[i], dt[i]
                    line = f"- {label}: {d['source']} {d['file']} (doc {i}): ours {details.get(i) or 'kept'}; datatrove {r[f'reason_{job}'] or 'kept'}"
                    if rule not in chains:
                        line += f"; values ours {our_signals(d['text'], rule) or '-'}"
                    if rule in SHOW:
                        line += f"; datatrove {SHOW[rule][3:]}={r[SHOW[rule]]:.4g}"
                    if label == "kept texts differ":
                        line += "; " + first_difference(texts[i], r[f"text_{job}"])
                    print(line)
            print()

    # throughput
    print("### Throughput per core\n")
    sample = (
        docs
        if not args.timing_docs or args.timing_docs >= len(docs)
        else random.Random(args.seed).sample(docs, args.timing_docs)
    )
    mb = sum(len(d["text"].encode()) for d in sample) / 1e6
    print(
        f"{len(sample)} documents, {mb:.1f} MB (random sample of the corpus, seed {args.seed}); best of "
        f"{args.repeats}; one core each\n"
    )
    print(
        "| chain | ours docs/s | ours MB/s | datatrove docs/s | datatrove MB/s | ours / datatrove | kept ours / datatrove |"
    )
    print("|---|---|---|---|---|---|---|")
    table = docs_from_rows([{"id": d["id"], "text": d["text"]} for d in sample])
    with tempfile.TemporaryDirectory(prefix="quality-datatrove-") as tmp:
        tmp = Path(tmp)
        pq.write_table(table.select(["id", "text"]), tmp / "sample.parquet")
        for name, (dt_chain, our_rules) in chains.items():
            affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {0})
            config = Q.QualityConfig(rules=our_rules)
            Q.filter_quality(table.slice(0, 10), config)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = Q.filter_quality(table, config)
                times.append(time.perf_counter() - t0)
            os.sched_setaffinity(0, affinity)
            (tmp / "chain.json").write_text(json.dumps(dt_chain))
            out = subprocess.run(
                [
                    args.datatrove_python,
                    str(HELPER),
                    "time",
                    "--corpus",
                    str(tmp / "sample.parquet"),
                    "--chain",
                    str(tmp / "chain.json"),
                    "--repeats",
                    str(args.repeats),
                    "--core",
                    "0",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            t_dt = json.loads(out.stdout.strip().splitlines()[-1])
            ours_s, dt_s = min(times), t_dt["best_s"]
            label = {"chain_gopher": "(a) Gopher quality + repetition", "chain_fineweb": "(b) FineWeb recipe"}[name]
            print(
                f"| {label} | {len(sample) / ours_s:.0f} | {mb / ours_s:.2f} | {len(sample) / dt_s:.0f} | "
                f"{mb / dt_s:.2f} | {dt_s / ours_s:.2f}x | {res.kept.num_rows} / {t_dt['kept']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
