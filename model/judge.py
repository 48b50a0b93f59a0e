"""An LLM judge: each answer to a held-out prompt scored 0-100 against its reference answer by a
model behind any OpenAI-compatible chat endpoint (`crawl2llm serve`, vLLM, llama.cpp's server,
OpenAI itself). The rubric is the book's (Raschka ch. 7: score the response against the correct
output, 100 best, reply with the number only), worded here.

Replies are read for their first number: one outside 0-100, or none, is counted (out_of_range,
unparsable) and left out of the mean, never a crash. An endpoint that cannot be reached or answers
an error stops the judging with an error naming the URL and what it said. Plain HTTP (urllib): no
client library to install.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

RUBRIC = (
    "You grade answers to tasks.\n\n"
    "Task:\n{prompt}\n\n"
    "Correct answer:\n{reference}\n\n"
    "Answer to grade:\n{answer}\n\n"
    "Score the answer to grade from 0 to 100, where 100 means it is as good as the correct answer. "
    "Reply with the number only."
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeError(RuntimeError):
    """The judge endpoint could not be asked: the message names it and what went wrong."""


@dataclass
class Judge:
    """Where the judge is: base_url up to /v1, the model name it serves, the key's variable."""

    url: str
    model: str
    api_key_env: str = ""
    timeout: float = 60.0
    max_tokens: int = 8

    def ask(self, content: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"judge {self.url}: ${self.api_key_env} (the API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        endpoint = self.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as e:
            raise JudgeError(f"judge {endpoint} answered {e.code}: {_message(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise JudgeError(f"judge {endpoint} cannot be reached: {getattr(e, 'reason', e)}") from None
        except ValueError as e:
            raise JudgeError(f"judge {endpoint} answered something that is not JSON: {e}") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"judge {endpoint}: no choices[0].message.content in its reply {str(reply)[:200]}"
            ) from None


def _message(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return e.reason


def parse_score(reply: str) -> tuple[float | None, str]:
    """(score, "ok") or (None, "unparsable" / "out_of_range") of a judge's reply."""
    found = NUMBER.search(reply)
    if not found:
        return None, "unparsable"
    score = float(found.group())
    return (score, "ok") if 0 <= score <= 100 else (None, "out_of_range")


def judge_answers(judge: Judge, items: list[dict]) -> dict:
    """items: {"prompt", "reference", "answer", and "record" naming it}. The mean score of the
    replies that parse, the counts of those that do not, and every item's reply and score."""
    scored = []
    for item in items:
        reply = judge.ask(RUBRIC.format(prompt=item["prompt"], reference=item["reference"], answer=item["answer"]))
        score, verdict = parse_score(reply)
        scored.append({"record": item.get("record", ""), "reply": reply, "score": score, "verdict": verdict})
    scores = [s["score"] for s in scored if s["score"] is not None]
    return {
        "judge": {"url": judge.url, "model": judge.model},
        "items": len(scored),
        "mean_score": sum(scores) / len(scores) if scores else None,
        "scored": len(scores),
        "unparsable": sum(s["verdict"] == "unparsable" for s in scored),
        "out_of_range": sum(s["verdict"] == "out_of_range" for s in scored),
        "per_item": scored,
    }
