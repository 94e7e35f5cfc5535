"""Bring a database to the current schema, under a lock, and pin its timezone.

The migrations ship inside the installed package (`meter/migrations` in the wheel) and live at
the repository's top level (`migrations/`) for `alembic` run from a checkout.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from meter._exceptions import ConfigError
from meter.db.engine import is_sqlite

# Any constant will do: it only has to be the same in every meter process.
MIGRATION_LOCK_ID = 0x6D65746572  # "meter"


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError("meter's migrations are missing from this installation")


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["configure_logging"] = False
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, timezone: str, revision: str = "head") -> None:
    """Migrate to `revision` and pin the timezone; concurrent starts wait for each other."""
    with engine.begin() as conn:
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
        if not is_sqlite(conn):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        command.upgrade(alembic_config(conn), revision)
        pin_timezone(conn, timezone)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as conn:
        if not is_sqlite(conn):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        command.downgrade(alembic_config(conn), revision)


def pin_timezone(conn: Connection, timezone: str) -> None:
    """The first process to see a database fixes its timezone; later ones must agree."""
    row = conn.execute(
        sa.text("SELECT value FROM meter_meta WHERE key = 'timezone'")
    ).scalar_one_or_none()
    if row is None:
        conn.execute(
            sa.text("INSERT INTO meter_meta (key, value) VALUES ('timezone', :tz)"),
            {"tz": timezone},
        )
    elif row != timezone:
        raise ConfigError(timezone_mismatch(row, timezone))


def timezone_mismatch(stored: str, configured: str) -> str:
    return (
        f"this database counts weeks in {stored}, but METER_TIMEZONE is {configured}: "
        f"set METER_TIMEZONE={stored} (a database's timezone is fixed when it is created)"
    )


def schema_status(engine: Engine) -> tuple[str | None, str | None]:
    """(current revision, head revision) of a database."""
    with engine.connect() as conn:
        return current_revision(conn), head_revision()


def check_ready(engine: Engine, timezone: str) -> None:
    """Raise ConfigError unless the schema is at head and the timezone matches."""
    current, head = schema_status(engine)
    if current != head:
        raise ConfigError(
            f"the database schema is at {current or 'nothing'}, meter needs {head}: "
            "run `meter db upgrade`"
        )
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT value FROM meter_meta WHERE key = 'timezone'")
        ).scalar_one_or_none()
    if stored is not None and stored != timezone:
        raise ConfigError(timezone_mismatch(stored, timezone))


def database_timezone(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT value FROM meter_meta WHERE key = 'timezone'")
        ).scalar_one_or_none()
