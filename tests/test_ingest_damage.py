"""Damaged input costs only the damaged record (issue 16): each class of damage keeps the good records
around it (counted independently with warcio), is counted once with its file and offset, and a file
that cannot be read at all costs only itself."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from pipeline.ingest import IngestConfig, ingest_file
from pipeline.warc import record, response_record

CONFIG = IngestConfig(languages=[], main_content=False, min_chars=1)
WORDS = "the of and to in is was for on that with as by at from his her it an were are which this".split()


def _page(n: int, words: int = 60, seed: int = 0) -> bytes:
    rng = random.Random(seed * 1000 + n)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"<html><head><title>page {n}</title></head><body><p>{text}</p></body></html>".encode()


def _response(n: int, html: bytes, encoding: str | None = None) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
    if encoding:
        head += f"Content-Encoding: {encoding}\r\n"
    return response_record(
        f"http://example.com/{n}",
        head.encode() + b"\r\n" + html,
        "2024-01-01T00:00:00Z",
        f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>",
    )


def _members(*records: bytes) -> tuple[bytes, list[int]]:
    offsets, pos = [], 0
    for r in records:
        offsets.append(pos)
        pos += len(r)
    return b"".join(records), offsets


def _warcio_ids(data: bytes, path) -> list[str]:
    """Response record ids as warcio (an independent reader) reads them."""
    path.write_bytes(data)
    with open(path, "rb") as f:
        return [
            r.rec_headers.get_header("WARC-Record-ID").strip("<>").removeprefix("urn:uuid:")
            for r in WarcioIterator(f)
            if r.rec_type == "response"
        ]


def _kept_ids(result) -> list[str]:
    return result.kept.column("id").to_pylist()


def test_corruption_inside_a_big_gzip_record_costs_that_record_only(tmp_path):
    rng = random.Random(1)
    big_html = (
        b"<html><body><p>"
        + " ".join(f"{rng.getrandbits(64):x}" for _ in range(40_000)).encode()
        + b"</p></body></html>"
    )
    records = [_response(1, _page(1)), _response(2, big_html), _response(3, _page(3))]
    data, offsets = _members(*records)
    assert len(records[1]) > 200_000  # compressed: far past fastwarc's 64 KiB first read
    good = _warcio_ids(data, tmp_path / "good.warc.gz")
    bad = bytearray(data)
    at = offsets[1] + 150_000
    bad[at : at + 64] = bytes(64)
    path = tmp_path / "big.warc.gz"
    path.write_bytes(bytes(bad))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == [good[0], good[2]]
    assert r.counts["damaged"] == {"gzip_error": 1}
    assert r.damaged_records == [
        {"file": "big.warc.gz", "offset": offsets[1], "record_id": good[1], "what": "gzip_error"}
    ]


def test_a_broken_member_header_is_counted_once(tmp_path):
    records = [_response(n, _page(n)) for n in range(1, 6)]
    data, offsets = _members(*records)
    good = _warcio_ids(data, tmp_path / "good.warc.gz")
    bad = bytearray(data)
    bad[offsets[2] + 20 : offsets[2] + 60] = b"\x1f\x8b\x08" * 13 + b"\x00"  # garbage with false gzip magics
    path = tmp_path / "broken.warc.gz"
    path.write_bytes(bytes(bad))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == good[:2] + good[3:]
    assert sum(r.counts["damaged"].values()) == 1
    assert [d["offset"] for d in r.damaged_records] == [offsets[2]]


def test_digest_mismatch_is_counted_and_the_policy_is_a_setting(tmp_path):
    records = [gzip.decompress(_response(n, _page(n))) for n in range(1, 4)]
    data, offsets = _members(*records)
    good = _warcio_ids(data, tmp_path / "good.warc")
    flipped = bytearray(data)
    at = offsets[1] + records[1].index(b"<p>") + 5
    flipped[at] ^= 0x01  # one letter of the text changes; the record still parses
    path = tmp_path / "flipped.warc"
    path.write_bytes(bytes(flipped))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == [good[0], good[2]]
    assert r.counts["damaged"] == {"digest_mismatch": 1}
    assert r.damaged_records[0]["offset"] == offsets[1] and r.damaged_records[0]["record_id"] == good[1]
    kept = ingest_file(str(path), CONFIG.model_copy(update={"digest_mismatch": "keep"}))
    assert _kept_ids(kept) == good and kept.counts["damaged"] == {"digest_mismatch": 1}
    unchecked = ingest_file(str(path), CONFIG.model_copy(update={"check_digests": False}))
    assert _kept_ids(unchecked) == good and unchecked.counts["damaged"] == {}


def test_truncated_gzip_content_encoding_keeps_the_readable_part(tmp_path):
    html = _page(2, words=4000)
    cut = gzip.compress(html)[:-2000]
    records = [_response(1, _page(1)), _response(2, cut, encoding="gzip"), _response(3, _page(3))]
    path = tmp_path / "cut-body.warc.gz"
    data, offsets = _members(*records)
    good = _warcio_ids(data, path)
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == good
    text = r.kept.column("text").to_pylist()[1]
    assert 1000 < len(text) < len(html)
    assert r.counts["damaged"] == {"truncated_content_encoding": 1}
    assert r.damaged_records[0]["offset"] == offsets[1]


def test_corrupt_gzip_content_encoding_costs_that_record(tmp_path):
    body = bytearray(gzip.compress(_page(2, words=400)))
    body[20:40] = bytes(20)
    records = [_response(1, _page(1)), _response(2, bytes(body), encoding="gzip"), _response(3, _page(3))]
    path = tmp_path / "bad-body.warc.gz"
    data, offsets = _members(*records)
    good = _warcio_ids(data, path)
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == [good[0], good[2]]
    assert r.counts["damaged"] == {"bad_content_encoding": 1} and r.damaged_records[0]["offset"] == offsets[1]


def test_a_warc_of_unknown_record_types_only_is_readable(tmp_path):
    path = tmp_path / "custom.warc.gz"
    path.write_bytes(
        b"".join(
            record("x-custom", f"<urn:uuid:{n}>", "2024-01-01T00:00:00Z", b"hello", "text/plain") for n in range(3)
        )
    )
    r = ingest_file(str(path), CONFIG)
    assert r.counts["records"] == 3 and r.counts["docs_in"] == 0 and r.counts["damaged"] == {}


def test_a_lone_surrogate_in_jsonl_text_becomes_a_replacement_character(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    tail = " in a text long enough that one bad character is under 1% of it (else: undecodable)" * 2
    lines = [
        {"id": "a", "text": "good text one"},
        {"id": "b", "text": "bad \ud800 text" + tail},
        {"id": "c\udfff", "text": "good text three", "title": "t\udc00"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == ["a", "b", "c\ufffd"]
    assert r.kept.column("text").to_pylist()[1] == "bad \ufffd text" + tail


@pytest.mark.slow
def test_cli_exit_codes_damage_only_is_0_an_unreadable_file_is_an_error_naming_it(prefect_api, tmp_path, capsys):
    from flows.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    data, offsets = _members(*(_response(n, _page(n)) for n in range(1, 4)))
    bad = bytearray(data)
    bad[offsets[1] + 30 : offsets[1] + 40] = bytes(10)
    (folder / "a-damaged.warc.gz").write_bytes(bytes(bad))
    (folder / "b-good.warc.gz").write_bytes(_members(*(_response(n, _page(n, seed=1)) for n in range(4, 6)))[0])
    store, config = str(tmp_path / "store"), tmp_path / "ingest.yaml"
    config.write_text("languages: []\nmain_content: false\nmin_chars: 1\n")
    run = ["ingest", str(folder), "--store", store, "--workers", "0", "--config", str(config)]
    assert main(run) == 0  # only damaged records: a good run
    (folder / "c-not-gzip.warc.gz").write_bytes(b"this is not a WARC file at all\n" * 10)
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "c-not-gzip.warc.gz" in last and "Traceback" not in err
    manifests = [
        json.loads(p.read_text()) | {"dir": p.parent} for p in (tmp_path / "store").glob("ingest/*/manifest.json")
    ]
    failed = next(m for m in manifests if len(m["sources"]) == 3)  # committed, then the run failed naming the file
    docs = sum(pq.read_table(p).num_rows for p in (failed["dir"] / "data").glob("*.parquet"))
    assert docs == 4 and failed["counts"]["damaged"] == {"gzip_error": 1} and failed["counts"]["unreadable_files"] == 1
    stats = json.loads((failed["dir"] / "stats" / "part-00000.json").read_text())
    assert stats["damaged_records"] == [
        {"file": "a-damaged.warc.gz", "offset": offsets[1], "record_id": None, "what": "gzip_error"}
    ]
    assert [u["file"] for u in stats["unreadable"]] == ["c-not-gzip.warc.gz"]
    # the stage report lists the damaged record by file and offset (Prefect artifacts)
    from prefect import get_client

    from flows.artifacts import key

    fp = failed["dir"].name[:16]
    with get_client(sync_client=True) as client:  # 3.8.8's clients send null filters: post the filter itself
        found = client._client.post(
            "/artifacts/filter",
            json={
                "artifacts": {"key": {"any_": [key("ingest", "damaged", fp), key("ingest", "report", fp)]}},
                "limit": 10,
            },
        ).json()
    by_key = {a["key"]: a["data"] for a in found}
    table = by_key[key("ingest", "damaged", fp)]
    table = json.loads(table) if isinstance(table, str) else table
    assert [(r["file"], r["offset"], r["what"]) for r in table] == [("a-damaged.warc.gz", offsets[1], "gzip_error")]
    assert f"| a-damaged.warc.gz | {offsets[1]} |" in by_key[key("ingest", "report", fp)]


@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_zstd_damage_costs_one_frame_and_is_counted(tmp_path, checksum, damage):
    """IIPC's .warc.zst layout (one frame per record): a cut file counts the cut record; a flipped
    byte is caught by the frame checksum or, without one, by the record's digest; the frames after it
    are kept."""
    import zstandard

    plain = [gzip.decompress(_response(n, _page(n))) for n in range(1, 5)]
    good = _warcio_ids(b"".join(plain), tmp_path / "plain.warc")
    frames = [zstandard.ZstdCompressor(write_checksum=checksum).compress(r) for r in plain]
    data = bytearray(b"".join(frames))
    starts = [sum(map(len, plain[:i])) for i in range(len(plain))]  # offsets in the decompressed stream
    if damage == "truncated":
        data, lost, what = data[:-40], 3, "truncated_record"
    else:
        data[len(frames[0]) + len(frames[1]) // 2] ^= 0x55
        lost, what = 1, "zstd_error" if checksum else "digest_mismatch"
    path = tmp_path / "damaged.warc.zst"
    path.write_bytes(bytes(data))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == good[:lost] + good[lost + 1 :]
    assert r.counts["damaged"] == {what: 1}
    assert [d["offset"] for d in r.damaged_records] == [starts[lost]]


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_jsonl_zstd_damage_costs_one_frame_and_is_counted_at_its_line(tmp_path, damage):
    """A multi-frame .jsonl.zst (pzstd, seekable zstd): a broken frame costs its lines only; reading
    goes on at the next frame, and the damage is counted once at the first line lost."""
    import zstandard

    chunks = [
        [json.dumps({"id": f"{f}-{i}", "text": f"line {i} of frame {f}"}) + "\n" for i in range(3)] for f in range(4)
    ]
    frames = [zstandard.ZstdCompressor(write_checksum=True).compress("".join(c).encode()) for c in chunks]
    data = bytearray(b"".join(frames))
    ids = [[json.loads(line)["id"] for line in c] for c in chunks]
    if damage == "truncated":
        data, lost, what = data[:-5], 3, "truncated_record"
    else:
        data[len(frames[0]) + len(frames[1]) // 2] ^= 0x55
        lost, what = 1, "zstd_error"
    path = tmp_path / "damaged.jsonl.zst"
    path.write_bytes(bytes(data))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == [i for f, frame in enumerate(ids) if f != lost for i in frame]
    assert r.counts["damaged"] == {what: 1}
    assert [d["offset"] for d in r.damaged_records] == [3 * lost + 1]


@pytest.mark.parametrize("hit", [0, 2, 3])
def test_header_damage_in_an_uncompressed_warc_costs_that_record_only(tmp_path, hit):
    """An uncompressed .warc has no gzip members to resync at: reading goes on at the next line that
    begins a record, and the damage is counted once at the damaged record's offset."""
    plain = [gzip.decompress(_response(n, _page(n))) for n in range(1, 6)]
    good = _warcio_ids(b"".join(plain), tmp_path / "plain.warc")
    starts = [sum(map(len, plain[:i])) for i in range(len(plain))]
    data = bytearray(b"".join(plain))
    data[starts[hit] + 1 : starts[hit] + 5] = b"XXXX"  # "WARC/1.1" no longer
    path = tmp_path / "damaged.warc"
    path.write_bytes(bytes(data))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == good[:hit] + good[hit + 1 :]
    assert r.counts["damaged"] == {"bad_header": 1}
    assert [d["offset"] for d in r.damaged_records] == [starts[hit]]


def test_arc_urls_with_spaces_are_read(tmp_path):
    def arc_record(header: str, body: bytes) -> bytes:
        return f"{header} {len(body)}\n".encode() + body + b"\n"

    desc = b"1 0 crawl2llm-test\nURL IP-address Archive-date Content-type Archive-length\n"
    http = [b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + _page(n) for n in range(3)]
    data = (
        arc_record("filedesc://test.arc 0.0.0.0 20240101000000 text/plain", desc)
        + arc_record("http://example.com/a 1.2.3.4 20240101000000 text/html", http[0])
        + arc_record("http://example.com/with a space.html 1.2.3.4 20240101000001 text/html", http[1])
        + arc_record("http://example.com/c 1.2.3.4 20240101000002 text/html", http[2])
    )
    path = tmp_path / "spaces.arc"
    path.write_bytes(data)
    with open(path, "rb") as f:
        warcio_urls = [
            r.rec_headers.get_header("WARC-Target-URI")
            for r in WarcioIterator(f, arc2warc=True)
            if r.rec_type == "response"
        ]
    r = ingest_file(str(path), CONFIG)
    assert len(warcio_urls) == 3 and r.kept.num_rows == 3 and r.counts["damaged"] == {}
    assert r.kept.column("url").to_pylist()[1] == "http://example.com/with%20a%20space.html"
    assert r.kept.column("date").to_pylist()[1] == "2024-01-01T00:00:01Z"


@pytest.mark.parametrize("gzipped", [False, True])
def test_warc_headers_with_lf_only_line_ends_are_read(tmp_path, gzipped):
    plain = [gzip.decompress(_response(n, _page(n))) for n in range(1, 4)]
    good = _warcio_ids(b"".join(plain), tmp_path / "crlf.warc")

    def lf(r: bytes) -> bytes:
        head, _, rest = r.partition(b"\r\n\r\n")
        return head.replace(b"\r\n", b"\n") + b"\n\n" + rest

    path = tmp_path / ("lf.warc.gz" if gzipped else "lf.warc")
    path.write_bytes(b"".join(gzip.compress(lf(r)) if gzipped else lf(r) for r in plain))
    r = ingest_file(str(path), CONFIG)
    assert _kept_ids(r) == good and r.counts["records"] == 3 and r.counts["damaged"] == {}


def test_lf_only_warc_with_a_bad_length_keeps_the_records_before(tmp_path):
    plain = [gzip.decompress(_response(n, _page(n))).replace(b"\r\n", b"\n", 8) for n in range(1, 4)]
    plain[2] = plain[2].replace(b"Content-Length: ", b"Content-Length: x", 1)
    path = tmp_path / "lf-bad.warc"
    path.write_bytes(b"".join(plain))
    r = ingest_file(str(path), CONFIG.model_copy(update={"check_digests": False}))
    assert r.kept.num_rows == 2 and r.counts["damaged"] == {"bad_header": 1}
    assert r.damaged_records[0]["offset"] == len(plain[0]) + len(plain[1])
