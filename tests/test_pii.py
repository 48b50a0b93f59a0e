"""PII scrubbing with presidio, offline: recall on presidio-research's labelled synthetic data, the
fast path equal to presidio on the whole document span for span, replacement policies, optional
spaCy NER, huge/non-English/binary documents, determinism, and no network use."""

from __future__ import annotations

import gzip
import json
import logging
import random
import socket

import pyarrow as pa
import pytest
from pydantic import ValidationError

import pipeline.pii as pii
import pipeline.pii.recognizers as recognizers
from pipeline.pii import (
    BATCH_CHARS,
    ENTITIES,
    PHONE_REGIONS_EXACT,
    PiiConfig,
    Span,
    chunk_bounds,
    find_spans,
    presidio_spans,
    replace_spans,
    resolve_overlaps,
    scan,
    scrub,
    windows,
)
from pipeline.schema import docs_from_rows
from tests.test_dedup import GUTENBERG, gutenberg_windows

SMALL = "pii/presidio-generated_small.json"
LARGE = "pii/presidio-generated_large.json"
SYNTH = "pii/presidio-synth_dataset_v2.json"


def gold_table(path):
    records = json.loads(path.read_text())
    return records, docs_from_rows([{"id": f"r{i}", "text": r["full_text"]} for i, r in enumerate(records)])


def test_recall_on_labelled_data(shared_data):
    """generated_large: 2,109 texts, 58 emails, 212 cards, 28 IBANs, 11 IPs, 136 phones (small has
    only 2 emails and 2 IPs: too few to measure). A gold value counts as replaced when it no longer
    occurs in the scrubbed text. Measured: emails 58/58, cards 212/212, IBANs 25/28, IPs 11/11,
    phones 83/136 (many gold "phones" are not valid numbers, e.g. "(96) 627-277")."""
    records, table = gold_table(shared_data(LARGE))
    result = scrub(table, PiiConfig())
    out = result.kept.column("text").to_pylist()
    hit, total = {}, {}
    for rec, text in zip(records, out):
        for span in rec["spans"]:
            t = span["entity_type"]
            total[t] = total.get(t, 0) + 1
            hit[t] = hit.get(t, 0) + (span["entity_value"] not in text)
    recall = {t: hit[t] / total[t] for t in total}
    assert recall["EMAIL_ADDRESS"] >= 0.95 and recall["CREDIT_CARD"] >= 0.95 and recall["IP_ADDRESS"] >= 0.9
    assert recall["IBAN_CODE"] >= 0.8 and recall["PHONE_NUMBER"] >= 0.5
    assert recall["PERSON"] < 0.05  # names are not in scope: no NER model
    counts = result.counts
    assert counts["docs_kept"] == len(records) and counts["docs_removed"] == 0
    assert counts["pii_spans"]["EMAIL_ADDRESS"] == sum(t.count("<EMAIL>") for t in out) >= 58
    assert counts["pii_spans"]["CREDIT_CARD"] == sum(t.count("<CREDIT_CARD>") for t in out)
    assert sum(t.count("<PHONE>") for t in out) == counts["pii_spans"]["PHONE_NUMBER"]
    assert counts["docs_with_pii"] >= 300 and counts["docs_scanned"] < len(records)
    # Precision: found spans that overlap no gold span at all (of any type) are rare.
    stray = found = 0
    for rec in records[:300]:
        for s in find_spans(rec["full_text"], PiiConfig()):
            found += 1
            stray += not any(s.start < g["end_position"] and g["start_position"] < s.end for g in rec["spans"])
    assert found > 50 and stray / found < 0.05


def test_small_file_placeholders_and_untouched_text(shared_data):
    records, table = gold_table(shared_data(SMALL))
    result = scrub(table, PiiConfig())
    out = result.kept.column("text").to_pylist()
    for rec, text in zip(records, out):
        for span in rec["spans"]:
            if span["entity_type"] in ("EMAIL_ADDRESS", "CREDIT_CARD", "IP_ADDRESS"):
                assert span["entity_value"] not in text, (span, text)
        if not any(windows(rec["full_text"], e) for e in PiiConfig().entities):
            assert text == rec["full_text"]
    assert any("<EMAIL>" in t for t in out) and any("<CREDIT_CARD>" in t for t in out)
    assert result.counts["chars_in"] == sum(len(r["full_text"]) for r in records)
    assert result.counts["chars_kept"] == sum(map(len, out))


ALL = PiiConfig(entities=list(ENTITIES))


def assert_same_as_presidio(texts):
    """The fast path, batched and text by text, equals presidio's engine on each whole text."""
    fast = scan(texts, ALL)[0]
    for text, spans in zip(texts, fast):
        assert spans == presidio_spans(text, ALL), text[:300]


def adversarial_texts():
    edge = [
        "a@b.co",
        "call 212-555-0123",
        "4111 1111 1111 1111",
        "GB82 WEST 1234 5698 7654 32",
        "10.0.0.1",
        "fe80::1%eth0",
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "536-90-4399",
    ]
    texts = [e for e in edge] + [e + "x" for e in edge] + ["x" + e for e in edge] + [" ".join(edge), "".join(edge)]
    texts += [
        "jane.doe@example.com,john@example.org;x@y.io",
        "mail:" + "a" * 3000 + "@example.com.",
        "(212) 555-0123" + " " * 2000 + "ext. 12 and 555-0100#",
        "1" + " " * 3000 + "x 2",
        "9" * 500,
        "1 2 3 4 5 6 7 8 9 0 " * 20,
        "+44 20 7946 0958, +49 30 901820, +33 1 42 68 53 00, +91 22 2778 2000",
        "０２０ ７９４６ ０９５８ and （２１２）５５５－０１２３",
        "٤١١١١١١١١١١١١١١١ ۵۳۶-۹۰-۴۳۹۹",  # Unicode digits
        "2012-01-02 08:00:00 and 3/10/2011 and pp. 211-227 (2003)",
        "::ffff:192.168.0.1/96 and 2001:db8::1:0:0:1",
        "x::y 1::2 :: ::1 1:2:3:4:5:6:7:8 a:b:c",
        "DE89370400440532013000 2 days; DE89 3704 0044 0532 0130 00",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq and 3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
        "\x00\x01 4111-1111-1111-1111 \ufffd",
        "tel:+1-212-555-0123;ext=42 ok",
    ]
    book = "The quick brown fox, in 1885, paid 12.50 at 10:30 to 555 0199 people. " * 300
    texts.append(book + " reader@example.org 212-555-0123 " + book)
    rng = random.Random(5)
    alphabet = "0123456789" * 4 + "  -.:@+()/x#,abcdeEXT\t\n%_ABCDGBZ"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(200)]
    return texts


def test_fast_path_equals_presidio_on_labelled_data(shared_data):
    texts = [r["full_text"] for f in (LARGE, SMALL, SYNTH) for r in json.loads(shared_data(f).read_text())]
    texts += [d["text"] for shard in gutenberg_windows(shared_data(GUTENBERG), books=1) for d in shard][:150]
    assert_same_as_presidio(texts)


def test_fast_path_equals_presidio_on_adversarial_texts():
    assert PHONE_REGIONS_EXACT  # phonenumbers' pattern still has the shape the phone regions assume
    assert_same_as_presidio(adversarial_texts())


def test_batching_does_not_change_results():
    """One document's windows larger than a phone batch is scanned alone; others are batched."""
    texts = adversarial_texts()[-60:]
    big = " ".join(f"call 212-555-{1000 + i} or (0{i % 9 + 1}) {i:04d} {i:03d}" for i in range(120))
    assert sum(e - s for s, e in windows(big, "PHONE_NUMBER")) > BATCH_CHARS["PHONE_NUMBER"]
    texts.insert(7, big)
    together = scan(texts, ALL)[0]
    assert together == [scan([t], ALL)[0][0] for t in texts]
    assert together[7] == presidio_spans(big, ALL) and len(together[7]) > 100


@pytest.mark.parametrize(
    "entities, text, expected",
    [
        (["PHONE_NUMBER"], "call （２１２）５５５－０１２３ now", "call <PHONE> now"),  # full-width digits
        (["IP_ADDRESS"], "host dead:beef::cafe is up", "host <IP_ADDRESS> is up"),  # IPv6 with no digit
        (["EMAIL_ADDRESS"], "write to jane.doe@example.co.uk today", "write to <EMAIL> today"),
        (
            ["CREDIT_CARD"],
            "card 4111-1111-1111-1111, not 4111 1111 1111 1112",
            "card <CREDIT_CARD>, not 4111 1111 1111 1112",
        ),
        (["IBAN_CODE"], "IBAN GB82 WEST 1234 5698 7654 32.", "IBAN <IBAN>."),
        (["US_SSN"], "my ssn is 536-90-4399.", "my ssn is <SSN>."),
        (["CRYPTO"], "wallet 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa here", "wallet <CRYPTO> here"),
    ],
)
def test_each_recognizer(entities, text, expected):
    result = scrub(docs_from_rows([{"id": "a", "text": text}]), PiiConfig(entities=entities))
    assert result.kept.column("text").to_pylist() == [expected]


def test_huge_document_and_chunking(shared_data):
    with gzip.open(shared_data(GUTENBERG), "rt") as f:
        book = json.loads(next(f))["text"]
    base = (book + book)[:1_250_000]
    pieces, prev = [], 0
    for i, pos in enumerate(range(99_950, len(base), 99_950)):  # emails near chunk boundaries
        pieces += [base[prev:pos], f" reader{i}@example.org "]
        prev = pos
    text = "".join(pieces + [base[prev:]])
    assert len(text.encode()) > 1_200_000
    result = scrub(docs_from_rows([{"id": "big", "text": text}]), PiiConfig())
    out = result.kept.column("text")[0].as_py()
    assert "@example.org" not in out and out.count("<EMAIL>") >= 12
    # Chunked and unchunked runs find the same spans.
    sample = " ".join(
        f"{w} mail{i}@example.com call (212) 555-{1000 + i} ip 10.0.{i % 250}.7"
        for i, w in enumerate(book[5_000:25_000].split(". "))
    )
    small = PiiConfig(max_chars=2_000)
    assert len(chunk_bounds(sample, small.max_chars)) > 10
    whole = find_spans(sample, PiiConfig(max_chars=1_000_000))
    assert find_spans(sample, small) == whole and len(whole) > 200


def test_chunk_bounds_cover_text():
    text = ("word " * 3000) + "x" * 9000 + (" tail" * 500)
    bounds = chunk_bounds(text, 2_000)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    assert all(e - s <= 2_000 for s, e in bounds)
    assert all(s2 < e1 for (_, e1), (s2, _) in zip(bounds, bounds[1:]))  # overlapping, no gaps


def test_deterministic(shared_data):
    _, table = gold_table(shared_data(SMALL))
    a = scrub(table, PiiConfig())
    recognizers._ENGINES.clear()  # a fresh engine gives the same result
    b = scrub(table, PiiConfig())
    assert a.counts == b.counts and a.kept.equals(b.kept) and a.removed.equals(b.removed)


def test_no_network_and_no_error_logs(tmp_path, monkeypatch, caplog):
    """A fresh process state (new engine, new tldextract extractor) with sockets blocked."""
    import tldextract.tldextract as tx

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tx, "TLD_EXTRACTOR", tx.TLDExtract(cache_dir=str(tmp_path / "tldextract")))
    monkeypatch.setattr(recognizers, "_ENGINES", {})
    caplog.set_level(logging.WARNING)
    table = docs_from_rows([{"id": "a", "text": "Mail bob@example.com or alice@mail.example.co.uk from 10.1.2.3"}])
    result = scrub(table, PiiConfig())
    assert result.kept.column("text").to_pylist() == ["Mail <EMAIL> or <EMAIL> from <IP_ADDRESS>"]
    assert attempts == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_overlaps_placeholders_and_removal():
    spans = [
        Span(0, 10, "PHONE_NUMBER", 0.4),
        Span(2, 12, "CREDIT_CARD", 1.0),
        Span(11, 14, "IP_ADDRESS", 0.6),
        Span(20, 30, "PHONE_NUMBER", 0.4),
        Span(20, 25, "US_SSN", 0.4),
        Span(30, 32, "US_SSN", 0.5),
    ]
    assert resolve_overlaps(spans) == [
        Span(2, 12, "CREDIT_CARD", 1.0),
        Span(20, 30, "PHONE_NUMBER", 0.4),
        Span(30, 32, "US_SSN", 0.5),
    ]
    text = "ab4111111111111111 x"
    assert replace_spans(text, [Span(2, 18, "CREDIT_CARD", 1.0)], PiiConfig(short_names=False)) == "ab<CREDIT_CARD> x"
    assert (
        replace_spans(text, [Span(2, 18, "CREDIT_CARD", 1.0)], PiiConfig(placeholder="[{entity}]"))
        == "ab[CREDIT_CARD] x"
    )
    three = "a@example.com b@example.com c@example.com"
    docs = docs_from_rows([{"id": "many", "text": three}, {"id": "one", "text": "only a@example.com"}])
    result = scrub(docs, PiiConfig(max_spans_per_doc=2, short_names=False))
    assert result.kept.column("text").to_pylist() == ["only <EMAIL_ADDRESS>"]
    removed = result.removed.to_pylist()[0]
    assert removed["reason"] == "pii_spans" and removed["detail"] == "spans=3 > max_spans_per_doc=2"
    assert "@" not in removed["text"]  # removed documents are scrubbed too
    assert result.counts["pii_spans"]["EMAIL_ADDRESS"] == 4 and result.counts["docs_with_pii"] == 2


def test_config_errors():
    with pytest.raises(ValidationError):
        PiiConfig(entities=["EMAIL_ADDRESS", "PERSON"])
    with pytest.raises(ValidationError, match="empty"):
        PiiConfig(entities=[])
    with pytest.raises(ValidationError, match="placeholder"):
        PiiConfig(placeholder="<{kind}>")
    with pytest.raises(ValidationError):
        PiiConfig(max_chars=2_000_000)  # over spaCy's limit
    with pytest.raises(ValueError, match="no 'text' column"):
        scrub(pa.table({"id": ["a"]}), PiiConfig())


def test_a_failing_document_is_removed_emptied_and_counted(monkeypatch):
    real = pii.scan

    def flaky(texts, config):  # stands in for presidio raising on one pathological document
        if any("boom" in t for t in texts):
            raise TimeoutError("regex timed out")
        return real(texts, config)

    monkeypatch.setattr(pii, "scan", flaky)
    docs = docs_from_rows([{"id": "a", "text": "boom 1 x@example.com"}, {"id": "b", "text": "mail y@example.com"}])
    result = scrub(docs, PiiConfig())
    assert result.kept.column("text").to_pylist() == ["mail <EMAIL>"]
    row = result.removed.to_pylist()[0]
    assert (row["id"], row["reason"], row["text"]) == ("a", "pii_error", "")
    assert row["detail"] == "row 0: TimeoutError: regex timed out"
    assert result.counts["removed"] == {"pii_error": 1} and result.counts["docs_scanned"] == 2


def test_pseudonyms_are_consistent_and_keyed(monkeypatch):
    docs = docs_from_rows(
        [{"id": "a", "text": "mail bob@example.com or ann@example.com"}, {"id": "b", "text": "again bob@example.com"}]
    )
    config = PiiConfig(replacement="pseudonym")
    monkeypatch.delenv(config.pseudonym_secret_env, raising=False)
    with pytest.raises(ValueError, match="CRAWL2LLM_PII_SECRET"):
        scrub(docs, config)
    monkeypatch.setenv(config.pseudonym_secret_env, "k1")
    a, b = scrub(docs, config).kept.column("text").to_pylist()
    bob = b.split()[-1]
    assert bob.startswith("<EMAIL_") and len(bob) == len("<EMAIL_>") + 8 and bob in a and a.count("<EMAIL_") == 2
    assert a.split()[1] != a.split()[3]  # different values, different pseudonyms
    k1 = pii.pseudonym_key_id(config)
    monkeypatch.setenv(config.pseudonym_secret_env, "k2")
    assert scrub(docs, config).kept.column("text").to_pylist()[1].split()[-1] != bob
    # The stage fingerprint holds the key's id: a new key, a new output; no pseudonyms, no id.
    assert k1 != pii.pseudonym_key_id(config) and len(k1) == 16 and pii.pseudonym_key_id(PiiConfig()) is None
    with pytest.raises(ValidationError, match="pseudonym"):
        PiiConfig(pseudonym="<{entity}_{digest}>")


def ruler_model(folder):
    """A real spaCy pipeline with an entity ruler (no downloaded model needed)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": "Jane Doe"}, {"label": "GPE", "pattern": "Paris"}]
    )
    nlp.to_disk(folder)
    return str(folder)


def test_optional_ner_with_a_spacy_pipeline(tmp_path):
    config = PiiConfig(ner_model=ruler_model(tmp_path / "ruler"), max_chars=2_000)
    text = "Jane Doe moved to Paris; mail jane@example.com. " + "filler words here " * 300 + "Jane Doe again."
    result = scrub(docs_from_rows([{"id": "a", "text": text}]), config)
    out = result.kept.column("text")[0].as_py()
    assert "Jane Doe" not in out and "Paris" not in out and out.startswith("<PERSON> moved to <LOCATION>; mail <EMAIL>")
    assert result.counts["pii_spans"]["PERSON"] == 2 and result.counts["pii_spans"]["LOCATION"] == 1
    assert result.counts["docs_over_max_chars"] == 1  # NER read it in chunks; the last name is still found


def test_missing_ner_model_is_a_config_error():
    with pytest.raises(ValidationError, match="not installed"):
        PiiConfig(ner_model="en_core_web_nonexistent")


def test_non_english_binary_and_empty_documents_pass_with_counts():
    rows = [
        {"id": "de", "text": "Ruf mich an: +49 30 901820, Mail an anna@beispiel.de", "language": "de"},
        {"id": "bin", "text": "\x00\x01\x02\ufffd\x07 PK\x03\x04 4111 1111 1111 1111 \x00" * 50, "language": None},
        {"id": "en", "text": "", "language": "en"},
    ]
    result = scrub(docs_from_rows(rows), PiiConfig())
    de, binary, empty = result.kept.column("text").to_pylist()
    assert de == "Ruf mich an: <PHONE>, Mail an <EMAIL>" and "4111" not in binary and empty == ""
    counts = result.counts
    assert (counts["docs_non_english"], counts["docs_binary_like"], counts["docs_kept"]) == (1, 1, 3)


def _phone_results(results):
    return sorted((r.entity_type, r.start, r.end, r.score) for r in results)


def test_phone_fast_path_matches_presidio_and_its_try_cap():
    """The phone path (hopeless candidates not parsed, parse results cached) is in use with these
    phonenumbers/presidio versions, and equals PhoneRecognizer.analyze, also where the matcher's
    65,535-try cap cuts the scan, mid-candidate or between candidates."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    assert pii._phone_fast() is not None and pii._min_alnum() == 4
    us, every = PhoneRecognizer(supported_regions=("US",)), PhoneRecognizer()
    number = " call 212-555-0123 or +49 30 901820."
    # "1/2" costs 3 failed tries (the candidate, the group before '/', the group after), "1" one:
    # 3 x 21845 = 65535, so the numbers are found after 21844 units, not after 21845; with "1" first
    # the last unit starts with 2 tries left (counted one by one, not from the cache).
    for head, n, found in (("", 21844, 2), ("", 21845, 0), ("1 a ", 21844, 2), ("1 a ", 21845, 0)):
        text = head + "1/2 a " * n + number
        expected = _phone_results(us.analyze(text, ["PHONE_NUMBER"]))
        assert len(expected) == found and _phone_results(pii._phone_analyze(us, text, {})) == expected
    texts = [
        "1 ext 2 and 12 x 3 and 123 ext. 4567",
        "x1x 1x2 (1) 2-3 +1 2 ++1 (2)",
        "1-800-FLOWERS 2023-11-05 12:30",
        "12:30 2012-01-02 08:00 3/10/2011 211-227 (2003) 030 901820 0049 30 901820 +1 (212) 555-0123#",
    ]
    for text in texts + adversarial_texts()[-40:]:
        cache: dict = {}
        for _ in range(2):  # the second time from the cache
            assert _phone_results(pii._phone_analyze(every, text, cache)) == _phone_results(
                every.analyze(text, ["PHONE_NUMBER"])
            ), text


@pytest.mark.parametrize("replacement", ["placeholder", "pseudonym"])
def test_report_examples_show_each_scrubbed_type_in_context_without_the_value(monkeypatch, replacement):
    monkeypatch.setenv("CRAWL2LLM_PII_SECRET", "k1")
    config = PiiConfig(replacement=replacement)
    texts = [
        "write to bob@example.com today",
        "call +1 212 555 0123 now, or mail ann@example.org",
        "server at 192.168.14.7 is down",
        "nothing here",
        "mail bob@example.com again",
    ]
    docs = docs_from_rows([{"id": str(i), "url": f"https://x.test/{i}", "text": t} for i, t in enumerate(texts)])
    kept = scrub(docs, config).kept.select(["url", "text"]).to_pylist()
    rows = pii.scrubbed_examples(kept, config, per_type=2, chars=12)
    assert {r["type"] for r in rows} == {"EMAIL", "PHONE", "IP_ADDRESS"}, rows
    assert [r["url"] for r in rows if r["type"] == "EMAIL"] == ["https://x.test/0", "https://x.test/1"]
    for r in rows:
        assert "@example" not in r["context"] and "555" not in r["context"] and "192.168" not in r["context"]
        assert f"<{r['type']}" in r["context"] and len(r["context"]) <= 12 * 2 + 40
