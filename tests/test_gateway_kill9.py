"""`meter serve` killed with `kill -9` right after its gateway answered: every call whose response
the client received in full is stored once after a restart on the same spool (SPEC section 5)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from meter.db.engine import make_engine
from meter.mock_upstream import MockUpstream
from tests.client_helpers import HELLO, MODEL
from tests.gateway_helpers import SERVER_KEY
from tests.recorder_helpers import stored_ids
from tests.test_outage_http import Server

CALLS = 12


@pytest.mark.slow
def test_kill_9_right_after_answers_loses_no_call(
    tmp_path: Path, db_url: str, backend: str, upstream: tuple[MockUpstream, str]
) -> None:
    mock, upstream_url = upstream
    mock.reset()
    server = Server(tmp_path, db_url)
    server.env.update(
        METER_UPSTREAM_BASE_URL=upstream_url,
        OPENROUTER_API_KEY=SERVER_KEY,
        METER_SPOOL_DIR=str(tmp_path / "spool"),
    )
    server.meter_cli("db", "upgrade")
    key = server.meter_cli("keys", "create", "--role", "gateway", "--team", "search")
    answered: list[str] = []
    # PostgreSQL: the events table is locked against inserts while the calls run and until
    # the kill, so the answered calls are surely still in the spool (only) when it comes.
    blocker = make_engine(db_url).connect() if backend == "postgresql" else None
    try:
        if blocker is not None:
            blocker.begin()
            blocker.execute(sa.text("LOCK TABLE events IN EXCLUSIVE MODE"))
        server.start()
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            for i in range(CALLS):
                body = {"model": MODEL, "messages": HELLO, "stream": i % 2 == 1}
                with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    content = r.read()
                assert content.strip()
                answered.append(r.headers["x-meter-event-id"])
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # at once, after the last answer
        assert server.proc.wait(timeout=20) == -signal.SIGKILL
        server.proc = None
        if blocker is not None:
            assert blocker.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() == 0
            blocker.rollback()
        server.start()  # the same spool: what the dead process left is stored now
        deadline = time.monotonic() + 20  # liveness bound
        stored: list[object] = []
        while time.monotonic() < deadline:
            stored = stored_ids(db_url)
            if len(stored) >= CALLS:
                break
            time.sleep(0.2)
    finally:
        if blocker is not None:
            blocker.close()
        server.stop()
        server.log.close()
    stored = stored_ids(db_url)
    assert len(stored) == len(set(stored)) == CALLS
    assert {str(i) for i in stored} == set(answered)
    assert len(mock.requests) == CALLS
