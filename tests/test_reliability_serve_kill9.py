"""`meter serve` killed with `kill -9` during a stream of `POST /v1/events` batches.

A client thread sends bounded batches of fresh ids, one after the other, and notes which were
answered 200. The server is killed at a random moment, restarted on the same database, killed
again... After the last restart: every batch answered 200 is stored, nothing twice, and
re-sending each unanswered batch gives inserted + duplicates = the batch size, all of one kind
(a batch is atomic: the one in flight at the kill is either wholly stored or not at all).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from meter.ids import uuid7
from meter.pricing import SEED_MODEL
from tests.recorder_helpers import stored_ids
from tests.test_outage_http import Server

ROUNDS = 4
BATCH = 250
MAX_BATCHES = 2_000  # bounds the sender whatever happens


@dataclass
class Ledger:
    answered: list[list[str]] = field(default_factory=list)
    unanswered: list[list[str]] = field(default_factory=list)
    bodies: dict[str, dict[str, object]] = field(default_factory=dict)  # first id -> body
    odd_answers: list[tuple[int, str]] = field(default_factory=list)


def batch_of_fresh_ids(moment: str) -> tuple[list[str], dict[str, object]]:
    ids = [str(uuid7()) for _ in range(BATCH)]
    events = [
        {
            "id": i,
            "occurred_at": moment,
            "model": SEED_MODEL,
            "prompt_tokens": n,
            "completion_tokens": 1,
            "user": "kill9",
            "team": "ingest",
        }
        for n, i in enumerate(ids)
    ]
    return ids, {"events": events}


def send_steadily(server: Server, ledger: Ledger, stop: threading.Event) -> None:
    moment = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    with httpx.Client(timeout=10) as http:
        for _ in range(MAX_BATCHES):
            if stop.is_set():
                return
            ids, body = batch_of_fresh_ids(moment)
            try:
                r = http.post(f"{server.url}/v1/events", json=body)
            except httpx.HTTPError:
                ledger.unanswered.append(ids)
                ledger.bodies[ids[0]] = body
                time.sleep(0.05)  # the server is down: do not spin
                continue
            if r.status_code == 200 and r.json() == {
                "inserted": BATCH,
                "duplicates": 0,
                "expired": 0,
            }:
                ledger.answered.append(ids)
            else:
                ledger.odd_answers.append((r.status_code, r.text[:200]))
                ledger.unanswered.append(ids)
                ledger.bodies[ids[0]] = body


@pytest.mark.slow
def test_kill_9_of_meter_serve_loses_no_answered_batch_and_stores_none_twice(
    tmp_path: Path, db_url: str
) -> None:
    server = Server(tmp_path, db_url)
    server.meter_cli("db", "upgrade")
    rng = random.Random(97)
    ledger = Ledger()
    try:
        for _ in range(ROUNDS):
            server.start()
            stop = threading.Event()
            sender = threading.Thread(target=send_steadily, args=(server, ledger, stop))
            sender.start()
            time.sleep(rng.uniform(1.0, 3.0))
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            assert server.proc.wait(timeout=20) == -signal.SIGKILL
            server.proc = None
            time.sleep(0.3)  # a few batches meet a dead server
            stop.set()
            sender.join(timeout=60)
            assert not sender.is_alive()
        server.start()
        answered = {i for batch in ledger.answered for i in batch}
        stored = stored_ids(server.db_url)
        assert len(stored) == len(set(stored))
        assert answered <= {str(i) for i in stored}

        # Send again what had no answer: each batch is wholly new or wholly a duplicate.
        outcomes = []
        with httpx.Client(timeout=30) as http:
            for ids in ledger.unanswered:
                r = http.post(f"{server.url}/v1/events", json=ledger.bodies[ids[0]])
                assert r.status_code == 200, r.text
                got = r.json()
                assert got["inserted"] + got["duplicates"] == BATCH
                outcomes.append((got["inserted"], got["duplicates"]))
        assert set(outcomes) <= {(BATCH, 0), (0, BATCH)}
    finally:
        server.stop()
        server.log.close()

    sent = len(ledger.answered) + len(ledger.unanswered)
    final = stored_ids(server.db_url)
    assert len(final) == len(set(final)) == sent * BATCH
    assert {str(i) for i in final} == {i for b in ledger.answered + ledger.unanswered for i in b}
    in_flight_committed = sum(1 for o in outcomes if o == (0, BATCH))
    print(
        f"rounds={ROUNDS} batches answered={len(ledger.answered)} "
        f"unanswered={len(ledger.unanswered)} (of which committed before the kill: "
        f"{in_flight_committed}) odd answers={ledger.odd_answers[:3]} "
        f"events stored={len(final)}"
    )
