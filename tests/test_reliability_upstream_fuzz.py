"""A hostile upstream: a corpus of malformed responses served byte for byte by a real loopback
server, through `MeteredClient` and `AsyncMeteredClient`, streaming and not.

Every response is served to all four ways of calling (a JSON body to a streaming request, SSE to
a plain one too). Whatever comes back, the caller sees a result or an `UpstreamError`, never
another exception; every call is recorded once; no count is negative; a call whose caller saw
text is never recorded with 0 completion tokens. Each response's own mode is also checked
against exact expected values (status, source, tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from meter import AsyncMeteredClient, Meter, MeteredClient, UpstreamError
from meter.db.engine import make_engine
from meter.events import MAX_TOKENS_PER_EVENT
from tests.client_helpers import HELLO, HELLO_PROMPT_TOKENS, MODEL, mistral_text_tokens

READ_TIMEOUT_S = 1.5  # the client's timeout that cuts the stalled (endless) responses
STALL_LIMIT_S = 15.0  # the server never holds a connection longer than this

Writer = Callable[[socket.socket, threading.Event], None]


def usage(prompt: object = 9, completion: object = 3, **extra: object) -> dict[str, object]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, **extra}


def json_body(content: object = "Hello there.", usage_doc: object = None, **extra: object) -> bytes:
    doc: dict[str, object] = {
        "id": "gen-fuzz",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        **extra,
    }
    if usage_doc is not None:
        doc["usage"] = usage_doc
    return json.dumps(doc).encode()


def raw(status: str, headers: list[str], body: bytes) -> Writer:
    """A complete response, then the connection is closed (no Content-Length unless given)."""

    def write(sock: socket.socket, stop: threading.Event) -> None:
        head = f"HTTP/1.1 {status}\r\n" + "".join(h + "\r\n" for h in headers)
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)

    return write


def ok_json(body: bytes) -> Writer:
    return raw("200 OK", ["Content-Type: application/json"], body)


def sse(*payloads: bytes, done: bool = True) -> bytes:
    out = b": OPENROUTER PROCESSING\n\n"
    for p in payloads:
        out += b"data: " + p + b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(text: object) -> bytes:
    return json.dumps(
        {"id": "gen-fuzz", "choices": [{"index": 0, "delta": {"content": text}}]}
    ).encode()


def usage_chunk(usage_doc: object) -> bytes:
    return json.dumps({"id": "gen-fuzz", "choices": [], "usage": usage_doc}).encode()


def ok_sse(body: bytes) -> Writer:
    return raw("200 OK", ["Content-Type: text/event-stream"], body)


def stalled(content_type: str, first: bytes) -> Writer:
    """Sends `first`, then nothing more without closing: only the client's timeout ends it."""

    def write(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        stop.wait(STALL_LIMIT_S)

    return write


def cut_chunked(body: bytes) -> Writer:
    """A chunked body whose last chunk is announced but cut short: a broken connection."""

    def write(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n")
        sock.sendall(b'1000\r\ndata: {"choi')  # 4096 bytes announced, 15 sent

    return write


DEEP = b"[" * 200_000 + b"]" * 200_000
HI = "Hello there."


@dataclass(frozen=True)
class Case:
    """One hostile response and what its own mode (`stream` or not) must record.

    `completion`: an int, or the text received, counted with the Mistral tokenizer (>= 1)."""

    name: str
    stream: bool
    writer: Writer
    status: str
    source: str
    prompt: int
    completion: int | str
    raises: bool


E = HELLO_PROMPT_TOKENS  # the prompt as estimated (exact with the tokenizer installed)

CASES = [
    # -- non-streaming bodies --------------------------------------------------------------
    Case("valid", False, ok_json(json_body(usage_doc=usage())), "ok", "provider", 9, 3, False),
    Case(
        "truncated_json",
        False,
        ok_json(json_body(usage_doc=usage())[:60]),
        "incomplete",
        "estimated",
        E,
        0,
        True,
    ),
    Case(
        "usage_strings",
        False,
        ok_json(json_body(usage_doc=usage("9", "3"))),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case(
        "usage_list",
        False,
        ok_json(json_body(usage_doc=[9, 3])),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case("missing_usage", False, ok_json(json_body()), "incomplete", "estimated", E, HI, False),
    Case(
        "negative_tokens",
        False,
        ok_json(json_body(usage_doc=usage(-9, -3))),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case(
        "huge_tokens",
        False,
        ok_json(json_body(usage_doc=usage(10**30, 10**30))),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case(
        "huge_exponent_tokens",
        False,
        ok_json(
            json_body(usage_doc=usage(9, 3)).replace(
                b'"completion_tokens": 3', b'"completion_tokens": 1e999999999'
            )
        ),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case(
        "fraction_and_bool_tokens",
        False,
        ok_json(json_body(usage_doc=usage(9.5, True))),
        "incomplete",
        "estimated",
        E,
        HI,
        False,
    ),
    Case(
        "tiny_cost_exponent",
        False,
        ok_json(
            json_body(usage_doc=usage(9, 3, cost=0)).replace(b'"cost": 0', b'"cost": 1e-999999999')
        ),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "huge_cost",
        False,
        ok_json(
            json_body(usage_doc=usage(9, 3)).replace(
                b'"completion_tokens": 3', b'"completion_tokens": 3, "cost": 1e999999999'
            )
        ),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "not_utf8_with_usage",
        False,
        ok_json(json_body("caf\u00e9", usage_doc=usage()).replace(b"caf\\u00e9", b"caf\xe9\xff")),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "not_utf8_no_usage",
        False,
        ok_json(json_body("caf\u00e9 au lait").replace(b"caf\\u00e9", b"caf\xe9\xff")),
        "incomplete",
        "estimated",
        E,
        "caf\ufffd\ufffd au lait",
        False,
    ),
    Case("deep_nesting", False, ok_json(DEEP), "incomplete", "estimated", E, 0, True),
    Case(
        "deep_inside_choices",
        False,
        ok_json(b'{"choices": [{"message": {"content": "Hi"}, "logprobs": ' + DEEP + b"}]}"),
        "incomplete",
        "estimated",
        E,
        0,
        True,
    ),
    Case("not_an_object", False, ok_json(b"[1, 2, 3]"), "incomplete", "estimated", E, 0, True),
    Case("empty_body", False, ok_json(b""), "incomplete", "estimated", E, 0, True),
    Case(
        "choices_wrong_types",
        False,
        ok_json(
            json.dumps(
                {
                    "choices": [None, 3, {"message": "text"}, {"message": {"content": 42}}],
                    "usage": usage(),
                }
            ).encode()
        ),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "error_with_odd_types",
        False,
        ok_json(json.dumps({"error": {"code": [1], "message": 5}}).encode()),
        "error",
        "none",
        0,
        0,
        True,
    ),
    Case(
        "error_after_output",
        False,
        ok_json(json_body("partial answer", error={"code": "502", "message": "provider died"})),
        "error",
        "estimated",
        E,
        "partial answer",
        True,
    ),
    Case(
        "bad_gzip",
        False,
        raw(
            "200 OK",
            ["Content-Type: application/json", "Content-Encoding: gzip"],
            b"\x1f\x8bnot gzip",
        ),
        "incomplete",
        "estimated",
        E,
        0,
        True,
    ),
    Case(
        "short_body",
        False,
        raw("200 OK", ["Content-Type: application/json", "Content-Length: 5000"], json_body()[:40]),
        "incomplete",
        "estimated",
        E,
        0,
        True,
    ),
    Case("garbage_status_line", False, raw("abc", [], b""), "error", "none", 0, 0, True),
    Case(
        "http_500_deep_body",
        False,
        raw("500 Internal Server Error", ["Content-Type: application/json"], DEEP),
        "error",
        "none",
        0,
        0,
        True,
    ),
    Case(
        "http_400_not_utf8",
        False,
        raw("400 Bad Request", ["Content-Type: application/json"], b'{"error": "\xff\xfe"}'),
        "error",
        "none",
        0,
        0,
        True,
    ),
    Case(
        "stalled_body",
        False,
        stalled("application/json", json_body(usage_doc=usage())[:50]),
        "incomplete",
        "estimated",
        E,
        0,
        True,
    ),
    # -- streams ----------------------------------------------------------------------------
    Case(
        "sse_valid",
        True,
        ok_sse(sse(delta("Hel"), delta("lo"), usage_chunk(usage()))),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "sse_truncated_json_line",
        True,
        ok_sse(sse(delta("Hi"), delta("there")[:20])),
        "incomplete",
        "estimated",
        E,
        "Hi",
        False,
    ),
    Case(
        "sse_usage_wrong_types",
        True,
        ok_sse(sse(delta("Hello"), usage_chunk(usage("9", None)))),
        "incomplete",
        "estimated",
        E,
        "Hello",
        False,
    ),
    Case(
        "sse_negative_usage",
        True,
        ok_sse(sse(delta("Hello"), usage_chunk(usage(-1, -50)))),
        "incomplete",
        "estimated",
        E,
        "Hello",
        False,
    ),
    Case(
        "sse_huge_exponent_usage",
        True,
        ok_sse(
            sse(
                delta("Hello"),
                b'{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1e999999999}}',
            )
        ),
        "incomplete",
        "estimated",
        E,
        "Hello",
        False,
    ),
    Case(
        "sse_not_utf8",
        True,
        ok_sse(sse(delta("caf\u00e9").replace(b"\\u00e9", b"\xe9\xff"), usage_chunk(usage()))),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "sse_deep_nesting",
        True,
        ok_sse(sse(delta("Hi"), DEEP)),
        "incomplete",
        "estimated",
        E,
        "Hi",
        False,
    ),
    Case(
        "sse_no_done_no_usage",
        True,
        ok_sse(sse(delta("Hello"), delta(" world"), done=False)),
        "incomplete",
        "estimated",
        E,
        "Hello world",
        False,
    ),
    Case(
        "sse_endless_stalled",
        True,
        stalled("text/event-stream", sse(delta("Hello"), delta(" again"), done=False)),
        "incomplete",
        "estimated",
        E,
        "Hello again",
        True,
    ),
    Case(
        "sse_error_with_odd_code",
        True,
        ok_sse(
            sse(
                delta("Some"),
                b'{"error": {"code": {"x": 1}, "message": null}, '
                b'"choices": [{"delta": {}, "finish_reason": "error"}]}',
            )
        ),
        "error",
        "estimated",
        E,
        "Some",
        True,
    ),
    Case(
        "sse_delta_wrong_types",
        True,
        ok_sse(
            sse(
                b'{"choices": [{"delta": "str"}, null, {"delta": {"content": 7}}]}',
                b'{"choices": "nope"}',
                usage_chunk(usage()),
            )
        ),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "sse_tiny_cost_exponent",
        True,
        ok_sse(
            sse(
                delta("Hi"),
                b'{"choices": [], "usage": {"prompt_tokens": 9, '
                b'"completion_tokens": 3, "cost": 1e-999999999}}',
            )
        ),
        "ok",
        "provider",
        9,
        3,
        False,
    ),
    Case(
        "sse_only_comments",
        True,
        ok_sse(b": keep-alive\n\n" * 50),
        "incomplete",
        "estimated",
        E,
        0,
        False,
    ),
    Case(
        "sse_data_not_objects",
        True,
        ok_sse(sse(b"42", b'"text"', b"null", b"[]")),
        "incomplete",
        "estimated",
        E,
        0,
        False,
    ),
    Case(
        "sse_cut_mid_chunk",
        True,
        cut_chunked(sse(delta("Partial"), done=False)),
        "incomplete",
        "estimated",
        E,
        "Partial",
        True,
    ),
]
BY_NAME = {c.name: c for c in CASES}
MODES = [("sync", False), ("sync", True), ("async", False), ("async", True)]


class HostileUpstream:
    """A raw TCP server: reads one request, answers with `/c/<case>/...`'s bytes, closes."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    part = sock.recv(4096)
                    if not part:
                        return
                    data += part
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(rest) < length:
                    part = sock.recv(65536)
                    if not part:
                        return
                    rest += part
                path = lines[0].split(" ")[1]
                name = path.split("/")[2]
                # OSError: the client hung up first (it timed out): that is the point.
                with contextlib.suppress(OSError):
                    BY_NAME[name].writer(sock, upstream.stop)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def base_url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/c/{case}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    yield server
    server.close()


@dataclass
class Seen:
    text: str
    error: BaseException | None
    seconds: float


def call_sync(base_url: str, meter: Meter, user: str, stream: bool) -> Seen:
    started = time.perf_counter()
    text = ""
    error: BaseException | None = None
    client = MeteredClient(
        base_url=base_url,
        meter=meter,
        api_key="sk-fuzz",
        max_retries=0,
        timeout=READ_TIMEOUT_S,
    )
    try:
        if stream:
            with client.chat.completions.create(
                model=MODEL, messages=HELLO, user=user, stream=True
            ) as s:
                for chunk in s:
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
        else:
            resp = client.chat.completions.create(model=MODEL, messages=HELLO, user=user)
            text = "".join(c.message.content or "" for c in resp.choices)
    except BaseException as exc:  # the point: anything but UpstreamError is a failure
        error = exc
    finally:
        client.close()
    return Seen(text, error, time.perf_counter() - started)


async def call_async(base_url: str, meter: Meter, user: str, stream: bool) -> Seen:
    started = time.perf_counter()
    text = ""
    error: BaseException | None = None
    client = AsyncMeteredClient(
        base_url=base_url,
        meter=meter,
        api_key="sk-fuzz",
        max_retries=0,
        timeout=READ_TIMEOUT_S,
    )
    try:
        if stream:
            s = await client.chat.completions.create(
                model=MODEL, messages=HELLO, user=user, stream=True
            )
            async with s:
                async for chunk in s:
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
        else:
            resp = await client.chat.completions.create(model=MODEL, messages=HELLO, user=user)
            text = "".join(c.message.content or "" for c in resp.choices)
    except BaseException as exc:
        error = exc
    finally:
        await client.close()
    return Seen(text, error, time.perf_counter() - started)


def stored_by_user(url: str) -> dict[str, list[sa.Row[tuple[object, ...]]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    'SELECT "user", status, usage_source, prompt_tokens, completion_tokens, '
                    "provider_cost_units FROM events"
                )
            ).all()
    finally:
        engine.dispose()
    out: dict[str, list[sa.Row[tuple[object, ...]]]] = {}
    for r in rows:
        out.setdefault(r.user, []).append(r)
    return out


def expected_completion(case: Case) -> int:
    if isinstance(case.completion, int):
        return case.completion
    return max(1, mistral_text_tokens(case.completion))


@pytest.mark.slow
def test_no_malformed_upstream_response_escapes_as_a_foreign_error_or_goes_unrecorded(
    hostile: HostileUpstream, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    seen: dict[str, Seen] = {}
    with Meter(url, spool_dir=tmp_path / "spool") as meter:
        for case in CASES:
            for kind, stream in MODES:
                user = f"{kind}:{'stream' if stream else 'plain'}:{case.name}"
                base = hostile.base_url(case.name)
                if kind == "sync":
                    seen[user] = call_sync(base, meter, user, stream)
                else:
                    seen[user] = asyncio.run(call_async(base, meter, user, stream))
        assert meter.flush(timeout=60)
        stats = meter.stats()
    assert (stats.dropped, stats.rejected, stats.duplicates) == (0, 0, 0)
    stored = stored_by_user(url)

    foreign = {
        u: repr(s.error)
        for u, s in seen.items()
        if s.error is not None and not isinstance(s.error, UpstreamError)
    }
    assert foreign == {}
    assert {u: len(rows) for u, rows in stored.items()} == {u: 1 for u in seen}
    for user, s in seen.items():
        row = stored[user][0]
        assert 0 <= row.prompt_tokens <= MAX_TOKENS_PER_EVENT, user
        assert 0 <= row.completion_tokens <= MAX_TOKENS_PER_EVENT, user
        if s.text:  # the caller saw output: never a silent zero
            assert row.completion_tokens >= 1, (user, s.text)
        assert (row.status == "ok") == (row.usage_source == "provider") or row.status == "error"
        assert s.seconds < READ_TIMEOUT_S + 5, (user, s.seconds)  # liveness bound only

    # Each response in its own mode, sync and async alike: the exact record.
    for case in CASES:
        mode = "stream" if case.stream else "plain"
        for kind in ("sync", "async"):
            user = f"{kind}:{mode}:{case.name}"
            row = stored[user][0]
            got = (row.status, row.usage_source, row.prompt_tokens, row.completion_tokens)
            want = (case.status, case.source, case.prompt, expected_completion(case))
            assert got == want, user
            assert (seen[user].error is not None) == case.raises, (user, seen[user].error)
    # A provider cost too small or too large to be money is not kept as one.
    assert stored["sync:plain:tiny_cost_exponent"][0].provider_cost_units in (0, None)
    assert stored["sync:plain:huge_cost"][0].provider_cost_units is None
