"""Where the drain stores spooled events: a database, or a meter server's `POST /v1/events`.

The database parts (SQLAlchemy, Alembic) are imported where a `DatabaseStore` uses them: an
application that sends its events to a meter server never loads them.

A store raises `StoreUnavailable` when it cannot take events now (down, locked, old schema,
rejected key): the drain keeps them in the spool and retries. It raises `BatchRejected` when the
data itself is refused: the drain splits the batch to find and skip the bad event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from meter._exceptions import ConfigError, StoreUnavailable
from meter.events import EventRecord, InsertResult, parse_timestamp
from meter.pricing import PriceBook, make_price
from meter.settings import Settings
from meter.weeks import load_timezone

if TYPE_CHECKING:
    from meter.db.session import Database

log = logging.getLogger("meter.recorder")

# How often a Meter facing an old PostgreSQL schema looks again (it never migrates it itself).
SCHEMA_RECHECK_S = 10.0
PG_CONNECT_TIMEOUT_S = 5
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
UNREACHABLE_WARNING_INTERVAL_S = 60.0


class BatchRejected(Exception):
    """The store refused the data itself (not a passing outage)."""


class Store(Protocol):
    def store(self, events: Sequence[EventRecord], raw: Sequence[bytes]) -> InsertResult: ...
    def load_prices(self) -> PriceBook | None: ...
    def database(self) -> Database | None: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...


class _Warner:
    """Say a thing once, or at most once a minute: a down store must not flood the log."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def once(self, key: str, message: str, *args: object) -> None:
        if key not in self._last:
            self._last[key] = time.monotonic()
            log.warning(message, *args)

    def every_minute(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -UNREACHABLE_WARNING_INTERVAL_S) >= (
            UNREACHABLE_WARNING_INTERVAL_S
        ):
            self._last[key] = now
            log.warning(message, *args)

    def clear(self, key: str) -> bool:
        return self._last.pop(key, None) is not None


def _is_schema_problem(message: str) -> bool:
    return "meter db upgrade" in message or "METER_TIMEZONE" in message


class DatabaseStore:
    """Stores through `insert_events`, one transaction per batch, pricing in that transaction.

    Opened lazily by the background threads, never on the caller's path. SQLite is brought to
    head here (as `Meter()` promises); PostgreSQL is not: with an old or missing schema the
    events stay in the spool, one warning says to run `meter db upgrade`, and the schema is
    looked at again every SCHEMA_RECHECK_S.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lookup_window = timedelta(seconds=settings.lookup_window_seconds)
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._closed = False
        self._not_before = 0.0
        self._last_problem = ""
        self._warn = _Warner()

    def _open(self) -> Database:
        from meter.db import migrate
        from meter.db.engine import check_reachable, make_engine, normalize_url
        from meter.db.session import Database

        url = normalize_url(self.settings.database_url)
        sqlite = url.get_backend_name() == "sqlite"
        if sqlite:
            engine = make_engine(self.settings.database_url)
        else:
            engine = make_engine(
                self.settings.database_url,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
            )
        try:
            check_reachable(engine)
            if sqlite:
                migrate.upgrade(engine, self.settings.timezone)
            else:
                migrate.check_ready(engine, self.settings.timezone)
        except BaseException:
            engine.dispose()
            raise
        return Database(engine=engine, tz=load_timezone(self.settings.timezone))

    def open(self) -> Database:
        """The open database, opening it if needed; StoreUnavailable says why it is not."""
        with self._lock:
            if self._db is not None:
                return self._db
            if self._closed:  # a background thread finishing late must not reopen it
                raise StoreUnavailable("the Meter is closed")
            if time.monotonic() < self._not_before:
                raise StoreUnavailable(self._last_problem)
            try:
                db = self._open()
            except ConfigError as exc:
                problem = str(exc)
                self._last_problem = problem
                if _is_schema_problem(problem):
                    self._not_before = time.monotonic() + SCHEMA_RECHECK_S
                    self._warn.once(
                        "schema",
                        "meter: not storing events yet, they are kept in the spool %s: %s",
                        self.settings.spool_dir,
                        problem,
                    )
                else:
                    self._warn.every_minute(
                        "unreachable", "meter: events kept in the spool: %s", problem
                    )
                raise StoreUnavailable(problem) from None
            except Exception as exc:  # a driver error of any kind: retried later
                self._last_problem = f"cannot open the database: {exc}"
                self._warn.every_minute("unreachable", "meter: %s", self._last_problem)
                raise StoreUnavailable(self._last_problem) from exc
            if self._warn.clear("schema"):
                log.warning("meter: the database schema is ready; storing spooled events")
            self._warn.clear("unreachable")
            self._db = db
            return db

    def database(self) -> Database | None:
        try:
            return self.open()
        except StoreUnavailable:
            return None

    def store(self, events: Sequence[EventRecord], raw: Sequence[bytes]) -> InsertResult:
        import sqlalchemy as sa

        from meter.db.ledger import insert_events, load_price_book

        db = self.open()
        try:
            with db.engine.begin() as conn:
                # The book is read in the same transaction: a cost, once set, is frozen, so it
                # must be computed with the prices as they are when the row is written.
                return insert_events(
                    conn,
                    events,
                    load_price_book(conn),
                    db.tz,
                    lookup_window=self._lookup_window,
                )
        except (
            sa.exc.DataError,
            sa.exc.IntegrityError,
            ValueError,
            TypeError,
            OverflowError,
        ) as exc:
            raise BatchRejected(str(exc).splitlines()[0]) from exc
        except Exception as exc:
            problem = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            self._warn.every_minute(
                "write", "meter: cannot store events now (kept in the spool): %s", problem
            )
            raise StoreUnavailable(problem) from exc

    def load_prices(self) -> PriceBook | None:
        from meter.db.ledger import load_price_book

        db = self.database()
        if db is None:
            return None
        try:
            with db.engine.connect() as raw_conn:
                conn = raw_conn.execution_options(readonly=True)
                return load_price_book(conn)
        except Exception:
            return None

    def prices_version(self) -> tuple[int, int] | None:
        """The price book's version (changes whenever a price is added); None if unreadable."""
        from meter.db.prices import price_book_version

        db = self.database()
        if db is None:
            return None
        try:
            with db.engine.connect() as raw_conn:
                return price_book_version(raw_conn.execution_options(readonly=True))
        except Exception:
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.dispose()
                self._db = None

    def after_fork(self) -> None:
        # The parent's pooled connections are the parent's: drop them without closing them.
        self._lock = threading.Lock()
        if self._db is not None:
            self._db.engine.dispose(close=False)


class HttpStore:
    """Sends batches to a meter server: `POST {api_url}/v1/events`, `Authorization: Bearer`."""

    def __init__(self, api_url: str, api_key: str | None) -> None:
        self.api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._client = self._new_client()
        self._warn = _Warner()

    def _new_client(self) -> httpx.Client:
        headers = {"User-Agent": "meter-recorder"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return httpx.Client(base_url=self.api_url, timeout=HTTP_TIMEOUT, headers=headers)

    def store(self, events: Sequence[EventRecord], raw: Sequence[bytes]) -> InsertResult:
        # The spool lines are already the wire shape of an event: send them as they are.
        body = b'{"events":[' + b",".join(raw) + b"]}"
        try:
            response = self._client.post(
                "/v1/events", content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            problem = f"meter server {self.api_url} unreachable: {exc!r}"
            self._warn.every_minute("down", "meter: events kept in the spool: %s", problem)
            raise StoreUnavailable(problem) from exc
        status = response.status_code
        if status == 200:
            self._warn.clear("down")
            self._warn.clear("auth")
            doc = response.json()
            # A server older than the purge (SPEC section 10) answers no `expired`.
            return InsertResult(
                int(doc["inserted"]), int(doc["duplicates"]), int(doc.get("expired", 0))
            )
        detail = response.text[:300]
        if status in (413, 422):
            raise BatchRejected(f"HTTP {status}: {detail}")
        if status in (401, 403):
            self._warn.once(
                "auth",
                "meter: %s refused the api key (HTTP %d: %s); events kept in the spool: "
                "give Meter an ingest or admin key",
                self.api_url,
                status,
                detail,
            )
        else:
            self._warn.every_minute(
                "down", "meter: %s answered HTTP %d; events kept in the spool", self.api_url, status
            )
        raise StoreUnavailable(f"HTTP {status} from {self.api_url}: {detail}")

    def load_prices(self) -> PriceBook | None:
        try:
            response = self._client.get("/v1/prices")
            if response.status_code != 200:
                return None
            return PriceBook.of(_price_from_wire(p) for p in response.json()["prices"])
        except Exception:  # down, an ingest key (403), a malformed answer: use what we have
            return None

    def database(self) -> Database | None:
        return None

    def close(self) -> None:
        self._client.close()

    def after_fork(self) -> None:
        # Do not close the parent's sockets from the child: just stop using them.
        self._client = self._new_client()


def _price_from_wire(doc: dict[str, Any]) -> Any:
    price = make_price(
        doc["model"],
        doc["input_per_million_usd"],
        doc["output_per_million_usd"],
        parse_timestamp(doc["effective_from"]),
        doc.get("context_length"),
    )
    return price
