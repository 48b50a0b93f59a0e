"""Pages are decoded as a browser decodes them (issue 16): each page here is labelled and encoded the
way real servers send it, wrapped in a WARC response record and read through ingest's real
extraction, and its text must be the characters a browser shows (Chromium 156 shows these, checked by
benchmarks/charset_decoding.py --chromium, but for unlabelled UTF-8). Text that no decoding reads is
removed as `undecodable`, and the binary-text check of later stages sees C1 controls."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.charset import decode_html
from pipeline.ingest import IngestConfig, ingest_file
from pipeline.stage import text_kinds
from pipeline.warc import response_record

CONFIG = IngestConfig(languages=[], main_content=False, min_chars=1)
CP1252 = "He said “hello” — it costs €5… naïve café, ‘quoted’ ™"
GBK = "朱镕基总理在北京会见了来访的客人。"  # 镕 is in GBK, not in GB2312
CP932 = "①②㈱ 髙橋さんの会社～≒"  # NEC and IBM extensions of Windows-31J, not in Shift_JIS
JAPANESE = "日本語のテキストです。"
RUSSIAN = "Привет, мир! Это тест."
UTF8 = "Grüße aus München — 日本 😀"
EUC_JP_NEC = bytes.fromhex("ada1ada2adea")  # ①②㈱ in EUC-JP's NEC row 13, which browsers read


def _html(body: bytes, head: bytes = b"") -> bytes:
    return b"<html><head>" + head + b"<title>t</title></head><body><p>" + body + b"</p></body></html>"


# (name, Content-Type header, body bytes, the text a browser shows): labels as real servers send them.
PAGES = [
    ("latin-1 label over cp1252", "text/html; charset=ISO-8859-1", _html(CP1252.encode("cp1252")), CP1252),
    ("ascii label over cp1252", "text/html; charset=us-ascii", _html(CP1252.encode("cp1252")), CP1252),
    (
        "UTF-8 BOM over a wrong HTTP label",
        "text/html; charset=iso-8859-1",
        b"\xef\xbb\xbf" + _html(UTF8.encode()),
        UTF8,
    ),
    (
        "UTF-16LE BOM over a wrong HTTP label",
        "text/html; charset=utf-8",
        _html(UTF8.encode()).decode().encode("utf-16"),
        UTF8,
    ),
    ("UTF-16BE BOM, no label", "text/html", b"\xfe\xff" + _html(UTF8.encode()).decode().encode("utf-16-be"), UTF8),
    (
        "gb2312 label over GBK and GB18030",
        "text/html; charset=gb2312",
        _html(GBK.encode("gbk") + "\U00020000".encode("gb18030")),
        GBK + "\U00020000",
    ),
    ("Shift_JIS label over CP932", "text/html; charset=Shift_JIS", _html(CP932.encode("cp932")), CP932),
    (
        "EUC-JP, NEC row 13 included",
        "text/html; charset=EUC-JP",
        _html(JAPANESE.encode("euc_jp") + EUC_JP_NEC),
        JAPANESE + "\u2460\u2461\u3231",
    ),
    ("KOI8-R", "text/html; charset=koi8-r", _html(RUSSIAN.encode("koi8_r")), RUSSIAN),
    ("windows-1251", "text/html; charset=windows-1251", _html(RUSSIAN.encode("cp1251")), RUSSIAN),
    # The one page where we part from Chromium, which reads it as windows-1252 (benchmarks/charset_decoding.py
    # --chromium): bytes that are valid UTF-8 are almost never text in a legacy encoding.
    ("UTF-8 without any label", "text/html", _html(UTF8.encode()), UTF8),
    (
        "meta charset only",
        "text/html",
        _html(CP932.encode("cp932"), b'<meta http-equiv="Content-Type" content="text/html; charset=shift_jis">'),
        CP932,
    ),
    ("meta UTF-16 is read as UTF-8", "text/html", _html(UTF8.encode(), b'<meta charset="utf-16">'), UTF8),
    (
        "unknown HTTP label falls through to meta",
        "text/html; charset=no-such-charset",
        _html(RUSSIAN.encode("koi8_r"), b"<meta charset=KOI8-R>"),
        RUSSIAN,
    ),
    ("no label, detected", "text/html", _html((RUSSIAN * 20).encode("cp1251")), RUSSIAN * 20),
]


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
        ("text/html; charset=utf-8", _html((RUSSIAN * 5).encode("cp1251"))),  # mislabelled: all U+FFFD
        ("text/html; charset=iso-2022-kr", _html(b"whatever")),
        ("text/html; charset=utf-8", _html(UTF8.encode())),
    ]
    result = ingest_file(_warc(tmp_path / "bad.warc.gz", pages), CONFIG)
    assert result.counts["removed"] == {"undecodable": 2}
    assert result.kept.column("text").to_pylist() == [UTF8]
    assert result.removed.column("detail").to_pylist()[1] == "100% replacement or control characters"


def test_the_binary_text_check_sees_c1_controls():
    texts = ["cp1252 read as latin-1: \x93quoted\x94", "plain text", "caf\u00e9 \u00a0 na\u00efve"]
    assert text_kinds(pa.table({"text": texts}))["docs_binary_like"] == 1
