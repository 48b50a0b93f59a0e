"""Multiple-choice and cloze benchmarks scored the way lm-evaluation-harness scores them.

Every item is a context and some continuations. A continuation's score is the sum of the log
probabilities of its tokens after the context (lm-eval's `loglikelihood`), with the same split of
context and continuation into tokens: trailing spaces of the context move to the continuation, the
pair is encoded whole, and the continuation's tokens are what the whole has beyond the context's.
acc picks the highest sum; acc_norm divides each sum by the continuation's length in characters
first, and compares those. LAMBADA is scored by its last word: accuracy when greedy decoding
reproduces every token, and perplexity as lm-eval aggregates it, exp(-mean log likelihood of the
word), per word and not per token (what GPT-2's published 40.1 measures).

Files are read in their common layouts: HellaSwag (`ctx`, `endings`, `label`, with
`activity_label`), llm-foundry's `{query, choices, gold}` (PIQA, ARC, COPA, HellaSwag),
`{context_options, continuation, gold}` (WinoGrande, WSC), `{context, continuation}` (LAMBADA), all
JSONL (gzip too), and llama.cpp's HellaSwag text layout (`.txt`/`.txt.bz2`: six lines per item, the
context, the label, four endings). llm-foundry's queries leave the prompt's tail to a per-task
delimiter, so for the benchmarks named in PROMPTS (by task name or file stem) the query gets the
tail lm-eval's prompt has: PIQA and ARC end in "\nAnswer:", COPA joins premise and connector with a
space ("The man turned on the faucet therefore"), not llm-foundry's comma.
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tokenizers import Tokenizer

from model.gpt import GPT, autocast
from storage.tokens import EOT

# Published zero-shot GPT-2 124M scores (lm-evaluation-harness; HellaSwag acc_norm, LAMBADA acc and
# perplexity), shown beside ours in reports.
GPT2_124M_REFERENCE = {
    "hellaswag": {"acc_norm": 0.311},
    "lambada_openai": {"acc": 0.326, "perplexity": 40.1},
    "piqa": {"acc": 0.629},
    "arc_easy": {"acc": 0.438},
    "winogrande": {"acc": 0.516},
}


@dataclass
class Item:
    """Candidate (context, continuation) pairs; `gold` indexes the right one."""

    contexts: list[str]
    continuations: list[str]
    gold: int
    choices: list[str]  # what acc_norm measures the length of (the answer text, no delimiter)


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line of a .jsonl(.gz) file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not JSON ({e})") from None


def _question_answer(query: str) -> str:
    """PIQA and ARC: "Question: ...\nAnswer:", as lm-eval prompts them."""
    query = query.rstrip()
    return query if query.endswith("Answer:") else query + "\nAnswer:"


def _copa(query: str) -> str:
    """COPA: lm-eval writes the premise without its full stop, then " because" or " therefore"."""
    for connector in ("because", "therefore"):
        if query.endswith(f", {connector}"):
            return query[: -len(connector) - 2] + " " + connector
    return query


PROMPTS: dict[str, Callable[[str], str]] = {
    "piqa": _question_answer,
    "arc_easy": _question_answer,
    "arc_challenge": _question_answer,
    "copa": _copa,
}


def item_from_record(rec: dict, prompt: Callable[[str], str] | None = None) -> Item | tuple[str, str]:
    """One record in any of the supported layouts (a (context, word) pair for LAMBADA); `prompt`
    rewrites an llm-foundry query into lm-eval's prompt."""
    if "endings" in rec:  # HellaSwag (rowanz or klosax's preprocessed file)
        context = f"{rec['activity_label']}: {rec['ctx']}" if rec.get("activity_label") else rec["ctx"]
        return Item(
            [context] * len(rec["endings"]), [" " + e for e in rec["endings"]], int(rec["label"]), list(rec["endings"])
        )
    if "context_options" in rec:  # WinoGrande / WSC partial scoring: the options differ before the blank
        n = len(rec["context_options"])
        return Item(
            list(rec["context_options"]), [" " + rec["continuation"]] * n, int(rec["gold"]), [rec["continuation"]] * n
        )
    if "choices" in rec:
        query = prompt(rec["query"]) if prompt else rec["query"]
        return Item(
            [query] * len(rec["choices"]), [" " + c for c in rec["choices"]], int(rec["gold"]), list(rec["choices"])
        )
    if "context" in rec and "continuation" in rec:  # LAMBADA
        return rec["context"], " " + rec["continuation"]
    raise ValueError(f"unknown record layout with keys {sorted(rec)}")


def _read_hellaswag_text(path: str) -> Iterator[tuple[int, dict]]:
    """llama.cpp's HellaSwag layout as HellaSwag records: per item a context line (activity label
    already joined), the label and four endings."""
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines, not six per item (context, label, four endings)")
    for start in range(0, len(lines), 6):
        yield start + 1, {"ctx": lines[start], "label": lines[start + 1], "endings": lines[start + 2 : start + 6]}


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".gz", ".bz2", ".jsonl", ".json", ".txt"):
        name = name.removesuffix(ext)
    return name


def load_task(path: str, limit: int = 0, name: str = "") -> list:
    """The items of one file (the first `limit`, 0 = all); errors name the file and line. The task
    `name`, or else the file's stem, picks an lm-eval prompt from PROMPTS."""
    prompt = PROMPTS.get(name) or PROMPTS.get(_stem(path))
    records = _read_hellaswag_text(path) if path.endswith((".txt", ".txt.bz2")) else read_jsonl(path)
    out = []
    for n, rec in records:
        try:
            out.append(item_from_record(rec, prompt))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} line {n}: {e}") from None
        if limit and len(out) == limit:
            break
    if not out:
        raise ValueError(f"{path}: no items")
    return out


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: context tokens and continuation tokens (context's trailing spaces moved over;
    an empty context becomes <|endoftext|>)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    if not context:
        return [tokenizer.token_to_id(EOT)], enc(continuation)
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def score_pairs(
    model: GPT,
    pairs: list[tuple[list[int], list[int]]],
    batch_size: int,
    device: str,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """For each (context tokens, continuation tokens): the summed log probability of the
    continuation, and whether greedy decoding gives exactly it. Sequences keep their last
    block_size + 1 tokens, as lm-eval truncates on the left; batches group similar lengths."""
    block = model.config.block_size
    fulls = [(ctx + cont)[-(block + 1) :] for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(fulls[i]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = len(fulls[idx[0]]) - 1
        x = torch.zeros(len(idx), width, dtype=torch.long)
        y = torch.zeros(len(idx), width, dtype=torch.long)
        scored = torch.zeros(len(idx), width, dtype=torch.bool)
        for row, i in enumerate(idx):
            n, k = (
                len(fulls[i]) - 1,
                min(len(pairs[i][1]), len(fulls[i]) - 1),
            )  # a continuation longer than the window: its end
            x[row, :n] = torch.tensor(fulls[i][:-1])
            y[row, :n] = torch.tensor(fulls[i][1:])
            scored[row, n - k : n] = True
        x, y, scored = x.to(device), y.to(device), scored.to(device)
        with autocast(device, "auto"):
            logits, _ = model(x)
        logits = logits.float()
        # log p(target) without materializing the whole log-softmax; one transfer per batch
        logp = logits.gather(-1, y[..., None]).squeeze(-1) - logits.logsumexp(-1)
        sums = torch.where(scored, logp, 0.0).sum(1).tolist()
        greedy = ((logits.argmax(-1) == y) | ~scored).all(1).tolist()
        for row, i in enumerate(idx):
            out[i] = (sums[row], greedy[row])
        if progress:
            progress(len(idx))
    return out


Encode = Callable[[str, str], tuple[list[int], list[int]]]  # (context, continuation) -> their ids


def choice_scores(
    model: GPT,
    tokenizer: Tokenizer,
    items: list[Item],
    batch_size: int,
    device: str,
    progress: Callable[[int], None] | None = None,
    encode: Encode | None = None,
) -> list[list[float]]:
    """Each item's log likelihood of each continuation; `encode` renders a pair (default:
    lm-eval's split, encode_pair; model.chat.ChatFormat.answer_pair: through the chat format)."""
    encode = encode or (lambda c, k: encode_pair(tokenizer, c, k))
    pairs = [encode(c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
    flat = iter(s for s, _ in score_pairs(model, pairs, batch_size, device, progress))
    return [[next(flat) for _ in it.continuations] for it in items]


def picks(item: Item, lls: list[float]) -> tuple[int, int]:
    """The chosen continuation by log likelihood (acc) and by log likelihood per character of the
    answer (acc_norm); the first one on a tie, as numpy's argmax."""
    chars = [max(1, len(c)) for c in item.choices]
    return (max(range(len(lls)), key=lambda k: lls[k]), max(range(len(lls)), key=lambda k: lls[k] / chars[k]))


def accuracy(items: list[Item], scores: list[list[float]]) -> dict:
    """acc and acc_norm: the share of items whose pick is the gold continuation."""
    chosen = [picks(it, s) for it, s in zip(items, scores)]
    acc = sum(a == it.gold for it, (a, _) in zip(items, chosen))
    acc_norm = sum(n == it.gold for it, (_, n) in zip(items, chosen))
    return {"items": len(items), "acc": acc / len(items), "acc_norm": acc_norm / len(items)}


def evaluate_task(
    model: GPT,
    tokenizer: Tokenizer,
    items: list,
    batch_size: int,
    device: str,
    progress: Callable[[int], None] | None = None,
    encode: Encode | None = None,
) -> dict:
    """acc and acc_norm of multiple-choice items, or acc and perplexity of LAMBADA pairs (each pair
    rendered by `encode`, as choice_scores says)."""
    if isinstance(items[0], tuple):
        encode = encode or (lambda c, k: encode_pair(tokenizer, c, k))
        pairs = [encode(c, w) for c, w in items]
        scores = score_pairs(model, pairs, batch_size, device, progress)
        return {
            "items": len(items),
            "acc": sum(g for _, g in scores) / len(items),
            "perplexity": math.exp(-sum(s for s, _ in scores) / len(items)),
        }
    return accuracy(items, choice_scores(model, tokenizer, items, batch_size, device, progress, encode))
