"""meter.db.fast: statements run on the raw DBAPI connection read and write exactly what
SQLAlchemy's Connection.execute would (dates and times aware UTC, JSON, UUIDs, NULLs), on both
databases; their errors are SQLAlchemy's; a failed transaction leaves nothing; the event loop's
own SQLite connection never waits for the write lock."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from meter.db import fast, models, settled
from meter.db.fast import FastSelect, FastStatement
from meter.db.session import Database
from meter.gateway import repository as repo
from meter.ids import uuid7
from meter.keys import KEY_COLUMNS, create_key, hash_key, principal_for_key
from meter.settings import get_settings

BY_TEAM = sa.select(*KEY_COLUMNS).where(
    models.ApiKey.team == sa.bindparam("team"), models.ApiKey.role == "gateway"
)


def test_rows_are_those_of_sqlalchemy(db: Database) -> None:
    expires = datetime.now(UTC) + timedelta(days=3)
    with db.engine.begin() as conn:
        create_key(conn, "gateway", "search", "a", user="alice", tags={"feature": "chat"})
        create_key(conn, "gateway", "search", "b", expires_at=expires)
        create_key(conn, "read", "search", "c")  # not a gateway key: the literal filters it
        create_key(conn, "gateway", "ads", "d")
        conn.execute(
            sa.update(models.ApiKey)
            .where(models.ApiKey.name == "a")
            .values(last_used_at=datetime(2026, 12, 1, 8, 30, 15, 123456, tzinfo=UTC))
        )
    with db.engine.connect() as conn:
        expected = [tuple(r) for r in conn.execute(BY_TEAM, {"team": "search"})]
    with fast.reading(db.engine) as reader:
        found = FastSelect(BY_TEAM).rows(reader, {"team": "search"})
        assert FastSelect(BY_TEAM).rows(reader, {"team": "nobody"}) == []
    assert sorted(found) == sorted(expected)
    assert len(found) == 2
    a = next(r for r in found if r.name == "a")
    assert a.tags == {"feature": "chat"} and a.user == "alice"
    assert a.last_used_at == datetime(2026, 12, 1, 8, 30, 15, 123456, tzinfo=UTC)
    b = next(r for r in found if r.name == "b")
    assert b.expires_at == expires and b.expires_at.tzinfo is UTC
    assert b.tags is None and b.last_used_at is None


def test_a_key_is_found_by_its_hash_and_its_use_noted(db: Database) -> None:
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "gateway", "search", "k", user="bob")
    settings = get_settings(database_url=str(db.engine.url))
    principal = principal_for_key(db, settings, key)
    assert principal is not None
    assert (principal.role, principal.team, principal.user, principal.key_id) == (
        "gateway", "search", "bob", key_id,
    )  # fmt: skip
    assert principal_for_key(db, settings, key + "x") is None
    with db.engine.connect() as conn:
        used = conn.execute(
            sa.select(models.ApiKey.last_used_at).where(models.ApiKey.key_hash == hash_key(key))
        ).scalar_one()
    assert used is not None and datetime.now(UTC) - used < timedelta(minutes=1)


def test_database_errors_are_sqlalchemys(db: Database) -> None:
    broken = sa.select(models.ApiKey.id).where(models.ApiKey.team == sa.bindparam("team"))
    with db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE api_keys RENAME TO api_keys_gone"))
    try:
        with fast.reading(db.engine) as reader, pytest.raises(sa.exc.DBAPIError):
            FastSelect(broken).rows(reader, {"team": "search"})
    finally:
        with db.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE api_keys_gone RENAME TO api_keys"))


def test_the_loops_reader_sees_every_commit_at_once(db: Database) -> None:
    """The gateway's own reader (SQLite) keeps what it read until any other connection
    commits: a revoked key, a new key or a changed row is read again by the next call."""
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "gateway", "search", "k")
    by_hash = {"digest": hash_key(key)}
    reader = fast.OwnReader(db.engine)
    select = FastSelect(
        sa.select(*KEY_COLUMNS).where(models.ApiKey.key_hash == sa.bindparam("digest"))
    )
    try:
        reader.fresh()
        assert [r.id for r in select.rows(reader, by_hash)] == [key_id]
        assert [r.team for r in select.rows(reader, by_hash)] == ["search"]
        with db.engine.begin() as conn:  # another connection commits
            conn.execute(sa.update(models.ApiKey).values(team="ads"))
        reader.fresh()
        assert [r.team for r in select.rows(reader, by_hash)] == ["ads"]
        with db.engine.begin() as conn:
            conn.execute(sa.delete(models.ApiKey))
        reader.fresh()
        assert select.rows(reader, by_hash) == []
        if db.engine.dialect.name == "sqlite":
            assert reader.cache is not None and len(reader.cache) == 1
        else:
            assert reader.cache is None  # PostgreSQL: every call reads
    finally:
        reader.close()


def _hold(event_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_id": event_id,
        "team": "search",
        "user": "alice",
        "tags": {"feature": "chat", "env": "prod"},
        "model": "m/x",
        "day": date(2026, 12, 6),
        "week_start": date(2026, 11, 30),
        "state": "open",
        "amount_units": 10**15 + 7,
        "reserved_units": 10**15 + 7,
        "expires_at": datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=UTC),
        "created_at": datetime(2026, 12, 6, 23, 58, 0, 1, tzinfo=UTC),
    }
    values.update(fields)
    return values


def test_statements_write_what_sqlalchemy_reads(db: Database) -> None:
    """An INSERT and an UPDATE run by meter.db.fast store exactly what SQLAlchemy's own would:
    UUIDs, JSON, dates and aware UTC times encoded by their types."""
    H = models.GatewayHold
    first, second, third, fourth, fifth = uuid7(), uuid7(), uuid7(), uuid7(), uuid7()
    tags = {"feature": "chat", "env": "prod"}
    S = repo.Settlement
    with fast.reading(db.engine) as writer:
        with writer.transaction():
            repo.insert_hold(writer, _hold(first))
            repo.insert_hold(writer, _hold(second, tags=None, user="", expires_at=None))
            repo.insert_hold(writer, _hold(third))
            repo.insert_hold(writer, _hold(fourth))
            repo.insert_hold(writer, _hold(fifth))
        with writer.transaction():  # on PostgreSQL one statement: third and fifth one group
            repo.settle(
                writer,
                [
                    S(second, repo.SETTLED, 42, None),
                    S(uuid7(), repo.SETTLED, 1, None),  # no such hold: nothing
                    S(third, repo.SETTLED, 10**15 + 3, tags),
                    S(fourth, repo.HELD, 10**15 + 7, tags),  # held: no group
                    S(fifth, repo.SETTLED, 2, tags),
                ],
            )
        with writer.transaction():
            repo.settle(writer, [S(third, repo.SETTLED, 5, tags)])  # settled already: nothing
    with db.engine.connect() as conn:
        rows = {r.event_id: r for r in conn.execute(sa.select(H))}
        groups = settled.totals_by_group(conn)
        assert groups == settled.recount(conn)
        stored_tags = conn.execute(sa.select(models.GatewaySettled.tags)).scalars().all()
    day = date(2026, 12, 6)
    assert groups == {
        (day, "search", "", ""): 42,
        (day, "search", "alice", settled.tags_key(tags)): 10**15 + 5,
    }
    assert sorted(stored_tags, key=str) == sorted([None, tags], key=str)
    assert settled.tags_key({"env": "prod", "feature": "chat"}) == settled.tags_key(tags)
    assert (rows[third].state, rows[fourth].state) == ("settled", "held")
    assert (rows[fifth].state, rows[fifth].amount_units) == ("settled", 2)
    del rows[third], rows[fourth], rows[fifth]
    assert set(rows) == {first, second}
    a, b = rows[first], rows[second]
    assert (a.team, a.user, a.tags, a.model, a.state) == (
        "search", "alice", {"feature": "chat", "env": "prod"}, "m/x", "open",
    )  # fmt: skip
    assert (a.day, a.week_start) == (date(2026, 12, 6), date(2026, 11, 30))
    assert a.amount_units == a.reserved_units == 10**15 + 7
    assert a.expires_at == datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=UTC)
    assert a.created_at == datetime(2026, 12, 6, 23, 58, 0, 1, tzinfo=UTC)
    assert (b.state, b.amount_units, b.reserved_units, b.tags, b.user, b.expires_at) == (
        "settled", 42, 10**15 + 7, None, "", None,
    )  # fmt: skip


def test_a_failed_transaction_leaves_nothing_and_the_connection_usable(db: Database) -> None:
    event_id = uuid7()
    with fast.reading(db.engine) as writer:
        with writer.transaction():
            repo.insert_hold(writer, _hold(event_id))
        with pytest.raises(sa.exc.IntegrityError), writer.transaction():
            repo.insert_hold(writer, _hold(uuid7(), amount_units=1))
            repo.insert_hold(writer, _hold(event_id))  # the same event: refused
        with pytest.raises(RuntimeError), writer.transaction():
            repo.insert_hold(writer, _hold(uuid7(), amount_units=2))
            raise RuntimeError("the caller changed its mind")
        with writer.transaction():
            repo.settle(writer, [repo.Settlement(event_id, repo.SETTLED, 5, None)])
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.GatewayHold.state, models.GatewayHold.amount_units)
        ).all()
    assert [tuple(r) for r in rows] == [("settled", 5)]


H = models.GatewayHold
_SHOW = FastStatement(sa.text("SHOW synchronous_commit").columns(sa.column("value", sa.Text())))
# Two statements whose own values are compiled under the same names (param_1...).
_RAISE = (
    sa.update(H)
    .where(H.event_id == sa.bindparam("hold"))
    .values(amount_units=H.amount_units + 5, reserved_units=H.reserved_units * 2)
)
_READ = sa.select(H.event_id, H.tags, H.day, H.expires_at, H.amount_units, H.reserved_units).where(
    H.event_id == sa.bindparam("hold"), H.amount_units > 10**15 + 7
)


def test_a_procedure_runs_its_statements_as_one_transaction(db: Database) -> None:
    """PostgreSQL: a Procedure's statements run in order in one call (each with its own
    values, the caller's shared); the rows are the last one's, decoded as SQLAlchemy's; a
    failure undoes every statement; `unflushed` holds for that call alone; a function the
    connection lost is made again."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a Procedure is PostgreSQL's")
    first, second = uuid7(), uuid7()
    insert = FastStatement(sa.insert(H), column_keys=repo.HOLD_COLUMNS)
    procedure = fast.Procedure(insert, FastStatement(_RAISE), FastStatement(_READ))
    with fast.reading(db.engine) as writer:
        rows = procedure.run(writer, {**_hold(first), "hold": first})
        assert [tuple(r) for r in rows] == [
            (first, {"feature": "chat", "env": "prod"}, date(2026, 12, 6),
             datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=UTC), 10**15 + 12,
             2 * (10**15 + 7)),
        ]  # fmt: skip
        assert rows[0].expires_at.tzinfo is UTC
        with pytest.raises(sa.exc.IntegrityError):  # the INSERT is undone with the rest
            fast.Procedure(insert, insert).run(writer, _hold(second))
        _SHOW.run(writer, {})  # the connection is usable
        shown = fast.Procedure(FastStatement(_RAISE), _SHOW, unflushed=True)
        assert shown.run(writer, {"hold": first})[0].value == "off"
        assert _SHOW.run(writer, {})[0].value == "on"
        writer.cursor.execute("DISCARD TEMP")  # the connection's functions are gone
        assert shown.run(writer, {"hold": first})[0].value == "off"
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(H.event_id, H.amount_units, H.reserved_units)).all()
    assert [tuple(r) for r in stored] == [(first, 10**15 + 22, 8 * (10**15 + 7))]


def test_the_loops_connection_never_waits_for_the_write_lock(db: Database) -> None:
    """SQLite: while another connection writes, the event loop's own connection is Busy at once
    (it has done nothing); its own commits keep what it read; another's make it read again."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL writers wait for row locks only, on a worker thread")
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "gateway", "search", "k")
    select = FastSelect(
        sa.select(*KEY_COLUMNS).where(models.ApiKey.key_hash == sa.bindparam("digest"))
    )
    own = fast.OwnReader(db.engine)
    try:
        own.fresh()
        assert [r.id for r in select.rows(own, {"digest": hash_key(key)})] == [key_id]
        with db.engine.begin() as other:  # holds the write lock until the block ends
            other.execute(sa.update(models.ApiKey).values(name="renamed"))
            started = time.monotonic()
            with pytest.raises(fast.Busy), own.transaction(wait=False):
                repo.insert_hold(own, _hold(uuid7()))
            assert time.monotonic() - started < 2  # did not wait for the lock
        with own.transaction(wait=False):
            repo.insert_hold(own, _hold(uuid7()))
        own.fresh()  # the rename committed by another connection: read again
        assert [r.name for r in select.rows(own, {"digest": hash_key(key)})] == ["renamed"]
        with own.transaction(wait=False):
            repo.insert_hold(own, _hold(uuid7()))
        own.fresh()  # only its own commit since: what it read is kept
        assert own.cache is not None and len(own.cache) == 1
    finally:
        own.close()
    with db.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(models.GatewayHold))
        assert count.scalar_one() == 2
