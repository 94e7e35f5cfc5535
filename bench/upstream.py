"""The benchmarks' upstream: a minimal ASGI app under uvicorn returning one fixed completion.

Deliberately not meter's mock upstream (which tokenizes and plans misbehaviour): the point is
a server whose own cost is small and identical for every client measured against it.
`POST /v1/chat/completions` answers a fixed JSON body, or with `"stream": true` a fixed SSE
stream (an OpenRouter comment line, 8 content chunks, a usage chunk when the request asks for
it with `stream_options.include_usage`, `[DONE]`). A stream for the model `bench-paced` pauses
`--pause-ms` between its frames, like a model producing tokens, so that a proxy holding a chunk
back shows. Standalone: no meter import, so the LiteLLM venv's processes and meter's speak to
the very same bytes.

    python bench/upstream.py --port 8001 [--pause-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn

MODEL = "mistralai/mistral-7b-instruct-v0.1"
PACED_MODEL = "bench-paced"  # its streams pause between frames
PAUSE_S = 0.02
PIECES = ["Hello", "!", " How", " can", " I", " help", " you", " today?"]
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21, "cost": "0.00000303"}
_USAGE_JSON = '{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,"cost":0.00000303}'

COMPLETION = (
    json.dumps(
        {
            "id": "gen-bench-1",
            "object": "chat.completion",
            "created": 1764000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(PIECES)},
                    "finish_reason": "stop",
                }
            ],
            "usage": "__USAGE__",
        },
        separators=(",", ":"),
    )
    .replace('"__USAGE__"', _USAGE_JSON)
    .encode()
)


def _chunk(delta: dict[str, Any] | None, finish: str | None, usage: bool = False) -> bytes:
    doc: dict[str, Any] = {
        "id": "gen-bench-1",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": MODEL,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    text = json.dumps(doc, separators=(",", ":"))
    if usage:
        text = text[:-1] + ',"usage":' + _USAGE_JSON + "}"
    return b"data: " + text.encode() + b"\n\n"


def _stream_frames(include_usage: bool) -> list[bytes]:
    frames = [b": OPENROUTER PROCESSING\n\n"]
    frames.append(_chunk({"role": "assistant", "content": PIECES[0]}, None))
    frames.extend(_chunk({"content": p}, None) for p in PIECES[1:])
    frames.append(_chunk({}, "stop"))
    if include_usage:
        frames.append(_chunk(None, None, usage=True))
    frames.append(b"data: [DONE]\n\n")
    return frames


STREAM_WITH_USAGE = _stream_frames(True)
STREAM_WITHOUT_USAGE = _stream_frames(False)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/health":
        await _send(send, 200, b"application/json", b'{"status":"ok"}')
        return
    if scope["method"] != "POST" or not path.endswith("/chat/completions"):
        await _send(send, 404, b"application/json", b'{"error":{"message":"not found"}}')
        return
    request = json.loads(body)
    if request.get("stream"):
        options = request.get("stream_options") or {}
        frames = STREAM_WITH_USAGE if options.get("include_usage") else STREAM_WITHOUT_USAGE
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        pause = PAUSE_S if request.get("model") == PACED_MODEL else 0.0
        for i, frame in enumerate(frames):
            if pause and i:
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await _send(send, 200, b"application/json", COMPLETION)


async def _send(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    global PAUSE_S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--pause-ms", type=float, default=PAUSE_S * 1000)
    args = parser.parse_args()
    PAUSE_S = args.pause_ms / 1000
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
