"""The upstream pool's sockets, with a cheap "has the server closed this idle connection?".

httpcore's connection pool asks every pooled connection whether it expired each time a request
joins or leaves the pool, and an idle HTTP/1.1 connection answers by polling its socket, which
it finds through anyio's typed attributes (a dictionary of lambdas built at every question). A
gateway keeps as many connections as it had calls in flight; while most of them are idle (its
calls waiting for a budget's admission, say), this was the largest part of its event loop's
CPU per call (BENCHMARKS.md, Gateway). These streams remember their socket and poll it
directly; everything else is httpcore's anyio backend, unchanged.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import anyio
import httpx
from httpcore import AnyIOBackend, AsyncNetworkStream
from httpcore._backends.anyio import AnyIOStream

from meter._io import readable


class _Stream(AnyIOStream):
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream)
        raw = anyio.abc.SocketAttribute.raw_socket
        self._socket: socket.socket | None = stream.extra(raw, None)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return readable(-1 if self._socket is None else self._socket.fileno())
        if info == "socket":
            return self._socket
        return super().get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, AnyIOStream)
        return _Stream(tls._stream)


class Backend(AnyIOBackend):
    """httpcore's anyio backend, its TCP streams `_Stream`s."""

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> AsyncNetworkStream:
        stream = await super().connect_tcp(*args, **kwargs)
        assert isinstance(stream, AnyIOStream)
        return _Stream(stream._stream)


def transport(limits: httpx.Limits, **options: Any) -> httpx.AsyncHTTPTransport:
    """httpx's transport (`options`: its other arguments), its pool on `Backend` where this
    httpx keeps it where expected; else on httpcore's own backend, which works the same, only
    slower (tests/test_gateway_network.py fails then)."""
    made = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, **options)
    pool = getattr(made, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = Backend()
    return made
