"""Ingest on the real crawl archives in shared/data: every file reads, damage is counted, text is right."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import zlib

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.ingest import INPUT_SUFFIXES, IngestConfig, IngestError, detect_format, ingest_file
from pipeline.schema import DOC_SCHEMA

ALL_WARCS = [
    "aut-example.warc.gz",
    "cc-whirlwind.warc.gz",
    "cc-whirlwind.warc.wet.gz",
    "dolma-sample-0000.warc.gz",
    "dolma-sample-0001.warc.gz",
    "pywb-iana.warc.gz",
    "resiliparse-clueweb-quirk.warc.gz",
    "resiliparse-warcfile.warc.gz",
    "ukwa-IAH-urls-wget.warc.gz",
    "ukwa-govuk-BL-20140325121225068.warc.gz",
    "ukwa-sopa-wikipedia-homepage.warc.gz",
    "robustness/resiliparse-clipped.warc.gz",
]


@pytest.mark.parametrize("name", ALL_WARCS)
def test_every_real_warc_ingests(shared_data, name):
    config = IngestConfig()
    r = ingest_file(str(shared_data(f"warc/{name}")), config)
    c = r.counts
    assert c["docs_in"] == c["docs_kept"] + c["docs_removed"]
    assert c["records"] >= c["responses"] >= c["docs_in"]
    assert r.kept.schema == DOC_SCHEMA
    for doc in r.kept.to_pylist():
        assert doc["language"] == "en" and doc["language_score"] >= 0.65 and len(doc["text"]) >= 100
        assert doc["url"].startswith("http") and doc["date"] and doc["source"].endswith(name)
    ids = r.kept.column("id").to_pylist() + r.removed.column("id").to_pylist()
    assert len(ids) == len(set(ids))


def test_ids_offsets_and_dates_point_back_at_the_record(shared_data):
    path = shared_data("warc/dolma-sample-0000.warc.gz")
    r = ingest_file(str(path), IngestConfig())
    assert (r.counts["records"], r.counts["responses"], r.counts["docs_in"]) == (48, 22, 22)
    assert r.counts["docs_kept"] >= 10
    with open(path, "rb") as f:
        for doc in r.kept.to_pylist():
            f.seek(doc["offset"])
            record = next(iter(ArchiveIterator(f, record_types=WarcRecordType.response)))
            assert record.headers["WARC-Record-ID"] == f"<urn:uuid:{doc['id']}>"
            assert record.headers["WARC-Target-URI"].strip("<>") == doc["url"]
            assert record.headers["WARC-Date"] == doc["date"]


def test_records_that_are_not_html_200_are_counted_and_skipped(shared_data):
    r = ingest_file(str(shared_data("warc/pywb-iana.warc.gz")), IngestConfig())
    assert r.counts["skipped"]["revisit"] == 123
    assert r.counts["skipped"]["mime"] > 0 and r.counts["skipped"]["status"] > 0
    assert r.counts["docs_kept"] >= 10  # chunked-encoding headers on dechunked bodies are handled
    r = ingest_file(str(shared_data("warc/ukwa-sopa-wikipedia-homepage.warc.gz")), IngestConfig())
    assert r.counts["skipped"]["mime"] == 73 and r.counts["docs_in"] == 1


def test_charset_detection_on_euc_jp_pages(shared_data):
    path = str(shared_data("warc/resiliparse-clueweb-quirk.warc.gz"))
    # ClueWeb09's digests do not match its blocks: skipped by default (counted), kept on request
    assert ingest_file(path, IngestConfig(languages=[])).counts["damaged"] == {"digest_mismatch": 29}
    r = ingest_file(path, IngestConfig(languages=[], digest_mismatch="keep"))
    assert r.counts["docs_kept"] == 29 and r.counts["damaged"] == {"digest_mismatch": 29}
    texts = r.kept.column("text").to_pylist()
    assert set(r.kept.column("language").to_pylist()) == {"ja"}
    assert not any("\ufffd" in t for t in texts)
    assert all(any("\u3040" <= ch <= "\u30ff" for ch in t) for t in texts)  # kana, not mojibake


def test_wet_conversion_records_are_taken_as_text(shared_data):
    r = ingest_file(str(shared_data("warc/cc-whirlwind.warc.wet.gz")), IngestConfig(languages=[]))
    [doc] = r.kept.to_pylist()
    assert doc["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert doc["language"] == "an" or doc["language"] == "es"
    assert "Escopete" in doc["text"]


def test_main_content_drops_boilerplate(shared_data):
    path = str(shared_data("warc/ukwa-govuk-BL-20140325121225068.warc.gz"))
    main = ingest_file(path, IngestConfig(languages=[], min_chars=0))
    full = ingest_file(path, IngestConfig(languages=[], min_chars=0, main_content=False))
    assert main.counts["docs_in"] == full.counts["docs_in"]
    assert main.counts["chars_in"] < full.counts["chars_in"]


def test_clipped_archive_keeps_its_readable_part_and_counts_the_damage(shared_data, tmp_path):
    clipped = shared_data("warc/robustness/resiliparse-clipped.warc.gz").read_bytes()
    good = shared_data("warc/dolma-sample-0000.warc.gz").read_bytes()
    alone = ingest_file(str(shared_data("warc/robustness/resiliparse-clipped.warc.gz")), IngestConfig())
    assert alone.counts["damaged"] == {"truncated_record": 1} and alone.counts["docs_in"] == 0
    reference = ingest_file(str(shared_data("warc/dolma-sample-0000.warc.gz")), IngestConfig())
    for name, data in {
        "good-then-clipped.warc.gz": good + clipped,
        "clipped-then-good.warc.gz": clipped + good,
    }.items():
        (tmp_path / name).write_bytes(data)
        r = ingest_file(str(tmp_path / name), IngestConfig())
        assert sum(r.counts["damaged"].values()) >= 1, name
        assert r.kept.column("text").to_pylist() == reference.kept.column("text").to_pylist(), name


def test_corrupt_member_mid_file_resumes_at_the_next_member(shared_data, tmp_path):
    data = bytearray(shared_data("warc/dolma-sample-0001.warc.gz").read_bytes())
    reference = ingest_file(str(shared_data("warc/dolma-sample-0001.warc.gz")), IngestConfig())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    (tmp_path / "damaged.warc.gz").write_bytes(bytes(data))
    r = ingest_file(str(tmp_path / "damaged.warc.gz"), IngestConfig())
    assert r.counts["damaged"].get("gzip_error", 0) + r.counts["damaged"].get("truncated_record", 0) >= 1
    assert r.counts["records"] >= reference.counts["records"] - 3  # at most the damaged members are lost
    assert set(r.kept.column("id").to_pylist()) <= set(reference.kept.column("id").to_pylist())
    assert r.counts["docs_kept"] >= reference.counts["docs_kept"] - 2
    # offsets after the resync still point at their record
    offsets = dict(zip(reference.kept.column("id").to_pylist(), reference.kept.column("offset").to_pylist()))
    assert [offsets[i] for i in r.kept.column("id").to_pylist()] == r.kept.column("offset").to_pylist()
    assert max(r.kept.column("offset").to_pylist()) > middle


def test_jsonl_with_bad_lines(shared_data, tmp_path):
    r = ingest_file(str(shared_data("text/dolma-ccnet-cc_en_head-0091.jsonl.gz")), IngestConfig())
    assert r.counts["records"] == 10 and r.counts["docs_kept"] == 10
    lines = gzip.decompress(shared_data("text/dolma-ccnet-cc_en_head-0091.jsonl.gz").read_bytes()).splitlines()
    first = json.loads(lines[0])
    assert r.kept.column("id")[0].as_py() == first["id"] and r.kept.column("offset")[0].as_py() == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(
        lines[0] + b"\n{not json\n" + json.dumps({"content": "no text field"}).encode() + b"\n" + lines[1]
    )
    r = ingest_file(str(broken), IngestConfig())
    assert r.counts["damaged"] == {"bad_json": 1, "no_text": 1} and r.counts["docs_kept"] == 2


def test_limits_skip_huge_records(shared_data):
    r = ingest_file(str(shared_data("warc/dolma-sample-0000.warc.gz")), IngestConfig(max_record_bytes=50_000))
    assert r.counts["skipped"]["too_large"] > 0
    assert r.counts["docs_in"] + r.counts["skipped"]["too_large"] == 22


def test_deterministic_and_reads_fsspec_urls(shared_data):
    data = shared_data("warc/resiliparse-warcfile.warc.gz").read_bytes()
    with fsspec.open("memory://ingest-test/cc.warc.gz", "wb") as f:
        f.write(data)
    a = ingest_file("memory://ingest-test/cc.warc.gz", IngestConfig(languages=[]))
    b = ingest_file(str(shared_data("warc/resiliparse-warcfile.warc.gz")), IngestConfig(languages=[]))
    assert a.kept.drop_columns(["source"]).equals(b.kept.drop_columns(["source"]))
    assert a.counts == b.counts and a.counts["docs_kept"] == 14


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.warc.gz"):
        ingest_file(str(tmp_path / "nope.warc.gz"), IngestConfig())
    (tmp_path / "garbage.warc.gz").write_bytes(b"this is not an archive\n" * 50)
    with pytest.raises(IngestError, match="garbage.warc.gz"):
        ingest_file(str(tmp_path / "garbage.warc.gz"), IngestConfig())
    assert [
        detect_format(f"x{suffix}") for suffix in (".arc.gz", ".warc.gz", ".wet.zst", ".jsonl.zst", ".parquet")
    ] == ["arc", "warc", "warc", "jsonl", "parquet"]  # every WARC name also ends in .arc[.gz]
    with pytest.raises(IngestError, match="unknown input format") as error:
        detect_format("notes.txt")
    assert all(suffix in str(error.value) for suffix in INPUT_SUFFIXES)


def test_language_id_reads_past_the_first_line(shared_data):
    from pipeline.ingest import detect_language

    english = gzip.decompress(shared_data("text/dolma-ccnet-cc_en_head-0091.jsonl.gz").read_bytes()).splitlines()[0]
    text = (
        "Startseite Über uns Kontakt Impressum Datenschutzerklärung Anmelden Suche Warenkorb\n"
        + json.loads(english)["text"][:3000]
    )
    lang, score = detect_language(text)
    assert lang == "en" and score > 0.65
    assert detect_language("   \n ") == (None, 0.0)


# -- extractors and per-page limits -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "dolma-sample-0000.warc.gz",
        "dolma-sample-0001.warc.gz",
        "ukwa-govuk-BL-20140325121225068.warc.gz",
        "pywb-iana.warc.gz",
    ],
)
def test_trafilatura_gives_english_text_for_html_pages(shared_data, name):
    path = str(shared_data(f"warc/{name}"))
    fast = ingest_file(path, IngestConfig())
    r = ingest_file(path, IngestConfig(extractor="trafilatura"))
    assert r.counts["docs_in"] == fast.counts["docs_in"]  # the same records reach the extractor
    assert r.counts["docs_kept"] >= r.counts["docs_in"] - 2
    titles = dict(
        zip(
            fast.kept.column("id").to_pylist() + fast.removed.column("id").to_pylist(),
            fast.kept.column("title").to_pylist() + fast.removed.column("title").to_pylist(),
        )
    )
    for doc in r.kept.to_pylist():
        assert doc["language"] == "en" and doc["language_score"] >= 0.65 and len(doc["text"]) >= 100
        assert len(doc["text"].split()) >= 15 and doc["text"] == doc["text"].strip()
        assert doc["title"] == titles[doc["id"]]  # both extractors take the title from the same parse
    full = ingest_file(path, IngestConfig(main_content=False))
    n_words = lambda result: len(re.findall(r"\w+", " ".join(result.kept.column("text").to_pylist())))  # noqa: E731
    assert n_words(r) < n_words(full)  # main content only (chars would count trafilatura's table pipes)


def test_config_rejects_unknown_extractors_and_bad_timeouts():
    from pydantic import ValidationError

    assert IngestConfig().extractor == "resiliparse" and IngestConfig().extract_timeout_s == 10.0
    with pytest.raises(ValidationError, match="extractor"):
        IngestConfig(extractor="readability")
    with pytest.raises(ValidationError, match="extract_timeout_s"):
        IngestConfig(extract_timeout_s=0)


def _slow_every_other_page(monkeypatch):
    """Make every odd-numbered trafilatura call hang for 2 s; the others run for real. The tests' cut
    (0.4 s) leaves real pages room on a loaded machine (at 0.05 s a real page was cut under CI load)."""
    import time

    import pipeline.extract as extract_module

    real, calls = extract_module._trafilatura_text, []

    def extract(html):
        calls.append(1)
        if len(calls) % 2:
            time.sleep(2)
            return "too late"
        return real(html)

    monkeypatch.setattr(extract_module, "_trafilatura_text", extract)


def test_extract_timeout_skips_and_counts_the_page_on_the_main_thread(shared_data, monkeypatch):
    import signal
    import time

    _slow_every_other_page(monkeypatch)
    outer = signal.setitimer(signal.ITIMER_REAL, 60)  # someone else's alarm, as pytest-timeout sets one
    try:
        start = time.monotonic()
        r = ingest_file(
            str(shared_data("warc/dolma-sample-0001.warc.gz")),
            IngestConfig(extractor="trafilatura", extract_timeout_s=0.4),
        )
        assert time.monotonic() - start < 10  # 8 pages cut at 0.4 s each, not 8 x 2 s of sleeping
        assert 50 < signal.getitimer(signal.ITIMER_REAL)[0] <= 60  # the outer alarm is still set
    finally:
        signal.setitimer(signal.ITIMER_REAL, *outer)
    assert r.counts["skipped"] == {"extract_timeout": 8}  # 15 pages, calls 1, 3, ..., 15 hang
    assert r.counts["docs_in"] == 7 and "too late" not in r.kept.column("text").to_pylist()


def test_extract_timeout_off_the_main_thread(shared_data, monkeypatch):
    import threading

    _slow_every_other_page(monkeypatch)
    out = {}
    worker = threading.Thread(
        target=lambda: out.update(
            r=ingest_file(
                str(shared_data("warc/dolma-sample-0001.warc.gz")),
                IngestConfig(extractor="trafilatura", extract_timeout_s=0.4),
            )
        )
    )
    worker.start()
    worker.join(12)
    assert not worker.is_alive()
    assert out["r"].counts["skipped"] == {"extract_timeout": 8} and out["r"].counts["docs_in"] == 7


def test_extract_timeout_works_in_a_spawned_worker_process():
    """Pipeline workers are spawned processes that run each job on their main thread: SIGALRM works there."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.extract import ExtractTimeout, _with_timeout

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_with_timeout, len, "abc", seconds=5).result() == 3
        start = time.monotonic()
        with pytest.raises(ExtractTimeout):
            pool.submit(_with_timeout, time.sleep, 30, seconds=0.2).result(timeout=20)
        assert time.monotonic() - start < 10


def test_gzip_content_encoding_is_bounded_too(tmp_path):
    from pipeline.warc import record_id, response_record, warc_date

    page = b"<html><head><title>t</title></head><body><p>" + b"word " * 400_000 + b"</p></body></html>"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n"
    body, small = gzip.compress(page), gzip.compress(page[:5000])
    records = [
        response_record("https://example.org/big", head + body, warc_date(0), record_id("big")),
        response_record("https://example.org/cut", head + small[: len(small) // 2], warc_date(0), record_id("cut")),
    ]
    (tmp_path / "bomb.warc.gz").write_bytes(b"".join(records))
    assert len(body) < 100_000 < len(page)
    r = ingest_file(str(tmp_path / "bomb.warc.gz"), IngestConfig(languages=[], max_record_bytes=100_000))
    assert r.counts["skipped"] == {"too_large": 1} and r.counts["damaged"] == {"bad_content_encoding": 1}
    r = ingest_file(str(tmp_path / "bomb.warc.gz"), IngestConfig(languages=[]))
    assert r.counts["docs_in"] == 1 and r.counts["damaged"] == {"bad_content_encoding": 1}


def test_our_text_of_the_whirlwind_page_agrees_with_common_crawls_wet(shared_data):
    """benchmarks/wet_comparison.py prints the details; docs/INGEST.md explains them."""
    from collections import Counter

    def words(text):
        return Counter(re.findall(r"\w+", text))

    def text(name, **settings):
        [doc] = ingest_file(str(shared_data(f"warc/{name}")), IngestConfig(languages=[], **settings)).kept.to_pylist()
        return doc["text"]

    wet = words(text("cc-whirlwind.warc.wet.gz"))
    full, main = words(text("cc-whirlwind.warc.gz", main_content=False)), words(text("cc-whirlwind.warc.gz"))
    assert sum((full & wet).values()) > 0.9 * sum(wet.values())  # all visible text: about what CC's WET holds
    assert sum((main & wet).values()) > 0.95 * sum(main.values())  # main content: a part of it...
    assert sum(main.values()) < 0.5 * sum(wet.values())  # ...without the menus, language list and footer


def test_url_blocklist_removes_pages_with_the_entry_named(shared_data, tmp_path):
    from urllib.parse import urlsplit

    from pydantic import ValidationError

    path = str(shared_data("warc/resiliparse-warcfile.warc.gz"))
    plain = ingest_file(path, IngestConfig(languages=[], min_chars=0))
    urls = plain.kept.column("url").to_pylist()
    host = urlsplit(urls[0]).hostname
    lists = tmp_path / "domains.txt"
    lists.write_text(f"# test list\n{host}\n")
    config = IngestConfig(languages=[], min_chars=0, url_blocklist_files=[str(lists)], url_block_words=["zzqq"])
    result = ingest_file(path, config)
    blocked = [u for u in urls if urlsplit(u).hostname == host]
    removed = result.removed.to_pylist()
    assert sorted(r["url"] for r in removed) == sorted(blocked)
    assert {(r["reason"], r["detail"]) for r in removed} == {("url_blocked", f"domain {host}")}
    assert all(r["text"] for r in removed)  # removed documents keep their text, so a person can judge the list
    assert result.kept.num_rows == plain.kept.num_rows - len(blocked)
    assert result.counts["removed"] == {"url_blocked": len(blocked)}
    with pytest.raises(ValidationError, match="blocklist file not found: .*nope.txt"):
        IngestConfig(url_blocklist_files=[str(tmp_path / "nope.txt")])


def test_batches_add_up_to_the_whole_file(shared_data):
    """The stage writes ingest_batches as they come; together they are exactly ingest_file's result."""
    from pipeline.ingest import ingest_batches
    from pipeline.stage import merge_counts

    path = str(shared_data("warc/aut-example.warc.gz"))
    whole = ingest_file(path, IngestConfig())
    batches = list(ingest_batches(path, IngestConfig(), batch_docs=7))
    assert len(batches) == -(-whole.counts["docs_in"] // 7) + (whole.counts["docs_in"] % 7 == 0)
    assert all(b.kept.num_rows + b.removed.num_rows <= 7 for b in batches)
    counts: dict = {}
    for b in batches:
        counts = merge_counts(counts, b.counts)
    assert counts == merge_counts({}, whole.counts)
    assert pa.concat_tables([b.kept for b in batches]).equals(whole.kept)
    assert pa.concat_tables([b.removed for b in batches]).equals(whole.removed)


def test_warc_gzipped_as_one_member_reads_every_record(shared_data, tmp_path):
    """`gzip crawl.warc` makes one member: fastwarc then gives many records the same offset."""
    path = shared_data("warc/dolma-sample-0000.warc.gz")
    (tmp_path / "one-member.warc.gz").write_bytes(gzip.compress(gzip.decompress(path.read_bytes())))
    r = ingest_file(str(tmp_path / "one-member.warc.gz"), IngestConfig())
    reference = ingest_file(str(path), IngestConfig())
    assert r.counts == reference.counts
    assert r.kept.column("text").equals(reference.kept.column("text"))


# -- zstd -------------------------------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    """`data` as two zstd frames, as a writer that flushes now and then leaves it."""
    half = len(data) // 2
    return zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])


@pytest.mark.parametrize(
    "name",
    ["warc/dolma-sample-0000.warc.gz", "warc/cc-whirlwind.warc.wet.gz", "text/dolma-ccnet-cc_en_head-0091.jsonl.gz"],
)
def test_zstd_files_give_the_documents_of_their_gzip_twins(shared_data, tmp_path, name):
    path = shared_data(name)
    twin = tmp_path / path.name.replace(".gz", ".zst")
    twin.write_bytes(_zstd(gzip.decompress(path.read_bytes())))
    config = IngestConfig(languages=[])
    r, reference = ingest_file(str(twin), config), ingest_file(str(path), config)
    assert r.counts == reference.counts and r.counts["docs_kept"] >= 1
    assert r.kept.drop_columns(["source", "offset"]).equals(reference.kept.drop_columns(["source", "offset"]))
    assert r.removed.drop_columns(["source", "offset"]).equals(reference.removed.drop_columns(["source", "offset"]))


def test_damage_in_a_zstd_file_ends_it_and_keeps_what_came_before(shared_data, tmp_path):
    path = shared_data("warc/dolma-sample-0001.warc.gz")
    reference = ingest_file(str(path), IngestConfig())
    packed = zstandard.ZstdCompressor().compress(gzip.decompress(path.read_bytes()))
    middle = len(packed) // 2
    (tmp_path / "corrupt.warc.zst").write_bytes(packed[:middle] + bytes(64) + packed[middle + 64 :])
    (tmp_path / "cut.warc.zst").write_bytes(packed[:middle])
    for name, damage in {"corrupt.warc.zst": {"zstd_error": 1}, "cut.warc.zst": {"truncated_record": 1}}.items():
        r = ingest_file(str(tmp_path / name), IngestConfig())
        assert r.counts["damaged"] == damage, name
        assert 1 <= r.counts["docs_kept"] < reference.counts["docs_kept"], name  # no resync past the damage
        assert r.kept.column("text").to_pylist() == reference.kept.column("text").to_pylist()[: r.kept.num_rows]
    lines = gzip.decompress(shared_data("text/dolma-ccnet-cc_en_head-0091.jsonl.gz").read_bytes())
    packed = _zstd(lines)
    (tmp_path / "corrupt.jsonl.zst").write_bytes(packed[:-200] + bytes(64) + packed[-136:])
    r = ingest_file(str(tmp_path / "corrupt.jsonl.zst"), IngestConfig())
    assert r.counts["damaged"] == {"zstd_error": 1} and r.counts["docs_kept"] >= 1


# -- ARC --------------------------------------------------------------------------------------


def _arc_record(url: str, ip: str, date: str, mime: str, block: bytes) -> bytes:
    return f"{url} {ip} {date} {mime} {len(block)}\n".encode() + block + b"\n"


def _arc_records(warc) -> list[bytes]:
    """The HTTP responses of a real WARC as ARC v1 records, after the filedesc:// record ARC files begin with."""
    about = b"1 0 crawl2llm tests\nURL IP-address Archive-date Content-type Archive-length\n"
    records = [_arc_record("filedesc://test.arc", "0.0.0.0", "20240101000000", "text/plain", about)]
    with open(warc, "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
            block = r.reader.read()
            mime = re.search(rb"(?im)^content-type:[ \t]*([^;\s]+)", block.partition(b"\r\n\r\n")[0])
            records.append(
                _arc_record(
                    r.headers["WARC-Target-URI"].strip("<>"),
                    r.headers.get("WARC-IP-Address") or "0.0.0.0",
                    re.sub(r"\D", "", r.headers["WARC-Date"])[:14],
                    mime.group(1).decode() if mime else "no-type",
                    block,
                )
            )
    return records


@pytest.mark.parametrize("name", ["dolma-sample-0000.warc.gz", "pywb-iana.warc.gz"])
@pytest.mark.parametrize("suffix", [".arc", ".arc.gz"])
def test_arc_gives_the_documents_of_the_same_responses_in_warc(shared_data, tmp_path, name, suffix):
    path = shared_data(f"warc/{name}")
    records = _arc_records(path)
    arc = tmp_path / f"converted{suffix}"
    arc.write_bytes(b"".join(gzip.compress(r) if suffix == ".arc.gz" else r for r in records))
    r, reference = ingest_file(str(arc), IngestConfig()), ingest_file(str(path), IngestConfig())
    assert r.kept.schema == DOC_SCHEMA and r.counts["docs_kept"] >= 10
    same = ["url", "title", "text", "date", "language", "language_score"]
    assert r.kept.select(same).equals(reference.kept.select(same))  # dates: WARC-Date from ARC's 14 digits
    assert r.removed.select(same + ["reason"]).equals(reference.removed.select(same + ["reason"]))
    assert r.counts["records"] == len(records) and r.counts["responses"] == reference.counts["responses"]
    assert r.counts["skipped"] == {k: n for k, n in reference.counts["skipped"].items() if k != "revisit"}
    data = arc.read_bytes()
    for doc in r.kept.to_pylist():  # no record ids in ARC: the fallback id, from the offset of the record
        assert doc["id"] == hashlib.sha1(f"{arc.name}:{doc['offset']}".encode()).hexdigest()
        at = zlib.decompressobj(31).decompress(data[doc["offset"] :]) if suffix == ".arc.gz" else data[doc["offset"] :]
        assert at.startswith(f"{doc['url']} ".encode())


def test_damaged_arc_records_are_counted_and_the_rest_kept(shared_data, tmp_path):
    path = shared_data("warc/dolma-sample-0000.warc.gz")
    records = _arc_records(path)
    clean = tmp_path / "clean.arc.gz"
    clean.write_bytes(b"".join(gzip.compress(r) for r in records))
    reference = ingest_file(str(clean), IngestConfig(languages=[], min_chars=0))
    members = [gzip.compress(r) for r in records]
    members[3] = gzip.compress(b"not an ARC header\n" + records[3])
    members[6] = members[6][:40] + bytes(32) + members[6][72:]  # corrupt deflate data
    head, _, rest = records[9].partition(b"\n")
    members[9] = gzip.compress(head.rsplit(b" ", 1)[0] + b" %d\n" % (len(rest) + 100) + rest)  # body cut short
    members[-1] = members[-1][: len(members[-1]) // 2]  # the file ends inside the last record
    damaged = tmp_path / "damaged.arc.gz"
    damaged.write_bytes(b"".join(members))
    r = ingest_file(str(damaged), IngestConfig(languages=[], min_chars=0))
    assert r.counts["damaged"] == {"bad_header": 1, "gzip_error": 1, "truncated_record": 2}
    urls = [record.split(b" ", 1)[0].decode() for record in records]
    lost = {urls[i] for i in (3, 6, 9, len(records) - 1)}
    expected = [doc for doc in reference.kept.to_pylist() if doc["url"] not in lost]
    assert r.kept.column("text").to_pylist() == [doc["text"] for doc in expected]
    starts = list(itertools.accumulate((len(m) for m in members), initial=0))
    assert r.kept.column("offset").to_pylist() == [starts[urls.index(doc["url"])] for doc in expected]
    plain = tmp_path / "cut.arc"
    plain.write_bytes(b"".join(records)[:-5000])
    r = ingest_file(str(plain), IngestConfig(languages=[], min_chars=0))
    assert r.counts["damaged"] == {"truncated_record": 1}
    assert r.kept.column("text").to_pylist() == reference.kept.column("text").to_pylist()[:-1]


def test_arc_version_2_header_lines_are_read(shared_data, tmp_path):
    """Version 2 puts result code, checksum, location, offset and file name before the length."""
    records = _arc_records(shared_data("warc/dolma-sample-0000.warc.gz"))
    (tmp_path / "v1.arc").write_bytes(b"".join(records))
    v2 = []
    for record in records:
        head, _, rest = record.partition(b"\n")
        url, ip, date, mime, length = head.split(b" ")
        v2.append(b" ".join([url, ip, date, mime, b"200", b"-", b"-", b"0", b"v2.arc", length]) + b"\n" + rest)
    (tmp_path / "v2.arc").write_bytes(b"".join(v2))
    r = ingest_file(str(tmp_path / "v2.arc"), IngestConfig())
    reference = ingest_file(str(tmp_path / "v1.arc"), IngestConfig())
    assert r.counts == reference.counts and r.counts["docs_kept"] >= 10
    assert r.kept.select(["url", "text", "date"]).equals(reference.kept.select(["url", "text", "date"]))


def test_not_an_arc_file_is_named(tmp_path):
    (tmp_path / "garbage.arc.gz").write_bytes(b"this is not an archive\n" * 50)
    with pytest.raises(IngestError, match="garbage.arc.gz.*gzip_error"):
        ingest_file(str(tmp_path / "garbage.arc.gz"), IngestConfig())


# -- Parquet ----------------------------------------------------------------------------------


def test_parquet_rows_give_the_documents_of_the_same_jsonl_lines(shared_data, tmp_path):
    path = shared_data("text/dolma-ccnet-cc_en_head-0091.jsonl.gz")
    objs = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    pq.write_table(pa.Table.from_pylist(objs), tmp_path / "dolma.parquet", row_group_size=3)  # batches cross groups
    r, reference = ingest_file(str(tmp_path / "dolma.parquet"), IngestConfig()), ingest_file(str(path), IngestConfig())
    assert r.counts == reference.counts and r.counts["docs_kept"] == 10
    assert r.kept.drop_columns(["source", "offset"]).equals(reference.kept.drop_columns(["source", "offset"]))
    assert r.kept.column("offset").to_pylist() == list(range(10))  # row numbers, from 0
    assert r.kept.column("date").to_pylist() == [obj["created"] for obj in objs]  # dolma's names, as in JSONL


def test_parquet_rows_without_text_are_damaged_and_a_file_without_the_column_is_named(tmp_path):
    text = "A page of text that is long enough to be kept by the length rule of ingest. " * 3
    pq.write_table(pa.table({"text": [text, None], "url": ["https://example.org/a", None]}), tmp_path / "some.parquet")
    r = ingest_file(str(tmp_path / "some.parquet"), IngestConfig())
    assert r.counts["records"] == 2 and r.counts["damaged"] == {"no_text": 1} and r.counts["docs_kept"] == 1
    assert r.kept.column("url").to_pylist() == ["https://example.org/a"]
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    assert ingest_file(str(tmp_path / "numbers.parquet"), IngestConfig()).counts["damaged"] == {"no_text": 2}
    pq.write_table(pa.table({"content": ["text under another name"]}), tmp_path / "other.parquet")
    with pytest.raises(IngestError, match="other.parquet: no `text` column"):
        ingest_file(str(tmp_path / "other.parquet"), IngestConfig())
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all" * 10)
    with pytest.raises(IngestError, match="fake.parquet: not a readable Parquet file"):
        ingest_file(str(tmp_path / "fake.parquet"), IngestConfig())


def test_every_ingest_format_is_an_input_file():
    from pipeline.inputs import is_input_file

    assert all(is_input_file(f"crawl/part-0{suffix}") for suffix in INPUT_SUFFIXES)
    assert not is_input_file("crawl/part-0.warc.wat.gz") and not is_input_file("notes.txt")


def test_deeply_nested_page_is_skipped_not_a_hang(tmp_path):
    """resiliparse's main-content pass is quadratic in nesting depth (hours for a 10 MB record of
    nested divs, inside one C call no timeout can stop): such pages are skipped and counted."""
    from pipeline import warc

    def page(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body

    deep = b"<html><body>" + b"<div>" * 50_000 + b"deep" + b"</div>" * 50_000 + b"</body></html>"
    normal = b"<html><body><p>" + b"A perfectly ordinary paragraph of text. " * 20 + b"</p></body></html>"
    date = warc.warc_date(0)
    data = b"".join(
        warc.response_record(url, page(body), date, warc.record_id(url))
        for url, body in [("http://a.test/deep", deep), ("http://a.test/ok", normal)]
    )
    (tmp_path / "pathological.warc.gz").write_bytes(data)
    r = ingest_file(str(tmp_path / "pathological.warc.gz"), IngestConfig(languages=[], min_chars=0))
    assert r.counts["skipped"] == {"html_too_deep": 1}
    assert r.kept.column("url").to_pylist() == ["http://a.test/ok"]


def test_blocklist_files_are_read_once_per_content(tmp_path, monkeypatch):
    """A worker ingests many pieces: the (large) list files are read again only when they change."""
    import pipeline.url_filter as url_filter
    from pipeline.ingest import url_blocklist

    lists = tmp_path / "domains.txt"
    lists.write_text("a.example\n")
    reads = []
    real = url_filter._read_lists
    monkeypatch.setattr(url_filter, "_read_lists", lambda urls: reads.append(urls) or real(urls))
    config = IngestConfig(url_blocklist_files=[str(lists)])
    first = url_blocklist(config)
    assert url_blocklist(config) is first and len(reads) == 2  # domain files and word files, once
    lists.write_text("a.example\nb.example\n")
    assert url_blocklist(config).why_blocked("http://b.example/") == "domain b.example"
