"""Engines for SQLite (the embedded default) and PostgreSQL (the multi-process store).

SQLite: WAL, a busy timeout, and `BEGIN IMMEDIATE` for every write transaction, since a deferred
transaction that reads and then writes fails at once with SQLITE_BUSY under concurrency. Readers
ask for `readonly=True` and get a deferred `BEGIN`, so they never wait for the write lock.
"""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from meter._exceptions import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> sa.URL:
    """Parse a database URL; plain `postgresql://` means psycopg 3, the driver meter ships with."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"bad database URL {url!r}: expected sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        backend = parsed.get_backend_name()
        raise ConfigError(f"unsupported database {backend!r}: meter runs on SQLite or PostgreSQL")
    return parsed


def make_engine(url: str, pool_size: int | None = None, **kwargs: Any) -> Engine:
    """`pool_size` (PostgreSQL): the connections kept open for reuse, and as many more opened
    under load (SQLAlchemy's default is 5 and 10: under a gateway's load, threads then queued
    for a connection, and connections beyond the five were opened and closed call after call)."""
    parsed = normalize_url(url)
    # Bound parameters (webhook secrets, user data) stay out of SQL logs and of the text of
    # database errors, which end up in logs too.
    kwargs.setdefault("hide_parameters", True)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, **kwargs)
        if pool_size is not None:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        # The connection used last is lent first: under light load the same few connections
        # (and their server processes, their caches, their prepared plans) serve every call,
        # instead of each of the pool's in turn (BENCHMARKS.md, section 8).
        kwargs.setdefault("pool_use_lifo", True)
        return _postgres_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"no driver for {parsed.drivername}: pip install 'meter[postgres]'"
        ) from exc
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the driver for {parsed.drivername} is not installed ({exc.name}): "
            "pip install 'meter[postgres]'"
        ) from exc


def _sqlite_engine(url: sa.URL, **kwargs: Any) -> Engine:
    if url.database and url.database != ":memory:":
        parent = Path(url.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(
                f"cannot open SQLite database {url.database!r}: {parent} does not exist"
            )
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _readable(fd: int) -> bool:
    """Data, or the end of the stream, waiting on socket `fd` (read nothing, wait for nothing)."""
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


def _postgres_engine(url: sa.URL, **kwargs: Any) -> Engine:
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        """SQLAlchemy's pool_pre_ping, without its round trip while the connection is plainly
        alive: an idle connection's socket has nothing to read unless the server closed it (a
        restart, pg_terminate_backend, idle timeouts) or said something unasked; only then is
        it pinged, and a dead one replaced before anyone uses it. (The ping was a round trip on
        every checkout: 160 us of a gateway call's 4 ms here, BENCHMARKS.md section 8.)"""
        try:
            fd = -1 if dbapi_conn.closed else dbapi_conn.pgconn.socket
        except Exception:  # psycopg: "the connection is lost"
            fd = -1
        if fd < 0:
            raise sa.exc.DisconnectionError("the connection is closed")
        if _readable(fd):
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:
                raise sa.exc.DisconnectionError(str(exc)) from exc

    return engine


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def check_reachable(engine: Engine) -> None:
    """Raise a one-line ConfigError if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigError(
            f"cannot reach the database {engine.url.render_as_string()}: {reason}"
        ) from None
