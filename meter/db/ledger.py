"""The ledger: events in, priced once and for ever, deduplicated by id.

Both the recorder (client side) and `POST /v1/events` store through `insert_events`. The caller
owns the transaction. In that same transaction every touched (week, team, user, model) group is
marked dirty, so the roll-up finds it whatever order concurrent transactions commit in, and every
event whose usage is estimated but names a generation gets its `generation_lookups` row, so the
provider's own figures are looked up later (meter.reconcile), again whatever the commit order.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from meter.db import models
from meter.events import EventRecord
from meter.events import InsertResult as InsertResult  # defined there: the recorder needs no SQL
from meter.money import provider_cost_to_units
from meter.periods import as_date, window_of
from meter.pricing import Price, PriceBook
from meter.settings import DEFAULT_LOOKUP_WINDOW_SECONDS
from meter.weeks import week_of

DEFAULT_LOOKUP_WINDOW = timedelta(seconds=DEFAULT_LOOKUP_WINDOW_SECONDS)

EVENT_COLUMNS = (
    "id",
    "occurred_at",
    "week_start",
    "model",
    "user",
    "team",
    "tags",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "status",
    "usage_source",
    "latency_ms",
    "ttft_ms",
    "generation_id",
    "provider_cost_units",
    "price_id",
    "input_cost_units",
    "output_cost_units",
    "received_at",
    "day",  # last, so that the positions _copy_line and the SQLite marks rely on stay put
)
_QUOTED = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)

Group = tuple[date, str, str, str]  # (week_start, team, user, model)


def load_price_book(conn: Connection) -> PriceBook:
    rows = conn.execute(
        sa.select(
            models.Price.id,
            models.Price.model,
            models.Price.input_units,
            models.Price.output_units,
            models.Price.effective_from,
            models.Price.context_length,
        )
    )
    return PriceBook.of(
        Price(
            model=r.model,
            input_units=r.input_units,
            output_units=r.output_units,
            effective_from=r.effective_from,
            context_length=r.context_length,
            id=r.id,
        )
        for r in rows
    )


def _utc_text(moment: datetime) -> str:
    # The exact text SQLAlchemy's SQLite DateTime writes ("%Y-%m-%d %H:%M:%S.%f"), so
    # comparisons stay consistent; isoformat is twice as fast as strftime on this hot path.
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]


_EPOCH = datetime.min.replace(tzinfo=UTC)


class _DayCache:
    """The local day and week of the events of a batch, which mostly share a day: the day's
    exact UTC bounds answer the question for all of them without a timezone conversion each.
    `day` and `week` are their text, as stored (SQLite) or sent (PostgreSQL's COPY)."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.lo = self.hi = _EPOCH
        self.day = self.week = ""

    def see(self, moment: datetime) -> None:
        if not (self.lo <= moment < self.hi):
            window = window_of("day", moment, self.tz)
            self.lo, self.hi = window.bounds(self.tz)
            self.day = window.start.isoformat()
            self.week = week_of(moment, self.tz).start.isoformat()


class _SecondCache:
    """The naive UTC datetime text of events of one batch, which mostly share their second: the
    "YYYY-MM-DD HH:MM:SS." prefix is formatted once per second (isoformat is ~2 us a call).
    SQLite stores this text; PostgreSQL's COPY reads it as a `timestamp`."""

    def __init__(self) -> None:
        self.lo = self.hi = _EPOCH
        self.prefix = ""

    def text(self, moment: datetime) -> str:
        utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
        if not (self.lo <= utc < self.hi):
            self.lo = utc.replace(microsecond=0)
            self.hi = self.lo + timedelta(seconds=1)
            self.prefix = _utc_text(self.lo)[:20]
        return f"{self.prefix}{utc.microsecond:06d}"


def _row(
    event: EventRecord,
    book: PriceBook,
    days: _DayCache,
    seconds: _SecondCache,
    received: str,
) -> tuple[Any, ...]:
    """An event as the text and integers both dialects are sent (SQLite stores them as such)."""
    price = book.price_at(event.model, event.occurred_at)
    if price is None:
        price_id = input_cost = output_cost = None
    else:
        price_id = price.id
        input_cost = event.prompt_tokens * price.input_units
        output_cost = event.completion_tokens * price.output_units
    days.see(event.occurred_at)
    tags = json.dumps(event.tags, ensure_ascii=False) if event.tags is not None else None
    provider_cost = (
        provider_cost_to_units(event.provider_cost_usd)
        if event.provider_cost_usd is not None
        else None
    )
    return (
        event.id.hex,
        seconds.text(event.occurred_at),
        days.week,
        event.model,
        event.user or "",
        event.team or "",
        tags,
        event.prompt_tokens,
        event.completion_tokens,
        event.cached_tokens,
        event.reasoning_tokens,
        event.status,
        event.usage_source,
        event.latency_ms,
        event.ttft_ms,
        event.generation_id,
        provider_cost,
        price_id,
        input_cost,
        output_cost,
        received,
        days.day,
    )


def insert_events(
    conn: Connection,
    events: Sequence[EventRecord],
    book: PriceBook,
    tz: ZoneInfo,
    received_at: datetime | None = None,
    lookup_window: timedelta = DEFAULT_LOOKUP_WINDOW,
) -> InsertResult:
    """Insert new events, ignore ids already stored (or repeated in the batch).

    An estimated event with a generation id is queued for its generation lookup, to be given up
    `lookup_window` after it occurred (the storing process's METER_LOOKUP_WINDOW_SECONDS).
    """
    if not events:
        return InsertResult(0, 0)
    received_at = received_at or datetime.now(UTC)
    sqlite = conn.dialect.name == "sqlite"
    received = _utc_text(received_at)
    days = _DayCache(tz)
    seconds = _SecondCache()
    cutoff, any_erased = _guards(conn)
    # A replay of an event an erasure deleted is a duplicate.
    seen: set[Any] = _erased_ids(conn, events) if any_erased else set()
    rows = []
    lookups: list[EventRecord] = []
    before = cutoff.isoformat() if cutoff is not None else ""  # ISO dates sort as text
    expired = 0
    for event in events:
        if event.id in seen:
            continue
        seen.add(event.id)
        row = _row(event, book, days, seconds, received)
        if row[-1] < before:
            expired += 1  # its day's raw events are purged and its totals final
            continue
        rows.append(row)
        # One comparison for the common `provider` event; the rare estimated one is queued.
        if event.usage_source == "estimated" and event.generation_id is not None:
            lookups.append(event)
    if sqlite:
        inserted = _insert_sqlite(conn, rows)
        # (week_start, model, user, team) is a slice of each row, in the stored form already;
        # SQLite takes no row locks, so their order does not matter.
        _sqlite_insert_many(
            conn,
            "INSERT OR IGNORE INTO rollup_dirty",
            'week_start, model, "user", team, n',
            [(*g, 1) for g in {r[2:6] for r in rows}],
        )
    elif rows:
        inserted = _insert_postgres(conn, rows)  # marks its groups itself, server side
    else:
        inserted = 0
    if lookups:
        enqueue_lookups(conn, lookups, received_at, lookup_window)
    return InsertResult(inserted, len(events) - inserted - expired, expired)


CUTOFF_KEY = "raw_cutoff"


def read_cutoff(conn: Connection) -> date | None:
    """The purge cutoff (meter.lifecycle.retention): raw events of local days before it are
    purged or being purged, and their totals are final. None: nothing was ever purged."""
    value = conn.execute(
        sa.text(f"SELECT value FROM meter_meta WHERE key = '{CUTOFF_KEY}'")
    ).scalar()
    return date.fromisoformat(value) if value else None


def _guards(conn: Connection) -> tuple[date | None, bool]:
    """What a writer checks its batch against, in one statement: the purge cutoff and whether
    any erased event id exists at all (nearly never: then the batch's ids need no lookup).

    On PostgreSQL the cutoff's row stays share-locked until commit, so a purge moving the
    cutoff waits for this transaction, and this one, if it comes second, reads the moved
    cutoff. SQLite's BEGIN IMMEDIATE orders every writer already."""
    sql = (
        "SELECT value, EXISTS (SELECT 1 FROM erased_events) FROM meter_meta "
        f"WHERE key = '{CUTOFF_KEY}'"
    )
    if conn.dialect.name == "postgresql":
        sql += " FOR SHARE OF meter_meta"
    row = conn.execute(sa.text(sql)).first()
    if row is None:  # no cutoff row (a schema before 0005 cannot reach here): look anyway
        return None, True
    return (date.fromisoformat(row[0]) if row[0] else None), bool(row[1])


def _erased_ids(conn: Connection, events: Sequence[EventRecord]) -> set[Any]:
    """The batch's ids that a user's erasure deleted (SPEC section 10): they are never stored
    again."""
    erased = models.ErasedEvent
    ids = list({e.id for e in events})
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            sa.text("SELECT id FROM erased_events WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return set(found.scalars())
    per = _sqlite_max_params(conn)
    out: set[Any] = set()
    for i in range(0, len(ids), per):
        part = sa.select(erased.id).where(erased.id.in_(ids[i : i + per]))
        out.update(conn.execute(part).scalars())
    return out


def enqueue_lookups(
    conn: Connection, events: Sequence[EventRecord], now: datetime, window: timedelta
) -> None:
    """Queue generation lookups, due now, given up `window` after each event occurred.

    An id already queued (a replayed event) keeps its row, whatever state it reached.
    """
    lookups = models.GenerationLookup.__table__
    dialect = sqlite_dialect if conn.dialect.name == "sqlite" else pg_dialect
    insert = dialect.insert(lookups)
    conn.execute(
        insert.on_conflict_do_nothing(index_elements=["event_id"]),
        [
            {
                "event_id": e.id,
                "generation_id": e.generation_id,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "deadline_at": e.occurred_at + window,
                "last_error": None,
                "created_at": now,
            }
            for e in events
        ],
    )


def _insert_sqlite(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    return _sqlite_insert_many(conn, "INSERT OR IGNORE INTO events", _QUOTED, rows)


def _sqlite_insert_many(
    conn: Connection, verb: str, columns: str, rows: Sequence[tuple[Any, ...]]
) -> int:
    """`verb (columns) VALUES (...), (...), ...` over as many rows per statement as SQLite's
    parameter limit allows -> rows inserted.

    One statement per ~1,500 rows rather than executemany's one step per row: the sqlite3
    module releases the GIL at every step, and a recorder's drain thread stepping row by row
    handed the GIL back and forth with its own process's caller thousands of times per batch
    (bench/recording.py end to end).
    """
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, min(_SQLITE_MAX_ROWS, _sqlite_max_params(conn) // width))
    inserted = 0
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(part))
        cursor = conn.exec_driver_sql(
            f"{verb} ({columns}) VALUES {values}", tuple(itertools.chain.from_iterable(part))
        )
        inserted += max(cursor.rowcount, 0)
    return inserted


_SQLITE_MAX_ROWS = 2_000
_sqlite_limit: list[int] = []


def _sqlite_max_params(conn: Connection) -> int:
    """SQLite's SQLITE_LIMIT_VARIABLE_NUMBER (32,766 since 3.32; 999 before)."""
    if not _sqlite_limit:
        import sqlite3

        raw = conn.connection.driver_connection
        limit = 999
        if isinstance(raw, sqlite3.Connection):
            limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        _sqlite_limit.append(limit)
    return _sqlite_limit[0]


def _insert_postgres(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    """COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS events_incoming "
            "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY events_incoming ({_QUOTED}) FROM STDIN") as copy:
            # In slices, so that the server parses one while the next is formatted here.
            for i in range(0, len(rows), _COPY_SLICE):
                copy.write("".join([_copy_line(row) for row in rows[i : i + _COPY_SLICE]]))
        cur.execute(
            # Sorted by id: two writers offering overlapping ids (a spool replay during API
            # ingest) then take the primary key's row locks in one order and cannot deadlock.
            f"INSERT INTO events ({_QUOTED}) SELECT {_QUOTED} FROM events_incoming "
            "ORDER BY id ON CONFLICT (id) DO NOTHING"
        )
        inserted = cur.rowcount
        # The batch's groups, straight from the temporary table: nothing to send back (turning
        # ~3,000 groups into arrays was a tenth of a batch on the client).
        cur.execute(
            f'INSERT INTO rollup_dirty (week_start, team, "user", model, n) '
            f'SELECT week_start, team, "user", model, 1 FROM events_incoming '
            f'GROUP BY week_start, team, "user", model ORDER BY {MARK_ORDER} {_PG_MARK}'
        )
        # No TRUNCATE: ON COMMIT DELETE ROWS empties the table at commit, and a TRUNCATE inside
        # the transaction costs a new relation file per batch (measured: a fifth of the time).
        # A second call in the same transaction merely re-offers rows that now conflict.
    return max(int(inserted), 0)


# COPY's text format: a backslash, a tab, a newline or a carriage return inside a value is
# written as a backslash escape; NUL never gets this far (meter.events refuses it).
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_COPY_SLICE = 1_000


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if type(value) is str:
        return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value
    return str(value)


def _copy_line(row: tuple[Any, ...]) -> str:
    """One `_row` as a line of COPY's text format: 3x faster than psycopg's `write_row`.

    Only the text columns can need escaping: id, times and week are made here and integers are
    integers. They are looked at together, and the rare row that needs it escaped field by field.
    Positions in EVENT_COLUMNS: model, user, team, tags, status, usage_source, generation_id
    (tests/test_ledger.py's verbatim test fails if they drift).
    """
    if _COPY_SPECIAL.search(f"{row[3]}{row[4]}{row[5]}{row[6]}{row[11]}{row[12]}{row[15]}"):
        return "\t".join([_copy_field(v) for v in row]) + "\n"
    return "\t".join(["\\N" if v is None else str(v) for v in row]) + "\n"


# Lock order of marks on PostgreSQL, for every statement that locks them: the writers' here and
# the roll-up's (meter.rollup.repository.take_marks). "C" is byte order, which for UTF-8 is
# code-point order: the order of Python's `sorted` over the same keys (mark_dirty).
MARK_ORDER = 'week_start, team COLLATE "C", "user" COLLATE "C", model COLLATE "C"'
# An existing mark is locked, not rewritten: `DO UPDATE ... WHERE false` takes the row lock of
# a conflicting row (PostgreSQL's INSERT reference: rows not updated because of the WHERE are
# still locked) and holds it to commit, which is all the roll-up's argument needs (see
# meter/rollup/engine.py); writing a new row version per mark per batch cost twice as much.
_PG_MARK = (
    'ON CONFLICT (week_start, team, "user", model) DO UPDATE SET n = rollup_dirty.n WHERE false'
)


def mark_dirty(conn: Connection, groups: Iterable[tuple[Any, str, str, str]]) -> None:
    """Queue groups for the roll-up. Sorted, so that concurrent writers lock rows in one order.

    SQLite has no row locks to take (the roll-up's BEGIN IMMEDIATE excludes every writer), so
    an existing mark is simply left as it is.
    """
    sqlite = conn.dialect.name == "sqlite"
    ordered = sorted({(as_date(w), t, u, m) for (w, t, u, m) in groups})
    if not ordered:
        return
    if sqlite:
        _sqlite_insert_many(
            conn,
            "INSERT OR IGNORE INTO rollup_dirty",
            'week_start, team, "user", model, n',
            [(w.isoformat(), t, u, m, 1) for (w, t, u, m) in ordered],
        )
        return
    # One statement over arrays rather than one upsert per group; WITH ORDINALITY and ORDER BY
    # keep the sorted lock order.
    conn.execute(
        sa.text(
            'INSERT INTO rollup_dirty (week_start, team, "user", model, n) '
            "SELECT k.w, k.t, k.u, k.m, 1 FROM unnest(CAST(:w AS date[]), CAST(:t AS text[]), "
            "CAST(:u AS text[]), CAST(:m AS text[])) WITH ORDINALITY AS k(w, t, u, m, i) "
            f"ORDER BY k.i {_PG_MARK}"
        ),
        {
            "w": [g[0] for g in ordered],
            "t": [g[1] for g in ordered],
            "u": [g[2] for g in ordered],
            "m": [g[3] for g in ordered],
        },
    )
