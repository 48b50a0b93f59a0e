"""`crawl2llm chat MODEL`: talk to a model in the terminal. Answers stream as they are generated;
the conversation is kept turn by turn (/reset forgets it); Ctrl-C stops an answer, Ctrl-D or /quit
leaves. A model whose tokenizer has no chat tokens is a base model: each line is then a prompt it
continues, without history.
"""

from __future__ import annotations

import sys

from model.serving import Engine, RequestError, Sampling

HELP = "/reset forgets the conversation, /quit or Ctrl-D leaves, Ctrl-C stops an answer"


def run_chat(
    engine: Engine,
    sampling: Sampling,
    max_tokens: int | None = None,
    system: str | None = None,
    stdin=None,
    stdout=None,
) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    mode = "chat" if engine.chat is not None else "completion (a base model: each line is continued)"
    print(f"{engine.name}: {mode}; {HELP}", file=stdout, flush=True)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            print(file=stdout)
            continue
        if not line:  # Ctrl-D
            print(file=stdout)
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/quit":
            return 0
        if text.strip() == "/reset":
            history = list(start)
            print("(conversation forgotten)", file=stdout, flush=True)
            continue
        if not text.strip():
            continue
        try:
            if engine.chat is not None:
                history = _fit(engine, history, len(start), text)
                ids = engine.chat_ids(history + [{"role": "user", "content": text}])
            else:
                ids = engine.text_ids(text)
            job = engine.submit(ids, max_tokens, sampling)
        except RequestError as e:
            print(f"error: {e}", file=stdout, flush=True)
            continue
        print("model> ", end="", file=stdout, flush=True)
        answer = ""
        try:
            for piece in job:
                answer += piece
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            job.cancel()
            print(" [stopped]", end="", file=stdout)
        print(file=stdout, flush=True)
        if engine.chat is not None:
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def _fit(engine: Engine, history: list[dict], keep: int, text: str) -> list[dict]:
    """The history without its oldest exchanges, until it and the new message leave room in the
    context for an answer of a quarter of it (the first `keep` messages, the system's, stay)."""
    room = engine.context - engine.context // 4
    while len(history) > keep and len(engine.chat_ids(history + [{"role": "user", "content": text}])) > room:
        history = history[:keep] + history[keep + 2 :]
    return history
