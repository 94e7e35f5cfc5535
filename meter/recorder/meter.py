"""`Meter`: where a metered call's event goes. (Interim synchronous version; the durable spool and
background drain replace the internals, keeping this interface.)"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database, open_database
from meter.events import EventRecord
from meter.ids import uuid7
from meter.pricing import Price
from meter.settings import Settings, get_settings


class Meter:
    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        overrides: dict[str, Any] = {}
        if database_url is not None:
            overrides["database_url"] = database_url
        self.settings = settings or get_settings(**overrides)
        self.api_url = api_url
        self._api_key = api_key
        self._lock = threading.Lock()
        self._db: Database | None = None

    def _database(self) -> Database:
        if self._db is None:
            sqlite = self.settings.database_url.startswith("sqlite")
            self._db = open_database(self.settings, upgrade=sqlite)
        return self._db

    # -- what the client calls -------------------------------------------------------------
    def _submit(self, event: EventRecord) -> None:
        """Take one event; must never raise and never block the caller."""
        db = self._database()
        with self._lock, db.engine.begin() as conn:
            insert_events(conn, [event], load_price_book(conn), db.tz)

    def check_budget(self, *, team: str | None, user: str | None) -> None:
        """Raise BudgetExceeded when an enforced budget covering the call is used up."""

    def price_at(self, model: str, moment: datetime) -> Price | None:
        """The price in effect for `model` at `moment` (cached price book), None if unpriced."""
        db = self._database()
        with db.engine.connect() as conn:
            return load_price_book(conn).price_at(model, moment)

    # -- public API --------------------------------------------------------------------------
    def record(
        self,
        *,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        user: str | None = None,
        team: str | None = None,
        occurred_at: datetime | None = None,
        status: str = "ok",
        event_id: str | None = None,
        tags: dict[str, str] | None = None,
        **extra: Any,
    ) -> EventRecord:
        import uuid

        event = EventRecord(
            id=uuid.UUID(event_id) if event_id else uuid7(),
            occurred_at=occurred_at or datetime.now(UTC),
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            user=user,
            team=team,
            tags=tags,
            status=status,
            **extra,
        )
        self._submit(event)
        return event

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Decimal", "Meter", "TracebackType"]
