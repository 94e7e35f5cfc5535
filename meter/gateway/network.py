"""The upstream pool's sockets, with a cheap "has the server closed this idle connection?".

httpcore's connection pool asks every pooled connection whether it expired each time a request
joins or leaves the pool, and an idle HTTP/1.1 connection answers by polling its socket, which
it finds through anyio's typed attributes (a dictionary of lambdas built at every question). A
gateway keeps as many connections as it had calls in flight; while most of them are idle (its
calls waiting for a budget's admission, say), this was the largest part of its event loop's
CPU per call (BENCHMARKS.md, Gateway). Here one poll of every pooled socket at once answers
all the questions asked within READY_FOR_S of it; everything else is httpcore's anyio backend,
unchanged. (A server may close a connection just after any check, however recent: httpcore's
own answer is no fresher when the request goes out.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from typing import Any

import anyio
import httpx
from httpcore import AnyIOBackend, AsyncNetworkStream
from httpcore._backends.anyio import AnyIOStream

READY_FOR_S = 0.0002  # how long one poll of every socket answers "is this one readable?"


class _Readiness:
    """The pool's sockets (one event loop's), and which of them had something to read when
    they were last polled, all at once."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._ready: set[int] = set()
        self._polled_at = -1.0

    def add(self, fd: int) -> None:
        self._poll.register(fd, select.POLLIN)  # again for a reused descriptor: fine
        self._polled_at = -1.0

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError):
            self._poll.unregister(fd)

    def readable(self, fd: int) -> bool:
        now = time.monotonic()
        if now - self._polled_at > READY_FOR_S:
            self._ready = {ready for ready, _ in self._poll.poll(0)}
            self._polled_at = now
        return fd in self._ready


class _Stream(AnyIOStream):
    def __init__(self, stream: anyio.abc.ByteStream, readiness: _Readiness) -> None:
        super().__init__(stream)
        raw = anyio.abc.SocketAttribute.raw_socket
        self._socket: socket.socket | None = stream.extra(raw, None)
        self._fd = -1 if self._socket is None else self._socket.fileno()
        self._readiness = readiness
        if self._fd >= 0:
            readiness.add(self._fd)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._fd < 0 or self._readiness.readable(self._fd)
        if info == "socket":
            return self._socket
        return super().get_extra_info(info)

    async def aclose(self) -> None:
        if self._fd >= 0:
            self._readiness.remove(self._fd)
            self._fd = -1
        await super().aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, AnyIOStream)
        return _Stream(tls._stream, self._readiness)  # the same socket, under TLS


class Backend(AnyIOBackend):
    """httpcore's anyio backend, its TCP streams `_Stream`s."""

    def __init__(self) -> None:
        self.readiness = _Readiness()

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> AsyncNetworkStream:
        stream = await super().connect_tcp(*args, **kwargs)
        assert isinstance(stream, AnyIOStream)
        return _Stream(stream._stream, self.readiness)


def transport(limits: httpx.Limits, **options: Any) -> httpx.AsyncHTTPTransport:
    """httpx's transport (`options`: its other arguments), its pool on `Backend` where this
    httpx keeps it where expected; else on httpcore's own backend, which works the same, only
    slower (tests/test_gateway_network.py fails then)."""
    made = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, **options)
    pool = getattr(made, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = Backend()
    return made
