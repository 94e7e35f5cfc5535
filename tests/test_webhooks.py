"""Webhook delivery from the outbox, against a real receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meter.budgets import repository as repo
from meter.budgets.delivery import DeliveryWorker, RetryPolicy
from meter.budgets.evaluate import evaluate_after_rollup
from meter.db.session import Database
from meter.settings import get_settings
from meter.weeks import week_of
from tests.budget_helpers import USD, Receiver, api, loopback_settings, put_usage

SECRET = "whsec-test-0f3a"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def worker(db: Database, **overrides: Any) -> DeliveryWorker:
    return DeliveryWorker(db, loopback_settings(**overrides), policy=FAST, poll_interval=0.05)


def drain(w: DeliveryWorker, rounds: int = 50) -> int:
    """Run passes until nothing is due, skipping backoff waits by looking an hour ahead."""
    sent = 0
    for _ in range(rounds):
        n = w.run_once(now=datetime.now(UTC) + timedelta(hours=1))
        if n == 0:
            return sent
        sent += n
    raise AssertionError("deliveries did not settle")


def create(db: Database, url: str, secret: str | None = SECRET, **fields: Any) -> int:
    doc: dict[str, Any] = {
        "scope": "team",
        "subject": "search",
        "weekly_limit_usd": "50",
        "webhook_url": url,
    }
    if secret:
        doc["webhook_secret"] = secret
    doc.update(fields)
    r = api(db).post("/v1/budgets", json=doc)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def now_week(db: Database):
    return week_of(datetime.now(UTC), db.tz)


def spend(db: Database, usd: int, **kw: Any) -> int:
    """Set this week's spend and evaluate as the roll-up would; return alerts fired."""
    put_usage(db, now_week(db).start, usd * USD, **kw)
    # Monday 00:30 of this week (or now, if earlier): inside the week, too early for a
    # projection, and never in the future, so the alerts are due at once.
    now = min(now_week(db).bounds(db.tz)[0] + timedelta(minutes=30), datetime.now(UTC))
    return evaluate_after_rollup(db, [now_week(db)], now)


def valid_signature(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    expected = hmac.new(
        secret.encode(), headers["x-meter-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return headers["x-meter-signature"] == f"sha256={expected}"


def test_thresholds_are_delivered_once_each_in_order_and_signed(db: Database, receiver: Receiver):
    bid = create(db, receiver.url)
    assert spend(db, 51) == 3
    w = worker(db)
    assert drain(w) == 3
    got = receiver.deliveries
    assert [d.json["threshold"] for d in got] == ["0.5", "0.8", "1"]
    assert all(valid_signature(d.headers, d.body) for d in got)
    ids = [d.headers["x-meter-delivery"] for d in got]
    assert len(set(ids)) == 3 and ids == [d.json["alert_id"] for d in got]
    week = now_week(db)
    first = got[0].json
    assert first == {
        "type": "budget.threshold_crossed",
        "alert_id": ids[0],
        "budget_id": bid,
        "scope": "team",
        "subject": "search",
        "week": week.label,
        "week_start": week.start.isoformat(),
        "period": week.label,  # SPEC section 8: the period's label and start
        "period_start": week.start.isoformat(),
        "threshold": "0.5",
        "limit_usd": "50",
        "spend_usd": "51",
        "fired_at": first["fired_at"],
    }
    assert got[0].headers["content-type"] == "application/json"
    assert abs(int(got[0].headers["x-meter-timestamp"]) - time.time()) < 600
    # Further roll-ups and passes send nothing new.
    assert spend(db, 52) == 0
    assert drain(w) == 0
    assert len(receiver.requests) == 3
    alerts = api(db).get("/v1/alerts", params={"budget_id": bid}).json()["alerts"]
    assert [a["delivery"] for a in alerts] == [
        {"status": "delivered", "attempts": 1, "last_error": None}
    ] * 3
    w.stop()


def test_a_failing_receiver_gets_each_alert_once_after_recovering(db: Database):
    receiver = Receiver(fail_first=2)
    try:
        create(db, receiver.url)
        assert spend(db, 50) == 3
        w = worker(db)
        drain(w)
        assert [d.json["threshold"] for d in receiver.deliveries] == ["0.5", "0.8", "1"]
        # The two failures were both the first alert: the others waited their turn.
        assert [d.json["threshold"] for d in receiver.requests] == ["0.5"] * 3 + ["0.8", "1"]
        alerts = api(db).get("/v1/alerts").json()["alerts"]
        assert [(a["threshold"], a["delivery"]["attempts"]) for a in alerts] == [
            ("1", 1),
            ("0.8", 1),
            ("0.5", 3),
        ]
        assert {a["delivery"]["status"] for a in alerts} == {"delivered"}
        w.stop()
    finally:
        receiver.close()


def test_the_attempt_limit_fails_a_delivery_and_redeliver_queues_it_again(db: Database):
    receiver = Receiver(fail_first=FAST.max_attempts)
    try:
        create(db, receiver.url, thresholds=[1])
        assert spend(db, 50) == 1
        w = worker(db)
        drain(w)
        client = api(db)
        (alert,) = client.get("/v1/alerts").json()["alerts"]
        assert alert["delivery"] == {"status": "failed", "attempts": 4, "last_error": "HTTP 500"}
        assert receiver.deliveries == []
        r = client.post(f"/v1/alerts/{alert['id']}/redeliver")
        assert r.status_code == 200, r.text
        assert r.json()["delivery"] == {"status": "pending", "attempts": 0, "last_error": None}
        drain(w)
        assert [d.headers["x-meter-delivery"] for d in receiver.deliveries] == [alert["id"]]
        (alert,) = client.get("/v1/alerts").json()["alerts"]
        assert alert["delivery"] == {"status": "delivered", "attempts": 1, "last_error": None}
        assert client.post(f"/v1/alerts/{alert['id']}/redeliver").status_code == 409
        assert client.post("/v1/alerts/no-such-alert/redeliver").status_code == 404
        w.stop()
    finally:
        receiver.close()


def test_hosts_outside_the_allow_list_are_never_contacted(db: Database, receiver: Receiver):
    create(db, "http://example.com/hook", thresholds=[1])
    assert spend(db, 50) == 1
    w = worker(db)  # the test session allows 127.0.0.1 and localhost only
    drain(w)
    (alert,) = api(db).get("/v1/alerts").json()["alerts"]
    assert alert["delivery"] == {
        "status": "failed",
        "attempts": 1,
        "last_error": "refused: host example.com is not in METER_WEBHOOK_ALLOW_HOSTS",
    }
    w.stop()


def test_private_hosts_are_refused_again_at_send_time(db: Database, receiver: Receiver):
    create(db, receiver.url, thresholds=[1])  # stored while private hosts were allowed
    assert spend(db, 50) == 1
    strict = DeliveryWorker(db, get_settings(webhook_allow_private=False), policy=FAST)
    drain(strict)
    (alert,) = api(db).get("/v1/alerts").json()["alerts"]
    assert alert["delivery"]["status"] == "failed"
    assert alert["delivery"]["last_error"] == (
        "refused: host 127.0.0.1 resolves to a non-public address "
        "(METER_WEBHOOK_ALLOW_PRIVATE is off)"
    )
    assert receiver.requests == []
    strict.stop()


def test_test_delivery_is_signed_and_sent_now(db: Database, receiver: Receiver):
    bid = create(db, receiver.url)
    put_usage(db, now_week(db).start, 5 * USD)
    r = api(db).post(f"/v1/budgets/{bid}/test")
    assert r.status_code == 200, r.text
    (got,) = receiver.deliveries
    assert r.json() == {
        "delivery_id": got.headers["x-meter-delivery"],
        "delivered": True,
        "status_code": 204,
        "error": None,
    }
    assert valid_signature(got.headers, got.body)
    assert (got.json["type"], got.json["spend_usd"], got.json["threshold"]) == (
        "budget.test",
        "5",
        None,
    )
    unsigned = create(db, receiver.url, secret=None)
    assert api(db).post(f"/v1/budgets/{unsigned}/test").json()["delivered"] is True
    assert "x-meter-signature" not in receiver.deliveries[1].headers
    nowhere = create(db, None, secret=None)  # type: ignore[arg-type]
    r = api(db).post(f"/v1/budgets/{nowhere}/test")
    assert r.status_code == 409 and "webhook" in r.json()["detail"]


def test_a_restart_loses_no_pending_delivery(db: Database, receiver: Receiver):
    create(db, receiver.url)
    assert spend(db, 50) == 3
    # A server claims the first delivery and dies before sending it.
    claim_time = datetime.now(UTC)
    with db.engine.begin() as conn:
        head = repo.due_heads(conn, claim_time, 10)
        assert len(head) == 1
        lease = claim_time + timedelta(seconds=FAST.lease_seconds)
        assert repo.claim_delivery(conn, head[0].id, head[0].attempts, lease)
    restarted = worker(db)
    # While the dead server's lease runs, nothing of that budget goes out of order.
    assert restarted.run_once(now=claim_time + timedelta(seconds=1)) == 0
    assert restarted.run_once(now=lease + timedelta(seconds=1)) == 1
    drain(restarted)
    assert [d.json["threshold"] for d in receiver.deliveries] == ["0.5", "0.8", "1"]
    restarted.stop()


def test_a_slow_receiver_does_not_block_evaluation(db: Database, receiver: Receiver):
    create(db, receiver.url)
    receiver.gate.clear()  # the receiver holds every request until told
    w = worker(db)
    w.start()
    try:
        assert spend(db, 25) == 1
        assert receiver.arrived.wait(20)
        # The send is in flight and held; a roll-up's evaluation still runs and commits.
        assert spend(db, 40) == 1
        assert receiver.deliveries == [] and not receiver.gate.is_set()
        receiver.gate.set()
        w.wake()
        for _ in range(200):
            if len(receiver.deliveries) == 2:
                break
            time.sleep(0.05)
        assert [d.json["threshold"] for d in receiver.deliveries] == ["0.5", "0.8"]
    finally:
        receiver.gate.set()
        w.stop()


def test_two_workers_never_send_the_same_alert(db: Database, receiver: Receiver):
    for team in ("a", "b", "c", "d"):
        create(db, receiver.url, subject=team)
        assert spend(db, 50, team=team) == 3
    workers = [worker(db), worker(db)]
    barrier = threading.Barrier(2)

    def run(w: DeliveryWorker) -> None:
        barrier.wait(10)
        drain(w)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [d.headers["x-meter-delivery"] for d in receiver.requests]
    assert len(ids) == 12 and len(set(ids)) == 12
    for team in ("a", "b", "c", "d"):
        order = [d.json["threshold"] for d in receiver.deliveries if d.json["subject"] == team]
        assert order == ["0.5", "0.8", "1"]
    for w in workers:
        w.stop()
