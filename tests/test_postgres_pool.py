"""PostgreSQL connections from meter's pool: a pooled connection the server closed while it was
idle is noticed at checkout and replaced, whichever way it is used (SQLAlchemy or
meter.db.fast), and a live one is handed out as it is."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from meter.db import fast
from meter.db.engine import make_engine
from tests.conftest import DatabaseFactory


@pytest.fixture
def pg_url(databases: DatabaseFactory) -> str:
    if databases.backend != "postgresql":
        pytest.skip("PostgreSQL's pool")
    return databases.url(migrated=False)


def _pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    other = make_engine(url)
    try:
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        for _ in range(100):  # liveness bound: 5 s for the backend to go
            with other.connect() as conn:
                gone = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar_one()
            if not gone:
                return
            time.sleep(0.05)
    finally:
        other.dispose()
    raise AssertionError(f"backend {pid} still there")


def test_a_live_connection_is_reused_and_a_terminated_one_replaced(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)
    try:
        first = _pid(engine)
        assert _pid(engine) == first  # the same connection, handed out again
        _terminate(pg_url, first)
        second = _pid(engine)  # no error: the dead connection was replaced at checkout
        assert second != first
        assert _pid(engine) == second
        _terminate(pg_url, second)
        with fast.reading(engine) as reader:  # the gateway's path through the pool
            reader.cursor.execute("SELECT pg_backend_pid()")
            third = reader.cursor.fetchone()[0]
        assert third not in (first, second)
    finally:
        engine.dispose()
