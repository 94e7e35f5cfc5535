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
from httpcore import AnyIOBackend, AsyncConnectionPool, AsyncNetworkStream
from httpcore._async.interfaces import AsyncConnectionInterface
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


class _Pool(AsyncConnectionPool):
    """httpcore's pool, its bookkeeping linear in its connections. httpcore's own, each time a
    request joins or leaves the pool, builds for EVERY idle connection a list of all of them
    just to take its length (the number of connections, whatever they are): with 32
    connections, most of them idle, that was a thousand calls per request on the event loop.
    Here the same decisions, in the same order, from that length alone."""

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        closing_connections = []
        # Closed, expired, then surplus idle connections, as httpcore drops them.
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired() or (
                connection.is_idle() and len(self._connections) > self._max_keepalive_connections
            ):
                self._connections.remove(connection)
                closing_connections.append(connection)
        # Queued requests to connections: an available one, else a new one, else a new one
        # in place of an idle one.
        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            available = next(
                (c for c in self._connections if c.can_handle_request(origin) and c.is_available()),
                None,
            )
            if available is not None:
                pool_request.assign_to_connection(available)
            elif len(self._connections) < self._max_connections:
                connection = self.create_connection(origin)
                self._connections.append(connection)
                pool_request.assign_to_connection(connection)
            else:
                idle = next((c for c in self._connections if c.is_idle()), None)
                if idle is not None:
                    self._connections.remove(idle)
                    closing_connections.append(idle)
                    connection = self.create_connection(origin)
                    self._connections.append(connection)
                    pool_request.assign_to_connection(connection)
        return closing_connections


def transport(limits: httpx.Limits, **options: Any) -> httpx.AsyncHTTPTransport:
    """httpx's transport (`options`: its other arguments), its pool a `_Pool` on `Backend`
    where this httpx keeps it where expected; else httpcore's own pool and backend, which work
    the same, only slower (tests/test_gateway_network.py fails then)."""
    made = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, **options)
    pool = getattr(made, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = Backend()
    if type(pool) is AsyncConnectionPool and hasattr(pool, "_assign_requests_to_connections"):
        pool.__class__ = _Pool
    return made
