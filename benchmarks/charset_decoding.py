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
Results with the machine and load: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import codecs
import glob
import importlib.util
import os
import platform
import time

import webencodings
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5

from pipeline.charset import UNDECODABLE_SHARE, decode_html, odd_share
from pipeline.http_message import content_type, gunzip
from pipeline.ingest import IngestConfig, _dechunk, _http_head, html_to_text
from tests.test_charset import PAGES

DATA = os.path.join(os.environ.get("CRAWL2LLM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")), "warc")


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
    fallback = (webencodings.lookup(label) if label else None) or webencodings.lookup(
        detect_encoding(body, from_html_meta=True)) or webencodings.UTF8
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
                head, sep, body = record.reader.read().partition(b"\r\n\r\n")
                status, headers = _http_head(head)
                mime, charset = content_type(headers.get("content-type", ""))
                if not sep or status != 200 or mime != "text/html":
                    continue
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = _dechunk(body)
                if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip"):
                    body = gunzip(body, 10_000_000)[0]
                pages.append((body, charset, record.headers.get("WARC-Target-URI") or "", headers["content-type"]))
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="passes over the pages per round (the clock ticks in ms)")
    parser.add_argument("--data", default=DATA, help="folder of *.warc.gz (default: $CRAWL2LLM_DATA/warc)")
    parser.add_argument("--chromium", action="store_true", help="also read every page in headless Chromium "
                                                                 "(Debian's chromium and chromium-driver, selenium)")
    args = parser.parse_args()
    candidates = {"old": old, "resiliparse": resiliparse, "w3lib": scrapy_w3lib, "webencodings": web_encodings, "ours": ours}
    if importlib.util.find_spec("w3lib") is None:
        del candidates["w3lib"]
        print("w3lib is not installed: left out")
    tests = [(body, ctype.partition("charset=")[2] or None, text) for _, ctype, body, text in PAGES]
    for name, decode in candidates.items():
        failed = [PAGES[i][0] for i, (body, label, text) in enumerate(tests) if text not in decode(body, label)]
        print(f"{name:12s} test pages read as browsers do: {len(tests) - len(failed)}/{len(tests)}"
              + (f"; wrong: {', '.join(failed)}" if failed else ""))
    files = sorted(glob.glob(os.path.join(args.data, "*.warc.gz")))
    pages = real_pages(files)
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_no in range(args.rounds):
        for name in names[round_no % len(names):] + names[:round_no % len(names)]:
            t0 = time.process_time()
            for _ in range(args.repeat):
                for body, label, *_ in pages:
                    candidates[name](body, label)
            cpu[name].append((time.process_time() - t0) / args.repeat)
    mib = sum(len(page[0]) for page in pages) / 2**20
    print(f"{len(pages)} real HTML pages ({mib:.1f} MiB) of {len(files)} files; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    for name in candidates:
        best = min(cpu[name])
        print(f"{name:12s} best round {1e3 * best:.2f} ms = {1e6 * best / len(pages):.1f} us per page "
              f"(rounds, ms: {', '.join(f'{1e3 * s:.2f}' for s in cpu[name])})")
    config = IngestConfig()
    changed = decoded_changed = 0
    undecodable = {"old": 0, "ours": 0}
    for body, label, url, _ in pages:
        before, after = old(body, label), ours(body, label)
        decoded_changed += before != after
        texts = {"old": _text(before, config), "ours": _text(after, config)}
        changed += texts["old"] != texts["ours"]
        if before != after:
            at = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b) if len(before) == len(after) else 0
            print(f"  changed: {url} (HTTP charset {label}, ours {decode_html(body, label)[1]}): "
                  f"{before[at:at + 30]!r} -> {after[at:at + 30]!r}; text {'changed' if texts['old'] != texts['ours'] else 'same'}")
        for name, text in texts.items():
            undecodable[name] += odd_share(text) > UNDECODABLE_SHARE
    print(f"real pages whose decoded HTML changes: {decoded_changed}, whose extracted text changes: {changed}; "
          f"undecodable (over {UNDECODABLE_SHARE:.0%} U+FFFD or controls): old {undecodable['old']}, "
          f"ours {undecodable['ours']}")
    if args.chromium:
        tests = [(body, ctype, name) for name, ctype, body, _ in PAGES]
        compare_with_chromium(tests + [(body, ctype, url) for body, _, url, ctype in pages])


def compare_with_chromium(pages: list[tuple[bytes, str, str]]) -> None:
    """Serve each (body, Content-Type, name) on 127.0.0.1 and load it in headless Chromium with
    JavaScript off: its document.characterSet and textContent against ours (resiliparse's parse of
    our decoding; both parsers follow the HTML standard)."""
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from resiliparse.parse.html import HTMLTree
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            n = self.path.strip("/")
            if not n.isdigit():
                return self.send_error(404)
            body, ctype, _ = pages[int(n)]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--blink-settings=imagesEnabled=false"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    same_charset = same_text = same_chars = 0
    try:
        print(f"Chromium {driver.capabilities.get('browserVersion')}, JavaScript off:")
        for n, (body, ctype, name) in enumerate(pages):
            driver.get(f"http://127.0.0.1:{server.server_address[1]}/{n}")
            charset, text = driver.execute_script(
                "return [document.characterSet, document.documentElement.textContent]")
            html, encoding = decode_html(body, content_type(ctype)[1])
            root = HTMLTree.parse(html).document.query_selector("html")
            ours_text = root.text if root is not None else ""
            same_charset += charset.lower() == encoding
            same_text += text == ours_text
            # the same characters outside ASCII: a text that differs only in parsing, not in decoding
            same_chars += _non_ascii(text) == _non_ascii(ours_text)
            if charset.lower() != encoding or text != ours_text:
                at = next((i for i, (a, b) in enumerate(zip(text, ours_text)) if a != b), min(len(text), len(ours_text)))
                print(f"  differs: {name} (Content-Type {ctype!r}): Chromium {charset}, ours {encoding}; "
                      f"text {'same' if text == ours_text else f'at {at}: {text[at:at + 20]!r} / {ours_text[at:at + 20]!r}'}"
                      f"; non-ASCII characters {'same' if _non_ascii(text) == _non_ascii(ours_text) else 'differ'}")
    finally:
        driver.quit()
        server.shutdown()
    print(f"same as Chromium: encoding {same_charset}/{len(pages)}, text {same_text}/{len(pages)}, "
          f"non-ASCII characters {same_chars}/{len(pages)}")


def _non_ascii(text: str) -> list[str]:
    return sorted(c for c in text if ord(c) > 127)


def _text(html: str, config: IngestConfig) -> str:
    return html_to_text(html.encode("utf-8"), "utf-8", config)[1]


if __name__ == "__main__":
    main()
