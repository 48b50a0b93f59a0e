"""PII scrubbing with presidio-analyzer's pattern recognizers, fully offline, run only where a
recognizer could fire (docs/PII.md has the proof that this finds exactly what presidio finds on
the whole document).

presidio's default AnalyzerEngine downloads a spaCy model; the recognizers used here are regexes
and checksums (plus python-phonenumbers) that need no NLP artifacts, so the engine runs with
presidio's NoOpNlpEngine. With it, context enhancement never changes a score (no tokens, no
lemmas), so a recognizer's results on a text are all there is. EmailRecognizer validates domains
with tldextract, which would fetch the public suffix list: it is pointed at its bundled snapshot.

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
import functools
import hashlib
import hmac
import os
import re
import threading
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import pyarrow as pa
import pyarrow.compute as pc
import regex
from pydantic import Field, field_validator

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


# -- engines, built once per process ----------------------------------------------------------

_ENGINES: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _offline_tldextract() -> None:
    """EmailRecognizer calls tldextract.extract, which fetches the public suffix list over HTTP
    on first use; with no URLs it reads its bundled snapshot (or its disk cache) instead."""
    import tldextract.tldextract as tx

    tx.TLD_EXTRACTOR.suffix_list_urls = ()


def analyzer(entities: tuple[str, ...]):
    """presidio AnalyzerEngine holding only the recognizers for `entities` (cached per process)."""
    key = tuple(sorted(entities))
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        _offline_tldextract()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            CryptoRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )

        classes = {
            "EMAIL_ADDRESS": EmailRecognizer,
            "PHONE_NUMBER": PhoneRecognizer,
            "IP_ADDRESS": IpRecognizer,
            "CREDIT_CARD": CreditCardRecognizer,
            "IBAN_CODE": IbanRecognizer,
            "US_SSN": UsSsnRecognizer,
            "CRYPTO": CryptoRecognizer,
        }
        # Pattern recognizers need no NLP artifacts; a spaCy pass (even a blank pipeline) only costs
        # time: measured identical spans on 3,609 labelled texts at half the time without it.
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        registry = RecognizerRegistry(supported_languages=["en"])
        for name in key:
            registry.add_recognizer(classes[name]())
        engine = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
        _ENGINES[key] = engine
        return engine


def ner_analyzer(model: str, entities: tuple[str, ...]):
    """presidio AnalyzerEngine with a spaCy NLP engine on `model` and only its SpacyRecognizer."""
    key = ("ner", model, tuple(sorted(entities)))
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
        nlp.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.add_recognizer(SpacyRecognizer(supported_entities=list(key[2])))
        engine = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
        _ENGINES[key] = engine
        return engine


# -- candidate regions --------------------------------------------------------------------------
#
# For each recognizer, `_REGIONS[entity](text)` returns [start, end) regions such that every match
# any of its patterns can make in any text lies inside one region (docs/PII.md derives each from the
# recognizer's own regexes). Character classes are compiled with the same module (regex, or re for
# phonenumbers) and flags as the recognizer's, so \w, \d and case folding mean the same thing.

# Wider than any lookaround or neighbour a recognizer reads outside its match: \b (1 character),
# IPv6's (?![\w:]|\.\d) (2), the card pattern's (?!1\d{12}(?!\d)) (at most 1 past a match), and
# phonenumbers' previous/next character and ':mm' time-stamp suffix (3).
MARGIN = 4
# Joins regions into one string. It is in no class of any pattern (so no match crosses it) and reads
# like the edge of the text to every lookaround, \b and phonenumbers' neighbour checks.
SEP = "\n"
_PRESIDIO = regex.IGNORECASE | regex.DOTALL | regex.MULTILINE  # PatternRecognizer's default flags
_EMAIL_CHARS = r"[!#$%&'*+\-/=?^_`{|}~\w.@]"  # local part, '@', domain (\w, '-', '.')
_IP_CHARS = r"[0-9a-zA-Z:./%]|\d"  # hex groups, ':', '.', prefix '/' with \d, zone id '%' + [0-9a-zA-Z]
_CRYPTO_CHARS = r"[a-zA-HJ-NP-Z0-9]"  # 'bc1'/'1'/'3' + 25..59 of these: at least 26 in a row


def _runs_around(trigger: str, chars: str, flags: int):
    """Regions: the maximal runs of `chars` that contain a match of `trigger` (itself in `chars`)."""
    find, fwd, back = (
        regex.compile(trigger, flags),
        regex.compile(f"(?:{chars})*+", flags),
        regex.compile(f"(?r)(?:{chars})*+", flags),
    )

    def regions(text: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for m in find.finditer(text):
            if out and m.start() < out[-1][1]:
                continue
            out.append((back.match(text, 0, m.start()).start(), fwd.match(text, m.start()).end()))
        return out

    return regions


def _matches(pattern: str, flags: int, before: int = 0, after: int = 0, min_digits: int = 0, module=regex):
    """Regions: the matches of `pattern`, widened by before/after, with at least min_digits digits."""
    compiled = module.compile(pattern, flags)
    digit = module.compile(r"\d", flags)

    def regions(text: str) -> list[tuple[int, int]]:
        return [
            (m.start() - before, m.end() + after)
            for m in compiled.finditer(text)
            if len(digit.findall(m.group())) >= min_digits
        ]

    return regions


def _phone_regions():
    """python-phonenumbers' matcher takes candidates of (lead){0,2}, digit blocks joined by <= 4
    punctuation characters, and an optional extension ending in digits (and '#'). Regions: maximal
    chains of digit runs joined by such gaps or an extension's connector, plus 10 characters for the
    lead and 1 for '#'. Built from the library's own pieces; if its pattern ever changes shape, every
    document with a digit is scanned whole (still exact)."""
    import phonenumbers.phonenumbermatcher as pm

    punct, ext = pm._PUNCTUATION, pm._EXTN_PATTERNS_FOR_MATCHING
    same = pm._PATTERN.pattern == (
        f"(?:{pm._LEAD_CLASS}{punct}){{0,2}}\\d{{1,20}}(?:{punct}\\d{{1,20}}){{0,20}}(?:{ext})?"
    )
    if not (same and punct.endswith("{0,4}")):
        return _matches(r"(?s).+", 0, module=re), False
    connector = re.sub(r"\(\\d\{1,\d+\}\)(?:#\?|#)?", "", ext)  # the extension without its digits
    gap = f"(?:{punct[: -len('{0,4}')]}{{1,4}}|{connector})"
    return _matches(rf"\d+(?:{gap}\d+)*", pm._REGEX_FLAGS, before=10, after=1, module=re), True


_phone, PHONE_REGIONS_EXACT = _phone_regions()
_REGIONS = {
    "EMAIL_ADDRESS": _runs_around("@", _EMAIL_CHARS, _PRESIDIO),
    "IP_ADDRESS": _runs_around(r":|[0-9]\.", _IP_CHARS, _PRESIDIO),
    # Cards (13-20 digits in groups split by an optional '-' or ' ') and SSNs (9 digits split by
    # '-', ' ' or '.') lie in a chain of digit runs joined by single separators with >= 9 digits.
    "CREDIT_CARD": _matches(r"\d++(?:[- .]\d++)*+", _PRESIDIO, min_digits=13),
    "US_SSN": _matches(r"\d++(?:[- .]\d++)*+", _PRESIDIO, min_digits=9),
    # An IBAN match starts with two capitals and two digits and is at most 4 + 6*5 + 5 + 4 = 43 long.
    "IBAN_CODE": _matches(r"[A-Z]{2}[0-9]{2}", regex.DOTALL | regex.MULTILINE, after=43 - 4),
    "CRYPTO": _matches(rf"(?<!{_CRYPTO_CHARS}){_CRYPTO_CHARS}{{26,}}+", _PRESIDIO),
    "PHONE_NUMBER": _phone,
}


def windows(text: str, entity: str) -> list[tuple[int, int]]:
    """Disjoint, sorted [start, end) windows of `text` where `entity`'s recognizer must be run:
    its regions widened by MARGIN, clipped to the text, overlapping or touching ones merged."""
    out: list[list[int]] = []
    n = len(text)
    for s, e in _REGIONS[entity](text):
        s, e = max(0, s - MARGIN), min(n, e + MARGIN)
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# phonenumbers' PhoneNumberMatcher gives up after 65,535 failed tries per text. A candidate costs at
# most 1 + 6 inner patterns x (its length + 2) tries, so a string of n characters costs at most
# (1 + 3 x 6) n: batches of documents stay under this many characters and can never reach the cap
# (a single document longer than that is scanned alone, where it meets the cap exactly as presidio
# on the whole document would: the same candidates in the same order).
def _phone_batch_chars() -> int:
    import phonenumbers.phonenumbermatcher as pm

    return 65535 // (1 + 3 * len(pm._INNER_MATCHES)) - 1


BATCH_CHARS = {"PHONE_NUMBER": _phone_batch_chars()}
DEFAULT_BATCH_CHARS = 1 << 20  # any size is exact for stateless regexes; this bounds memory


# -- phone numbers without parsing hopeless candidates -------------------------------------------
#
# PhoneRecognizer.analyze runs PhoneNumberMatcher(text, region, leniency) per supported region and
# keeps every match as a 0.4-score result (a phonenumbers.parse of the match only names the region
# in the explanation), then remove_duplicates. Nearly all of its time is phonenumbers' parse of
# candidates that cannot be valid. _PhoneMatcher is that matcher with two changes that cannot alter
# any result or the count of failed tries (docs/PII.md, "Phone numbers"):
# - a candidate with fewer than _min_alnum() letters and digits is not parsed: every phone number
#   the matcher accepts (leniency VALID or stricter) is valid, so its national significant number
#   has one of the possible lengths of some region's general description (>= 4 digits), and each of
#   those digits comes from a distinct digit or letter of the candidate;
# - _parse_and_verify is a function of the candidate, the characters just before and after it and
#   the matcher's region and leniency: its result is cached on those.
# Both rest on phonenumbers' and presidio's source; PHONE_SOURCE_DIGEST pins the methods they read,
# and with any other source the recognizer's own analyze runs.

# sha256 of the sources of PhoneNumberMatcher.__init__, _find, _extract_match, _extract_inner_match,
# _parse_and_verify and PhoneRecognizer.analyze (phonenumbers 9.0.43, presidio-analyzer 2.2.366).
PHONE_SOURCE_DIGEST = "3d00a89e679489aa08110c3048ad2fa0deb3159eb1bdd63ac05e64645b5eaab3"


def _phone_source_digest() -> str:
    import inspect

    import phonenumbers.phonenumbermatcher as pm
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    parts = [
        inspect.getsource(getattr(pm.PhoneNumberMatcher, name))
        for name in ("__init__", "_find", "_extract_match", "_extract_inner_match", "_parse_and_verify")
    ]
    parts.append(inspect.getsource(PhoneRecognizer.analyze))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@functools.cache
def _min_alnum() -> int:
    """Fewest letters and digits a candidate the matcher accepts can have: the shortest possible
    length of a national significant number over all of phonenumbers' metadata (general_desc). 0
    (parse everything) if some description lists no lengths, or if a national-prefix transform rule
    could make a national number that short longer (checked on every digit string that short)."""
    import itertools

    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata
    from phonenumbers.phonenumberutil import _maybe_strip_national_prefix_carrier_code

    metadata = [PhoneMetadata.metadata_for_region(r) for r in sorted(phonenumbers.SUPPORTED_REGIONS)] + [
        PhoneMetadata.metadata_for_nongeo_region(c) for c in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
    ]
    lengths = [m.general_desc.possible_length if m and m.general_desc else () for m in metadata]
    low = min(min(pl) for pl in lengths) if all(lengths) else 0
    for m in metadata:
        if low and m.national_prefix_transform_rule:
            for n in range(low):
                for digits in itertools.product("0123456789", repeat=n):
                    if len(_maybe_strip_national_prefix_carrier_code("".join(digits), m)[1]) >= low:
                        low = 0
    return low


def _phone_matcher_class():
    import phonenumbers.phonenumbermatcher as pm

    slash_dates, time_stamps, suffix = pm._SLASH_SEPARATED_DATES, pm._TIME_STAMPS, pm._TIME_STAMPS_SUFFIX
    inner, lead, valid = pm._INNER_MATCHES, pm._LEAD_PATTERN, pm.Leniency.VALID

    def _overlapping(pattern, candidate):
        """The matches _extract_inner_match visits: search, then search again one past each start."""
        group_match = pattern.search(candidate)
        while group_match:
            yield group_match
            group_match = pattern.search(candidate, group_match.start() + 1)

    class _PhoneMatcher(pm.PhoneNumberMatcher):
        def __init__(self, text, region, leniency, cache: dict, min_alnum: int):
            super().__init__(text, region, leniency=leniency)
            self._cache, self._min_alnum = cache, min_alnum

        def _extract_match(self, candidate, offset):
            if sum(map(str.isalnum, candidate)) >= self._min_alnum:
                return super()._extract_match(candidate, offset)
            # PhoneNumberMatcher._extract_match and _extract_inner_match with every
            # _parse_and_verify returning None (no group of the candidate has more letters and
            # digits than the candidate): the same early exits and the same failed tries. Those
            # depend on the candidate alone while they stay under max_tries (every `max_tries > 0`
            # check passes when max_tries >= tries), so they are counted once per distinct candidate.
            info = self._cache.get(candidate)
            if info is None:
                tries = 0
                for pattern in inner:
                    n = sum(1 for _ in _overlapping(pattern, candidate))
                    tries += n + 1 if n else 0
                info = self._cache[candidate] = (
                    slash_dates.search(candidate) is not None,
                    time_stamps.search(candidate) is not None,
                    tries,
                )
            if info[0]:
                return None
            if info[1] and suffix.match(self.text, offset + len(candidate)):
                return None
            if self._max_tries >= info[2]:
                self._max_tries -= info[2]
                return None
            for pattern in inner:
                group_match = pattern.search(candidate)
                is_first_match = True
                while group_match and self._max_tries > 0:
                    if is_first_match:
                        self._max_tries -= 1
                        is_first_match = False
                    self._max_tries -= 1
                    group_match = pattern.search(candidate, group_match.start() + 1)
            return None

        def _parse_and_verify(self, candidate, offset):
            if sum(map(str.isalnum, candidate)) < self._min_alnum:
                return None
            # What _parse_and_verify reads besides the candidate (region, leniency: per matcher).
            end = offset + len(candidate)
            before = (
                self.text[offset - 1] if offset > 0 and self.leniency >= valid and not lead.match(candidate) else None
            )
            after = self.text[end] if end < len(self.text) and self.leniency >= valid else None
            key = (self.preferred_region, self.leniency, candidate, before, after)
            if key not in self._cache:
                found = super()._parse_and_verify(candidate, offset)
                self._cache[key] = None if found is None else found.number
            number = self._cache[key]
            return None if number is None else pm.PhoneNumberMatch(offset, candidate, number)

    return _PhoneMatcher


@functools.cache
def _phone_fast():
    """(_PhoneMatcher, _min_alnum()) where phonenumbers and presidio are the versions read, else None."""
    ok = _phone_source_digest() == PHONE_SOURCE_DIGEST and _min_alnum() > 0
    return (_phone_matcher_class(), _min_alnum()) if ok else None


def _phone_fast_ok(recognizer) -> bool:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    return (
        type(recognizer) is PhoneRecognizer
        and recognizer.leniency is not None
        and recognizer.leniency >= 1
        and _phone_fast() is not None
    )


def _phone_analyze(recognizer, text: str, cache: dict) -> list:
    """PhoneRecognizer.analyze(text) with _PhoneMatcher: the same results (entity, start, end, score)."""
    import phonenumbers
    from phonenumbers.phonenumberutil import NumberParseException
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    (matcher, low), results = _phone_fast(), []
    for region in recognizer.supported_regions:
        for match in matcher(text, region, recognizer.leniency, cache, low):
            try:  # as presidio does (it names the region in the explanation); may raise the same way
                phonenumbers.region_code_for_number(phonenumbers.parse(text[match.start : match.end]))
            except NumberParseException:
                pass
            results.append(
                RecognizerResult(
                    entity_type=recognizer.supported_entities[0],
                    start=match.start,
                    end=match.end,
                    score=recognizer.SCORE,
                )
            )
    return EntityRecognizer.remove_duplicates(results)


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
