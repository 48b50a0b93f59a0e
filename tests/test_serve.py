"""Talking to a model (issue 18): `crawl2llm serve` answered by the official `openai` client, streamed
and not, under 20 concurrent requests, and with requests it must refuse; `crawl2llm chat` in the
terminal. The model is a tiny random-weight GPT with a real BPE: the outputs are gibberish, but
greedy outputs are exact, so every answer is checked against the engine's own generation."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from model.chat import ChatFormat
from model.generate import stream
from model.gpt import GPT, GPTConfig
from model.serving import Engine, Sampling, open_engine
from model.terminal_chat import run_chat
from pipeline.tokenize import EOT, TokenizeConfig, train_tokenizer
from tests.fixtures.serve import serving

TEXTS = [
    "How many legs does a spider have? A spider has eight legs. " * 2,
    "Naïve café — “quotes”, 日本語 🙂.",
    "Rewrite the sentence in passive voice. The dog was walked by the boy.",
] * 30


def _model_files(folder, chat_tokens: bool = True):
    tok = train_tokenizer(TEXTS, TokenizeConfig(vocab_size=400, min_frequency=1, chat_tokens=chat_tokens))
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=128, tie_embeddings=False
    )
    model = GPT(config)
    with torch.no_grad():  # special tokens never win a greedy pick: answers run to max_tokens, long enough to check
        model.lm_head.weight[:6] = 0
    torch.save(
        {"model": model.state_dict(), "config": config.model_dump(), "vocab_size": config.vocab_size},
        folder / "tiny.pt",
    )
    tok.save(str(folder / "tokenizer.json"))
    return str(folder / "tiny.pt"), str(folder / "tokenizer.json")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _model_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(files):
    return open_engine(files[0], files[1], device="cpu")


def _greedy(engine: Engine, ids: list[int], max_tokens: int) -> str:
    """What the model says, from model.generate directly (no queue, no server)."""
    out = list(stream(engine.model, ids, max_tokens, engine.stop_ids, temperature=0))
    return engine.tokenizer.decode(out, skip_special_tokens=False)


@pytest.fixture(scope="module")
def server(files):
    with serving(files[0], "--tokenizer", files[1], "--max-tokens", "64", "--name", "tiny") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


QUESTIONS = [f"Question {i}: how many legs does a spider have?" for i in range(20)]


def _chat(client, question, **kw):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24, **kw
    )


def test_openai_client_chat_streamed_and_not(client, engine):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = _chat(client, QUESTIONS[0])
    want = _greedy(engine, engine.chat_ids([{"role": "user", "content": QUESTIONS[0]}]), 24)
    assert reply.choices[0].message.content == want and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 10
    chunks = list(_chat(client, QUESTIONS[0], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason and len(chunks) > 3


def test_openai_client_completions_streamed_and_not(client, engine):
    prompt = "The dog was walked by"
    want = _greedy(engine, engine.text_ids(prompt), 16)
    reply = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=16)
    assert reply.choices[0].text == want
    streamed = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want


def test_twenty_concurrent_requests_get_their_own_answers(client):
    alone = [_chat(client, q).choices[0].message.content for q in QUESTIONS]
    assert len(set(alone)) > 1  # different prompts, different answers: a mix-up would show
    with ThreadPoolExecutor(20) as pool:
        together = list(pool.map(lambda q: _chat(client, q).choices[0].message.content, QUESTIONS))
    assert together == alone
    with ThreadPoolExecutor(20) as pool:
        streamed = list(
            pool.map(
                lambda q: "".join(c.choices[0].delta.content or "" for c in _chat(client, q, stream=True)), QUESTIONS
            )
        )
    assert streamed == alone


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_requests_over_the_limits_get_a_4xx_and_the_server_keeps_serving(server, client):
    from openai import BadRequestError, NotFoundError

    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (10 << 20)}]}).encode()
    status, body = _post(server + "/v1/chat/completions", big)
    assert status == 413 and "over the limit of 1048576 bytes" in body["error"]["message"]
    with pytest.raises(BadRequestError, match="max_tokens must be between 1 and 64, got 1000000000"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=10**9)
    with pytest.raises(NotFoundError, match="model 'gpt-4' not found; this server serves 'tiny'"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(BadRequestError, match="role 'robot'"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "hi"}])
    status, body = _post(server + "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert _chat(client, QUESTIONS[1]).choices[0].finish_reason in ("stop", "length")


def test_a_base_model_serves_completions_and_refuses_chat(tmp_path):
    engine = open_engine(*_model_files(tmp_path, chat_tokens=False), device="cpu")
    assert engine.chat is None
    from model.serving import RequestError

    with pytest.raises(RequestError, match="has no chat format"):
        engine.chat_ids([{"role": "user", "content": "hi"}])
    job = engine.submit(engine.text_ids("The dog"), 8, Sampling(temperature=0))
    assert job.text() == _greedy(engine, engine.text_ids("The dog"), 8)


class _InterruptingOutput(io.StringIO):
    """A terminal where the user presses Ctrl-C once, after the first piece of the first answer."""

    def __init__(self):
        super().__init__()
        self.pressed = False

    def write(self, s):
        n = super().write(s)
        if not self.pressed and "model> " in self.getvalue() and s not in ("model> ", ""):
            self.pressed = True
            raise KeyboardInterrupt
        return n


def test_terminal_chat_streams_keeps_history_resets_and_survives_ctrl_c(engine):
    stdin = io.StringIO("How many legs?\nAnd a dog?\n/reset\nHello\n")
    out = _InterruptingOutput()
    seen = []
    submit = engine.submit

    def spy(ids, *a, **kw):
        seen.append(engine.tokenizer.decode(ids, skip_special_tokens=False))
        return submit(ids, *a, **kw)

    engine.submit = spy
    try:
        assert run_chat(engine, Sampling(temperature=0), max_tokens=12, stdin=stdin, stdout=out) == 0
    finally:
        del engine.submit
    text = out.getvalue()
    assert text.count("model> ") == 3 and "[stopped]" in text and "(conversation forgotten)" in text
    assert seen[1].startswith("<|user|>How many legs?<|end|><|assistant|>")  # history: the stopped answer kept
    assert seen[2] == "<|user|>Hello<|end|><|assistant|>"  # after /reset
    fmt = ChatFormat(engine.tokenizer)
    last = _greedy(engine, fmt.render([{"role": "user", "content": "Hello"}], True)[0], 12)
    assert len(last) > 5 and text.endswith(f"model> {last}\nyou> \n")  # streamed whole, then Ctrl-D


def test_the_chat_page_is_served_with_the_model_name_escaped(server):
    with urllib.request.urlopen(server + "/") as r:
        page = r.read().decode()
    assert "<title>crawl2llm chat: tiny</title>" in page and 'const MODEL = "tiny";' in page
    assert EOT not in page


def test_stop_strings_end_the_answer_before_them_streamed_and_not(client, engine):
    want = _greedy(engine, engine.chat_ids([{"role": "user", "content": QUESTIONS[2]}]), 24)
    stop = want[6:9]
    cut = want[: want.find(stop)]
    reply = _chat(client, QUESTIONS[2], stop=[stop])
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    chunks = list(_chat(client, QUESTIONS[2], stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_the_chat_page_streams_an_answer_in_a_browser(server, engine, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.fixtures.browser import chromium

    driver = chromium()
    try:
        driver.get(server + "/")
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        driver.find_element(By.ID, "input").send_keys(QUESTIONS[3], Keys.ENTER)
        done = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done]"))
        driver.save_screenshot(str(screenshots / "chat-page-answer.png"))
        want = _greedy(engine, engine.chat_ids([{"role": "user", "content": QUESTIONS[3]}]), 64)  # serve's limit
        assert driver.execute_script("return arguments[0].textContent", done[0]) == "Model: " + want
        assert int(done[0].get_attribute("data-pieces")) > 10  # it came as a stream of pieces, not at once
        assert driver.find_element(By.CSS_SELECTOR, ".user").text == "You: " + QUESTIONS[3]
    except Exception:
        driver.save_screenshot(str(screenshots / "chat-page-failure.png"))
        raise
    finally:
        driver.quit()


def test_a_full_queue_is_busy_and_the_engine_keeps_serving(files):
    """--max-queue counts the requests waiting besides the one running: with 2, a third waiting is refused."""
    from model.serving import Busy, Limits

    engine = open_engine(*files, device="cpu", limits=Limits(max_queue=2))
    running = engine.submit(engine.text_ids("The dog"), 2048, Sampling(temperature=0))
    deadline = time.time() + 30
    while not engine._queue.empty() and time.time() < deadline:  # the worker has taken it
        time.sleep(0.01)
    waiting = [engine.submit(engine.text_ids("The dog"), 4, Sampling(temperature=0)) for _ in range(2)]
    with pytest.raises(Busy, match="2 requests are already waiting"):
        engine.submit(engine.text_ids("The dog"), 4, Sampling(temperature=0))
    running.cancel()
    assert [job.text() for job in waiting] == [_greedy(engine, engine.text_ids("The dog"), 4)] * 2
