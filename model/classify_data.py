"""Labelled texts for classification fine-tuning: read from the formats users bring, balanced as
Raschka's ch. 6 balances SMS spam (every class cut to the size of the smallest, by a seeded draw),
split by a seeded shuffle (70/10/20 by default), and encoded as token ids cut to a length.

Formats: a .tsv of `label<TAB>text` lines without a header (the SMS Spam Collection), a .csv with a
header naming `text_field` and `label_field`, or JSON Lines / a JSON list of objects with those
fields. A bad line is a DataError naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass

from tokenizers import Tokenizer

from model.chat import encode_plain
from model.sft_data import DataError


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str
    where: str  # file and line, for messages


def read_labelled(path: str, text_field: str = "text", label_field: str = "label") -> list[Labelled]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            data = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    out = []
    if path.endswith(".tsv"):
        for n, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            label, tab, text = line.partition("\t")
            if not tab or not label.strip():
                raise DataError(f"{path}: line {n}: expected `label<TAB>text`")
            out.append(Labelled(text, label.strip(), f"{path}: line {n}"))
    elif path.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data))
        missing = {text_field, label_field} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: no column {', '.join(sorted(missing))} (columns: {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            out.append(_checked(row, text_field, label_field, f"{path}: line {n}"))
    else:
        try:
            rows = json.loads(data) if data.lstrip().startswith("[") else None
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from e
        if rows is None:
            rows = []
            for n, line in enumerate(data.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except ValueError as e:  # JSONDecodeError (any module's copy of the class)
                        raise DataError(f"{path}: line {n} is not valid JSON: {getattr(e, 'msg', e)}") from e
        else:
            rows = list(enumerate(rows, start=1))
        out = [_checked(row, text_field, label_field, f"{path}: record {n}") for n, row in rows]
    if not out:
        raise DataError(f"{path}: no labelled texts")
    return out


def _checked(row, text_field: str, label_field: str, where: str) -> Labelled:
    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
        raise DataError(f"{where}: `{text_field}` is missing or not a string")
    label = row.get(label_field)
    if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label).strip() == "":
        raise DataError(f"{where}: `{label_field}` is missing or not a string or integer")
    return Labelled(row[text_field], str(label).strip(), where)


def balance(examples: list[Labelled], seed: int) -> list[Labelled]:
    """Every class cut to the smallest class's count by a seeded draw; file order kept."""
    by_class: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_class.setdefault(ex.label, []).append(i)
    n = min(len(v) for v in by_class.values())
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], n))
    return [examples[i] for i in keep]


def split(
    examples: list[Labelled], fractions: tuple[float, float, float], seed: int
) -> tuple[list[Labelled], list[Labelled], list[Labelled]]:
    """(train, validation, test) after a seeded shuffle, cut at the fractions (the last takes the rest)."""
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    order = list(examples)
    random.Random(seed).shuffle(order)
    a = int(len(order) * fractions[0])
    b = a + int(len(order) * fractions[1])
    return order[:a], order[a:b], order[b:]


def class_counts(examples: list[Labelled]) -> dict[str, int]:
    return dict(sorted(Counter(ex.label for ex in examples).items()))


def encode(
    examples: list[Labelled], tokenizer: Tokenizer, labels: list[str], max_tokens: int
) -> tuple[list[list[int]], list[int], int]:
    """(ids per text, cut to max_tokens, from its start; label index per text; texts cut). An empty
    text is one <|endoftext|>, so every text has a last token to classify on."""
    index = {label: i for i, label in enumerate(labels)}
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids, ys, cut = [], [], 0
    for ex in examples:
        if ex.label not in index:
            raise DataError(f"{ex.where}: label {ex.label!r} is not one of {labels}")
        tokens = encode_plain(tokenizer, ex.text) or [eot]
        if len(tokens) > max_tokens:
            tokens, cut = tokens[:max_tokens], cut + 1
        ids.append(tokens)
        ys.append(index[ex.label])
    return ids, ys, cut
