"""A bare pass-through proxy on meter's own stack (uvicorn + one httpx.AsyncClient), for
bench.gateway: no checks, no keys, no metering. The floor for a Python proxy.

It does what meter's gateway does on the wire and nothing more: the client's body is sent as
it is to the upstream's same path under `--upstream` (with the server's key instead of the
client's, `identity` encoding asked for), a pool sized like meter's; a non-streamed answer is
read whole and sent with its status and headers, an event stream relayed read by read as it
arrives. A plain ASGI app (no router, no middleware): the least a Python proxy can do per call.
Standalone (httpx and uvicorn only).

    python bench/passthrough.py --port 8002 --upstream http://127.0.0.1:8001/v1
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"host",
        b"authorization",
        b"accept-encoding",
        b"date",
        b"server",
    }
)


class Passthrough:
    def __init__(self, upstream: str, api_key: str) -> None:
        parts = urlsplit(upstream)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")  # the client's /v1/... maps to <upstream>/...
        self.auth = f"Bearer {api_key}"
        self.http: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient(  # as meter.gateway.proxy.make_http_client
                timeout=httpx.Timeout(600.0, connect=10.0, pool=30.0),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                follow_redirects=False,
                trust_env=False,
            )
        return self.http

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.http is not None:
                        await self.http.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"].removeprefix("/v1")
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        headers += [(b"authorization", self.auth.encode()), (b"accept-encoding", b"identity")]
        http = self.client()
        request = http.build_request(
            scope["method"], self.origin + self.prefix + path, content=body, headers=headers
        )
        try:
            upstream = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": type(exc).__name__.encode()})
            return
        out = [(k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in _HOP_BY_HOP]
        try:
            if b"text/event-stream" in upstream.headers.get("content-type", "").encode():
                await send(
                    {"type": "http.response.start", "status": upstream.status_code, "headers": out}
                )
                async for chunk in upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await upstream.aread()
                out.append((b"content-length", str(len(data)).encode()))
                await send(
                    {"type": "http.response.start", "status": upstream.status_code, "headers": out}
                )
                await send({"type": "http.response.body", "body": data})
        finally:
            await upstream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://host:port/v1")
    parser.add_argument("--api-key", default="sk-bench")
    args = parser.parse_args()
    app = Passthrough(args.upstream, args.api_key)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
