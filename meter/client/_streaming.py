"""`Stream` and `AsyncStream`: chunks for the caller, one event for the meter.

The event is recorded when the stream ends, breaks, is closed, or is garbage collected, never
only at `[DONE]`: a caller who leaves the loop early is recorded as `cancelled` with estimated
tokens. `stream.usage` and `stream.meter` are set from then on.

The state lives in `_StreamCore`, which the chunk generator references; the stream object only
holds the core, so dropping a stream frees it at once and `__del__` records the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any

import httpx

from meter._exceptions import UpstreamError
from meter.client._capture import End, StreamCapture
from meter.client._errors import error_from_payload, error_from_transport
from meter.client._http import lib_of
from meter.client._record import Call
from meter.client._sse import SSEDecoder
from meter.client._types import ChatCompletionChunk, MeterInfo, Usage, chunk_from, usage_of


class _StreamCore:
    __slots__ = ("call", "capture", "decoder", "http_error", "info", "raw_usage", "response")

    def __init__(self, response: httpx.Response, call: Call, strip_usage_chunk: bool) -> None:
        self.response = response
        self.http_error = lib_of(response).HTTPError  # httpx's or httpx2's
        self.call = call
        self.capture = StreamCapture(strip_usage_chunk)
        self.decoder = SSEDecoder()
        self.info: MeterInfo | None = None
        self.raw_usage: Any = None

    def chunks(self, raw: bytes) -> Iterator[ChatCompletionChunk]:
        """The chunks one read completes; raises UpstreamError on an error payload."""
        events = self.decoder.feed(raw) if raw else self.decoder.end()
        capture = self.capture
        for sse in events:
            doc = capture.on_data(sse.data)
            if capture.error is not None:
                self.finish(End.ENDED)
                raise error_from_payload(capture.error)
            if doc is None:
                continue
            usage = doc.get("usage")
            if usage is not None:
                self.raw_usage = usage
            yield chunk_from(doc, capture.usage)

    def finish(self, end: End) -> MeterInfo:
        """Record the call (once). Does not close the response: the callers do, sync or async."""
        if self.info is None:
            self.info = self.call.record(self.capture.outcome(end), self.capture.first_output_at)
        return self.info

    @property
    def done(self) -> bool:
        return self.capture.done

    @property
    def usage(self) -> Usage | None:
        return usage_of(self.raw_usage, self.capture.usage) if self.info is not None else None


def _iterate(core: _StreamCore) -> Generator[ChatCompletionChunk, None, None]:
    end = End.CANCELLED
    try:
        for raw in core.response.iter_bytes():
            if not core.done:
                # Read on after `[DONE]` (to the end of the body, usually nothing) so that
                # the connection goes back to the pool instead of being closed.
                yield from core.chunks(raw)
        if not core.done:
            yield from core.chunks(b"")
        end = End.ENDED
    except core.http_error as exc:
        end = End.BROKEN
        core.finish(end)
        raise error_from_transport(exc) from exc
    finally:
        core.finish(end)
        core.response.close()


async def _aiterate(core: _StreamCore) -> AsyncGenerator[ChatCompletionChunk, None]:
    end = End.CANCELLED
    try:
        async for raw in core.response.aiter_bytes():
            if not core.done:  # read on after `[DONE]`: the connection goes back to the pool
                for chunk in core.chunks(raw):
                    yield chunk
        if not core.done:
            for chunk in core.chunks(b""):
                yield chunk
        end = End.ENDED
    except core.http_error as exc:
        end = End.BROKEN
        core.finish(end)
        raise error_from_transport(exc) from exc
    finally:
        core.finish(end)
        await core.response.aclose()


class Stream:
    """`with client.chat.completions.create(..., stream=True) as stream: for chunk in stream:`"""

    def __init__(self, response: httpx.Response, call: Call, strip_usage_chunk: bool) -> None:
        self._core = _StreamCore(response, call, strip_usage_chunk)
        self._iterator = _iterate(self._core)

    @property
    def response(self) -> httpx.Response:
        return self._core.response

    @property
    def usage(self) -> Usage | None:
        """The provider's usage, once the stream has ended or been closed; None if none came."""
        return self._core.usage

    @property
    def meter(self) -> MeterInfo | None:
        """What meter recorded, once the stream has ended or been closed."""
        return self._core.info

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        return next(self._iterator)

    def close(self) -> None:
        """Stop reading; a stream closed before its end is recorded as `cancelled`."""
        self._iterator.close()  # runs the generator's `finally` if it started
        self._core.finish(End.CANCELLED)
        self._core.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.info is None:
            with contextlib.suppress(Exception):  # never raise from a finaliser
                self.close()

    def __repr__(self) -> str:
        return f"<Stream model={self._core.call.model!r} meter={self._core.info!r}>"


class AsyncStream:
    """`async with stream:` / `async for chunk in stream:`, as `Stream`."""

    def __init__(self, response: httpx.Response, call: Call, strip_usage_chunk: bool) -> None:
        self._core = _StreamCore(response, call, strip_usage_chunk)
        self._iterator = _aiterate(self._core)

    @property
    def response(self) -> httpx.Response:
        return self._core.response

    @property
    def usage(self) -> Usage | None:
        return self._core.usage

    @property
    def meter(self) -> MeterInfo | None:
        return self._core.info

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        await self._iterator.aclose()
        self._core.finish(End.CANCELLED)
        await self._core.response.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # No event loop to close the response on here; recording needs none.
        core = getattr(self, "_core", None)
        if core is not None and core.info is None:
            with contextlib.suppress(Exception):  # never raise from a finaliser
                core.finish(End.CANCELLED)

    def __repr__(self) -> str:
        return f"<AsyncStream model={self._core.call.model!r} meter={self._core.info!r}>"


__all__ = ["AsyncStream", "Stream", "UpstreamError"]
