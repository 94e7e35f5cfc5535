"""A small, cheap HTTP/1.1 load generator for bench.gateway's throughput runs: `concurrency`
keep-alive connections on one asyncio loop (uvloop when installed), each sending pre-built
request bytes and reading the answer (Content-Length or chunked) with the least parsing that
still checks the status. A full client (httpx) spends more CPU per call than the proxies being
measured; on a 2-core machine where the load generator shares a core with the upstream, it
would be the bottleneck instead of them.

Bounded in count and in time: stops at `calls` answers or `seconds`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    calls: int
    seconds: float
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one answer, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                    pass
                break
            await reader.readexactly(size + 2)
    elif length >= 0:
        await reader.readexactly(length)
    else:
        await reader.read()  # until the server closes
        close = True
    return status, not close


async def _run(
    host: str, port: int, requests: list[bytes], calls: int, concurrency: int, seconds: float
) -> LoadResult:
    next_call = 0
    errors: list[str] = []
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal next_call
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_call < calls and not errors and clock() < deadline:
                i = next_call
                next_call += 1
                t0 = clock()
                writer.write(requests[i % len(requests)])
                status, keep = await _read_answer(reader)
                latencies.append((clock() - t0) * 1000)
                if status != 200:
                    errors.append(f"HTTP {status}")
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    results = await asyncio.gather(*(worker() for _ in range(concurrency)), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    errors += [repr(r) for r in results if isinstance(r, BaseException)]
    return LoadResult(len(latencies), elapsed, errors, latencies)


def run(
    host: str,
    port: int,
    requests: list[bytes],
    calls: int,
    concurrency: int,
    seconds: float,
) -> LoadResult:
    """`calls` requests (cycling through `requests`) over `concurrency` connections."""
    coro = _run(host, port, requests, calls, concurrency, seconds)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
