"""A local OpenAI-compatible upstream that answers like OpenRouter, and misbehaves on request.

It serves `POST /v1/chat/completions`, `/chat/completions` and legacy `/v1/completions`,
`/completions`, streaming or not, with deterministic, realistic text, an `id`, and usage counted
with the Mistral v1 tokenizer when `mistral-common` is installed (`meter.tokens` otherwise).
`usage.cost` is exact, at the model's price in the catalogue `GET /models` answers (below) when
it lists the model at a fixed price, at the seed price ($0.11 / $0.19 per 1M tokens) otherwise:
a catalogue listing a model above meter's price makes the provider's costs drift from meter's.
Streams start with an `: OPENROUTER PROCESSING` comment; usage comes in a last chunk with empty
`choices`, only when the request asks for it (`stream_options.include_usage`), as OpenAI does.

Misbehaviour, per request with the header `X-Mock-Behavior` (or for every request with the
environment variable `METER_MOCK_BEHAVIOR` / `meter mock-upstream --behavior`), comma-separated:

  rate_limit          429 with `Retry-After` (seconds: header `X-Mock-Retry-After`, default 1)
  server_error        500            bad_gateway   502          unavailable   503
                      (502 and 503 carry `Retry-After` only when `X-Mock-Retry-After` is given)
  bad_request         400 (not retried)
  payment_required    402 (OpenRouter: the account is out of credits)
  midstream_error     HTTP 200, some text, then a chunk with a top-level `error` (string `code`)
                      and `finish_reason: "error"`; non-streaming: a 200 body with `error`
  cut                 some text, then the connection is dropped (no usage, no `[DONE]`)
  no_usage            no usage at all
  usage_in_last_chunk usage on the last chunk that still has `choices` (some providers do this)
  whitespace          blank lines before a non-streaming JSON body (OpenRouter's keep-alive)
  slow                a pause before the first byte and between chunks (`X-Mock-Delay-Ms`, 200)
  fragmented          CRLF line ends, `data:` without a space, written a few bytes at a time
  malformed_usage     usage with a negative and a non-numeric count
  not_utf8            a byte that is not UTF-8 inside the text
  truncated           a non-streaming body cut in the middle of its JSON

`GET /models` (and `/v1/models`) answers `MockUpstream.catalogue`, OpenRouter's models list
(`--catalogue FILE` for `meter mock-upstream`); by default one entry, the seed model at its price.
It is also the price list the mock charges by.

`NAME:N` misbehaves only on the first N identical requests (same behaviour and body), then
answers normally: what a retry test needs. `X-Mock-Cached-Tokens` / `X-Mock-Reasoning-Tokens`
set those usage details. Every request seen is kept (`MockUpstream.requests`,
`GET /mock/requests`; `DELETE /mock/requests` forgets them).

`GET /v1/generation?id=` (and `/generation`) answers like OpenRouter's generation lookup: every
completion served is recorded under its response `id`, in full even when the stream was aborted,
cut or ended by an error (providers bill the whole completion), and is 404 for
`generation_delay` seconds after it was served (`--generation-delay`, environment
`METER_MOCK_GENERATION_DELAY`, default 0), then `{"data": {...}}` with its native counts and a
`total_cost` equal to its `usage.cost`; unknown ids are 404 forever. The status misbehaviours
(`rate_limit`, `server_error`, ...) of the default behaviour apply to it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meter._exceptions import InvalidPrice
from meter.money import render_usd
from meter.pricing import SEED_PRICE, Price, cost_of, parse_openrouter_catalogue
from meter.tokens import count_messages, count_prompt, count_text, message_text

BEHAVIORS = (
    "rate_limit",
    "server_error",
    "bad_gateway",
    "unavailable",
    "bad_request",
    "payment_required",
    "midstream_error",
    "cut",
    "no_usage",
    "usage_in_last_chunk",
    "whitespace",
    "slow",
    "fragmented",
    "malformed_usage",
    "not_utf8",
    "truncated",
)
_STATUS = {
    "rate_limit": 429,
    "server_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "bad_request": 400,
    "payment_required": 402,
}
ENV_BEHAVIOR = "METER_MOCK_BEHAVIOR"
ENV_GENERATION_DELAY = "METER_MOCK_GENERATION_DELAY"
# Generations kept for lookups; the oldest are forgotten beyond this (a long demo run).
MAX_GENERATIONS = 100_000
PROCESSING_COMMENT = b": OPENROUTER PROCESSING\n\n"

SENTENCES = (
    "Metering is the quiet part of running a language model in production.",
    "Every call has a prompt, a completion and a price, and each of them can be counted exactly.",
    "A week of traffic adds up to a bill that a team can read line by line.",
    "Caching a long system prompt saves money when the same context comes back often.",
    "Streaming makes the first token arrive sooner, which users notice more than the total.",
    "Budgets work best when the alert arrives before the money is spent, not after.",
    "The café on the corner serves a naïve espresso — strong, short and honest.",
    "Tokens are not words: a long word may take three of them, a common one just one.",
)
DEFAULT_SENTENCES = 3


class _CutConnection(Exception):
    """Raised inside a response body on purpose: the server drops the connection."""


class _QuietCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _CutConnection)


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0  # time.monotonic() when it arrived
    query: str = ""


@dataclass(frozen=True)
class ServedGeneration:
    """A completion as the provider bills it: the whole reply, whatever the client received."""

    id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    finish_reason: str
    streamed: bool
    served_at: float  # time.monotonic()
    cost: str  # what the provider bills for it: `total_cost`, the text of a JSON number


@dataclass
class Reply:
    """What the mock answers to one request: text pieces and their token counts."""

    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def reply_for(body: dict[str, Any]) -> Reply:
    """The deterministic answer to a request: a few sentences chosen by the prompt, cut at
    `max_tokens` (counted with the same tokenizer as the usage)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        prompt_text = message_text(messages[-1].get("content")) if messages else ""
        prompt_tokens = count_messages(messages)
    else:
        prompt = body.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else ""
        prompt_tokens = count_prompt(prompt)
    start = zlib.crc32(prompt_text.encode("utf-8", "surrogatepass")) % len(SENTENCES)
    text = " ".join(SENTENCES[(start + i) % len(SENTENCES)] for i in range(DEFAULT_SENTENCES))
    pieces = re.findall(r"\s*\S+", text)
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if isinstance(limit, int) and not isinstance(limit, bool):
        kept: list[str] = []
        for piece in pieces:
            if count_text("".join([*kept, piece])) > limit:
                finish = "length"
                break
            kept.append(piece)
        pieces = kept
    return Reply(pieces, finish, prompt_tokens, count_text("".join(pieces)))


def provider_price(catalogue: dict[str, Any], model: str) -> Price:
    """What the mock charges for `model`: its price in `catalogue` when listed there at a fixed
    price meter can represent (not variable, conditional or malformed), the seed price otherwise."""
    try:
        entries = parse_openrouter_catalogue(catalogue)
    except InvalidPrice:
        return SEED_PRICE
    for e in entries:
        if e.model == model and e.input_units is not None and e.output_units is not None:
            return Price(model, e.input_units, e.output_units, SEED_PRICE.effective_from)
    return SEED_PRICE


def _cost_text(price: Price, prompt_tokens: int, completion_tokens: int) -> str:
    """The exact cost at `price`, as the text of a JSON number."""
    return render_usd(cost_of(price, prompt_tokens, completion_tokens).total_units) or "0"


def _usage_json(reply: Reply, plan: _Plan, malformed: bool) -> str:
    """The usage object as JSON text: `cost` is written as an exact decimal number."""
    cost = _cost_text(plan.price, reply.prompt_tokens, reply.completion_tokens)
    cached, reasoning = plan.cached, plan.reasoning
    prompt: Any = -reply.prompt_tokens if malformed else reply.prompt_tokens
    completion: Any = "many" if malformed else reply.completion_tokens
    doc = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "cost": "__COST__",
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return json.dumps(doc, separators=(",", ":")).replace('"__COST__"', cost)


def generation_json(generation: ServedGeneration) -> str:
    """OpenRouter's generation document; `total_cost` is the same number as `usage.cost`."""
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    data = {
        "id": generation.id,
        "model": generation.model,
        "provider_name": "Mock",
        "streamed": generation.streamed,
        "finish_reason": generation.finish_reason,
        "tokens_prompt": prompt,
        "tokens_completion": completion,
        "native_tokens_prompt": prompt,
        "native_tokens_completion": completion,
        "native_tokens_reasoning": generation.reasoning_tokens,
        "native_tokens_cached": generation.cached_tokens,
        "total_cost": "__COST__",
        "usage": "__COST__",
        "is_byok": False,
    }
    text = json.dumps({"data": data}, separators=(",", ":"))
    return text.replace('"__COST__"', generation.cost)


@dataclass
class _Plan:
    behaviors: set[str]
    retry_after: str | None
    delay: float
    cached: int
    reasoning: int
    price: Price = SEED_PRICE  # what the request's model costs at this provider


MODELS_ENTRY: dict[str, Any] = {
    "id": SEED_PRICE.model,
    "name": "Mistral: Mistral 7B Instruct v0.1",
    "context_length": 4096,
    "pricing": {"prompt": "0.00000011", "completion": "0.00000019", "request": "0"},
}


def default_catalogue() -> dict[str, Any]:
    return {"data": [dict(MODELS_ENTRY)]}


@dataclass
class MockUpstream:
    """The mock's state and its ASGI app. `default_behavior` applies when a request names none;
    `catalogue` is what `GET /models` answers (tests may replace it at any time)."""

    default_behavior: str | None = None
    generation_delay: float | None = None  # seconds a generation stays 404 after it was served
    catalogue: dict[str, Any] = field(default_factory=default_catalogue)
    requests: list[SeenRequest] = field(default_factory=list)
    generations: OrderedDict[str, ServedGeneration] = field(default_factory=OrderedDict)
    _attempts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.default_behavior is None:
            self.default_behavior = os.environ.get(ENV_BEHAVIOR) or None
        if self.generation_delay is None:
            self.generation_delay = float(os.environ.get(ENV_GENERATION_DELAY) or 0)
        paths = ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions")
        routes = [Route(p, self._complete, methods=["POST"]) for p in paths]
        routes.extend(
            Route(p, self._generation, methods=["GET"]) for p in ("/v1/generation", "/generation")
        )
        routes.append(Route("/mock/requests", self._requests, methods=["GET", "DELETE"]))
        routes += [Route(p, self._models, methods=["GET"]) for p in ("/v1/models", "/models")]
        self.app = Starlette(routes=routes)

    async def _models(self, request: Request) -> Response:
        """The catalogue, in OpenRouter's shape (prices per token, as strings)."""
        with self._lock:
            self.requests.append(SeenRequest(request.url.path, dict(request.headers), None))
        return JSONResponse(self.catalogue)

    # -- what a test inspects --------------------------------------------------------------
    def reset(self) -> None:
        """Forget the requests seen (generations served stay: they can still be looked up)."""
        with self._lock:
            self.requests.clear()
            self._attempts.clear()

    def _seen(self, request: Request, body: Any) -> None:
        seen = SeenRequest(
            request.url.path, dict(request.headers), body, time.monotonic(), request.url.query
        )
        with self._lock:
            self.requests.append(seen)

    async def _requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.reset()
            return Response(status_code=204)
        with self._lock:
            seen = [
                {"path": r.path, "query": r.query, "headers": r.headers, "body": r.body, "at": r.at}
                for r in self.requests
            ]
        return JSONResponse({"requests": seen})

    # -- answering ---------------------------------------------------------------------------
    def _plan(self, request: Request, raw: bytes) -> _Plan:
        spec = request.headers.get("x-mock-behavior") or self.default_behavior or ""
        active: set[str] = set()
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, times = item.partition(":")
            if name not in BEHAVIORS:
                continue
            if times.isdigit():
                key = hashlib.sha256(item.encode() + b"\0" + raw).hexdigest()
                with self._lock:
                    seen = self._attempts.get(key, 0)
                    self._attempts[key] = seen + 1
                if seen >= int(times):
                    continue
            active.add(name)
        headers = request.headers
        return _Plan(
            active,
            headers.get("x-mock-retry-after"),
            int(headers.get("x-mock-delay-ms", "200")) / 1000,
            int(headers.get("x-mock-cached-tokens", "0")),
            int(headers.get("x-mock-reasoning-tokens", "0")),
        )

    async def _complete(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._seen(request, body)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(400, "the body must be a JSON object with a model")
        plan = self._plan(request, raw)
        refusal = _refusal(plan)
        if refusal is not None:
            return refusal
        plan.price = provider_price(self.catalogue, body["model"])
        if "slow" in plan.behaviors:
            await asyncio.sleep(plan.delay)
        chat = request.url.path.endswith("/chat/completions")
        reply = reply_for(body)
        head = _ids(body, chat)
        stream = body.get("stream") is True
        self._served(head["id"], body["model"], reply, plan, stream)
        if stream:
            return StreamingResponse(
                _stream(head, body, reply, plan, chat), media_type="text/event-stream"
            )
        return _complete_body(head, reply, plan, chat)

    def _served(self, gen_id: str, model: str, reply: Reply, plan: _Plan, stream: bool) -> None:
        generation = ServedGeneration(
            gen_id,
            model,
            reply.prompt_tokens,
            reply.completion_tokens,
            plan.cached,
            plan.reasoning,
            reply.finish_reason,
            stream,
            time.monotonic(),
            _cost_text(plan.price, reply.prompt_tokens, reply.completion_tokens),
        )
        with self._lock:
            self.generations[gen_id] = generation
            while len(self.generations) > MAX_GENERATIONS:
                self.generations.popitem(last=False)

    async def _generation(self, request: Request) -> Response:
        self._seen(request, None)
        refusal = _refusal(self._plan(request, b""))
        if refusal is not None:
            return refusal
        gen_id = request.query_params.get("id")
        if not gen_id:
            return _error(400, "the query parameter id is required")
        with self._lock:
            generation = self.generations.get(gen_id)
        delay = self.generation_delay or 0.0
        if generation is None or time.monotonic() < generation.served_at + delay:
            return _error(404, f"Generation {gen_id} not found")
        return Response(generation_json(generation), media_type="application/json")


def _refusal(plan: _Plan) -> Response | None:
    """The error answer a status misbehaviour asks for, if any."""
    for name, status in _STATUS.items():
        if name in plan.behaviors:
            wait = plan.retry_after or ("1" if status == 429 else None)
            headers = {"Retry-After": wait} if wait and status in (429, 502, 503) else None
            return _error(status, f"mock {name}", headers)
    return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": status, "message": message}}, status, headers)


def _ids(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    return {
        "id": f"gen-{int(time.time())}-{uuid.uuid4().hex[:20]}",
        "provider": "Mock",
        "model": body["model"],
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
    }


def _complete_body(head: dict[str, Any], reply: Reply, plan: _Plan, chat: bool) -> Response:
    b = plan.behaviors
    if "midstream_error" in b:
        error = {"code": 502, "message": "mock: provider returned an error mid-generation"}
        return JSONResponse({**head, "error": error})
    text = "\udcff" + reply.text if "not_utf8" in b else reply.text
    choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = text
    doc = {**head, "choices": [choice], "usage": "__USAGE__"}
    out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if "no_usage" in b:
        out = out.replace(',"usage":"__USAGE__"', "")
    else:
        usage = _usage_json(reply, plan, "malformed_usage" in b)
        out = out.replace('"__USAGE__"', usage)
    data = out.encode("utf-8", "surrogateescape")
    if "truncated" in b:
        data = data[: len(data) // 2]
    if "whitespace" in b:
        data = b"\n\n   \n" + data
    if "cut" in b:
        return StreamingResponse(_cut_body(data), media_type="application/json")
    return Response(data, media_type="application/json")


async def _cut_body(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    raise _CutConnection


async def _stream(
    head: dict[str, Any], body: dict[str, Any], reply: Reply, plan: _Plan, chat: bool
) -> AsyncIterator[bytes]:
    b = plan.behaviors
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    wants_usage = wants_usage and "no_usage" not in b
    usage = _usage_json(reply, plan, "malformed_usage" in b)
    fragmented = "fragmented" in b
    delay = plan.delay if "slow" in b else 0.0

    def event(doc: dict[str, Any], usage_json: str | None = None) -> bytes:
        text = json.dumps({**head, **doc}, ensure_ascii=False, separators=(",", ":"))
        if usage_json is not None:
            text = text[:-1] + ',"usage":' + usage_json + "}"
        data = text.encode("utf-8", "surrogateescape")
        if fragmented:
            return b"data:" + data + b"\r\n\r\n"
        return b"data: " + data + b"\n\n"

    def choice(piece: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            delta: dict[str, Any] = {"content": piece if piece is not None else ""}
            if first:
                delta["role"] = "assistant"
            c["delta"] = delta
        else:
            c["text"] = piece or ""
        return c

    def frames() -> Iterator[bytes]:
        yield PROCESSING_COMMENT
        pieces = reply.pieces
        if "not_utf8" in b:
            pieces = ["\udcff" + pieces[0], *pieces[1:]] if pieces else ["\udcff"]
        stop_at = max(1, len(pieces) // 2) if b & {"cut", "midstream_error"} else len(pieces)
        for i, piece in enumerate(pieces[:stop_at]):
            yield event({"choices": [choice(piece, None, first=i == 0)]})
        if "cut" in b:
            raise _CutConnection
        if "midstream_error" in b:
            error = {"code": "server_error", "message": "mock: provider disconnected"}
            yield event({"error": error, "choices": [choice("", "error")]})
            return
        if wants_usage and "usage_in_last_chunk" in b:
            yield event({"choices": [choice(None, reply.finish_reason)]}, usage)
        else:
            yield event({"choices": [choice(None, reply.finish_reason)]})
            if wants_usage:
                yield event({"choices": []}, usage)
        yield b"data: [DONE]\r\n\r\n" if fragmented else b"data: [DONE]\n\n"

    for frame in frames():
        if delay:
            await asyncio.sleep(delay)
        if fragmented:
            for i in range(0, len(frame), 5):
                yield frame[i : i + 5]
        else:
            yield frame


# -- running it ------------------------------------------------------------------------------


def _quiet_cuts() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietCut())


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket with TCP_NODELAY (inherited by accepted connections): without it,
    Nagle's algorithm and delayed ACKs add 40 ms to small responses on loopback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    behavior: str | None = None,
    generation_delay: float | None = None,
    catalogue: dict[str, Any] | None = None,
) -> None:
    """Run in the foreground until interrupted (`meter mock-upstream`)."""
    _quiet_cuts()
    mock = MockUpstream(behavior, generation_delay)
    if catalogue is not None:
        mock.catalogue = catalogue
    sock = _listen(host, port)
    config = uvicorn.Config(mock.app, log_level="warning", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running(
    mock: MockUpstream | None = None, host: str = "127.0.0.1"
) -> Iterator[tuple[MockUpstream, str]]:
    """Run a mock on a free port in a thread; yields it and its base URL (`.../v1`)."""
    _quiet_cuts()
    mock = mock or MockUpstream()
    sock = _listen(host, 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(mock.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="meter-mock-upstream", daemon=True
    )
    thread.start()
    try:
        for _ in range(200):  # bounded: at most 10 s
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the mock upstream did not start")
        yield mock, f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
