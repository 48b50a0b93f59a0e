"""PII scrubbing with presidio-analyzer's pattern recognizers, fully offline, run only where a
recognizer could fire (docs/PII.md has the proof that this finds exactly what presidio finds on
the whole document).

The recognizers (presidio's engines built offline, the candidate regions of each, the phone-number
matcher) are pipeline/pii/recognizers.py; this module is the stage: its config, batching windows
through the recognizers, replacement and pseudonyms. The engine runs with presidio's NoOpNlpEngine:
with it, context enhancement never changes a score (no tokens, no lemmas), so a recognizer's
results on a text are all there is.

Fast path: for each recognizer, cheap regexes find the regions that every possible match lies in
(the run of email characters around an '@', the chain of digit groups a phone number or card can
span, ...). The regions, widened by MARGIN, are joined with SEP into one string per recognizer and
batch of documents, presidio's recognizer runs on that string once, and offsets are mapped back.
The engine's own post-processing (score threshold, then remove_duplicates) is applied per document.

Optional spaCy NER (PERSON, LOCATION) needs a model the user installed; it reads the whole text, in
chunks of at most max_chars (spaCy's max_length).

Found spans become typed placeholders (<EMAIL>) or keyed pseudonyms (<EMAIL_3f2a9c0b>, the same for
the same value everywhere); with `max_spans_per_doc` set, documents with more spans are removed
(still scrubbed). A document presidio fails on is removed (pii_error) with its text emptied.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from pipeline.pii.recognizers import (  # noqa: F401 (pipeline.pii.X as before)
    _REGIONS,
    BATCH_CHARS,
    DEFAULT_BATCH_CHARS,
    MARGIN,
    PHONE_REGIONS_EXACT,
    PHONE_SOURCE_DIGEST,
    SEP,
    _min_alnum,
    _offline_tldextract,
    _phone_analyze,
    _phone_fast,
    _phone_fast_ok,
    _phone_source_digest,
    analyzer,
    ner_analyzer,
    windows,
)
from pipeline.stage import ConfigError, ShardResult, StageConfig, split_by_reason, text_kinds

Entity = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "CRYPTO"]
NerEntity = Literal["PERSON", "LOCATION"]
ENTITIES: tuple[str, ...] = Entity.__args__
DEFAULT_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE"]
SHORT_NAMES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "IP_ADDRESS": "IP_ADDRESS",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "CRYPTO": "CRYPTO",
    "PERSON": "PERSON",
    "LOCATION": "LOCATION",
}
# NER chunks overlap by this much so that a name cut by a chunk border is whole in the next chunk.
OVERLAP = 500


class PiiConfig(StageConfig):
    entities: list[Entity] = Field(
        default_factory=lambda: list(DEFAULT_ENTITIES),
        description="PII types found by presidio's pattern recognizers: " + ", ".join(ENTITIES) + ".",
    )
    score_threshold: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Lowest presidio score a span needs. 0.4 keeps phone numbers, "
        "which presidio scores 0.4 (no context boost without an NLP model); emails, cards, IBANs and bitcoin addresses "
        "pass checksums/validation and score 1.0, IPs 0.6, SSNs 0.5 "
        "(weak SSN patterns, 0.05, and '::' as IPv6, 0.1, stay out).",
    )
    replacement: Literal["placeholder", "pseudonym"] = Field(
        "placeholder",
        description="placeholder: every span becomes `placeholder`; pseudonym: `pseudonym`, whose "
        "{hash} is a keyed hash of the value (same value, same pseudonym, corpus-wide).",
    )
    placeholder: str = Field("<{entity}>", description="Replacement text; {entity} becomes the entity name.")
    pseudonym: str = Field("<{entity}_{hash}>", description="Replacement text with replacement=pseudonym.")
    pseudonym_secret_env: str = Field(
        "CRAWL2LLM_PII_SECRET",
        description="Environment variable holding the pseudonym key (kept out of the "
        "config and manifest so the hashes cannot be reversed by "
        "hashing guesses); required with replacement=pseudonym.",
    )
    pseudonym_hex: int = Field(8, ge=4, le=64, description="Hex digits of the keyed hash in a pseudonym.")
    short_names: bool = Field(
        True,
        description="Use short entity names: <EMAIL>, <PHONE>, <IP_ADDRESS>, "
        "<CREDIT_CARD>, <IBAN>, <SSN>, <CRYPTO>; otherwise presidio's "
        "names (<EMAIL_ADDRESS>, ...).",
    )
    ner_model: Optional[str] = Field(
        None,
        description="spaCy model (installed package name or folder) for PERSON/LOCATION; None: no NER (the default).",
    )
    ner_entities: list[NerEntity] = Field(
        default_factory=lambda: ["PERSON", "LOCATION"], description="Entity types taken from the NER model."
    )
    max_chars: int = Field(
        100_000,
        ge=4 * OVERLAP,
        le=1_000_000,
        description="Longest text given to spaCy NER at once; longer documents are split at "
        "whitespace into overlapping chunks (spaCy refuses texts over 1,000,000). "
        "Pattern recognizers always see the whole document.",
    )
    max_spans_per_doc: Optional[int] = Field(
        None, ge=0, description="Remove documents with more PII spans than this (reason pii_spans); None keeps all."
    )

    @field_validator("entities")
    @classmethod
    def _entities(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("entities is empty: list at least one of " + ", ".join(ENTITIES))
        if len(set(v)) != len(v):
            raise ValueError(f"entities lists a type twice: {v}")
        return v

    @field_validator("placeholder", "pseudonym")
    @classmethod
    def _templates(cls, v: str, info) -> str:
        fields = {"entity": "X", "hash": "0"} if info.field_name == "pseudonym" else {"entity": "X"}
        try:
            v.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"{info.field_name} {v!r} may use only the fields {{{'}, {'.join(fields)}}}: {e!r}"
            ) from None
        return v

    @field_validator("ner_model")
    @classmethod
    def _ner_model(cls, v: Optional[str]) -> Optional[str]:
        """Fail at configuration time, not in the middle of a run, when the model is not there."""
        if v is None:
            return v
        import spacy.util

        if not (spacy.util.is_package(v) or (Path(v) / "config.cfg").is_file()):
            raise ValueError(
                f"spaCy model {v!r} is not installed and is no model folder: install it "
                f"(python -m spacy download {v}) or set ner_model to null"
            )
        return v


class Span(NamedTuple):
    start: int
    end: int
    entity: str
    score: float


# -- finding spans -------------------------------------------------------------------------------


def scan(texts: list[str], config: PiiConfig) -> tuple[list[list[Span]], int, list[bool]]:
    """Pattern spans per text (presidio's engine results: threshold, remove_duplicates), the
    number of characters given to presidio and whether each text had any window."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    engine = analyzer(tuple(config.entities))
    found: list[list] = [[] for _ in texts]
    phone_cache: dict = {}  # _parse_and_verify results by candidate and neighbours, for this call
    scanned, touched = 0, [False] * len(texts)
    for recognizer in engine.registry.recognizers:
        entity = recognizer.supported_entities[0]
        if not recognizer.is_loaded:
            recognizer.load()
            recognizer.is_loaded = True
        limit = BATCH_CHARS.get(entity, DEFAULT_BATCH_CHARS)
        batch: list[tuple[int, int, int]] = []  # (text index, start, end)
        size = 0
        for i, text in enumerate(texts):
            wins = windows(text, entity)
            touched[i] = touched[i] or bool(wins)
            need = sum(e - s + 1 for s, e in wins)
            if batch and size + need > limit:
                scanned += _run(recognizer, texts, batch, found, phone_cache)
                batch, size = [], 0
            batch += [(i, s, e) for s, e in wins]
            size += need
        if batch:
            scanned += _run(recognizer, texts, batch, found, phone_cache)
    out = []
    for results in found:
        kept = [r for r in results if r[3] >= config.score_threshold]
        kept = EntityRecognizer.remove_duplicates([RecognizerResult(*r) for r in kept]) if kept else []
        out.append(sorted(Span(r.start, r.end, r.entity_type, float(r.score)) for r in kept))
    return out, scanned, touched


def _run(
    recognizer,
    texts: list[str],
    batch: list[tuple[int, int, int]],
    found: list[list],
    phone_cache: Optional[dict] = None,
) -> int:
    """Run one recognizer on the batch's windows joined by SEP; results go to found[text index]
    as (entity, start, end, score) in that text's offsets. Returns the characters scanned."""
    joined = SEP.join(texts[i][s:e] for i, s, e in batch)
    starts, pos = [], 0
    for _, s, e in batch:
        starts.append(pos)
        pos += e - s + len(SEP)
    if phone_cache is not None and _phone_fast_ok(recognizer):
        results = _phone_analyze(recognizer, joined, phone_cache)
    else:
        results = recognizer.analyze(text=joined, entities=recognizer.supported_entities, nlp_artifacts=None)
    for r in results:
        k = bisect.bisect_right(starts, r.start) - 1
        i, s, e = batch[k]
        shift = s - starts[k]
        assert r.end + shift <= e, "a match crossed a window edge"  # impossible by construction
        found[i].append((r.entity_type, r.start + shift, r.end + shift, r.score))
    return len(joined)


def presidio_spans(text: str, config: PiiConfig) -> list[Span]:
    """Reference: presidio's AnalyzerEngine on the whole text (what `scan` must equal)."""
    results = analyzer(tuple(config.entities)).analyze(
        text, language="en", entities=list(config.entities), score_threshold=config.score_threshold
    )
    return sorted(Span(r.start, r.end, r.entity_type, float(r.score)) for r in results)


def chunk_bounds(text: str, max_chars: int, overlap: int = OVERLAP) -> list[tuple[int, int]]:
    """[start, end) chunks of at most max_chars, cut at whitespace, each overlapping the previous
    one by about `overlap` characters and starting at the beginning of a token."""
    n = len(text)
    bounds, start = [], 0
    while n - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + max_chars // 2, end), text.rfind("\n", start + max_chars // 2, end))
        cut = cut if cut >= 0 else end  # one giant token: cut hard
        bounds.append((start, cut))
        nxt = cut - overlap
        after_space = [p for p in (text.find(" ", nxt, cut), text.find("\n", nxt, cut)) if p >= 0]
        start = min(after_space) + 1 if after_space else nxt
    bounds.append((start, n))
    return bounds


def ner_spans(text: str, config: PiiConfig) -> list[Span]:
    """PERSON/LOCATION from the spaCy model, chunk by chunk (each chunk owns the spans starting
    before the next chunk's start)."""
    engine = ner_analyzer(config.ner_model, tuple(config.ner_entities))
    bounds = chunk_bounds(text, config.max_chars)
    spans = []
    for i, (start, end) in enumerate(bounds):
        owned_until = bounds[i + 1][0] if i + 1 < len(bounds) else end
        for r in engine.analyze(
            text[start:end], language="en", entities=list(config.ner_entities), score_threshold=config.score_threshold
        ):
            if start + r.start < owned_until:
                spans.append(Span(start + r.start, start + r.end, r.entity_type, float(r.score)))
    return spans


def find_spans(text: str, config: PiiConfig) -> list[Span]:
    """Non-overlapping PII spans in `text`, sorted by start."""
    spans = scan([text], config)[0][0]
    if config.ner_model:
        spans = spans + ner_spans(text, config)
    return resolve_overlaps(spans)


def resolve_overlaps(spans: list[Span]) -> list[Span]:
    """Of overlapping spans keep the highest-scoring, then the longest, then the first."""
    order = sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start, s.entity))
    starts, kept = [], []
    for s in order:
        i = bisect.bisect_right(starts, s.start)
        if i > 0 and kept[i - 1].end > s.start:
            continue
        if i < len(kept) and kept[i].start < s.end:
            continue
        starts.insert(i, s.start)
        kept.insert(i, s)
    return kept


# -- replacing ----------------------------------------------------------------------------------


def pseudonym_key(config: PiiConfig) -> bytes:
    key = os.environ.get(config.pseudonym_secret_env, "")
    if not key:
        raise ConfigError(
            f"pii.replacement: pseudonym needs a secret key in the environment variable "
            f"{config.pseudonym_secret_env} (on every worker)"
        )
    return key.encode()


def pseudonym_key_id(config: PiiConfig) -> str | None:
    """A name for the pseudonym key that does not reveal it (an HMAC of a fixed message): it goes
    into the stage fingerprint, so a new key means new output. None without pseudonyms."""
    if config.replacement != "pseudonym":
        return None
    return hmac.new(pseudonym_key(config), b"crawl2llm pseudonym key id", hashlib.sha256).hexdigest()[:16]


def replace_spans(text: str, spans: list[Span], config: PiiConfig, key: bytes = b"") -> str:
    """Replace sorted, non-overlapping spans; offsets all refer to the original text. Pseudonyms
    hash (HMAC-SHA256 with `key`) the entity type and the exact value."""
    out, pos = [], 0
    for s in spans:
        name = SHORT_NAMES[s.entity] if config.short_names else s.entity
        if config.replacement == "pseudonym":
            digest = hmac.new(key, f"{s.entity}\0{text[s.start : s.end]}".encode(), hashlib.sha256).hexdigest()
            new = config.pseudonym.format(entity=name, hash=digest[: config.pseudonym_hex])
        else:
            new = config.placeholder.format(entity=name)
        out += [text[pos : s.start], new]
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def _find_all(
    texts: list[str], config: PiiConfig
) -> tuple[list[Optional[list[Span]]], list[Optional[str]], int, list[bool]]:
    """Spans per text (None where presidio failed on it, with the error), characters scanned and
    which texts were scanned. A failing batch is retried text by text so that one bad document
    does not take the others down."""
    try:
        found, chars, touched = scan(texts, config)
        errors: list[Optional[str]] = [None] * len(texts)
    except Exception:  # noqa: BLE001 - isolate the document below
        found, errors, chars, touched = [], [], 0, []
        for text in texts:
            try:
                spans, n, hit = scan([text], config)
                found.append(spans[0])
                errors.append(None)
                chars, touched = chars + n, touched + hit
            except Exception as e:  # noqa: BLE001 - the document cannot be kept unscrubbed
                found.append(None)
                errors.append(f"{type(e).__name__}: {e}")
                touched.append(True)
    for i, text in enumerate(texts):
        if found[i] is not None and config.ner_model and text:
            touched[i] = True
            try:
                found[i] = found[i] + ner_spans(text, config)
            except Exception as e:  # noqa: BLE001
                found[i], errors[i] = None, f"{type(e).__name__}: {e}"
    return [resolve_overlaps(f) if f is not None else None for f in found], errors, chars, touched


def _type_names(config: PiiConfig) -> set[str]:
    return {
        SHORT_NAMES.get(e, e) if config.short_names else e
        for e in config.entities + (config.ner_entities if config.ner_model else [])
    }


def replacements(config: PiiConfig) -> re.Pattern:
    """What `replace_spans` writes in place of a span, as a pattern whose group `entity` is the type's
    name: the report finds scrubbed spans in the output with it, and shows them in their context."""
    names = sorted(_type_names(config), key=len, reverse=True)  # the longest first: IP_ADDRESS before IP
    template = config.pseudonym if config.replacement == "pseudonym" else config.placeholder
    parts, named = [], False
    for piece in re.split(r"(\{entity\}|\{hash\})", template):
        if piece == "{entity}":
            parts.append("(?P=entity)" if named else "(?P<entity>" + "|".join(map(re.escape, names)) + ")")
            named = True
        else:
            parts.append("[0-9a-f]+" if piece == "{hash}" else re.escape(piece))
    return re.compile("".join(parts))


def scrubbed_examples(docs, config: PiiConfig, per_type: int = 2, chars: int = 80) -> list[dict]:
    """A few scrubbed documents per PII type, each as the `chars` around its first replacement of
    that type: what the corpus holds in place of the PII (the value itself is gone). `docs`: an
    iterable of {url, text} rows of the stage's output."""
    pattern, types, seen = replacements(config), _type_names(config), {}
    for doc in docs:
        text = doc["text"] or ""
        for m in pattern.finditer(text):
            bucket = seen.setdefault(m.group("entity"), [])
            if len(bucket) < per_type and all(row["url"] != doc["url"] for row in bucket):
                around = text[max(0, m.start() - chars) : m.end() + chars]
                bucket.append({"type": m.group("entity"), "url": doc["url"] or "", "context": " ".join(around.split())})
        if len(seen) == len(types) and all(len(b) >= per_type for b in seen.values()):
            break
    return [row for name in sorted(seen) for row in seen[name]]


def scrub(table: pa.Table, config: PiiConfig) -> ShardResult:
    """Replace PII in every document's text.

    Counts: pii_spans per entity type, docs_with_pii, docs_scanned (with at least one window given
    to presidio), chars_scanned (window characters given to presidio), chars_in (before scrubbing;
    chars_kept is after), docs_non_english and docs_binary_like (pipeline.stage.text_kinds),
    docs_over_max_chars (longer than spaCy's chunk size; only NER chunks them).
    """
    if "text" not in table.column_names:
        raise ValueError(f"scrub: the table has no 'text' column (columns: {table.column_names})")
    key = pseudonym_key(config) if config.replacement == "pseudonym" else b""
    per_entity = dict.fromkeys(sorted(config.entities + (config.ner_entities if config.ner_model else [])), 0)
    raw = [t or "" for t in table.column("text").to_pylist()]
    found, errors, chars_scanned, touched = _find_all(raw, config)
    texts, reasons, details = [], [], []
    with_pii = 0
    for row, (text, spans, error) in enumerate(zip(raw, found, errors)):
        if spans is None:
            texts.append("")  # nor written, unscrubbed, to the removed files
            reasons.append("pii_error")
            details.append(f"row {row}: {error}"[:500])
            continue
        for s in spans:
            per_entity[s.entity] += 1
        with_pii += bool(spans)
        texts.append(replace_spans(text, spans, config, key) if spans else text)
        too_many = config.max_spans_per_doc is not None and len(spans) > config.max_spans_per_doc
        reasons.append("pii_spans" if too_many else None)
        details.append(f"spans={len(spans)} > max_spans_per_doc={config.max_spans_per_doc}" if too_many else None)
    counts = {
        "pii_spans": per_entity,
        "docs_with_pii": with_pii,
        "docs_scanned": sum(touched),
        "chars_scanned": chars_scanned,
        "chars_in": int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0) if table.num_rows else 0,
        "docs_over_max_chars": sum(len(t) > config.max_chars for t in raw),
        **text_kinds(table),
    }
    scrubbed = table.set_column(table.column_names.index("text"), "text", pa.array(texts, pa.string()))
    return split_by_reason(scrubbed, reasons, details, counts)
