"""The gateway's upstream pool on meter.gateway.network: connections reused, an idle one the
server closed noticed and replaced, TLS included, against real servers on loopback."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx

from meter.gateway import network
from meter.gateway.proxy import make_http_client
from meter.settings import get_settings

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10)


class Upstream:
    """An HTTP/1.1 keep-alive server answering `ok`; `close_idle()` closes its connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close_idle(self) -> None:
        for writer in self.writers:
            writer.close()


@asynccontextmanager
async def serving(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Upstream, str]]:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield upstream, f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    finally:
        server.close()
        upstream.close_idle()


def streams(client: httpx.AsyncClient) -> list[object]:
    pool = client._transport._pool  # type: ignore[attr-defined]
    return [c._connection._network_stream for c in pool.connections]


async def _reuse_then_replace(client: httpx.AsyncClient, upstream: Upstream, url: str) -> None:
    for _ in range(3):
        r = await client.get(url)
        assert (r.status_code, r.text) == (200, "ok")
    assert upstream.accepted == 1  # one connection, kept alive
    [stream] = streams(client)
    assert isinstance(stream, network._Stream)
    assert stream.get_extra_info("socket") is not None
    assert stream.get_extra_info("is_readable") is False  # idle, open
    upstream.close_idle()
    with anyio.fail_after(2):  # liveness bound
        while not stream.get_extra_info("is_readable"):
            await anyio.sleep(0.01)
    r = await client.get(url)  # the closed connection is dropped, not used
    assert (r.status_code, r.text) == (200, "ok")
    assert upstream.accepted == 2


def test_the_pool_reuses_and_replaces_connections_over_tcp() -> None:
    async def main() -> None:
        async with (
            serving() as (upstream, url),
            httpx.AsyncClient(transport=network.transport(LIMITS)) as client,
        ):
            await _reuse_then_replace(client, upstream, url)

    anyio.run(main)


def test_the_pool_reuses_and_replaces_connections_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with serving(server_side) as (upstream, url):
            made = network.transport(LIMITS, verify=trusting)
            async with httpx.AsyncClient(transport=made) as client:
                await _reuse_then_replace(client, upstream, url)

    anyio.run(main)


def test_of_several_idle_connections_only_the_closed_one_reads_as_readable() -> None:
    """One poll answers for every pooled socket: the one the server closed is readable, the
    others not, and the pool replaces only that one."""

    async def main() -> None:
        async with (
            serving() as (upstream, url),
            httpx.AsyncClient(transport=network.transport(LIMITS)) as client,
        ):
            async with anyio.create_task_group() as tg:  # three calls at once: three connections
                for _ in range(3):
                    tg.start_soon(client.get, url)
            assert upstream.accepted == 3
            pooled = streams(client)
            assert [s.get_extra_info("is_readable") for s in pooled] == [False] * 3
            upstream.writers[1].close()
            with anyio.fail_after(2):  # liveness bound
                while not any(s.get_extra_info("is_readable") for s in pooled):
                    await anyio.sleep(0.01)
            assert sum(bool(s.get_extra_info("is_readable")) for s in pooled) == 1
            for _ in range(3):
                assert (await client.get(url)).text == "ok"
            assert upstream.accepted == 3  # two idle connections were enough: none opened
            assert len(streams(client)) == 2  # the closed one dropped

    anyio.run(main)


def test_the_gateways_client_is_on_this_backend() -> None:
    async def main() -> None:
        async with make_http_client(get_settings()) as client:
            pool = client._transport._pool  # type: ignore[attr-defined]
            assert isinstance(pool._network_backend, network.Backend)

    anyio.run(main)


def test_the_pool_keeps_httpcores_decisions() -> None:
    """network._Pool decides as httpcore's own pool does (it only counts its connections
    once): four calls at once open four connections; with room for two idle ones, two are
    kept once they end, and later calls reuse them."""

    async def run(pooled: httpx.AsyncHTTPTransport) -> tuple[int, int, int]:
        async with serving() as (upstream, url), httpx.AsyncClient(transport=pooled) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(client.get, url)
            kept = len(streams(client))
            for _ in range(3):
                assert (await client.get(url)).text == "ok"
            return upstream.accepted, kept, len(streams(client))

    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    ours = network.transport(limits)
    assert type(ours._pool) is network._Pool  # type: ignore[attr-defined]
    theirs = httpx.AsyncHTTPTransport(limits=limits)
    assert anyio.run(run, ours) == anyio.run(run, theirs) == (4, 2, 2)
