"""HTML to text for ingest: resiliparse (fast, the default) or trafilatura (about 12x slower, more
precise main content; docs/INGEST.md compares them), with the guards that keep one page from
stalling a worker: a wall-clock limit on trafilatura and a nesting-depth limit before resiliparse's
main-content pass.

Its own module because benchmarks (extraction_quality, pathological_html, charset_decoding) call
html_to_text as ingest does, without reading any archive."""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING

from pipeline.charset import decode_html

if TYPE_CHECKING:
    from pipeline.ingest import IngestConfig

# Pages whose elements nest deeper than this are skipped (HtmlTooDeep).
MAX_HTML_DEPTH = 1000
DEEP_SELECTOR = " > ".join(["*"] * (MAX_HTML_DEPTH + 1))


class ExtractTimeout(Exception):
    """HTML extraction ran past extract_timeout_s."""


class HtmlTooDeep(Exception):
    """Elements nest deeper than MAX_HTML_DEPTH: resiliparse's main-content pass takes time quadratic
    in the depth inside one C call, which no timeout can interrupt (benchmarks/pathological_html.py:
    20,000 levels take 3.7 s). Real pages nest tens deep."""


def html_to_text(body: bytes, charset: str | None, config: IngestConfig) -> tuple[str | None, str]:
    """(title, text) of an HTML page with the configured extractor; raises ExtractTimeout.

    The title always comes from resiliparse's parse, so both extractors give the same titles.
    """
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    html, _ = decode_html(body, charset)
    tree = HTMLTree.parse(html)
    title = (tree.title or "").strip() or None
    if config.extractor == "trafilatura":
        return title, (_with_timeout(_trafilatura_text, html, seconds=config.extract_timeout_s) or "").strip()
    if config.main_content and body.count(b"<") > MAX_HTML_DEPTH and _too_deep(tree):  # fewer tags: never deeper
        raise HtmlTooDeep(f"elements nested more than {MAX_HTML_DEPTH} deep")
    # The same content as trafilatura's text: no image alt texts, reader comments or bylines/dates
    # (resiliparse keeps all three by default). docs/INGEST.md has what each one changes.
    return title, extract_plain_text(
        tree, main_content=config.main_content, alt_texts=False, comments=False, post_meta=False
    ).strip()


def _too_deep(tree) -> bool:
    """Whether some element has MAX_HTML_DEPTH ancestors: one CSS query, run by lexbor in C."""
    return tree.document.query_selector(DEEP_SELECTOR) is not None


def _trafilatura_text(html: str) -> str | None:
    import trafilatura

    # Everything else is trafilatura's default. Comments are off: readers' comments are not the page's
    # text (the article-extraction benchmark and datatrove's FineWeb extractor turn them off too).
    return trafilatura.extract(html, include_comments=False)


def _with_timeout(fn, *args, seconds: float):
    """fn(*args), or ExtractTimeout after `seconds`.

    On the main thread of a process (pipeline worker processes run their jobs there) SIGALRM interrupts
    fn wherever it is in Python code; a stretch inside one C call (an lxml parse) ends first, which
    max_record_bytes keeps short. Signals only reach the main thread, so elsewhere (workers=0 runs
    inline in a Prefect thread) fn runs in a helper thread and we stop waiting for it: the caller
    moves on, but Python cannot stop a thread, so the abandoned one finishes in the background.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(fn, args, seconds)
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # handed to the caller below
            result["error"] = e

    helper = threading.Thread(target=target, name="ingest-extract", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise ExtractTimeout(f"extraction took more than {seconds}s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _with_alarm(fn, args, seconds: float):
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:  # an alarm handled late, once fn is done, must not raise in the cleanup below
            raise ExtractTimeout(f"extraction took more than {seconds}s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # someone else's timer (pytest-timeout, say) was running: give it back
            remaining = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), outer_interval)
