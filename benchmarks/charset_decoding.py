"""Which way of decoding HTML bytes reads pages as browsers do, what it costs per page, and how many
real pages change text under pipeline.charset.decode_html (issue 16), in the same run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/charset_decoding.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/charset_decoding.py --rounds 5

Candidates, each given the HTTP charset and the body:
- old: the code before issue 16 (Python's codec of the label, else resiliparse's meta tag or
  uchardet, then resiliparse's bytes_to_str);
- resiliparse: its WHATWG label map (map_encoding_to_html5) instead of Python's codec names;
- w3lib (Scrapy's html_to_unicode, uchardet as its detector), when it is installed;
- webencodings: its label table and its own Python codecs (BOM, label, else resiliparse's meta/uchardet);
- ours: pipeline.charset.decode_html.
Correctness is on the pages of tests/test_charset.py (labelled as real servers label them; a page
passes when its decoded HTML holds the text a browser shows). Speed is CPU seconds (time.process_time)
per page over every HTTP 200 HTML response of the top-level ../shared/data/warc/*.warc.gz (20 passes a
round), candidates in rotating order per round, best round reported. Then the real pages whose extracted text (ingest's
default extraction) differs between old and ours, and those that look undecodable under each.
With --chromium, every page is also read in headless Chromium (Debian's chromium and chromium-driver,
selenium), and every code of each legacy encoding is decoded by Chromium's TextDecoder and by ours.
Results with the machine and load: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import glob
import importlib.util
import json
import os
import platform
import time

import webencodings
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5

from pipeline.charset import UNDECODABLE_SHARE, _decode, decode_html, odd_share
from pipeline.http_message import content_type, gunzip
from pipeline.ingest import IngestConfig, html_to_text
from pipeline.ingest_docs import _dechunk, _http_head
from tests.test_charset import PAGES

DATA = os.path.join(
    os.environ.get("CRAWL2LLM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")), "warc"
)


def old(body: bytes, label: str | None) -> str:
    try:
        codec = codecs.lookup(label).name if label else None
    except LookupError:
        codec = None
    return bytes_to_str(body, codec or detect_encoding(body, from_html_meta=True))


def resiliparse(body: bytes, label: str | None) -> str:
    codec = map_encoding_to_html5(label, fallback_utf8=False) if label else None
    return bytes_to_str(body, codec or detect_encoding(body, from_html_meta=True))


def scrapy_w3lib(body: bytes, label: str | None) -> str:
    from w3lib.encoding import html_to_unicode

    header = f"text/html; charset={label}" if label else None
    return html_to_unicode(header, body, auto_detect_fun=lambda b: detect_encoding(b, html5_compatible=False))[1]


def web_encodings(body: bytes, label: str | None) -> str:
    fallback = (
        (webencodings.lookup(label) if label else None)
        or webencodings.lookup(detect_encoding(body, from_html_meta=True))
        or webencodings.UTF8
    )
    return webencodings.decode(body, fallback)[0]


def ours(body: bytes, label: str | None) -> str:
    return decode_html(body, label)[0]


def real_pages(files: list[str]) -> list[tuple[bytes, str | None, str, str]]:
    """(body, HTTP charset, URL, Content-Type) of every HTTP 200 HTML response, bodies de-chunked and gunzipped as ingest does."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pages = []
    for path in files:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
                block = record.reader.read()
                head, sep, body = block.partition(b"\r\n\r\n")
                if not sep:
                    head, sep, body = block.partition(b"\n\n")
                status, headers = _http_head(head)
                mime, charset = content_type(headers.get("content-type", ""))
                if not sep or status != 200 or mime != "text/html":
                    continue
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = _dechunk(body)
                if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip") and body.startswith(b"\x1f\x8b"):
                    body = gunzip(body, 10_000_000)[0]
                url = record.headers.get("WARC-Target-URI") or ""
                pages.append((body, charset, url, headers["content-type"]))
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="passes over the pages a round (the clock ticks in ms)")
    parser.add_argument("--data", default=DATA, help="folder of *.warc.gz (default: $CRAWL2LLM_DATA/warc)")
    parser.add_argument("--chromium", action="store_true", help="also read every page and code in headless Chromium")
    args = parser.parse_args()
    candidates = {
        "old": old,
        "resiliparse": resiliparse,
        "w3lib": scrapy_w3lib,
        "webencodings": web_encodings,
        "ours": ours,
    }
    if importlib.util.find_spec("w3lib") is None:
        del candidates["w3lib"]
        print("w3lib is not installed: left out")
    tests = [(body, ctype.partition("charset=")[2] or None, text) for _, ctype, body, text in PAGES]
    for name, decode in candidates.items():
        failed = [PAGES[i][0] for i, (body, label, text) in enumerate(tests) if text not in decode(body, label)]
        print(
            f"{name:12s} test pages read as browsers do: {len(tests) - len(failed)}/{len(tests)}"
            + (f"; wrong: {', '.join(failed)}" if failed else "")
        )
    files = sorted(glob.glob(os.path.join(args.data, "*.warc.gz")))
    pages = real_pages(files)
    time_candidates(candidates, pages, args.rounds, args.repeat)
    print(
        f"{len(pages)} real HTML pages ({sum(len(page[0]) for page in pages) / 2**20:.1f} MiB) of {len(files)} "
        f"files; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    changes(pages)
    if args.chromium:
        with chromium() as (driver, serve):
            print(f"Chromium {driver.capabilities.get('browserVersion')}, JavaScript off:")
            tests = [(body, ctype, name) for name, ctype, body, _ in PAGES]
            compare_pages(driver, serve, tests + [(body, ctype, url) for body, _, url, ctype in pages])
            compare_codes(driver)


def time_candidates(candidates: dict, pages: list, rounds: int, repeat: int) -> None:
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_no in range(rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            t0 = time.process_time()
            for _ in range(repeat):
                for body, label, *_ in pages:
                    candidates[name](body, label)
            cpu[name].append((time.process_time() - t0) / repeat)
    for name in candidates:
        best = min(cpu[name])
        print(
            f"{name:12s} best round {1e3 * best:.2f} ms = {1e6 * best / len(pages):.1f} us per page "
            f"(rounds, ms: {', '.join(f'{1e3 * s:.2f}' for s in cpu[name])})"
        )


def changes(pages: list) -> None:
    """The real pages that decode or extract differently under ours than under the old path."""
    config = IngestConfig()
    changed = decoded_changed = 0
    undecodable = {"old": 0, "ours": 0}
    by_encoding: collections.Counter = collections.Counter()
    for body, label, url, _ in pages:
        before, after = old(body, label), ours(body, label)
        decoded_changed += before != after
        texts = {"old": _text(before, config), "ours": _text(after, config)}
        changed += texts["old"] != texts["ours"]
        if before != after:
            by_encoding[decode_html(body, label)[1]] += 1
        if before != after and decoded_changed <= 8:
            at = _first_difference(before, after)
            print(
                f"  changed: {url} (HTTP charset {label}, ours {decode_html(body, label)[1]}): "
                f"{before[at : at + 30]!r} -> {after[at : at + 30]!r}; "
                f"text {'changed' if texts['old'] != texts['ours'] else 'same'}"
            )
        for name, text in texts.items():
            undecodable[name] += odd_share(text) > UNDECODABLE_SHARE
    print(
        f"real pages whose decoded HTML changes: {decoded_changed} ({dict(by_encoding)}; the first 8 above), "
        f"whose extracted text changes: {changed}; "
        f"undecodable (over {UNDECODABLE_SHARE:.0%} U+FFFD or controls): old {undecodable['old']}, "
        f"ours {undecodable['ours']}"
    )


@contextlib.contextmanager
def chromium():
    """(headless Chromium with JavaScript off for pages, a function that serves a (body, Content-Type)
    on 127.0.0.1 and gives its URL)."""
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    served: list[tuple[bytes, str]] = []

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            n = self.path.strip("/")
            if not n.isdigit():
                return self.send_error(404)
            body, ctype = served[int(n)]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def serve(body: bytes, ctype: str) -> str:
        served.append((body, ctype))
        return f"http://127.0.0.1:{server.server_address[1]}/{len(served) - 1}"

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--blink-settings=imagesEnabled=false",
    ):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver, serve
    finally:
        driver.quit()
        server.shutdown()


def compare_pages(driver, serve, pages: list[tuple[bytes, str, str]]) -> None:
    """Each (body, Content-Type, name) as Chromium reads it: its document.characterSet and textContent
    against ours (resiliparse's parse of our decoding; both parsers follow the HTML standard)."""
    from resiliparse.parse.html import HTMLTree

    same_charset = same_text = 0
    for body, ctype, name in pages:
        driver.get(serve(body, ctype))
        charset, text = driver.execute_script("return [document.characterSet, document.documentElement.textContent]")
        html, encoding = decode_html(body, content_type(ctype)[1])
        root = HTMLTree.parse(html).document.query_selector("html")
        ours_text = root.text if root is not None else ""
        same_charset += charset.lower() == encoding
        same_text += text == ours_text
        if charset.lower() != encoding or text != ours_text:
            at = _first_difference(text, ours_text)
            shown = "same" if text == ours_text else f"at {at}: {text[at : at + 20]!r} / {ours_text[at : at + 20]!r}"
            print(f"  differs: {name} (Content-Type {ctype!r}): Chromium {charset}, ours {encoding}; text {shown}")
    print(f"same as Chromium: encoding {same_charset}/{len(pages)}, text {same_text}/{len(pages)}")


def compare_codes(driver) -> None:
    """Every code of each legacy encoding (and error cases around them) decoded by Chromium's
    TextDecoder and by ours: the differences, those where neither side has an error first."""
    script = (
        "const td = new TextDecoder(arguments[0]); return JSON.stringify(arguments[1].map(h => "
        "Array.from(td.decode(new Uint8Array(h.match(/../g).map(x => parseInt(x, 16))))).map(c => c.codePointAt(0))));"
    )
    for name, codes in _codes().items():
        theirs = [
            "".join(map(chr, cps)) for cps in json.loads(driver.execute_script(script, name, [c.hex() for c in codes]))
        ]
        diffs = [(code.hex(), _decode(code, name), t) for code, t in zip(codes, theirs) if _decode(code, name) != t]
        real = [d for d in diffs if "\ufffd" not in d[1] + d[2]]
        print(
            f"  {name:14s} {len(codes):6d} codes, differ {len(diffs):4d}, neither an error {len(real):2d}"
            + (": " + ", ".join(f"{h} {ascii(a)}/{ascii(b)}" for h, a, b in (real or diffs)[:8]) if diffs else "")
        )


def _codes() -> dict[str, list[bytes]]:
    """Byte sequences to decode one at a time: every two-byte code (lead and trail ranges of the
    standard's decoders, plus error cases), the four-byte GB18030 codes of a few leads, every byte
    0x80-0xFF of the single-byte encodings."""
    pairs = [bytes([a, b]) for a in range(0x81, 0xFF) for b in range(0x40, 0xFF)] + [b"\x80"]
    singles = [bytes([b]) for b in range(0x80, 0x100)]
    four = [
        bytes([a, b, c, d])
        for a in (0x81, 0x82, 0x84, 0x85, 0x8F, 0x90, 0x95, 0xE3, 0xE4, 0xFE)
        for b in range(0x30, 0x3A)
        for c in range(0x81, 0xFF)
        for d in range(0x30, 0x3A)
    ]
    euc_jp = (
        [bytes([a, b]) for a in range(0xA1, 0xFF) for b in range(0xA1, 0xFF)]
        + [bytes([0x8E, b]) for b in range(0xA1, 0xE0)]
        + [bytes([0x8F, a, b]) for a in range(0xA1, 0xFF) for b in range(0xA1, 0xFF)]
    )
    sjis = [
        bytes([a, b])
        for a in [*range(0x81, 0xA0), *range(0xE0, 0xFD)]
        for b in [*range(0x40, 0x7F), *range(0x80, 0xFD)]
    ]
    utf8 = [bytes([a, b]) for a in range(0x80, 0x100) for b in range(0x20, 0x100)] + [
        bytes([0xE0, b, c]) for b in range(0x80, 0xC0) for c in range(0x70, 0xD0)
    ]
    codes = {
        "utf-8": utf8,
        "gbk": pairs,
        "gb18030": pairs + four,
        "big5": pairs,
        "euc-kr": pairs,
        "euc-jp": euc_jp,
        "shift_jis": sjis + singles,
    }
    singles_names = sorted(
        {n for n in webencodings.LABELS.values() if n.startswith(("windows-", "iso-8859-"))}
        | {"ibm866", "koi8-r", "koi8-u", "macintosh", "x-mac-cyrillic", "x-user-defined"}
    )
    return codes | {name: singles for name in singles_names}


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _text(html: str, config: IngestConfig) -> str:
    return html_to_text(html.encode("utf-8"), "utf-8", config)[1]


if __name__ == "__main__":
    main()
