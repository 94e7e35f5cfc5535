"""Open the configured database, ready for use: reachable, at the current schema, right timezone."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from meter.db import migrate
from meter.db.engine import check_reachable, is_sqlite, make_engine
from meter.settings import Settings
from meter.weeks import load_timezone


@dataclass
class Database:
    engine: Engine
    tz: ZoneInfo

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings: Settings, *, upgrade: bool) -> Database:
    """Connect; with `upgrade`, bring the schema to head (under a lock) first.

    Raises ConfigError with a one-line reason when the URL is bad, the database is unreachable,
    the schema is old (without `upgrade`) or the database counts weeks in another timezone.
    """
    engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
    try:
        check_reachable(engine)
        if upgrade:
            migrate.upgrade(engine, settings.timezone)
        else:
            migrate.check_ready(engine, settings.timezone)
    except BaseException:
        engine.dispose()
        raise
    return Database(engine=engine, tz=load_timezone(settings.timezone))
