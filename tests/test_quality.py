"""Quality rules: real prose passes, real junk pages (Common Crawl, data.gov.uk, the pydoc pages the
demo crawls) fail the rule you would expect, hand-made texts fail exactly one rule, C4's line
cleaning rewrites what it should, and signals mode flags exactly what filtering removes."""

from __future__ import annotations

import pydoc

import pyarrow as pa
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from pydantic import ValidationError
from resiliparse.extract.html2text import extract_plain_text

from pipeline.charset import decode_html
from pipeline.http_message import content_type
from pipeline.quality import (
    C4,
    FINEWEB,
    FINEWEB_RECIPE,
    GOPHER_QUALITY,
    RULES,
    C4Config,
    QualityConfig,
    evaluate,
    filter_quality,
    signal_names,
)
from pipeline.schema import docs_from_rows
from tests.test_dedup import GUTENBERG, gutenberg_windows

# ~120 words of plain English prose that passes every rule.
PROSE = (
    "It was the best of times and the worst of times, and nobody in the town could agree on which "
    "of the two it was. The baker said that bread had never been cheaper, while the miller swore "
    "that his wheels had never turned so slowly. Children ran between the stalls of the market with "
    "their pockets full of chestnuts, and their mothers called after them to come home before dark. "
    "In the evening the lamps were lit along the river, and the boats drifted past with their sails "
    "folded, carrying timber and wool to the cities of the south. Travellers who stopped at the inn "
    "found the beds clean and the soup warm, and most of them stayed longer than they had planned."
)


def failing(text, config=QualityConfig()):
    return [rule for rule, detail in evaluate(text, config).items() if detail]


def html_pages(path):
    """(url, main text) of every HTML 200 response in a WARC file."""
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response):
            if rec.http_headers is None or rec.http_headers.status_code != 200:
                continue
            if "html" not in (rec.http_content_type or ""):
                continue
            body = rec.reader.read()
            html, _ = decode_html(body, content_type(rec.http_content_type or "")[1])
            yield rec.headers.get("WARC-Target-URI").strip("<>"), extract_plain_text(html, main_content=True)


def run_pages(pages):
    table = docs_from_rows([{"id": url, "url": url, "text": text} for url, text in pages])
    result = filter_quality(table, QualityConfig())
    reasons = dict(zip(result.removed.column("id").to_pylist(), result.removed.column("reason").to_pylist()))
    return result, {url: reasons.get(url) for url, _ in pages}


def test_prose_passes():
    assert failing(PROSE) == []


def test_gutenberg_paragraphs_pass(shared_data):
    docs = [d for shard in gutenberg_windows(shared_data(GUTENBERG)) for d in shard if "footer" not in d["id"]]
    result = filter_quality(docs_from_rows(docs), QualityConfig())
    assert len(docs) > 400 and result.counts["docs_kept"] == len(docs), result.removed.to_pylist()[:3]
    assert result.counts["rules"]["gopher_stop_words"] == {"checked": len(docs), "failed": 0}


def test_real_common_crawl_pages(shared_data):
    pages = list(html_pages(shared_data("warc/resiliparse-warcfile.warc.gz")))
    result, reason = run_pages(pages)
    assert reason["http://01spb.ru/company/"] == "gopher_stop_words"  # Russian: no English stop words
    assert reason["http://041696.com/15477/list_6_4.html"] == "gopher_alpha_words"  # a table of numbers
    assert reason["http://06.live-radsport.ch/tippspiel/stats_140_petzi.html"] == "gopher_alpha_words"
    assert reason["http://05925.net/index.php/vod/type/id/53.html"] == "gopher_word_count"
    assert reason["http://037426.cn/"] is None  # an English company page
    assert result.counts["docs_kept"] <= 4 and result.counts["docs_in"] == len(pages) == 16


def test_real_gov_uk_pages(shared_data):
    pages = list(html_pages(shared_data("warc/ukwa-govuk-BL-20140325121225068.warc.gz")))
    result, reason = run_pages(pages)
    assert reason["http://data.gov.uk/data/site-usage"] == "gopher_mean_word_length"  # URL/stat tables
    assert reason["http://data.gov.uk/contact"] == "gopher_word_count"
    assert reason["http://data.gov.uk/data/openspending-browse"] == "gopher_word_count"  # "Loading..."
    for url in (
        "http://data.gov.uk/moderation-policy",
        "http://data.gov.uk/privacy",
        "http://data.gov.uk/about",
        "http://data.gov.uk/blog/open-data-vision-leeds",
    ):
        assert reason[url] is None, url
    assert result.counts["docs_kept"] >= 20
    removed = result.removed.to_pylist()
    site_usage = next(r for r in removed if r["id"] == "http://data.gov.uk/data/site-usage")
    assert (
        site_usage["detail"].startswith("mean_word_length=") and "> max_mean_word_length=10.0" in site_usage["detail"]
    )


def test_pydoc_pages():
    """The demo crawls a local pydoc server: its reference pages pass, its lists and tables do not."""

    def text(url):
        return extract_plain_text(pydoc._url_handler(url, "text/html"), main_content=False)

    # API reference repeats its phrasing ("If specified, ...") past Gopher's repeated 5-gram limit
    assert failing(text("json.html")) == ["gopher_dup_ngrams"]
    assert failing(text("errno.html"))[0] == "gopher_alpha_words"  # symbol = number table
    assert failing(text("topics.html")) == ["gopher_stop_words"]  # a list of upper-case topic names


@pytest.mark.parametrize(
    "rule, text",
    [
        ("gopher_word_count", " ".join(PROSE.split()[:40])),
        ("gopher_word_count", " ".join([PROSE] * 900)),
        ("gopher_mean_word_length", "the cat and the dog sat on a mat. " * 20),
        ("gopher_mean_word_length", "the " + "internationalization incomprehensibilities " * 40 + "and the end"),
        ("gopher_hash_ratio", PROSE + " #news" * 14),
        ("gopher_ellipsis_ratio", PROSE.replace(" the ", " the... ")),
        ("gopher_bullet_lines", "\n".join("• " + s for s in PROSE.split(". "))),
        ("gopher_bullet_lines", "\n".join("  - " + s for s in PROSE.split(". "))),
        ("gopher_ellipsis_lines", PROSE.replace(". ", " …\n", 3)),
        ("gopher_alpha_words", PROSE + " " + " ".join(str(i) for i in range(36)) + " | | -- -- 3.14 2,024"),
        ("gopher_stop_words", "Apples, pears, plums, cherries, peaches. " * 12),
        ("gopher_stop_words", "Apples and pears, plums AND cherries, peaches And figs. " * 12),  # one stop word, often
    ],
)
def test_hand_made_texts_fail_exactly_one_rule(rule, text):
    """Gopher's quality rules one by one (some texts are repetitive too: repetition rules off)."""
    config = QualityConfig(rules=list(GOPHER_QUALITY))
    assert failing(text, config) == [rule]
    result = filter_quality(docs_from_rows([{"id": "x", "text": text}, {"id": "ok", "text": PROSE}]), config)
    assert result.removed.column("reason").to_pylist() == [rule]
    assert result.kept.column("id").to_pylist() == ["ok"]
    assert result.counts["rules"][rule]["failed"] == 1


SENTENCES = [s.strip() + "." for s in PROSE.split(".") if s.strip()]


@pytest.mark.parametrize(
    "rule, text",
    [
        # 8 lines, 3 of them repeats of the first: 3/8 > 30% of lines
        ("gopher_dup_lines", "\n".join(SENTENCES[:5] + [SENTENCES[0]] * 3)),
        # a long paragraph repeated once in a text of short ones: few repeats, but > 20% of the characters
        (
            "gopher_dup_paragraphs",
            "\n\n".join([PROSE] + [f"Note {i} of the day, with the sun and the rain." for i in range(12)] + [PROSE]),
        ),
        # one 2-gram everywhere: "of the" covers > 20% of the characters
        ("gopher_top_ngrams", " ".join(f"{w} of the" for w in PROSE.split()[:60])),
        # a 40-word passage said twice, words otherwise distinct: repeated 5-grams cover > 15%
        ("gopher_dup_ngrams", PROSE + " " + " ".join(PROSE.split()[:40])),
    ],
)
def test_repetition_rules(rule, text):
    """Each text's first failing rule (its reason) is the one it was made for, and it passes
    Gopher's quality rules; repetition rules overlap (repeated lines are repeated n-grams too)."""
    assert failing(text, QualityConfig(rules=list(GOPHER_QUALITY))) == []
    assert failing(text)[0] == rule
    assert failing(PROSE) == [] and failing(PROSE + "\n\n" + PROSE)[0] == "gopher_dup_paragraphs"


@pytest.mark.parametrize(
    "rule, text",
    [
        # a list of links: few lines end a sentence
        ("fineweb_line_punct", "\n".join(f"Read the story of the {w} and the river here" for w in PROSE.split()[:40])),
        # a menu of short lines under a paragraph
        ("fineweb_short_lines", PROSE + "\n" + "\n".join(f"See the {w} page." for w in PROSE.split()[:20])),
        # one repeated line is over 1% of the characters
        (
            "fineweb_dup_line_chars",
            PROSE + "\nAll rights reserved by the town council.\nAll rights reserved by the town council.",
        ),
        # two long words per line, each line a sentence
        ("fineweb_newline_ratio", "\n".join(f"Extraordinarily incomprehensible-{i}." for i in range(80))),
    ],
)
def test_fineweb_rules(rule, text):
    fineweb = QualityConfig(rules=list(FINEWEB))
    assert failing(text, fineweb)[0] == rule
    assert failing(PROSE, fineweb) == []
    assert rule not in QualityConfig().rules  # off by default


def test_fineweb_rules_remove_hard_wrapped_books(shared_data):
    """Why FineWeb's rules are off by default: Gutenberg's 70-column lines end mid-sentence."""
    docs = [d for shard in gutenberg_windows(shared_data(GUTENBERG)) for d in shard if "footer" not in d["id"]][:100]
    reasons = [failing(d["text"], QualityConfig(rules=list(FINEWEB)))[:1] for d in docs]
    assert sum(r == ["fineweb_line_punct"] for r in reasons) > 50


def test_thresholds_and_switches_change_decisions():
    short = " ".join(PROSE.split()[:40])
    assert failing(short) == ["gopher_word_count"]
    assert failing(short, QualityConfig(gopher={"min_words": 30})) == []
    hashy = PROSE + " #news" * 14  # also repetitive ("news news news"): repetition rules off here
    assert failing(hashy, QualityConfig(rules=list(GOPHER_QUALITY), gopher={"max_hash_ratio": 0.2})) == []
    off = QualityConfig(rules=[r for r in GOPHER_QUALITY if r != "gopher_hash_ratio"])
    assert "gopher_hash_ratio" not in evaluate(hashy, off) and failing(hashy, off) == []
    # The first failing rule is the reason, later rules are not even checked.
    junk = "1 2 3"
    result = filter_quality(docs_from_rows([{"id": "j", "text": junk}]), QualityConfig())
    assert result.removed.to_pylist()[0]["reason"] == "gopher_word_count"
    assert result.counts["rules"]["gopher_word_count"] == {"checked": 1, "failed": 1}
    assert result.counts["rules"]["gopher_stop_words"] == {"checked": 0, "failed": 0}
    assert result.removed.to_pylist()[0]["detail"] == "words=3 < min_words=50"


def test_deterministic_counts_and_empty_input():
    docs = [{"id": str(i), "text": t} for i, t in enumerate([PROSE, "", "1 2 3", PROSE + " #a" * 20])]
    a = filter_quality(docs_from_rows(docs), QualityConfig())
    b = filter_quality(docs_from_rows(docs), QualityConfig())
    assert a.counts == b.counts and a.kept.equals(b.kept) and a.removed.equals(b.removed)
    assert a.counts["removed"] == {"gopher_hash_ratio": 1, "gopher_word_count": 2}
    empty = filter_quality(docs_from_rows([]), QualityConfig())
    assert empty.counts["docs_in"] == 0 and empty.kept.num_rows == 0


def test_config_errors():
    with pytest.raises(ValidationError, match="min_words"):
        QualityConfig(gopher={"min_words": 200, "max_words": 100})
    with pytest.raises(ValidationError, match="end_punctuation"):
        QualityConfig(c4={"end_punctuation": [".", ""]})
    with pytest.raises(ValidationError):
        QualityConfig(rules=["gopher_word_count", "gopher_nonsense"])
    with pytest.raises(ValidationError, match="twice"):
        QualityConfig(rules=["gopher_word_count", "gopher_word_count"])
    with pytest.raises(ValidationError):
        QualityConfig(min_word=3)  # misspelled field
    with pytest.raises(ValidationError):
        QualityConfig(gopher={"min_word": 3})
    with pytest.raises(ValueError, match="no 'text' column"):
        filter_quality(pa.table({"id": ["a"]}), QualityConfig())


WEB_PAGE = "\n".join(SENTENCES) + (
    "\nHome\nAbout us\n"  # fewer than 3 words
    "This site uses cookies to improve your experience, as the law says it must.\n"  # policy
    "Please enable JavaScript to view the comments below.\n"  # javascript
    "The river was first bridged in 1802 [1] and again in 1911 [citation needed].\n"  # citations cut
    "Read more about the history of the town\n"  # no terminal punctuation
    "The rest, as they say, is history...\n"  # an ellipsis is not an end
    + "A" * 1001
    + " is a very long word indeed.\n"
)  # a word over 1,000 characters


def c4(*rules, **fields):
    return QualityConfig(rules=list(rules), **fields)


def test_c4_line_cleaning_rewrites_kept_documents():
    result = filter_quality(docs_from_rows([{"id": "p", "text": WEB_PAGE}]), c4(*C4))
    text = result.kept.column("text")[0].as_py()
    assert text.split("\n") == SENTENCES + ["The river was first bridged in 1802  and again in 1911 ."]
    assert result.counts["c4_lines"] == {
        "lines_in": len(SENTENCES) + 8,
        "c4_line_word_length": 1,
        "c4_citations": 2,
        "c4_line_punct": 4,
        "c4_line_words": 0,
        "c4_line_javascript": 1,
        "c4_line_policy": 1,
    }
    # Each line rule alone drops only its own lines (C4 checks punctuation before words, so above
    # "Home" went for its punctuation); FineWeb's recipe leaves line punctuation alone.
    for rule, gone, n in [
        ("c4_line_words", "About us", 2),
        ("c4_line_policy", "uses cookies", 1),
        ("c4_line_javascript", "JavaScript", 1),
        ("c4_line_punct", "history of the town", 4),
    ]:
        kept = filter_quality(docs_from_rows([{"id": "p", "text": WEB_PAGE}]), c4(rule)).kept.column("text")[0]
        assert gone not in kept.as_py() and len(kept.as_py().split("\n")) == len(WEB_PAGE.split("\n")) - 1 - n, rule
    assert "c4_line_punct" not in FINEWEB_RECIPE and set(C4) - {"c4_line_punct"} <= set(FINEWEB_RECIPE)
    assert not set(C4) & set(QualityConfig().rules)  # off by default


@pytest.mark.parametrize(
    "rule, text",
    [
        ("c4_lorem_ipsum", PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."),
        ("c4_curly_bracket", PROSE + "\nWrite {name} in the template to show the value."),
        ("c4_min_sentences", "One sentence here. Two of them now.\nThree is here! And four?"),
    ],
)
def test_c4_document_rules(rule, text):
    assert failing(text, c4(*C4)) == [rule]
    removed = filter_quality(docs_from_rows([{"id": "x", "text": text}]), c4(*C4)).removed.to_pylist()[0]
    assert removed["reason"] == rule and removed["text"] == text  # removed documents keep their text
    # C4 reads the kept lines only: a code line without terminal punctuation is dropped, not fatal.
    assert failing(PROSE + "\nif (x) { y }", c4(*C4)) == []


def test_c4_document_left_without_lines():
    menu = "Home\nAbout us\nContact"
    result = filter_quality(docs_from_rows([{"id": "m", "text": menu}]), c4("c4_line_punct", "c4_line_words"))
    removed = result.removed.to_pylist()[0]
    assert removed["reason"] == "c4_line_words"  # the last C4 line rule switched on
    assert removed["detail"] == "lines_kept=0 < a line=1 (of 3: c4_line_punct dropped 3, c4_line_words dropped 0)"


def test_fineweb_line_punct_counts_unicode_terminals():
    chinese = "\n".join(["这是一个句子。"] * 5 + ["目录"] * 20)
    assert failing(chinese, QualityConfig(rules=["fineweb_line_punct"])) == []
    assert failing(chinese.replace("。", ""), QualityConfig(rules=["fineweb_line_punct"])) == ["fineweb_line_punct"]


def test_signals_mode_flags_exactly_what_filtering_removes(shared_data):
    pages = list(html_pages(shared_data("warc/ukwa-govuk-BL-20140325121225068.warc.gz")))
    table = docs_from_rows(
        [{"id": url, "url": url, "text": text} for url, text in pages]
        + [{"id": "web", "text": WEB_PAGE}, {"id": "empty", "text": ""}]
    )
    config = QualityConfig(rules=list(FINEWEB_RECIPE))
    filtered = filter_quality(table, config)
    signals = filter_quality(table, config.model_copy(update={"signals": True}))
    rows = signals.kept.to_pylist()
    assert signals.removed.num_rows == 0 and len(rows) == table.num_rows
    assert [(r["id"], r["text"]) for r in rows if r["quality_reason"] is None] == [
        (r["id"], r["text"]) for r in filtered.kept.to_pylist()
    ]
    assert [(r["id"], r["quality_reason"], r["quality_detail"], r["text"]) for r in rows if r["quality_reason"]] == [
        (r["id"], r["reason"], r["detail"], r["text"]) for r in filtered.removed.to_pylist()
    ]
    assert signals.counts["flagged"] == filtered.counts["removed"] and len(filtered.counts["removed"]) >= 3
    names = signal_names(config)
    assert [c for c in signals.kept.column_names if c.startswith("signal_")] == [f"signal_{n}" for n in names]
    assert "signal_words" in signals.kept.column_names and "signal_sentences" in signals.kept.column_names
    web = next(r for r in rows if r["id"] == "web")
    assert web["signal_c4_line_policy_lines"] == 1 and web["signal_words"] > 100
    assert all(r[f"signal_{n}"] is not None for r in rows for n in names)  # every signal, every document


def test_size_guard_and_odd_text_pass_through():
    huge = "word " * 500_000  # 2.5 M characters: removed unread, fast, without a crash
    odd = [
        {"id": "bin", "text": "\x00\x01\x02 ab \ufffd" * 100, "language": None},
        {"id": "de", "text": "Der Fluss und die Stadt sind alt. " * 20, "language": "de"},
        {"id": "huge", "text": huge, "language": "en"},
        {"id": "ok", "text": PROSE, "language": "en"},
    ]
    result = filter_quality(docs_from_rows(odd), QualityConfig(rules=list(RULES)))
    reasons = dict(zip(result.removed.column("id").to_pylist(), result.removed.column("reason").to_pylist()))
    assert reasons["huge"] == "doc_max_chars" and reasons["bin"] == "gopher_mean_word_length"
    assert reasons["de"] == "gopher_stop_words" and result.kept.column("id").to_pylist() == ["ok"]
    assert result.counts["docs_binary_like"] == 1 and result.counts["docs_non_english"] == 1
    assert failing(huge, QualityConfig(max_doc_chars=3_000_000))[0] == "gopher_word_count"  # 500,000 words


def test_repeated_ngram_scan_matches_the_plain_loop():
    """The numpy scan of gopher_dup_ngrams equals the plain left-to-right loop (count a repeat,
    jump past it) on texts with many overlapping repeats."""
    import random

    from pipeline.quality import Doc
    from pipeline.quality.gopher import repeated_ngram_chars

    def plain(ws, n):
        grams, seen, chars, i = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)], set(), 0, 0
        while i < len(grams):
            if grams[i] in seen:
                chars, i = chars + sum(map(len, grams[i])), i + n
            else:
                seen.add(grams[i])
                i += 1
        return chars

    rng = random.Random(5)
    for _ in range(300):
        ws = [rng.choice(["a", "bb", "ccc", "the", "of"][: rng.randint(1, 5)]) for _ in range(rng.randint(0, 60))]
        doc = Doc(" ".join(ws), QualityConfig(), frozenset())
        for n in (2, 5, 7):
            assert repeated_ngram_chars(doc.grams(n), n, doc.word_chars) == plain(ws, n), (ws, n)


def test_flat_keys_of_before_the_recipes_still_work_with_a_warning():
    """The flat keys (min_words, c4_min_sentences, ...) are accepted for one release: each moves to
    its recipe's sub-config with a DeprecationWarning naming both, and gives the same output."""
    docs = docs_from_rows(
        [
            {"id": "short", "text": " ".join(PROSE.split()[:40])},
            {"id": "web", "text": WEB_PAGE},
            {"id": "p", "text": PROSE},
        ]
    )
    rules = list(FINEWEB_RECIPE)
    nested = QualityConfig(
        rules=rules, gopher={"min_words": 30}, c4={"min_sentences": 6}, fineweb={"max_newline_ratio": 0.2}
    )
    with pytest.warns(DeprecationWarning) as caught:
        flat = QualityConfig(rules=rules, min_words=30, c4_min_sentences=6, max_newline_ratio=0.2)
    assert sorted(str(w.message) for w in caught) == [
        "quality.c4_min_sentences is deprecated: use quality.c4.min_sentences",
        "quality.max_newline_ratio is deprecated: use quality.fineweb.max_newline_ratio",
        "quality.min_words is deprecated: use quality.gopher.min_words",
    ]
    assert flat == nested and flat.model_dump() == nested.model_dump()  # the same config, so the same fingerprint
    a, b = filter_quality(docs, flat), filter_quality(docs, nested)
    assert a.kept.equals(b.kept) and a.removed.equals(b.removed) and a.counts == b.counts
    default = filter_quality(docs, QualityConfig(rules=rules))
    assert a.removed.column("detail").to_pylist() != default.removed.column("detail").to_pylist()  # the values apply
    with pytest.warns(DeprecationWarning):  # the same value both ways is only redundant
        assert QualityConfig(min_words=30, gopher={"min_words": 30}) == QualityConfig(gopher={"min_words": 30})
    with pytest.warns(DeprecationWarning):  # merged into what the sub-config sets
        both = QualityConfig(min_words=30, gopher={"max_words": 500})
    assert (both.gopher.min_words, both.gopher.max_words) == (30, 500)


def test_flat_and_nested_key_with_different_values_is_an_error():
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError) as e:
        QualityConfig(min_words=30, gopher={"min_words": 40})
    message = str(e.value)
    assert "quality.min_words (30)" in message and "quality.gopher.min_words (40)" in message
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError, match="quality.c4.max_word_length"):
        QualityConfig(c4_max_word_length=10, c4=C4Config(max_word_length=20))
