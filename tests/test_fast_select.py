"""meter.db.fast: a SELECT run on the raw DBAPI connection reads exactly what SQLAlchemy's
Connection.execute reads (dates and times aware UTC, JSON decoded, NULLs), on both databases,
and its errors are SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from meter.db import fast, models
from meter.db.fast import FastSelect
from meter.db.session import Database
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
