"""Quality rules from the published recipes, with their published thresholds as defaults:
Gopher's quality and repetition rules (Rae et al. 2021, appendix A; datatrove's
GopherQualityFilter and GopherRepetitionFilter), C4's rules (Raffel et al. 2020; datatrove's
C4QualityFilter) and FineWeb's own rules (Penedo et al. 2024; datatrove's FineWebQualityFilter).

Rules run in this fixed order: a size guard, then Gopher's cheap counts, Gopher's repetition rules,
C4, FineWeb (FineWeb's recipe runs C4 after Gopher and FineWeb last). A document is removed by the
first rule it fails (its reason); a rule left out of `QualityConfig.rules` is off. Each recipe is its
own module with its config and rules (gopher.py, c4.py, fineweb.py; after datatrove's one filter per
recipe), and its thresholds are the config's sub-config of that name (quality.gopher.min_words):

    doc_max_chars            <= 2,000,000 characters (a guard: bounds the work one document costs)
    gopher_word_count        50 <= words <= 100,000
    gopher_mean_word_length  3 <= mean characters per word <= 10
    gopher_hash_ratio        '#' per word <= 0.1
    gopher_ellipsis_ratio    ('...' or '…') per word <= 0.1
    gopher_bullet_lines      <= 90% of lines start with a bullet point
    gopher_ellipsis_lines    <= 30% of lines end with an ellipsis
    gopher_alpha_words       >= 80% of whitespace tokens hold a letter
    gopher_stop_words        >= 2 of the words the, be, to, of, and, that, have, with (any case)
    gopher_dup_paragraphs    <= 30% of paragraphs repeat an earlier one, and they hold <= 20% of the characters
    gopher_dup_lines         <= 30% of lines repeat an earlier line, and they hold <= 20% of the characters
    gopher_top_ngrams        the most frequent word 2/3/4-gram covers <= 20/18/16% of the characters
    gopher_dup_ngrams        word 5..10-grams that repeat cover <= 15/14/13/12/11/10% of the characters
    c4_line_word_length      line cleaning: drop lines holding a word over 1,000 characters
    c4_citations             line cleaning: strip Wikipedia citation marks ([1], [edit], [citation needed])
    c4_line_punct            line cleaning: drop lines not ending in . ? ! " ' (or ending in '...')
    c4_line_words            line cleaning: drop lines of fewer than 3 words
    c4_lorem_ipsum           remove documents where a kept line says "lorem ipsum"
    c4_line_javascript       line cleaning: drop lines that mention javascript
    c4_curly_bracket         remove documents where a kept line holds '{' (code)
    c4_line_policy           line cleaning: drop lines about cookies, terms of use, privacy policy
    c4_min_sentences         >= 5 sentences left in the kept lines
    fineweb_line_punct       >= 12% of lines end with a sentence terminal (Unicode Sentence_Terminal)
    fineweb_short_lines      <= 67% of lines are 30 characters or shorter
    fineweb_dup_line_chars   lines that repeat an earlier line hold <= 1% of the characters
    fineweb_newline_ratio    <= 0.3 line breaks per word

C4's line rules rewrite the text in one pass over its lines (in the order above, as C4 does) and
the rules after them judge the rewritten text, which is what a kept document holds; each line rule
counts the lines it dropped. A document left with no line is removed by the last C4 line rule
switched on (its detail lists what each one dropped). C4's and FineWeb's rules are off by default:
they judge lines, and hard-wrapped text (books, mail) fails them; FineWeb's recipe switches
c4_line_punct off and the rest on (`FINEWEB_RECIPE`).

Character shares are of the whole text: a repeated line or paragraph counts its own length; an
n-gram counts its words' characters (spaces left out), once per occurrence for the top n-gram and,
for repeated n-grams, once per repeated occurrence that does not overlap the previous counted one
(so a long repeated passage is not counted n times). FineWeb's line rules read the lines as they
are (not stripped) and divide by the characters other than line breaks, as datatrove does.

A "word" is a whitespace token holding a letter or digit, trimmed of leading and trailing
punctuation (pipeline.text.words); symbol-only tokens ("|", "--") are not words, but they are
tokens, so they count against gopher_alpha_words. Gopher's lines are stripped non-blank lines;
paragraphs are separated by blank lines. Words are split once per document and shared by all rules.

Every rule measures named signals (words, mean_word_length, ...). With `signals=True` nothing is
removed: every document is kept with its first failing rule (quality_reason, quality_detail) and
every signal of every enabled rule as a column (signal_<name>), RedPajama-v2 style, to filter later
in DuckDB or pandas: the rows whose quality_reason is null are exactly what filtering keeps (C4's
line cleaning included), the others exactly what it removes.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Callable, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator, model_validator

from pipeline.quality import c4, fineweb, gopher
from pipeline.quality.c4 import C4, C4_LINE_RULES, C4Config, C4Lines, c4_lines  # noqa: F401 (re-exported)
from pipeline.quality.checks import Check, Checks, at_most  # noqa: F401 (Check re-exported)
from pipeline.quality.doc import Doc
from pipeline.quality.fineweb import FINEWEB, FineWebConfig
from pipeline.quality.gopher import (  # noqa: F401 (re-exported)
    BULLETS,
    DUP_NGRAM_MAX_CHARS,
    ELLIPSES,
    GOPHER,
    GOPHER_QUALITY,
    GOPHER_REPETITION,
    GOPHER_STOP_WORDS,
    TOP_NGRAM_MAX_CHARS,
    GopherConfig,
    NgramShares,
)
from pipeline.quality.gopher import repeated_ngram_chars as _repeated_ngram_chars  # noqa: F401 (tests)
from pipeline.stage import ShardResult, StageConfig, split_by_reason, text_kinds

Rule = Literal[("doc_max_chars",) + GOPHER + C4 + FINEWEB]  # each recipe module lists its rules in order
RULES: tuple[str, ...] = Rule.__args__  # the evaluation order: the guard, then recipe by recipe
# What runs by default: C4's and FineWeb's line rules would cut hard-wrapped books to pieces.
DEFAULT_RULES = ("doc_max_chars",) + GOPHER_QUALITY + GOPHER_REPETITION
# FineWeb's recipe (datatrove's FineWeb example): Gopher, C4 without its line punctuation rule, FineWeb.
FINEWEB_RECIPE = DEFAULT_RULES + tuple(r for r in C4 if r != "c4_line_punct") + FINEWEB

# Each recipe's sub-config of QualityConfig, and the recipe module holding its rules.
RECIPES = {"gopher": gopher, "c4": c4, "fineweb": fineweb}

# The flat keys of before the recipes were nested -> (recipe, field). Accepted, with a
# DeprecationWarning, for one release.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("gopher", name) for name in GopherConfig.model_fields},
    **{f"c4_{name}": ("c4", name) for name in C4Config.model_fields},
    **{name: ("fineweb", name) for name in FineWebConfig.model_fields},
}


class QualityConfig(StageConfig):
    rules: list[Rule] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="Rules to apply; leave a rule out to switch it off (and a recipe's rules to switch "
        "the recipe off). They always run in the documented order (" + ", ".join(RULES) + "). C4's and "
        "FineWeb's rules are off by default: they judge lines, and hard-wrapped text "
        "(books, mail) fails them.",
    )
    signals: bool = Field(
        False,
        description="Keep every document and write each enabled rule's signals as "
        "columns (signal_<name>) plus quality_reason/quality_detail (the first "
        "failing rule), to filter later; nothing is removed.",
    )
    max_doc_chars: int = Field(
        2_000_000,
        ge=1,
        description="doc_max_chars: longest text, in characters, that is "
        "judged at all (longer ones are removed unread).",
    )
    gopher: GopherConfig = Field(default_factory=GopherConfig, description="Thresholds of Gopher's rules (gopher_*).")
    c4: C4Config = Field(default_factory=C4Config, description="Thresholds of C4's rules (c4_*).")
    fineweb: FineWebConfig = Field(
        default_factory=FineWebConfig, description="Thresholds of FineWeb's rules (fineweb_*)."
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, data):
        """Move each old flat key (min_words) to its recipe's sub-config (gopher.min_words), with a
        DeprecationWarning; the same setting given both ways with different values is an error."""
        if not isinstance(data, dict) or not FLAT_KEYS.keys() & data.keys():
            return data
        data, subs = dict(data), {}
        for old in [k for k in data if k in FLAT_KEYS]:
            recipe, new = FLAT_KEYS[old]
            if recipe not in subs:
                sub = data.get(recipe)
                if isinstance(sub, BaseModel):
                    sub = sub.model_dump(exclude_unset=True)
                if sub is not None and not isinstance(sub, dict):
                    return data  # quality.<recipe> is no mapping: validation says so
                subs[recipe] = dict(sub or {})
            value = data.pop(old)
            warnings.warn(f"quality.{old} is deprecated: use quality.{recipe}.{new}", DeprecationWarning, stacklevel=2)
            if new in subs[recipe] and subs[recipe][new] != value:
                raise ValueError(
                    f"quality.{old} ({value!r}) and quality.{recipe}.{new} ({subs[recipe][new]!r}) are both "
                    f"given and differ: give only quality.{recipe}.{new} (quality.{old} is deprecated)"
                )
            subs[recipe][new] = value
        return {**data, **subs}

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"rules lists a rule twice: {v}")
        return v


def _doc_max_chars(d: Doc, c: QualityConfig) -> Checks:
    yield at_most("chars", len(d.text), "max_doc_chars", c.max_doc_chars)


# rule -> (its checks, the name of its recipe's sub-config; None: the guard reads QualityConfig)
CHECKS: dict[str, tuple[Callable[[Doc, StageConfig], Checks], str | None]] = {
    "doc_max_chars": (_doc_max_chars, None),
    **{rule: (fn, name) for name, module in RECIPES.items() for rule, fn in module.CHECKS.items()},
}
assert tuple(CHECKS) == RULES


def enabled(config: QualityConfig) -> list[str]:
    """The configured rules, in evaluation order."""
    on = set(config.rules)
    return [r for r in RULES if r in on]


def _judge(doc: Doc, rules: list[str], config: QualityConfig, every: bool):
    """Run the rules on one document. Yields (rule, check) in order; stops after the first failing
    check unless `every`. The rules after C4 see C4's kept lines."""
    for rule in rules:
        target = doc.after_c4 if rule.startswith("fineweb_") else doc
        checks, recipe = CHECKS[rule]
        for check in checks(target, config if recipe is None else getattr(config, recipe)):
            yield rule, check
            if check.failed() and not every:
                return


def evaluate(text: str, config: QualityConfig) -> dict[str, str | None]:
    """Every enabled rule's verdict on one text (its first failure detail, or None when it passes),
    without stopping at a failing rule: for reports and for tuning thresholds."""
    rules = enabled(config)
    verdicts: dict[str, str | None] = dict.fromkeys(rules)
    for rule, check in _judge(Doc(text, config, frozenset(rules)), rules, config, every=True):
        if check.failed() and verdicts[rule] is None:
            verdicts[rule] = check.detail()
    return verdicts


def signal_names(config: QualityConfig) -> list[str]:
    """The signal columns the enabled rules write, in rule order (the same for every document)."""
    rules = enabled(config)
    checks = _judge(Doc("", config, frozenset(rules)), rules, config, every=True)
    return list(dict.fromkeys(check.signal for _, check in checks))


def filter_quality(table: pa.Table, config: QualityConfig) -> ShardResult:
    """Remove documents failing a rule; reason = the first failing rule, detail = value vs limit.
    With config.signals keep them all, with the reason, detail and signals as columns instead.

    Extra counts: rules[rule] = {checked: documents that reached the rule, failed: removed by it
    (flagged, with signals)}; c4_lines = lines read and dropped per C4 line rule, over the documents
    that reached C4; docs_non_english and docs_binary_like (pipeline.stage.text_kinds), which go
    through the rules like any text.
    """
    if "text" not in table.column_names:
        raise ValueError(f"filter_quality: the table has no 'text' column (columns: {table.column_names})")
    rules = enabled(config)
    on = frozenset(rules)
    checked, failed = dict.fromkeys(rules, 0), dict.fromkeys(rules, 0)
    rewrites = bool(on.intersection(C4_LINE_RULES))
    c4: Counter = Counter()
    names = signal_names(config) if config.signals else []
    columns: dict[str, list] = {name: [] for name in names}
    reasons, details, texts = [], [], []
    for text in table.column("text").to_pylist():
        doc, reason, detail, values, last = Doc(text or "", config, on), None, None, {}, None
        for rule, check in _judge(doc, rules, config, every=config.signals):
            if rule != last:
                checked[rule], last = checked[rule] + 1, rule
            values[check.signal] = check.value
            if reason is None and check.failed():
                reason, detail = rule, check.detail()
                failed[rule] += 1
        if rewrites and "c4" in doc.__dict__:  # C4's line pass ran on this document
            c4.update(lines_in=doc.c4.lines_in, c4_citations=doc.c4.citations, **doc.c4.dropped)
            if reason is None:  # removed (flagged) documents keep the text that was judged
                text = doc.c4.text
        reasons.append(reason)
        details.append(detail)
        texts.append(text or "")
        for name in names:
            columns[name].append(values.get(name))
    counts = {"rules": {r: {"checked": checked[r], "failed": failed[r]} for r in rules}, **text_kinds(table)}
    if rewrites:
        counts["c4_lines"] = {k: c4[k] for k in ("lines_in", *C4_LINE_RULES) if k == "lines_in" or k in on}
    table = table.set_column(table.column_names.index("text"), "text", pa.array(texts, pa.string()))
    if not config.signals:
        return split_by_reason(table, reasons, details, counts)
    counts["flagged"] = dict(sorted(Counter(r for r in reasons if r is not None).items()))
    result = split_by_reason(table, [None] * len(reasons), None, counts)
    kept = result.kept.append_column("quality_reason", pa.array(reasons, pa.string()))
    kept = kept.append_column("quality_detail", pa.array(details, pa.string()))
    for name in names:
        kept = kept.append_column(f"signal_{name}", pa.array(columns[name], pa.float64()))
    result.kept = kept
    return result
