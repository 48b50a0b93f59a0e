"""An OpenAI-compatible HTTP API over one Engine (model/serving.py), and a small chat page.

    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages in, an assistant message out (stream: server-sent events)
    POST /v1/completions         a prompt continued (stream too)
    GET  /                       the chat page (model/chat_page.html)

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a request that
cannot be served as asked, 404 for another model's name, 413 for a body over the limit, 429 when the
queue is full. Requests run one at a time in the engine's worker; a streaming client that goes away
cancels its request.
"""

from __future__ import annotations

import html
import json
import time
import uuid
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from model.serving import Busy, Engine, Job, RequestError, Sampling

PAGE = Path(__file__).with_name("chat_page.html")
DRAIN_BYTES = 64 << 20  # an over-limit body is read (and dropped) up to this, then the connection is closed


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title=f"crawl2llm: {engine.name}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.kind)

    @app.get("/")
    async def page():
        name_js = json.dumps(engine.name).replace("<", "\\u003c")  # no "</script>" from a name
        page = PAGE.read_text(encoding="utf-8").replace("{{MODEL_JSON}}", name_js)
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(engine.name)))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(engine)]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != engine.name:
            raise ApiError(
                404, f"model {name!r} not found; this server serves {engine.name!r}", "model", "not_found_error"
            )
        return _model_card(engine)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request, engine)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ApiError(400, "`messages` must be a list of {role, content} objects", "messages")
        prompt = _checked(lambda: engine.chat_ids([_plain_message(m) for m in messages]))
        return await _respond(engine, body, prompt, chat=True, request=request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request, engine)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "`prompt` must be a string (one prompt per request)", "prompt")
        return await _respond(engine, body, _checked(lambda: engine.text_ids(prompt)), chat=False, request=request)

    return app


def _model_card(engine: Engine) -> dict:
    return {
        "id": engine.name,
        "object": "model",
        "created": 0,
        "owned_by": "crawl2llm",
        "context_length": engine.context,
        "chat": engine.chat is not None,
    }


def _checked(fn):
    try:
        return fn()
    except RequestError as e:
        raise ApiError(400, str(e)) from None


def _plain_message(m) -> dict:
    """OpenAI's content may be a list of parts: text parts are joined, others refused."""
    if not isinstance(m, dict):
        raise ApiError(400, "each message must be an object with `role` and `content`", "messages")
    content = m.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise ApiError(400, "only text content parts are supported", "messages")
        content = "".join(str(p.get("text", "")) for p in content)
    return {"role": m.get("role"), "content": content}


async def _json_body(request: Request, engine: Engine) -> dict:
    limit = engine.limits.max_body_bytes
    data, size = bytearray(), 0
    async for chunk in request.stream():  # read to the end, so the client hears the 413 and not a reset
        size += len(chunk)
        if size <= limit:
            data += chunk
        elif size > DRAIN_BYTES:
            break
    if size > limit:
        raise ApiError(
            413,
            f"request body of {size if size <= DRAIN_BYTES else 'over ' + str(DRAIN_BYTES)} bytes is "
            f"over the limit of {limit} bytes",
        )
    try:
        body = json.loads(data)
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if body.get("model") not in (None, engine.name):
        raise ApiError(
            404, f"model {body['model']!r} not found; this server serves {engine.name!r}", "model", "not_found_error"
        )
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1", "n")
    return body


def _number(body: dict, key: str, kind, default):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ApiError(400, f"`{key}` must be {'an integer' if kind is int else 'a number'}", key)
    return kind(value)


def _request_params(body: dict) -> tuple[int | None, Sampling, list[str]]:
    max_tokens = _number(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, None)
    sampling = Sampling(
        temperature=_number(body, "temperature", float, 1.0),
        top_k=_number(body, "top_k", int, None),
        top_p=_number(body, "top_p", float, None),
        seed=_number(body, "seed", int, None),
    )
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "`stop` must be a string or a list of up to 4 strings", "stop")
    return max_tokens, sampling, stop


async def _respond(engine: Engine, body: dict, prompt: list[int], chat: bool, request: Request):
    max_tokens, sampling, stop = _request_params(body)
    try:
        job = engine.submit(prompt, max_tokens, sampling, stop)
    except RequestError as e:
        param = "max_tokens" if "max_tokens" in str(e) else None
        raise ApiError(400, str(e), param) from None
    except Busy as e:
        raise ApiError(429, str(e), kind="rate_limit_error") from None
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    if body.get("stream"):
        return StreamingResponse(
            _events(job, rid, created, kind, engine.name, chat, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    text = await anyio.to_thread.run_sync(job.text)
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": job.finish_reason}
        if chat
        else {"index": 0, "text": text, "logprobs": None, "finish_reason": job.finish_reason}
    )
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": engine.name,
        "choices": [choice],
        "usage": _usage(job),
    }


def _usage(job: Job) -> dict:
    return {
        "prompt_tokens": len(job.prompt_ids),
        "completion_tokens": job.completion_tokens,
        "total_tokens": len(job.prompt_ids) + job.completion_tokens,
    }


async def _events(job: Job, rid: str, created: int, kind: str, name: str, chat: bool, request: Request):
    """Server-sent events, one chunk per piece of text, then the finish reason and [DONE]."""
    kind += ".chunk" if chat else ""

    def event(delta: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:
            d = {"role": "assistant", "content": ""} if first else {} if delta is None else {"content": delta}
            choice = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        chunk = {"id": rid, "object": kind, "created": created, "model": name, "choices": [choice]}
        if finish is not None:
            chunk["usage"] = _usage(job)
        return f"data: {json.dumps(chunk)}\n\n"

    pieces = iter(job)
    try:
        if chat:
            yield event(None, first=True)
        while True:
            piece = await anyio.to_thread.run_sync(next, pieces, None)
            if piece is None:
                break
            if await request.is_disconnected():
                job.cancel()
                return
            yield event(piece)
        yield event(None, job.finish_reason)
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a client gone mid-stream: the worker stops at its next token
