"""HTML bytes to text the way a browser decodes them (the WHATWG Encoding Standard), so a page reaches
the corpus as its readers saw it: servers label cp1252 pages iso-8859-1, GBK pages gb2312 and CP932
pages Shift_JIS, and Python's codecs of those names leave C1 controls or mojibake.

The order is the standard's: a byte order mark, then the HTTP charset, then a <meta> charset in the
first 1024 bytes, then detection (strict UTF-8, else uchardet through resiliparse). Labels are read
through the standard's label table (webencodings), and each encoding is decoded by the Python codec
that matches the browser's decoder (docs/INGEST.md, "Character encodings", has what still differs).
"""

from __future__ import annotations

import codecs
import re

import webencodings

# The WHATWG encodings whose Python codec of the same name decodes differently: GBK is decoded as
# gb18030, Shift_JIS as Windows-31J with its NEC and IBM extensions, EUC-KR as Windows-949 (UHC), Big5
# with the HKSCS extension; the rest are names Python does not know.
PYTHON_CODECS = {"gbk": "gb18030", "gb18030": "gb18030", "shift_jis": "cp932", "euc-kr": "cp949",
                 "big5": "big5hkscs", "iso-8859-8-i": "iso8859-8", "macintosh": "mac-roman",
                 "x-mac-cyrillic": "mac-cyrillic", "windows-874": "cp874", "iso-2022-jp": "iso2022_jp_ext"}
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
            return _decode(body[len(bom):], name), name
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
    errors = _ERRORS.get(name) or ("crawl2llm-c1" if name.startswith("windows-") else "replace")
    return body.decode(PYTHON_CODECS.get(name, name), errors)


def _c1(error: UnicodeDecodeError) -> tuple[str, int]:
    """A windows-125x or windows-874 byte 0x80-0x9F that Microsoft left undefined (cp1252's 0x81, 0x8D,
    0x8F, 0x90, 0x9D) is, to the browser, the C1 control of that number: never a decoding error."""
    first = error.object[error.start]
    return (chr(first), error.start + 1) if 0x80 <= first <= 0x9F else ("\ufffd", error.end)


def _gb18030(error: UnicodeDecodeError) -> tuple[str, int]:
    """GB18030's single byte 0x80 is the euro sign to the browser (as in GBK's Windows-936)."""
    if error.object[error.start] == 0x80:
        return "\u20ac", error.start + 1
    return "\ufffd", error.end


def _euc_jp(error: UnicodeDecodeError) -> tuple[str, int]:
    """The browser reads EUC-JP's two-byte codes through the same JIS X 0208 index as Shift_JIS, NEC and
    IBM extensions (such as ①) included, which Python's euc_jp lacks: such a pair is the character of
    the same index pointer in Windows-31J."""
    data, start = error.object, error.start
    if start + 1 < len(data) and 0xA1 <= data[start] <= 0xFE and 0xA1 <= data[start + 1] <= 0xFE:
        lead, trail = divmod((data[start] - 0xA1) * 94 + data[start + 1] - 0xA1, 188)
        sjis = bytes([lead + (0x81 if lead < 0x1F else 0xC1), trail + (0x40 if trail < 0x3F else 0x41)])
        return sjis.decode("cp932", "replace"), start + 2
    return "\ufffd", error.end


codecs.register_error("crawl2llm-c1", _c1)
codecs.register_error("crawl2llm-gb18030", _gb18030)
codecs.register_error("crawl2llm-euc-jp", _euc_jp)
_ERRORS = {"gbk": "crawl2llm-gb18030", "gb18030": "crawl2llm-gb18030", "euc-jp": "crawl2llm-euc-jp"}
