"""One model answering many callers: the terminal chat and the HTTP API (model/openai_api.py) both
submit requests here. Requests wait in a queue and one worker thread runs them in turn, so outputs
never mix and a greedy answer is the same whether it came alone or among twenty; each request's
text streams out as it is generated, and a caller that goes away cancels its request.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from model.chat import ChatFormat, encode_plain
from model.generate import stream
from storage.tokens import CHAT_TOKENS, EOT


class RequestError(ValueError):
    """A request that cannot be served as asked (the API answers 400 with the message)."""


class Busy(RuntimeError):
    """The queue is full (the API answers 429)."""


@dataclass
class Limits:
    max_tokens: int = 2048  # new tokens one request may ask for
    default_max_tokens: int = 256  # when a request does not say
    max_queue: int = 64  # requests waiting, besides the one running
    max_body_bytes: int = 1 << 20  # of an HTTP request (model/openai_api.py)


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> None:
        if not 0 <= self.temperature <= 100:
            raise RequestError(f"temperature must be between 0 and 100, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise RequestError(f"top_k must be at least 1, got {self.top_k}")


_DONE = object()


@dataclass
class Job:
    """A submitted request: iterate it for its text, piece by piece; then `finish_reason` is "stop"
    (a stop token or string) or "length", and `completion_tokens` how many tokens were generated."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    _pieces: queue.Queue = field(default_factory=queue.Queue)

    def __iter__(self):
        while (piece := self._pieces.get()) is not _DONE:
            yield piece
        if self.error is not None:
            raise self.error

    def text(self) -> str:
        return "".join(self)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """A loaded model and tokenizer behind a queue. `chat` is None when the tokenizer has no chat
    tokens (a base model: completions only)."""

    def __init__(self, model, tokenizer: Tokenizer, name: str, limits: Limits | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.limits = limits or Limits()
        try:
            self.chat = ChatFormat(tokenizer)
        except ValueError:
            self.chat = None
        # An answer ends at <|endoftext|>, and in a chat model at any chat token (<|end|>, or a role
        # token: the model starting another turn), so special tokens never show in a text.
        self.stop_ids = {tokenizer.token_to_id(EOT)} | {tokenizer.token_to_id(t) for t in CHAT_TOKENS if self.chat}
        self._queue: queue.Queue[Job] = queue.Queue(self.limits.max_queue)
        self._worker = threading.Thread(target=self._run, name="generation", daemon=True)
        self._worker.start()

    @property
    def context(self) -> int:
        return self.model.config.block_size

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if self.chat is None:
            raise RequestError(
                f"model {self.name} has no chat format (its tokenizer has no chat tokens): use /v1/completions"
            )
        try:
            return self.chat.render(messages, add_generation_prompt=True)[0]
        except ValueError as e:
            raise RequestError(f"messages: {e}") from None

    def text_ids(self, prompt: str) -> list[int]:
        return encode_plain(self.tokenizer, prompt)

    def submit(
        self, prompt_ids: list[int], max_tokens: int | None, sampling: Sampling, stop: list[str] | None = None
    ) -> Job:
        """Queue a request (checked first: a RequestError says what is wrong; Busy when full)."""
        if max_tokens is None:
            max_tokens = min(self.limits.default_max_tokens, self.limits.max_tokens)
        if not 1 <= max_tokens <= self.limits.max_tokens:
            raise RequestError(f"max_tokens must be between 1 and {self.limits.max_tokens}, got {max_tokens}")
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        if len(prompt_ids) > self.context:
            raise RequestError(f"the prompt is {len(prompt_ids)} tokens; the model's context is {self.context}")
        sampling.check()
        job = Job(prompt_ids, max_tokens, sampling, [s for s in (stop or []) if s])
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self.limits.max_queue} requests are already waiting; try again later") from None
        return job

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self._generate(job)
            except BaseException as e:  # a failed request must not stop the worker
                job.error = e
            finally:
                job._pieces.put(_DONE)

    @torch.no_grad()
    def _generate(self, job: Job) -> None:
        s = job.sampling
        generator = None
        if s.temperature > 0:
            device = next(self.model.parameters()).device
            generator = torch.Generator(device=device)
            generator.manual_seed(s.seed if s.seed is not None else int(torch.randint(2**62, ()).item()))
        decoded = Detokenizer(self.tokenizer)
        text, sent = "", 0
        job.finish_reason = "length"
        for token in stream(
            self.model,
            job.prompt_ids,
            job.max_tokens,
            self.stop_ids,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            generator=generator,
        ):
            if job.cancelled.is_set():
                job.finish_reason = "cancelled"
                return
            job.completion_tokens += 1
            text += decoded.add(token)
            cut = _stop_at(text, job.stop)
            if cut is not None:
                text, job.finish_reason = text[:cut], "stop"
                break
            ready = len(text) - _partial_stop(text, job.stop)  # hold back what may begin a stop string
            if ready > sent:
                job._pieces.put(text[sent:ready])
                sent = ready
        else:
            text += decoded.flush()
            if job.completion_tokens < job.max_tokens:
                job.finish_reason = "stop"
        if len(text) > sent:
            job._pieces.put(text[sent:])


class Detokenizer:
    """Text of a growing list of byte-level tokens, handed out in pieces that are whole characters
    (a character's bytes can span tokens: a piece that ends in U+FFFD waits for the next token).
    Only the tokens since the last piece are decoded: byte-level pieces concatenate."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def add(self, token: int) -> str:
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending, skip_special_tokens=False)
        if piece.endswith("\ufffd"):
            return ""
        self.pending = []
        return piece

    def flush(self) -> str:
        """At the end: what is left, an unfinished character as U+FFFD."""
        piece = self.tokenizer.decode(self.pending, skip_special_tokens=False) if self.pending else ""
        self.pending = []
        return piece


def _stop_at(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """How many characters at the end of text could be the start of a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


def open_engine(
    source: str,
    tokenizer: str | None = None,
    device: str = "auto",
    name: str | None = None,
    limits: Limits | None = None,
) -> Engine:
    """An Engine for a train output, a model.pt or a checkpoint (its tokenizer found as evaluate
    finds it, model/source.py), or any of them with `tokenizer` naming the tokenizer.json."""
    from model.evaluate import load_model
    from model.gpt import resolve_device

    if tokenizer is None:
        from model.source import resolve

        found = resolve(source)
        model_path, tokenizer = found.model_path, found.tokenizer_path
    else:
        model_path = source
    model = load_model(model_path, resolve_device(device))
    stem = source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".pt")
    return Engine(model, Tokenizer.from_file(tokenizer), name or stem, limits)
