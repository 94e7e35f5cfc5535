"""Transports that meter any chat-completions call through them, whatever SDK made it.

`MeteringTransport` holds the real transport and delegates, as httpx's docs show. It serves an
`httpx.Client` and an `httpx2.Client` alike (openai 3.x and mistralai 3.x are built on httpx2):
the metering below is written once, and each request is handled with the classes of the library
it comes from (`meter.client._http`). A POST to
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
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from meter._exceptions import BudgetExceeded
from meter.client._capture import End, StreamCapture, http_error_outcome, read_completion
from meter.client._http import HTTPX, HttpLib, lib_of
from meter.client._record import Call
from meter.client._sse import SSEDecoder
from meter.money import format_decimal

if TYPE_CHECKING:
    from meter.recorder.meter import Recorder

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


def budget_exceeded_response(
    request: httpx.Request, exc: BudgetExceeded, lib: HttpLib = HTTPX
) -> httpx.Response:
    """What an SDK sees when an enforced budget blocks a call: nothing was sent upstream.

    Raising from inside a transport would not reach the SDK's caller as is: openai wraps any
    transport exception in APIConnectionError and retries it. An HTTP 402 with an OpenAI-style
    error body is not retried and surfaces as `openai.APIStatusError` (status_code 402).
    """
    return lib.Response(
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


def _is_completion(request: httpx.Request) -> bool:
    return (
        request.method == "POST"
        and request.url.path.endswith("/completions")
        and not request.extensions.get(METERED)
    )


def _plan(
    request: httpx.Request, lib: HttpLib, meter: Recorder, user: str | None, team: str | None
) -> _Plan | None:
    """Decide whether and how to meter a request; None: pass it through untouched."""
    if not _is_completion(request):
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
    outgoing = lib.Request(
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


class _MeteredBody:
    """A response body seen by a `_Meterer` on its way to the client; recorded when closed.

    The sync and async bodies below are mixed, per HTTP library, into that library's own
    `SyncByteStream` / `AsyncByteStream`, which its client checks for: `_body_classes`.
    """

    def __init__(self, inner: Any, meterer: _Meterer, http_error: type[Exception]) -> None:
        self._inner = inner
        self._meterer = meterer
        self._http_error = http_error

    def __del__(self) -> None:
        if not self._meterer.recorded:
            self._meterer.record()


class _SyncBody(_MeteredBody):
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
        except self._http_error:
            meterer.broken = True
            raise

    def close(self) -> None:
        try:
            self._meterer.record()
        finally:
            self._inner.close()


class _AsyncBody(_MeteredBody):
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
        except self._http_error:
            meterer.broken = True
            raise

    async def aclose(self) -> None:
        try:
            self._meterer.record()
        finally:
            await self._inner.aclose()


_body_lock = threading.Lock()
_body_cache: dict[str, tuple[type[_MeteredBody], type[_MeteredBody]]] = {}


def _body_classes(lib: HttpLib) -> tuple[type[_MeteredBody], type[_MeteredBody]]:
    """The sync and async metered body classes for `lib`'s clients, made once per library."""
    classes = _body_cache.get(lib.name)
    if classes is None:
        with _body_lock:
            classes = _body_cache.get(lib.name)
            if classes is None:
                sync = type("MeteredByteStream", (_SyncBody, lib.SyncByteStream), {})
                async_ = type("AsyncMeteredByteStream", (_AsyncBody, lib.AsyncByteStream), {})
                classes = _body_cache[lib.name] = (sync, async_)
    return classes


def _metered_response(
    lib: HttpLib, plan: _Plan, response: httpx.Response, is_async: bool
) -> httpx.Response:
    meterer = _Meterer(plan, response)
    body_class = _body_classes(lib)[is_async]
    headers = response.headers.copy()
    if meterer.rewrite:
        for name in ("content-length", "content-encoding"):
            headers.pop(name, None)
    body: Any = body_class(response.stream, meterer, lib.HTTPError)
    return lib.Response(
        response.status_code, headers=headers, stream=body, extensions=response.extensions
    )


class _Base:
    """What the sync and async transports share: attribution defaults, and the real transport
    each library's requests go to (`wrapped=`, or that library's own, made when first needed)."""

    def __init__(
        self, meter: Recorder, user: str | None, team: str | None, wrapped: Any, is_async: bool
    ) -> None:
        self._meter = meter
        self._user = user
        self._team = team
        self._is_async = is_async
        self._wrapped = wrapped
        self._wrapped_lib = lib_of(wrapped)
        self._defaults: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _inner(self, lib: HttpLib) -> Any:
        """The transport `lib`'s requests are sent to."""
        if self._wrapped is not None:
            if lib is not self._wrapped_lib:  # an httpx2 client cannot use an httpx transport
                raise TypeError(
                    f"this metering transport wraps an {self._wrapped_lib.name} transport "
                    f"({type(self._wrapped).__name__}); it cannot send {lib.name} requests"
                )
            return self._wrapped
        inner = self._defaults.get(lib.name)
        if inner is None:
            with self._lock:
                inner = self._defaults.get(lib.name)
                if inner is None:
                    make = lib.AsyncHTTPTransport if self._is_async else lib.HTTPTransport
                    inner = self._defaults[lib.name] = make()
        return inner

    def _made(self) -> list[Any]:
        """The real transports to close: the wrapped one, or those made here."""
        with self._lock:
            return [self._wrapped] if self._wrapped is not None else list(self._defaults.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(user={self._user!r}, team={self._team!r})"


class MeteringTransport(_Base, httpx.BaseTransport):
    """`httpx.Client(transport=meter.transport(user=..., team=...))` meters every completion;
    so does `httpx2.Client(transport=meter.transport(...))`."""

    def __init__(
        self,
        meter: Recorder,
        *,
        user: str | None = None,
        team: str | None = None,
        wrapped: object | None = None,
    ) -> None:
        super().__init__(meter, user, team, wrapped, is_async=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        lib = lib_of(request)
        inner = self._inner(lib)
        try:
            plan = _plan(request, lib, self._meter, self._user, self._team)
        except BudgetExceeded as exc:
            return budget_exceeded_response(request, exc, lib)
        if plan is None:
            response: httpx.Response = inner.handle_request(request)
            return response
        try:
            response = inner.handle_request(plan.request)
        except lib.HTTPError:
            plan.call.record(http_error_outcome())
            raise
        assert isinstance(response.stream, lib.SyncByteStream)
        return _metered_response(lib, plan, response, is_async=False)

    def close(self) -> None:
        for inner in self._made():
            inner.close()


class AsyncMeteringTransport(_Base, httpx.AsyncBaseTransport):
    """The asyncio twin: `httpx.AsyncClient(transport=meter.async_transport(...))`, or
    `httpx2.AsyncClient(...)`."""

    def __init__(
        self,
        meter: Recorder,
        *,
        user: str | None = None,
        team: str | None = None,
        wrapped: object | None = None,
    ) -> None:
        super().__init__(meter, user, team, wrapped, is_async=True)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lib = lib_of(request)
        inner = self._inner(lib)
        if _is_completion(request) and not isinstance(request.stream, lib.ByteStream):
            await request.aread()  # an async body must be read before `_plan` reads it
        try:
            plan = _plan(request, lib, self._meter, self._user, self._team)
        except BudgetExceeded as exc:
            return budget_exceeded_response(request, exc, lib)
        if plan is None:
            response: httpx.Response = await inner.handle_async_request(request)
            return response
        try:
            response = await inner.handle_async_request(plan.request)
        except lib.HTTPError:
            plan.call.record(http_error_outcome())
            raise
        assert isinstance(response.stream, lib.AsyncByteStream)
        return _metered_response(lib, plan, response, is_async=True)

    async def aclose(self) -> None:
        for inner in self._made():
            await inner.aclose()
