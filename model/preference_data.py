"""Preference pairs for reward models and DPO: a prompt and two answers, the one people preferred
(`chosen`) and the other (`rejected`), rendered through the chat format (model/chat.py).

Record shapes, told apart by their keys, in JSON lists or JSON Lines (.gz too, model.sft_data):
- the book's ch. 7 set: `instruction`, optional `input`, `chosen`, `rejected` (strings);
- `prompt` (a string, or a list of messages) with `chosen` and `rejected` strings;
- whole conversations: `chosen` and `rejected` as message lists, or as hh-rlhf transcripts
  ("\\n\\nHuman: ... \\n\\nAssistant: ..."); the prompt is the turns they share, and each must then
  end in one assistant turn of its own (a pair that differs earlier compares two conversations, not
  two answers, and is refused).

A rendered pair is the prompt's ids ending with <|assistant|> and each answer's ids ending with
<|end|>: exactly what the chat format renders for the whole conversation, split where the answer
begins, so a reward or a log-probability reads the same tokens as SFT trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model.chat import ChatFormat, check_messages
from model.sft_data import DataError, read_records

TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant): ")
TRANSCRIPT_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Pair:
    """One rendered pair; `record` names it in messages."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    record: str


def transcript_messages(text: str) -> list[dict]:
    """An hh-rlhf transcript as messages; ValueError when it is not one."""
    parts = TRANSCRIPT_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("a transcript starts with '\\n\\nHuman: ' and has turns of Human and Assistant")
    return [{"role": TRANSCRIPT_ROLE[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts), 2)]


def _conversation(value, key: str) -> list[dict]:
    try:
        messages = transcript_messages(value) if isinstance(value, str) else value
        check_messages(messages)
    except ValueError as e:
        raise ValueError(f"`{key}`: {e}") from e
    return messages


def to_pair(record) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of a record; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise ValueError(f"`{key}` is missing (a pair has `chosen` and `rejected`)")
    if "instruction" in record or "prompt" in record:
        for key in ("chosen", "rejected"):
            if not isinstance(record[key], str):
                raise ValueError(f"`{key}` is not a string")
        if "prompt" in record:
            prompt = record["prompt"]
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            try:
                check_messages(prompt)
            except ValueError as e:
                raise ValueError(f"`prompt`: {e}") from e
        else:
            if not isinstance(record["instruction"], str) or not isinstance(record.get("input", ""), str):
                raise ValueError("`instruction` and `input` must be strings")
            user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
            prompt = [{"role": "user", "content": user}]
        if not prompt or prompt[-1]["role"] == "assistant":
            raise ValueError("the prompt must end with a user (or system) turn")
        return prompt, record["chosen"], record["rejected"]
    chosen, rejected = _conversation(record["chosen"], "chosen"), _conversation(record["rejected"], "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:
        raise ValueError("`chosen` and `rejected` are the same conversation")
    if shared != len(chosen) - 1 or shared != len(rejected) - 1:
        raise ValueError(
            f"`chosen` and `rejected` differ at turn {shared + 1} of {len(chosen)}/{len(rejected)}: "
            "a pair must share every turn but its last answer"
        )
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("the turns that differ must be the assistant's answers")
    if not chosen[:shared]:
        raise ValueError("no prompt: the conversations share no turn")
    return chosen[:shared], chosen[-1]["content"], rejected[-1]["content"]


def render_pairs(records: list, fmt: ChatFormat, source: str, skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    """(pairs, what was skipped): a bad record raises DataError naming `source` and the record,
    or with skip_bad is left out and described in the second list."""
    pairs, skipped = [], []
    for n, record in enumerate(records, start=1):
        where = f"{source}: record {n}"
        try:
            prompt, chosen, rejected = to_pair(record)
            ids = fmt.render(prompt, add_generation_prompt=True)[0]
        except ValueError as e:
            if not skip_bad:
                raise DataError(f"{where}: {e}") from e
            skipped.append(f"{where}: {e}")
            continue
        answer = [fmt.encode_text(chosen) + [fmt.end_id], fmt.encode_text(rejected) + [fmt.end_id]]
        pairs.append(Pair(ids, answer[0], answer[1], where))
    return pairs, skipped


def read_pairs(paths: list[str], fmt: ChatFormat, skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    """The pairs of every file, in order, and the bad records skipped."""
    pairs, skipped = [], []
    for path in paths:
        got, bad = render_pairs(read_records(path), fmt, path, skip_bad)
        pairs += got
        skipped += bad
    return pairs, skipped


def fit(pair: Pair, max_len: int) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt, chosen, rejected) cut so prompt + each answer fits max_len tokens, and whether
    anything was cut: the prompt keeps its last tokens (the turn being answered, and <|assistant|>)
    down to half the room, then the answers are cut at their end."""
    longest = max(len(pair.chosen), len(pair.rejected))
    prompt = pair.prompt
    if len(prompt) + longest > max_len:
        keep = max(max_len - longest, min(len(prompt), max_len // 2))
        prompt = prompt[-keep:]
    room = max_len - len(prompt)
    chosen, rejected = pair.chosen[:room], pair.rejected[:room]
    cut = len(prompt) < len(pair.prompt) or len(chosen) < len(pair.chosen) or len(rejected) < len(pair.rejected)
    return prompt, chosen, rejected, cut
