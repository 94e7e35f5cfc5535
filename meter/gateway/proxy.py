"""Forwarding a checked call upstream and relaying the answer, recording it on the way.

One httpx.AsyncClient per process, its pool sized explicitly (METER_GATEWAY_MAX_CONNECTIONS:
a busy gateway must not queue its 101st stream behind httpx's default of 100) and LLM-sized
timeouts; never a retry (the client's SDK decides). Upstream is asked for `identity` encoding
so the body can be read as it passes. A stream is relayed event by event as it arrives: the
upstream's bytes as they are, or, when meter itself asked for usage, re-emitted event by event
without the usage-only chunk that caused (comments, such as keep-alives, included).

The event goes to the server's spool (one write(2), durable against kill -9) before the last
byte of the answer: before a non-streamed body is sent, before a stream's `[DONE]` or its end.
A client that goes away closes the upstream request and leaves a `cancelled` event.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from meter.client._capture import (
    End,
    Outcome,
    StreamCapture,
    http_error_outcome,
    read_completion,
)
from meter.client._record import Call
from meter.client._sse import COMMENT, SSEDecoder
from meter.client._types import MeterInfo
from meter.gateway import network
from meter.gateway.errors import openai_error, sse_error
from meter.gateway.holds import Claim
from meter.metrics import GATEWAY_CALLS
from meter.pricing import cost_of
from meter.settings import Settings

log = logging.getLogger("meter.gateway")

EVENT_ID_HEADER = "X-Meter-Event-Id"
# Client headers that never go upstream: the client's credentials (the server's key replaces
# them), meter's own, hop-by-hop ones, and those the gateway sets itself. Everything else
# (HTTP-Referer, X-Title, X-OpenRouter-Title for OpenRouter's app attribution...) passes.
_HELD_BACK_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "openai-organization",
        "openai-project",
    }
)
# Not passed back: hop-by-hop, or set again by our own server for the bytes it sends.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-connection",
        "content-length",
        "date",
        "server",
    }
)


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    limit = settings.gateway_max_connections
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=min(limit, 200))
    return httpx.AsyncClient(
        transport=network.transport(limits),
        timeout=httpx.Timeout(settings.gateway_timeout_seconds, connect=10.0, pool=30.0),
        follow_redirects=False,
        trust_env=False,
    )


_HELD_BACK_RAW = frozenset(name.encode() for name in _HELD_BACK_REQUEST_HEADERS)


def upstream_headers(
    settings: Settings, client_headers: Sequence[tuple[bytes, bytes]], stream: bool
) -> list[tuple[bytes, bytes]]:
    """The upstream request's headers: the server's key and meter's own, then the client's
    (as the raw bytes of the ASGI scope) minus those held back."""
    assert settings.openrouter_api_key is not None
    headers = [
        (b"authorization", f"Bearer {settings.openrouter_api_key.get_secret_value()}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"text/event-stream" if stream else b"application/json"),
        (b"accept-encoding", b"identity"),
    ]
    headers += [
        (name, value)
        for name, value in client_headers
        if name not in _HELD_BACK_RAW and not name.startswith(b"x-meter-")
    ]
    return headers


def response_headers(upstream: httpx.Response, *, decoded: bool) -> dict[str, str]:
    """The upstream's headers that matter to the client (Content-Type, Retry-After,
    X-Generation-Id, rate limits...), minus what no longer describes the bytes we send."""
    out: dict[str, str] = {}
    for name, value in upstream.headers.multi_items():
        lower = name.lower()
        if lower in _DROPPED_RESPONSE_HEADERS or (decoded and lower == "content-encoding"):
            continue
        out[name] = value
    return out


_DROPPED_RAW = frozenset(name.encode() for name in _DROPPED_RESPONSE_HEADERS)
_EVENT_ID_RAW = EVENT_ID_HEADER.lower().encode()


class UpstreamResponse(Response):
    """A whole upstream answer sent on as it came: its status and body, and its headers as the
    raw bytes httpx read (minus those `response_headers` drops), never decoded and encoded
    again header by header, plus Content-Length and the event's id."""

    def __init__(self, upstream: httpx.Response, body: bytes, event_id: str) -> None:
        self.status_code = upstream.status_code
        self.body = body
        self.background = None
        headers = [(k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in _DROPPED_RAW]
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((_EVENT_ID_RAW, event_id.encode()))
        self.raw_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


def _inflater(encoding: str) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


@dataclass
class Recording:
    """The end of one gateway call: its event, then its budget hold's settlement."""

    call: Call
    claim: Claim | None
    # Leaves a settlement to the server's next admission (routes.Gateway.settle_later)
    settle_later: Callable[[Claim, int, bool], None]

    def event(self, outcome: Outcome, first_output_at: float | None = None) -> MeterInfo:
        """Spool the call's event (sync, one write(2)); never raises."""
        return self.call.record(outcome, first_output_at)

    def settlement(self, info: MeterInfo) -> tuple[int, bool]:
        price = self.call.price
        cost = 0
        if price is not None:
            cost = cost_of(price, info.prompt_tokens, info.completion_tokens).total_units
        awaiting = info.usage_source == "estimated" and info.generation_id is not None
        return cost, awaiting

    def settle(self, info: MeterInfo) -> None:
        """Left to the server's next admission, which makes it before it reads the budgets
        (or made SETTLE_AFTER_S later if none came): the server's next call is judged on this
        one's exact cost, as if it had been settled first; another server's admission
        meanwhile sees the full reservation, which is more, never less, than the cost."""
        if self.claim is not None:
            self.settle_later(self.claim, *self.settlement(info))

    def finish(self, outcome: Outcome, first_output_at: float | None = None) -> MeterInfo:
        info = self.event(outcome, first_output_at)
        self.settle(info)
        return info

    def answer(self, upstream: httpx.Response, body: bytes, outcome: Outcome) -> Response:
        """A whole answer: the event spooled before it leaves, its settlement left to the
        server's next admission."""
        info = self.event(outcome)
        self.settle(info)
        return UpstreamResponse(upstream, body, str(self.call.event_id))


async def forward_plain(
    http: httpx.AsyncClient, request: httpx.Request, recording: Recording
) -> Response:
    """A non-streamed call (or a stream the upstream refused): read whole, record, answer."""
    try:
        upstream = await http.send(request, stream=True)
    except httpx.HTTPError as exc:
        return await _unreachable(exc, recording)
    try:
        body = await upstream.aread()
    except httpx.HTTPError as exc:
        return await _unreachable(exc, recording)
    finally:
        await upstream.aclose()
    if upstream.status_code >= 400:
        outcome = http_error_outcome()
        GATEWAY_CALLS.labels("upstream_error").inc()
    else:
        outcome = read_completion(body).outcome
        GATEWAY_CALLS.labels("forwarded").inc()
    return recording.answer(upstream, body, outcome)


async def _unreachable(exc: httpx.HTTPError, recording: Recording) -> Response:
    """Nothing came back: 504 for a timeout before the response started, else 502."""
    recording.finish(http_error_outcome())
    headers = {EVENT_ID_HEADER: str(recording.call.event_id)}
    if isinstance(exc, httpx.TimeoutException):
        GATEWAY_CALLS.labels("upstream_timeout").inc()
        return openai_error(
            504,
            f"the upstream did not answer in time ({type(exc).__name__})",
            type="upstream_error",
            code="upstream_timeout",
            headers=headers,
        )
    GATEWAY_CALLS.labels("upstream_unreachable").inc()
    return openai_error(
        502,
        f"the upstream could not be reached ({type(exc).__name__})",
        type="upstream_error",
        code="upstream_unreachable",
        headers=headers,
    )


async def forward_stream(
    http: httpx.AsyncClient, request: httpx.Request, recording: Recording, strip: bool
) -> Response:
    try:
        upstream = await http.send(request, stream=True)
    except httpx.HTTPError as exc:
        return await _unreachable(exc, recording)
    if upstream.status_code >= 400 or "text/event-stream" not in upstream.headers.get(
        "content-type", ""
    ):
        # An error (or a plain JSON answer): nothing to relay event by event.
        try:
            body = await upstream.aread()
        except httpx.HTTPError as exc:
            return await _unreachable(exc, recording)
        finally:
            await upstream.aclose()
        if upstream.status_code >= 400:
            outcome = http_error_outcome()
        else:
            outcome = read_completion(body).outcome
        GATEWAY_CALLS.labels("upstream_error" if upstream.status_code >= 400 else "forwarded").inc()
        return recording.answer(upstream, body, outcome)
    GATEWAY_CALLS.labels("forwarded").inc()
    relay = Relay(upstream, recording, strip)
    headers = response_headers(upstream, decoded=relay.rewrite)
    headers["X-Accel-Buffering"] = "no"  # nginx and friends: do not buffer this stream
    headers.setdefault("Cache-Control", "no-cache")
    headers[EVENT_ID_HEADER] = str(recording.call.event_id)
    return StreamingResponse(relay.run(), upstream.status_code, headers=headers)


class Relay:
    """One stream on its way through: every upstream read is handed on as soon as it is seen."""

    def __init__(self, upstream: httpx.Response, recording: Recording, strip: bool) -> None:
        self.upstream = upstream
        self.recording = recording
        self.capture = StreamCapture(strip)
        encoding = upstream.headers.get("content-encoding", "identity").lower()
        self.inflate = _inflater(encoding)
        self.unreadable = encoding not in ("identity", "") and self.inflate is None
        # Meter asked for usage itself: events are re-emitted so that one can be left out.
        self.rewrite = strip and not self.unreadable
        self.decoder = SSEDecoder(keep_comments=self.rewrite)
        self.recorded = False
        self.started = time.perf_counter()

    def _feed(self, chunk: bytes) -> bytes:
        if self.unreadable:
            return chunk
        data = self.inflate.decompress(chunk) if self.inflate is not None else chunk
        return self._events(self.decoder.feed(data), chunk)

    def _events(self, events: list[Any], raw: bytes) -> bytes:
        out: list[bytes] = []
        for event in events:
            if event.event == COMMENT:
                out.append(f":{event.data}\n\n".encode())
                continue
            self.capture.on_data(event.data)
            if self.rewrite and not self.capture.dropped:
                prefix = f"event: {event.event}\n" if event.event else ""
                out.append(f"{prefix}data: {event.data}\n\n".encode())
        return b"".join(out) if self.rewrite else raw

    async def _finish(self, end: End) -> None:
        self.recorded = True
        self.recording.finish(self.capture.outcome(end), self.capture.first_output_at)

    async def run(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.upstream.aiter_raw():
                out = self._feed(chunk)
                if self.capture.done and not self.recorded:
                    await self._finish(End.ENDED)  # before `[DONE]` leaves
                if out:
                    yield out
            tail = b"" if self.unreadable else self._events(self.decoder.end(), b"")
            if not self.recorded:
                await self._finish(End.ENDED)
            if tail:
                yield tail
        except httpx.HTTPError as exc:
            if not self.recorded:
                await self._finish(End.BROKEN)
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "broke"
            yield sse_error(
                f"the upstream stream {kind} ({type(exc).__name__}); the call was recorded "
                "as incomplete",
                "upstream_timeout"
                if isinstance(exc, httpx.TimeoutException)
                else "upstream_broken",
            )
        finally:
            if not self.recorded:
                # The client went away (or we are shutting down): the call is cancelled.
                self.recorded = True
                info = self.recording.event(
                    self.capture.outcome(End.CANCELLED), self.capture.first_output_at
                )
                with anyio.CancelScope(shield=True):
                    await self.upstream.aclose()  # providers that can stop generating do
                    self.recording.settle(info)
            else:
                with anyio.CancelScope(shield=True):
                    await self.upstream.aclose()

    def __del__(self) -> None:
        # A stream never iterated (the client left before the first byte) still leaves its
        # event; the hold, left open, lapses within HOLD_TTL.
        if not self.recorded:
            self.recorded = True
            self.recording.event(self.capture.outcome(End.CANCELLED))
