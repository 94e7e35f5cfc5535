"""`MeteredClient` and `AsyncMeteredClient`: OpenAI-shaped chat completions over httpx, metered.

Twin classes with the same method names; the request preparation, response reading and
recording they share are pure modules, only the sending differs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from meter._exceptions import UpstreamError
from meter.client._capture import Outcome, http_error_outcome, read_completion
from meter.client._errors import (
    error_from_payload,
    error_from_response,
    error_from_transport,
    malformed_body,
)
from meter.client._http import HTTPX, HttpLib, lib_of, timeout_for
from meter.client._meter import Meter
from meter.client._record import Call
from meter.client._request import ClientConfig, Prepared, make_config, prepare
from meter.client._resources import AsyncChat, Chat
from meter.client._retry import RETRY_STATUSES, backoff_seconds
from meter.client._streaming import AsyncStream, Stream
from meter.client._transport import METERED
from meter.client._types import ChatCompletion, completion_from
from meter.settings import get_settings
from meter.tokens import preload

DEFAULT_TIMEOUT = 600.0  # LLM calls are slow: never httpx's 5 s default
DEFAULT_MAX_RETRIES = 2
# Tells a MeteringTransport under our http_client that this call is metered already.
_EXTENSIONS = {METERED: True}


def _defaults(api_key: str | None, base_url: str | None) -> tuple[str | None, str]:
    if api_key is not None and base_url is not None:
        return api_key, base_url
    settings = get_settings()
    if api_key is None and settings.openrouter_api_key is not None:
        api_key = settings.openrouter_api_key.get_secret_value()
    return api_key, base_url or settings.upstream_base_url


_shared_meter: Meter | None = None
_shared_meter_lock = threading.Lock()


def _default_meter() -> Meter:
    """One Meter per process for every client made without one: each Meter runs threads.

    It is flushed at interpreter exit (and on SIGTERM) like any Meter; clients never close it.
    """
    global _shared_meter
    with _shared_meter_lock:
        if _shared_meter is None or _shared_meter.closed:
            _shared_meter = Meter()
        return _shared_meter


def _check_client_numbers(timeout: float | httpx.Timeout | None, max_retries: int) -> None:
    from meter._exceptions import InvalidRequest

    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidRequest("max_retries must be an integer >= 0", "max_retries")
    if timeout is None:
        raise InvalidRequest(
            "timeout must be given (seconds); LLM calls need a long one", "timeout"
        )


def _http_lib(http_client: object | None) -> HttpLib:
    """httpx's classes, or httpx2's when the caller hands us an httpx2 client."""
    return HTTPX if http_client is None else lib_of(http_client)


def _completion(call: Call, status_code: int, body: bytes) -> ChatCompletion:
    """Read a 2xx body, record the call, and hand back the response or the error."""
    completion = read_completion(body)
    info = call.record(completion.outcome)
    if completion.doc is None:
        raise malformed_body(status_code, body)
    if completion.error is not None:
        raise error_from_payload(completion.error, status_code)
    return completion_from(completion.doc, completion.outcome.usage, info)


class _Base:
    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        meter: Meter | None,
        user: str | None,
        team: str | None,
        tags: Mapping[str, str] | None,
        app_url: str | None,
        app_name: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        forward_user: bool,
    ) -> None:
        _check_client_numbers(timeout, max_retries)
        api_key, resolved_url = _defaults(api_key, base_url)
        self._config: ClientConfig = make_config(
            api_key=api_key,
            base_url=resolved_url,
            user=user,
            team=team,
            tags=tags,
            app_url=app_url,
            app_name=app_name,
            forward_user=forward_user,
        )
        self.base_url = resolved_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.meter: Meter = meter if meter is not None else _default_meter()
        preload()  # estimates must not pay for the tokenizer's import

    def _prepare(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        table: dict[str, Any],
        other: dict[str, Any],
        user: str | None,
        team: str | None,
        tags: Mapping[str, str] | None,
        stream: bool,
        extra_headers: Mapping[str, str] | None,
        extra_body: Mapping[str, Any] | None,
    ) -> Prepared:
        if extra_body:
            other = {**other, **extra_body}
        return prepare(
            self._config,
            self.meter,
            model=model,
            messages=messages,
            table=table,
            other=other,
            user=user,
            team=team,
            tags=tags,
            stream=stream,
            extra_headers=extra_headers,
        )

    def __repr__(self) -> str:  # never the API key
        c = self._config
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, user={c.user!r}, "
            f"team={c.team!r}, max_retries={self.max_retries})"
        )


class MeteredClient(_Base):
    """A synchronous OpenAI-compatible client whose every call is metered."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        meter: Meter | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        app_url: str | None = None,
        app_name: str | None = None,
        http_client: httpx.Client | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        forward_user: bool = True,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            meter=meter,
            user=user,
            team=team,
            tags=tags,
            app_url=app_url,
            app_name=app_name,
            timeout=timeout,
            max_retries=max_retries,
            forward_user=forward_user,
        )
        self._owns_http = http_client is None
        self._lib = _http_lib(http_client)
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)
        self.chat = Chat(self)

    def _send(self, prepared: Prepared, timeout: float | httpx.Timeout | None) -> httpx.Response:
        """POST with retries; returns a 2xx response whose body is still to be read."""
        call = prepared.call
        attempt = 0
        while True:
            request = self._http.build_request(
                "POST",
                self._config.url,
                content=prepared.content,
                headers=prepared.headers,
                timeout=timeout_for(self._lib, timeout if timeout is not None else self.timeout),
                extensions=_EXTENSIONS,
            )
            try:
                response = self._http.send(request, stream=True)
            except self._lib.not_sent as exc:
                if attempt < self.max_retries:
                    time.sleep(backoff_seconds(attempt))
                    attempt += 1
                    continue
                call.record(http_error_outcome())
                raise error_from_transport(exc) from exc
            except self._lib.HTTPError as exc:
                call.record(http_error_outcome())
                raise error_from_transport(exc) from exc
            status = response.status_code
            if status in RETRY_STATUSES and attempt < self.max_retries:
                wait = backoff_seconds(attempt, response.headers)
                response.close()
                time.sleep(wait)
                attempt += 1
                continue
            if status >= 400:
                try:
                    body = response.read()
                except self._lib.HTTPError:
                    body = b""
                finally:
                    response.close()
                call.record(http_error_outcome())
                raise error_from_response(status, body)
            return response

    def _create(self, prepared: Prepared, timeout: float | httpx.Timeout | None) -> Any:
        response = self._send(prepared, timeout)
        if prepared.stream:
            return Stream(response, prepared.call, prepared.strip_usage_chunk)
        try:
            body = response.read()
        except self._lib.HTTPError as exc:  # the connection broke mid-body
            prepared.call.record(Outcome("incomplete", "estimated"))
            raise error_from_transport(exc) from exc
        finally:
            response.close()
        return _completion(prepared.call, response.status_code, body)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> MeteredClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncMeteredClient(_Base):
    """The asyncio twin of `MeteredClient`: `await client.chat.completions.create(...)`."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        meter: Meter | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        app_url: str | None = None,
        app_name: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        forward_user: bool = True,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            meter=meter,
            user=user,
            team=team,
            tags=tags,
            app_url=app_url,
            app_name=app_name,
            timeout=timeout,
            max_retries=max_retries,
            forward_user=forward_user,
        )
        self._owns_http = http_client is None
        self._lib = _http_lib(http_client)
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        self.chat = AsyncChat(self)

    async def _send(
        self, prepared: Prepared, timeout: float | httpx.Timeout | None
    ) -> httpx.Response:
        call = prepared.call
        attempt = 0
        while True:
            request = self._http.build_request(
                "POST",
                self._config.url,
                content=prepared.content,
                headers=prepared.headers,
                timeout=timeout_for(self._lib, timeout if timeout is not None else self.timeout),
                extensions=_EXTENSIONS,
            )
            try:
                response = await self._http.send(request, stream=True)
            except self._lib.not_sent as exc:
                if attempt < self.max_retries:
                    await asyncio.sleep(backoff_seconds(attempt))
                    attempt += 1
                    continue
                call.record(http_error_outcome())
                raise error_from_transport(exc) from exc
            except self._lib.HTTPError as exc:
                call.record(http_error_outcome())
                raise error_from_transport(exc) from exc
            status = response.status_code
            if status in RETRY_STATUSES and attempt < self.max_retries:
                wait = backoff_seconds(attempt, response.headers)
                await response.aclose()
                await asyncio.sleep(wait)
                attempt += 1
                continue
            if status >= 400:
                try:
                    body = await response.aread()
                except self._lib.HTTPError:
                    body = b""
                finally:
                    await response.aclose()
                call.record(http_error_outcome())
                raise error_from_response(status, body)
            return response

    async def _create(self, prepared: Prepared, timeout: float | httpx.Timeout | None) -> Any:
        response = await self._send(prepared, timeout)
        if prepared.stream:
            return AsyncStream(response, prepared.call, prepared.strip_usage_chunk)
        try:
            body = await response.aread()
        except self._lib.HTTPError as exc:
            prepared.call.record(Outcome("incomplete", "estimated"))
            raise error_from_transport(exc) from exc
        finally:
            await response.aclose()
        return _completion(prepared.call, response.status_code, body)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncMeteredClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = ["AsyncMeteredClient", "MeteredClient", "UpstreamError"]
