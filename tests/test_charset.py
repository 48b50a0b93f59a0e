"""Pages are decoded as a browser decodes them (issue 16): each page (tests/fixtures/charset_pages.py)
is labelled and encoded the way real servers send it, wrapped in a WARC response record and read
through ingest's real extraction, and its text must be the characters a browser shows (Chromium 156
shows these, checked by benchmarks/charset_decoding.py --chromium, but for unlabelled UTF-8). Text
that no decoding reads is removed as `undecodable`, and the binary-text check of later stages sees C1
controls."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.charset import decode_html
from pipeline.ingest import IngestConfig, ingest_file
from pipeline.stage import text_kinds
from pipeline.warc import response_record
from tests.fixtures.charset_pages import PAGES, RUSSIAN, UTF8, html_page

CONFIG = IngestConfig(languages=[], main_content=False, min_chars=1)


def _warc(path, pages: list[tuple[str, bytes]]) -> str:
    """A WARC of one HTTP 200 response per (Content-Type, body), as a crawler records them."""
    records = [
        response_record(
            f"http://example.com/{n}",
            f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n\r\n".encode() + body,
            "2024-01-01T00:00:00Z",
            f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>",
        )
        for n, (ctype, body) in enumerate(pages)
    ]
    path.write_bytes(b"".join(records))
    return str(path)


def test_every_page_reads_as_the_browser_shows_it(tmp_path):
    result = ingest_file(_warc(tmp_path / "charsets.warc.gz", [(c, b) for _, c, b, _ in PAGES]), CONFIG)
    texts = dict(zip(result.kept.column("url").to_pylist(), result.kept.column("text").to_pylist()))
    got = {name: texts.get(f"http://example.com/{n}") for n, (name, *_) in enumerate(PAGES)}
    assert got == {name: expected for name, _, _, expected in PAGES}


@pytest.mark.parametrize(
    "label, body, text, encoding",
    [
        ("x-user-defined", b"a\x80\xff", "a\uf780\uf7ff", "x-user-defined"),
        ("iso-2022-kr", b"\x1b$)Cabc", "\ufffd", "replacement"),  # the standard's "replacement" encoding
        ("  Windows-1252 ", b"\x80", "\u20ac", "windows-1252"),
        ("latin1", b"a\x81b\x9d", "a\x81b\x9d", "windows-1252"),  # bytes Microsoft left undefined: C1 controls
        ("gbk", b"\x80", "\u20ac", "gbk"),
        (None, b'<meta charset="x-user-defined">\x80', '<meta charset="x-user-defined">\u20ac', "windows-1252"),
    ],
)
def test_labels_the_standard_treats_specially(label, body, text, encoding):
    assert decode_html(body, label) == (text, encoding)


# Codes where Python's codec of the encoding reads otherwise than the standard (and Chromium 156's
# TextDecoder, which benchmarks/charset_decoding.py --chromium compares code by code).
@pytest.mark.parametrize(
    "label, body, text",
    [
        ("euc-jp", b"\xa1\xc1\xa1\xc2\xa1\xdd\xa1\xf1", "\uff5e\u2225\uff0d\uffe0"),  # ～∥－￠: Windows' JIS X 0208
        ("euc-jp", b"\xad\xa1\xf9\xa1", "\u2460\u7e8a"),  # NEC row 13 and the IBM extensions
        ("euc-jp", b"\xa2\xafa\x8f\xa1\xa1b", "\ufffda\ufffdb"),  # one error per bad code, its bytes together
        ("gb2312", b"\xa6\xd9\xa8\xbc\x81\x35\xf4\x37\xfe\x59", "\ufe10\u1e3f\ue7c7\u9fb4"),  # GB18030-2022
        ("gbk", b"\x84\x31\xa8\x38x", "\ufffdx"),  # a four-byte code outside the ranges: one error
        # 0x8862 is two code points, U+00CA U+0304, by the standard (Chromium 156 gives U+0093 and a lone surrogate)
        ("big5", b"\xa1\x45\xa2\x44\x88\x62", "\u2027\uffe5\xca\u0304"),
        ("shift_jis", b"\x81\xad\xa0", "\ufffd\ufffd"),
        ("koi8-u", b"\xae\xbe", "\u045e\u040e"),
        ("windows-1255", b"\xca", "\u05ba"),
    ],
)
def test_codes_python_reads_otherwise_read_as_the_standard_says(label, body, text):
    assert decode_html(body, label)[0] == text


def test_text_no_decoding_reads_is_removed_as_undecodable(tmp_path):
    pages = [
        ("text/html; charset=utf-8", html_page((RUSSIAN * 5).encode("cp1251"))),  # mislabelled: all U+FFFD
        ("text/html; charset=iso-2022-kr", html_page(b"whatever")),
        ("text/html; charset=utf-8", html_page(UTF8.encode())),
    ]
    result = ingest_file(_warc(tmp_path / "bad.warc.gz", pages), CONFIG)
    assert result.counts["removed"] == {"undecodable": 2}
    assert result.kept.column("text").to_pylist() == [UTF8]
    assert result.removed.column("detail").to_pylist()[1] == "100% replacement or control characters"


def test_the_binary_text_check_sees_c1_controls():
    texts = ["cp1252 read as latin-1: \x93quoted\x94", "plain text", "caf\u00e9 \u00a0 na\u00efve"]
    assert text_kinds(pa.table({"text": texts}))["docs_binary_like"] == 1
