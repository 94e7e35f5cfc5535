"""Hostile API input not covered by test_api_errors: SQL metacharacters and odd unicode in user,
team and tag values come back verbatim everywhere; and on the wire, against a real uvicorn, a
body over 8 MiB is refused without being read (Content-Length, or chunked as it arrives) and a
deeply nested one is a 422.
"""

from __future__ import annotations

import csv
import io
import select
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.db.session import Database
from meter.ids import uuid7
from meter.pricing import SEED_MODEL
from meter.rollup import run_rollup
from meter.settings import Settings
from meter.weeks import week_of
from tests.recorder_helpers import free_port

MIB = 1024 * 1024

HOSTILE_USERS = [
    "alice'; DROP TABLE events; --",
    'bob" OR "1"="1',
    "org/carol?x=1#frag",
    "100%_match\\",
    " spaced  out ",
    "ünïcödé \u200b\u202eevil\u202c 😀 \U0001f9d1\u200d\U0001f4bb",
    "e\u0301",  # e + combining acute: not normalised to é
    "$1; SELECT pg_sleep(10);",
    "<script>alert(1)</script>",
]
HOSTILE_TEAMS = ["team' OR 1=1 --", "ünï 😀", "%", "_"]
HOSTILE_TAGS = {
    "key'; --": 'value" OR 1=1',
    "%_\\": "\u202e\U0001f600",
    "json": '{"nested": [1, 2]}',
}


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:  # open mode: admin
        yield c


def test_sql_metacharacters_and_odd_unicode_come_back_verbatim(client: TestClient, db: Database):
    when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    events: list[dict[str, Any]] = []
    for n, user in enumerate(HOSTILE_USERS):
        team = HOSTILE_TEAMS[n % len(HOSTILE_TEAMS)]
        events.append(
            {
                "id": str(uuid7()),
                "occurred_at": when,
                "model": SEED_MODEL,
                "prompt_tokens": 1_000 * (n + 1),
                "completion_tokens": 100,
                "user": user,
                "team": team,
                "tags": HOSTILE_TAGS,
            }
        )
    r = client.post("/v1/events", json={"events": events})
    assert r.json() == {"inserted": len(events), "duplicates": 0, "expired": 0}
    with db.engine.connect() as conn:  # nothing was executed: the table is there, whole
        assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one() == len(events)

    for event in events:
        got = client.get("/v1/events", params={"user": event["user"]}).json()["events"]
        assert [(e["id"], e["user"], e["team"], e["tags"]) for e in got] == [
            (event["id"], event["user"], event["team"], HOSTILE_TAGS)
        ]
    for team in HOSTILE_TEAMS:  # `%` and `_` are literal, never LIKE wildcards
        got = client.get("/v1/events", params={"team": team}).json()["events"]
        assert sorted(e["user"] for e in got) == sorted(
            e["user"] for e in events if e["team"] == team
        )

    assert run_rollup(db).events_rolled_up == len(events)
    week = week_of(datetime.now(UTC) - timedelta(minutes=1), db.tz).label
    rows = client.get("/v1/usage/weekly", params={"group_by": "team,user"}).json()["rows"]
    assert sorted((r["team"], r["user"], r["prompt_tokens"]) for r in rows) == sorted(
        (e["team"], e["user"], e["prompt_tokens"]) for e in events
    )
    for event in events:
        path = f"/v1/reports/users/{quote(event['user'], safe='')}"
        report = client.get(path, params={"week": week}).json()
        assert report["user"] == event["user"]
        assert [(x["prompt_tokens"], x["requests"]) for x in report["lines"]] == [
            (event["prompt_tokens"], 1)
        ]
        text = client.get(path, params={"week": week, "format": "csv"}).text
        lines = list(csv.DictReader(io.StringIO(text)))
        assert [int(x["prompt_tokens"]) for x in lines] == [event["prompt_tokens"]]
    for team in HOSTILE_TEAMS:
        summary = client.get(f"/v1/teams/{quote(team, safe='')}/summary").json()
        assert summary["team"] == team
        assert sorted(u["user"] for u in summary["top_users"]) == sorted(
            e["user"] for e in events if e["team"] == team
        )


# -- on the wire -------------------------------------------------------------------------------


class LiveServer:
    def __init__(self, db: Database) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(Settings(), db, scheduler=False),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    from meter.db.engine import make_engine
    from meter.db.migrate import upgrade
    from meter.weeks import load_timezone

    engine = make_engine(f"sqlite:///{tmp_path / 'wire.db'}")
    upgrade(engine, "UTC")
    server = LiveServer(Database(engine, load_timezone("UTC")))
    yield server
    server.close()
    engine.dispose()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return int(data.split(b" ", 2)[1])


def test_a_declared_9_mib_body_is_refused_before_any_of_it_is_sent(live: LiveServer):
    sock = live.connect()
    try:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {9 * MIB}\r\n\r\n".encode()
        )
        assert read_status(sock) == 413  # not a byte of the body was sent
    finally:
        sock.close()


def test_a_chunked_upload_is_cut_off_soon_after_8_mib(live: LiveServer):
    sock = live.connect()
    sent = 0
    try:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = f"{MIB:x}\r\n".encode() + b" " * MIB + b"\r\n"
        while sent < 32 * MIB:  # bounded: a server that reads it all is a failure below
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed while we were sending
                break
            sent += MIB
        assert read_status(sock) == 413
    finally:
        sock.close()
    # The answer came once 8 MiB had passed, not at the end of the 32 MiB upload (what is
    # sent past 8 MiB sits in socket buffers).
    assert 8 * MIB <= sent < 32 * MIB, sent
    print(f"chunked upload: 413 after {sent // MIB} MiB sent")


def test_deeply_nested_json_on_the_wire_is_a_422(live: LiveServer):
    body = b"[" * 1_000_000 + b"]" * 1_000_000  # 2 MB, under the size limit
    sock = live.connect()
    try:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert read_status(sock) == 422
    finally:
        sock.close()
