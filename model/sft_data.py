"""Instruction data for supervised fine-tuning: records read from the formats users bring, rendered
through the chat format (model/chat.py) into token ids with a mask of the tokens trained on, split
into training and held-out examples, and laid out in rows of a fixed length.

Formats, by record: Alpaca (`instruction`, optional `input`, `output`) or a conversation
(`messages`: a list of {role, content}); files are a JSON list or JSON Lines, optionally gzipped.
Alpaca records become one user turn (the instruction, then the input after a blank line) and one
assistant turn; with `prompt="alpaca"` they are rendered with the Alpaca prompt text instead of
chat tokens (the book's ch. 7 layout), trained on the response and <|endoftext|>.

Rows (`pack`): with packing, several examples share a row (best fit, longest first), each with its
own segment id and positions from 0, and the model's attention never crosses a segment
(model/gpt.py); without packing, one example per row. Either way targets are -100 (ignored by the
loss) wherever the next token is not trained on, across segment boundaries and in the padding.
"""

from __future__ import annotations

import bisect
import gzip
import json
from dataclasses import dataclass
from typing import Literal

import torch

from model.chat import ChatFormat, check_messages
from model.gpt import IGNORE_INDEX
from storage.tokens import EOT

IGNORE = IGNORE_INDEX  # the target of a token the loss skips

ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}"
)
ALPACA_INPUT = "\n\n### Input:\n{input}"
ALPACA_RESPONSE = "\n\n### Response:\n"


class DataError(ValueError):
    """A record that cannot be used, named by file and record number (from 1)."""


@dataclass
class Example:
    """One rendered record: ids and the mask of ids trained on; `record` names it in messages."""

    ids: list[int]
    mask: list[bool]
    record: str


def read_records(path: str) -> list[dict]:
    """The records of a JSON list or JSON Lines file (.gz too)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as e:  # JSONDecodeError (any module's copy of the class)
            raise DataError(f"{path}: not valid JSON ({e})") from e
    else:
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as e:  # JSONDecodeError (any module's copy of the class)
                    raise DataError(f"{path}: line {n} is not valid JSON: {getattr(e, 'msg', e)}") from e
    if not records:
        raise DataError(f"{path}: no records")
    return records


def to_messages(record) -> list[dict]:
    """A record as a conversation; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "messages" in record:
        check_messages(record["messages"])
        if not any(m["role"] == "assistant" for m in record["messages"]):
            raise ValueError("no assistant message: nothing to train on")
        return record["messages"]
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise ValueError(
                f"`{key}` is missing or not a string (a record has `messages`, or `instruction` and `output`)"
            )
    if not isinstance(record.get("input", ""), str):
        raise ValueError("`input` is not a string")
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def render_alpaca(fmt: ChatFormat, record: dict) -> tuple[list[int], list[bool]]:
    """The Alpaca prompt (no chat tokens), trained on the response and <|endoftext|>."""
    prompt = ALPACA_HEAD.format(instruction=record["instruction"])
    if record.get("input"):
        prompt += ALPACA_INPUT.format(input=record["input"])
    head = fmt.encode_text(prompt + ALPACA_RESPONSE)
    answer = fmt.encode_text(record["output"]) + [fmt.tokenizer.token_to_id(EOT)]
    return head + answer, [False] * len(head) + [True] * len(answer)


def render_records(
    records: list,
    fmt: ChatFormat,
    source: str,
    prompt: Literal["chat", "alpaca"] = "chat",
    train_on: str = "assistant",
    skip_bad: bool = False,
) -> tuple[list[Example], list[str]]:
    """(examples, what was skipped): a bad record raises DataError naming `source` and the record,
    or with skip_bad is left out and described in the second list."""
    examples, skipped = [], []
    for n, record in enumerate(records, start=1):
        where = f"{source}: record {n}"
        try:
            messages = to_messages(record)
            if prompt == "alpaca":
                if "messages" in record:
                    raise ValueError("prompt 'alpaca' needs `instruction`/`output` records, not `messages`")
                ids, mask = render_alpaca(fmt, record)
                if train_on == "all":
                    mask = [True] * len(ids)
            else:
                ids, mask = fmt.render(messages, train_on=train_on)
        except ValueError as e:
            if not skip_bad:
                raise DataError(f"{where}: {e}") from e
            skipped.append(f"{where}: {e}")
            continue
        examples.append(Example(ids, mask, where))
    return examples, skipped


def split_examples(
    examples: list[Example], val_fraction: float, test_fraction: float = 0.0
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test) in file order, as the book splits it (85/10/5: train first, then
    test, then validation): a split that does not depend on a seed can be checked by hand."""
    n = len(examples)
    n_train = int(n * (1 - val_fraction - test_fraction))
    n_test = int(n * test_fraction)
    return examples[:n_train], examples[n_train + n_test :], examples[n_train : n_train + n_test]


@dataclass
class Rows:
    """Model inputs of a set of rows, (N, T) each: tokens, targets (IGNORE where not trained),
    segment ids (0 is padding) and positions within each segment."""

    tokens: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor
    positions: torch.Tensor
    truncated: int  # examples cut to fit a row

    def __len__(self) -> int:
        return self.tokens.size(0)


def pack(examples: list[Example], seq_len: int, pad_id: int, packing: bool = True) -> Rows:
    """Examples laid out in rows of seq_len inputs. An example of L ids gives L - 1 (input, target)
    pairs; one longer than seq_len + 1 ids is cut to fit (counted in `truncated`)."""
    pieces, truncated = [], 0
    for ex in examples:
        ids, mask = ex.ids, ex.mask
        if len(ids) > seq_len + 1:
            ids, mask, truncated = ids[: seq_len + 1], mask[: seq_len + 1], truncated + 1
        if len(ids) >= 2:
            pieces.append((ids, mask))
    rows: list[list[int]] = []  # indexes of pieces per row
    if packing:
        free: list[tuple[int, int]] = []  # (space left, row), sorted: the best fit is the first that fits
        for i in sorted(range(len(pieces)), key=lambda i: (-len(pieces[i][0]), i)):  # longest first, stable
            need = len(pieces[i][0]) - 1
            at = bisect.bisect_left(free, (need, -1))
            if at == len(free):
                rows.append([i])
                bisect.insort(free, (seq_len - need, len(rows) - 1))
            else:
                space, r = free.pop(at)
                rows[r].append(i)
                bisect.insort(free, (space - need, r))
    else:
        rows = [[i] for i in range(len(pieces))]
    shape = (len(rows), seq_len)
    tokens = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members, start=1):
            ids, mask = pieces[i]
            n = len(ids) - 1
            tokens[r, at : at + n] = torch.tensor(ids[:-1])
            targets[r, at : at + n] = torch.tensor([t if m else IGNORE for t, m in zip(ids[1:], mask[1:])])
            segments[r, at : at + n] = s
            positions[r, at : at + n] = torch.arange(n)
            at += n
    return Rows(tokens, targets, segments, positions, truncated)
