"""presidio's recognizers as this stage runs them: the engines (built once per process, offline),
the candidate regions each recognizer can match in (the fast path's windows), and the phone-number
matcher that skips parsing hopeless candidates. docs/PII.md has the proofs that each equals what
presidio finds on the whole text.

presidio's default AnalyzerEngine downloads a spaCy model; the recognizers used here are regexes
and checksums (plus python-phonenumbers) that need no NLP artifacts, so the engine runs with
presidio's NoOpNlpEngine. EmailRecognizer validates domains with tldextract, which would fetch the
public suffix list: it is pointed at its bundled snapshot.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading

import regex

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
