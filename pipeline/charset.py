"""HTML bytes to text the way a browser decodes them (the WHATWG Encoding Standard), so a page reaches
the corpus as its readers saw it: servers label cp1252 pages iso-8859-1, GBK pages gb2312 and CP932
pages Shift_JIS, and Python's codecs of those names leave C1 controls or mojibake.

The order is the standard's: a byte order mark, then the HTTP charset, then a <meta> charset in the
first 1024 bytes, then detection (strict UTF-8, else uchardet through resiliparse). Labels are read
through the standard's label table (webencodings), and each encoding is decoded by the Python codec
nearest the browser's decoder, corrected where the two read a code differently (docs/INGEST.md,
"Character encodings", has what was measured and what still differs).
"""

from __future__ import annotations

import codecs
import re

import webencodings

# The WHATWG encodings whose Python codec of the same name decodes differently: GBK is decoded as
# gb18030, Shift_JIS as Windows-31J with its NEC and IBM extensions, EUC-KR as Windows-949 (UHC), Big5
# with the HKSCS extension; the rest are names Python does not know.
PYTHON_CODECS = {
    "gbk": "gb18030",
    "gb18030": "gb18030",
    "shift_jis": "cp932",
    "euc-kr": "cp949",
    "big5": "big5hkscs",
    "euc-jp": "euc_jp",
    "iso-8859-8-i": "iso8859-8",
    "macintosh": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
    "windows-874": "cp874",
    "iso-2022-jp": "iso2022_jp_ext",
}
# The bytes that start a two-byte code in each multi-byte codec (the standard's decoders).
LEAD_BYTES = {
    "gb18030": bytes(range(0x81, 0xFF)),
    "cp932": bytes([*range(0x81, 0xA0), *range(0xE0, 0xFD)]),
    "cp949": bytes(range(0x81, 0xFF)),
    "big5hkscs": bytes(range(0x81, 0xFF)),
    "euc_jp": bytes([0x8E, *range(0xA1, 0xFF)]),
}
# Where the standard's index gives another character than the Python codec (each found by decoding
# every code with Chromium's TextDecoder: benchmarks/charset_decoding.py --chromium): EUC-JP uses
# Windows' JIS X 0208 (as Shift_JIS does), GBK the GB18030-2022 code points for former private-use
# ones (and ḿ trades places with its old private-use code), Big5 the standard's own index, Shift_JIS
# has no single bytes 0xA0 and 0xFD-0xFF, KOI8-U has the two Belarusian letters of KOI8-RU.
_GBK = str.maketrans(
    "\ue5e5\ue78d\ue78e\ue78f\ue790\ue791\ue792\ue793\ue794\ue795\ue796\ue7c7\u1e3f\ue81e\ue826"
    "\ue82b\ue82c\ue832\ue843\ue854\ue864",
    "\u3000\ufe10\ufe12\ufe11\ufe13\ufe14\ufe15\ufe16\ufe17\ufe18\ufe19\u1e3f\ue7c7\u9fb4\u9fb5"
    "\u9fb6\u9fb7\u9fb8\u9fb9\u9fba\u9fbb",
)
INDEX_FIXES = {
    "euc-jp": str.maketrans("\u301c\u2016\u2212\xa2\xa3\xac", "\uff5e\u2225\uff0d\uffe0\uffe1\uffe2"),
    "gbk": _GBK,
    "gb18030": _GBK,
    "big5": str.maketrans(
        "\u2022\uff64\u203e\u223c\u2641\u2609\xa5\xa2\xa3", "\u2027\ufe51\xaf\uff5e\u2295\u2299\uffe5\uffe0\uffe1"
    ),
    "shift_jis": str.maketrans("\uf8f0\uf8f1\uf8f2\uf8f3", "\ufffd" * 4),
    "koi8-u": str.maketrans("\u255d\u256c", "\u045e\u040e"),
}
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16be"), (codecs.BOM_UTF16_LE, "utf-16le"))
# <meta charset=...> and <meta http-equiv=Content-Type content="...; charset=...">, in the prescan's
# first 1024 bytes.
META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([^\s\"'/>;]+)", re.IGNORECASE)
PRESCAN_BYTES = 1024
# What a wrong or failed decoding leaves in text: U+FFFD and the C1 controls (U+0080-U+009F, which no
# real text holds; cp1252 bytes read as latin-1 turn into them), with the other controls but tab and
# line breaks. A text with more than UNDECODABLE_SHARE of them looks undecodable.
ODD_CHARS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd"
ODD_CHAR = re.compile(f"[{ODD_CHARS}]")
UNDECODABLE_SHARE = 0.01


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """(text, WHATWG encoding name) of an HTML body sent with `http_charset` (None: no charset)."""
    for bom, name in BOMS:
        if body.startswith(bom):
            return _decode(body[len(bom) :], name), name
    name = _encoding(http_charset)
    if name is None:
        name = _meta_encoding(body[:PRESCAN_BYTES])
    if name is None:
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            name = _detected(body)
    return _decode(body, name), name


def odd_share(text: str) -> float:
    """The share of `text` that is replacement or control characters (C1 included): over
    UNDECODABLE_SHARE, the text looks undecodable."""
    if not text or ODD_CHAR.search(text) is None:
        return 0.0
    return len(ODD_CHAR.findall(text)) / len(text)


def _encoding(label: str | None) -> str | None:
    """The WHATWG encoding a label names, or None for an unknown label (which a browser ignores)."""
    if not label:
        return None
    found = webencodings.lookup(label)
    return found.name if found else None


def _meta_encoding(head: bytes) -> str | None:
    """The encoding of a <meta> charset; the standard reads a UTF-16 one as UTF-8 (the bytes are
    ASCII-compatible, or the meta could not be read) and x-user-defined as windows-1252."""
    match = META_CHARSET.search(head)
    name = _encoding(match.group(1).decode("ascii", "replace")) if match else None
    if name in ("utf-16be", "utf-16le"):
        return "utf-8"
    return "windows-1252" if name == "x-user-defined" else name


def _detected(body: bytes) -> str:
    """uchardet's guess (through resiliparse) read as a WHATWG label; UTF-8 when it has none."""
    from resiliparse.parse.encoding import detect_encoding

    return _encoding(detect_encoding(body, html5_compatible=False) or "") or "utf-8"


def _decode(body: bytes, name: str) -> str:
    if name == "replacement":  # ISO-2022-KR, HZ and the like: unsafe, the whole body is one error
        return "\ufffd" if body else ""
    if name == "x-user-defined":
        return "".join(chr(b) if b < 0x80 else chr(0xF780 + b - 0x80) for b in body)
    codec = PYTHON_CODECS.get(name, name)
    text = body.decode(codec, ERRORS if codec in LEAD_BYTES or name.startswith("windows-") else "replace")
    return _fix_index(text, INDEX_FIXES[name]) if name in INDEX_FIXES else text


def _fix_index(text: str, fixes: dict[int, int]) -> str:
    """`text` with the characters of `fixes` replaced: str.replace of each one present (str.translate
    would cost 0.1 us a character), unless two of them trade places."""
    found = {k: v for k, v in fixes.items() if chr(k) in text}
    if found.keys() & set(found.values()):
        return text.translate(found)
    for k, v in found.items():
        text = text.replace(chr(k), chr(v))
    return text


def _whatwg_errors(error: UnicodeDecodeError) -> tuple[str, int]:
    """Where a Python codec has no character and the browser's decoder has one: a windows-125x or
    windows-874 byte 0x80-0x9F that Microsoft left undefined is the C1 control of that number (and
    windows-1255's 0xCA is U+05BA); GB18030's single byte 0x80 is the euro sign; an EUC-JP JIS X 0208
    pair that Python's euc_jp lacks (the NEC and IBM extensions, such as ①) is the character of the
    same index pointer in Windows-31J. Else one U+FFFD, for the lead byte and its trail byte when that
    is not ASCII (the browser reads an ASCII trail byte again, as Python does)."""
    data, start, codec = error.object, error.start, error.encoding
    first, trail = data[start], data[start + 1] if start + 1 < len(data) else None
    if codec == "charmap":  # the windows-* codecs: no other is decoded with these errors
        if 0x80 <= first <= 0x9F:
            return chr(first), start + 1
        return ("\u05ba" if first == 0xCA else "\ufffd"), start + 1  # 0xCA: undefined in cp1255 alone
    if codec == "gb18030" and first == 0x80:
        return "\u20ac", start + 1
    if codec == "gb18030" and _within(data[start : start + 4], (0x81, 0xFE), (0x30, 0x39), (0x81, 0xFE), (0x30, 0x39)):
        return "\ufffd", start + 4  # a four-byte code outside the standard's ranges: one error
    if codec == "euc_jp" and _within(data[start : start + 2], (0xA1, 0xFE), (0xA1, 0xFE)):
        lead, cell = divmod((first - 0xA1) * 94 + trail - 0xA1, 188)
        sjis = bytes([lead + (0x81 if lead < 0x1F else 0xC1), cell + (0x40 if cell < 0x3F else 0x41)])
        try:
            return sjis.decode("cp932"), start + 2
        except UnicodeDecodeError:
            return "\ufffd", start + 2
    if codec == "euc_jp" and first == 0x8F and _within(data[start + 1 : start + 3], (0xA1, 0xFE), (0xA1, 0xFE)):
        return "\ufffd", start + 3  # a JIS X 0212 code the index lacks: one error for its three bytes
    if trail is not None and trail >= 0x80 and first in LEAD_BYTES[codec]:
        return "\ufffd", start + 2
    return "\ufffd", start + 1


def _within(code: bytes, *ranges: tuple[int, int]) -> bool:
    """Whether each byte of `code` lies in its (low, high) range, and there are as many bytes as ranges."""
    return len(code) == len(ranges) and all(low <= b <= high for b, (low, high) in zip(code, ranges))


ERRORS = "crawl2llm-whatwg"
codecs.register_error(ERRORS, _whatwg_errors)
