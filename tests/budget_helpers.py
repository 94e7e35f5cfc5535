"""Helpers for the budget, alert and webhook tests: a real webhook receiver on loopback,
weekly_usage rows written directly (as the roll-up would), and an API client."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.db import models
from meter.db.session import Database
from meter.settings import Settings, get_settings

MODEL = "mistralai/mistral-7b-instruct-v0.1"
USD = 10**12  # units per dollar


def loopback_settings(**overrides: Any) -> Settings:
    """Settings that let meter call the loopback receiver (the session allows only loopback)."""
    values: dict[str, Any] = {"webhook_allow_private": True}
    values.update(overrides)
    return get_settings(**values)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


@dataclass
class Receiver:
    """A webhook receiver in a thread. It answers 500 to its first `fail_first` requests, and
    holds each request until `gate` is set (set by default)."""

    fail_first: int = 0
    deliveries: list[Delivery] = field(default_factory=list)  # the ones answered 2xx
    requests: list[Delivery] = field(default_factory=list)  # every request
    gate: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                got = Delivery(
                    {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
                )
                with receiver.lock:
                    receiver.requests.append(got)
                    failing = len(receiver.requests) <= receiver.fail_first
                receiver.arrived.set()
                receiver.gate.wait(30)  # bounded: a test never hangs on it
                if not failing:
                    with receiver.lock:
                        receiver.deliveries.append(got)
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def put_usage(
    db: Database,
    week_start: date,
    cost_units: int,
    *,
    team: str = "search",
    user: str = "alice",
    model: str = MODEL,
) -> None:
    """Set one roll-up row's cost (all of it as input cost), as the roll-up would."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.delete(models.WeeklyUsage).where(
                models.WeeklyUsage.week_start == week_start,
                models.WeeklyUsage.team == team,
                models.WeeklyUsage.user == user,
                models.WeeklyUsage.model == model,
            )
        )
        conn.execute(
            sa.insert(models.WeeklyUsage).values(
                week_start=week_start,
                team=team,
                user=user,
                model=model,
                requests=1,
                prompt_tokens=1,
                completion_tokens=1,
                errors=0,
                estimated=0,
                unpriced=0,
                input_cost_units=cost_units,
                output_cost_units=0,
                updated_at=datetime.now(UTC),
            )
        )


def api(db: Database, settings: Settings | None = None) -> TestClient:
    """The app over `db`, without its lifespan (no background threads): requests only."""
    return TestClient(create_app(settings or loopback_settings(), db, scheduler=False))


def alert_rows(db: Database) -> list[tuple[int, str, str, str]]:
    """(budget_id, type, week_start, threshold) of every alert, in id (firing) order."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                models.Alert.budget_id,
                models.Alert.type,
                models.Alert.week_start,
                models.Alert.threshold,
            ).order_by(models.Alert.id)
        ).all()
    return [(r[0], r[1], r[2].isoformat(), r[3]) for r in rows]
