"""httpx transports that meter any chat-completions call through them, whatever SDK made it.

`MeteringTransport` holds the real transport and delegates, as httpx's docs show. A POST to
`*/chat/completions` (or legacy `*/completions`) is metered: attribution comes from the
`X-Meter-User` / `X-Meter-Team` headers (stripped before sending) or the body's `user`; streams
get `stream_options.include_usage`, and the usage-only chunk that causes is not passed on;
`Accept-Encoding: identity` is sent upstream so the body can be read here (a transport sees it
before the client decompresses it). The event is recorded when the response body is closed.

Each HTTP attempt is one event: an SDK that retries a 429 produces an `error` event for it.
A request that a `MeteredClient` sent (it carries the `METERED` extension) is passed through
untouched: the client records it already, so a client handed an `http_client` built on one of
these transports does not count its calls twice.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from meter._exceptions import BudgetExceeded
from meter.client._capture import End, StreamCapture, http_error_outcome, read_completion
from meter.client._record import Call
from meter.client._sse import SSEDecoder
from meter.money import format_decimal

if TYPE_CHECKING:
    from meter.recorder.meter import Meter

logger = logging.getLogger("meter.transport")

USER_HEADER = "x-meter-user"
TEAM_HEADER = "x-meter-team"
# httpx request extension set by MeteredClient on what it sends: "already metered".
METERED = "meter.metered"


@dataclass(slots=True)
class _Plan:
    request: httpx.Request
    call: Call
    stream: bool
    strip_usage_chunk: bool


def budget_exceeded_response(request: httpx.Request, exc: BudgetExceeded) -> httpx.Response:
    """What an SDK sees when an enforced budget blocks a call: nothing was sent upstream.

    Raising from inside a transport would not reach the SDK's caller as is: openai wraps any
    transport exception in APIConnectionError and retries it. An HTTP 402 with an OpenAI-style
    error body is not retried and surfaces as `openai.APIStatusError` (status_code 402).
    """
    return httpx.Response(
        402,
        json={
            "error": {
                "message": str(exc),
                "type": "budget_exceeded",
                "code": "budget_exceeded",
                "budget_id": exc.budget_id,
                "scope": exc.scope,
                "subject": exc.subject,
                "limit_usd": format_decimal(exc.limit_usd),
                "spend_usd": format_decimal(exc.spend_usd),
            }
        },
        request=request,
    )


def _plan(request: httpx.Request, meter: Meter, user: str | None, team: str | None) -> _Plan | None:
    """Decide whether and how to meter a request; None: pass it through untouched."""
    if (
        request.method != "POST"
        or not request.url.path.endswith("/completions")
        or request.extensions.get(METERED)
    ):
        return None
    headers = request.headers.copy()
    header_user = headers.pop(USER_HEADER, None)
    header_team = headers.pop(TEAM_HEADER, None)
    content = request.read()
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        logger.warning("meter: not metering a completions request without a JSON model")
        return None
    body_user = body.get("user")
    call_user = header_user or (body_user if isinstance(body_user, str) else None) or user
    call_team = header_team or team
    stream = body.get("stream") is True
    strip = False
    if stream:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            body["stream_options"] = {**(options or {}), "include_usage": True}
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            strip = True
    messages = body.get("messages")
    call = Call(
        meter,
        body["model"],
        call_user,
        call_team,
        messages=messages if isinstance(messages, list) else None,
        prompt=body.get("prompt"),
    )
    meter.check_budget(team=call_team, user=call_user)
    headers["accept-encoding"] = "identity"
    for name in ("content-length", "transfer-encoding"):
        headers.pop(name, None)
    outgoing = httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=content,
        extensions=request.extensions,
    )
    return _Plan(outgoing, call, stream, strip)


class _Meterer:
    """Watches a response body go by and records the call when it is closed."""

    def __init__(self, plan: _Plan, response: httpx.Response) -> None:
        self.call = plan.call
        self.status = response.status_code
        self.sse = plan.stream and self.status < 400
        self.strip = plan.strip_usage_chunk and self.sse
        self.capture = StreamCapture(self.strip)
        self.decoder = SSEDecoder()
        self.buffer: list[bytes] = []
        self.ended = False
        self.broken = False
        self.recorded = False
        encoding = response.headers.get("content-encoding", "identity").lower()
        self.inflate = _inflater(encoding)
        self.unreadable = encoding not in ("identity", "") and self.inflate is None
        # When stripping, events are re-emitted decoded: the headers must say so.
        self.rewrite = self.strip and not self.unreadable

    def feed(self, chunk: bytes) -> bytes:
        """Observe one read; returns the bytes to hand on."""
        if self.status >= 400 or self.unreadable:
            return chunk
        data = self.inflate.decompress(chunk) if self.inflate is not None else chunk
        if not self.sse:
            self.buffer.append(data)
            return chunk
        out: list[bytes] = []
        for event in self.decoder.feed(data):
            self.capture.on_data(event.data)
            if self.rewrite and not self.capture.dropped:
                prefix = f"event: {event.event}\n" if event.event else ""
                out.append(f"{prefix}data: {event.data}\n\n".encode())
        return b"".join(out) if self.rewrite else chunk

    def end(self) -> bytes:
        self.ended = True
        if self.sse and not self.unreadable:
            tail = b""
            for event in self.decoder.end():
                self.capture.on_data(event.data)
                if self.rewrite and not self.capture.dropped:
                    tail += f"data: {event.data}\n\n".encode()
            return tail if self.rewrite else b""
        return b""

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        try:
            if self.status >= 400:
                self.call.record(http_error_outcome())
            elif self.sse:
                end = End.ENDED if self.ended else End.BROKEN if self.broken else End.CANCELLED
                self.call.record(self.capture.outcome(end), self.capture.first_output_at)
            else:
                self.call.record(read_completion(b"".join(self.buffer)).outcome)
        except Exception:  # metering must never break the caller's HTTP
            logger.exception("meter: could not record a call seen by the transport")


def _inflater(encoding: str) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


def _response(response: httpx.Response, meterer: _Meterer, stream: Any) -> httpx.Response:
    headers = response.headers.copy()
    if meterer.rewrite:
        for name in ("content-length", "content-encoding"):
            headers.pop(name, None)
    return httpx.Response(
        response.status_code, headers=headers, stream=stream, extensions=response.extensions
    )


class _MeteredByteStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, meterer: _Meterer) -> None:
        self._inner = inner
        self._meterer = meterer

    def __iter__(self) -> Iterator[bytes]:
        meterer = self._meterer
        try:
            for chunk in self._inner:
                out = meterer.feed(chunk)
                if out:
                    yield out
            tail = meterer.end()
            if tail:
                yield tail
        except httpx.HTTPError:
            meterer.broken = True
            raise

    def close(self) -> None:
        try:
            self._meterer.record()
        finally:
            self._inner.close()

    def __del__(self) -> None:
        if not self._meterer.recorded:
            self._meterer.record()


class _AsyncMeteredByteStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, meterer: _Meterer) -> None:
        self._inner = inner
        self._meterer = meterer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        meterer = self._meterer
        try:
            async for chunk in self._inner:
                out = meterer.feed(chunk)
                if out:
                    yield out
            tail = meterer.end()
            if tail:
                yield tail
        except httpx.HTTPError:
            meterer.broken = True
            raise

    async def aclose(self) -> None:
        try:
            self._meterer.record()
        finally:
            await self._inner.aclose()

    def __del__(self) -> None:
        if not self._meterer.recorded:
            self._meterer.record()


class MeteringTransport(httpx.BaseTransport):
    """`httpx.Client(transport=meter.transport(user=..., team=...))` meters every completion."""

    def __init__(
        self,
        meter: Meter,
        *,
        user: str | None = None,
        team: str | None = None,
        wrapped: httpx.BaseTransport | None = None,
    ) -> None:
        self._meter = meter
        self._user = user
        self._team = team
        self._wrapped = wrapped if wrapped is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            plan = _plan(request, self._meter, self._user, self._team)
        except BudgetExceeded as exc:
            return budget_exceeded_response(request, exc)
        if plan is None:
            return self._wrapped.handle_request(request)
        try:
            response = self._wrapped.handle_request(plan.request)
        except httpx.HTTPError:
            plan.call.record(http_error_outcome())
            raise
        meterer = _Meterer(plan, response)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return _response(response, meterer, _MeteredByteStream(response.stream, meterer))

    def close(self) -> None:
        self._wrapped.close()

    def __repr__(self) -> str:
        return f"MeteringTransport(user={self._user!r}, team={self._team!r})"


class AsyncMeteringTransport(httpx.AsyncBaseTransport):
    """The asyncio twin: `httpx.AsyncClient(transport=meter.async_transport(...))`."""

    def __init__(
        self,
        meter: Meter,
        *,
        user: str | None = None,
        team: str | None = None,
        wrapped: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._meter = meter
        self._user = user
        self._team = team
        self._wrapped = wrapped if wrapped is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (
            request.method == "POST"
            and request.url.path.endswith("/completions")
            and not isinstance(request.stream, httpx.ByteStream)
        ):
            await request.aread()  # an async body must be read before `_plan` reads it
        try:
            plan = _plan(request, self._meter, self._user, self._team)
        except BudgetExceeded as exc:
            return budget_exceeded_response(request, exc)
        if plan is None:
            return await self._wrapped.handle_async_request(request)
        try:
            response = await self._wrapped.handle_async_request(plan.request)
        except httpx.HTTPError:
            plan.call.record(http_error_outcome())
            raise
        meterer = _Meterer(plan, response)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return _response(response, meterer, _AsyncMeteredByteStream(response.stream, meterer))

    async def aclose(self) -> None:
        await self._wrapped.aclose()

    def __repr__(self) -> str:
        return f"AsyncMeteringTransport(user={self._user!r}, team={self._team!r})"
