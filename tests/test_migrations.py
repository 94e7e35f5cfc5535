"""Migrations up, down and up again; no drift between models and migrations; timezone pinning."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from meter._exceptions import ConfigError
from meter.db import migrate
from meter.db.engine import make_engine
from tests.conftest import DatabaseFactory


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_and_no_drift(databases: DatabaseFactory):
    engine = make_engine(databases.url(migrated=False))
    try:
        migrate.upgrade(engine, "UTC")
        assert {"events", "prices", "weekly_usage", "budgets", "alerts", "api_keys"} <= tables(
            engine
        )
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            seeded = conn.execute(
                sa.text("SELECT model, input_units, output_units FROM prices")
            ).all()
        assert seeded == [("mistralai/mistral-7b-instruct-v0.1", 110_000, 190_000)]
        migrate.downgrade(engine, "base")
        assert tables(engine) == set()
        migrate.upgrade(engine, "UTC")
        with engine.connect() as conn:
            command.check(migrate.alembic_config(conn))  # raises on any drift
    finally:
        engine.dispose()


def test_a_database_keeps_the_timezone_it_was_created_with(databases: DatabaseFactory):
    engine = make_engine(databases.url(timezone="Europe/Paris"))
    try:
        migrate.upgrade(engine, "Europe/Paris")  # same timezone: fine, idempotent
        with pytest.raises(
            ConfigError, match=r"counts weeks in Europe/Paris.*METER_TIMEZONE is UTC"
        ):
            migrate.upgrade(engine, "UTC")
        with pytest.raises(ConfigError, match="Europe/Paris"):
            migrate.check_ready(engine, "UTC")
    finally:
        engine.dispose()


def test_old_schema_is_reported_not_used(databases: DatabaseFactory):
    engine = make_engine(databases.url(migrated=False))
    try:
        with pytest.raises(ConfigError, match="meter db upgrade"):
            migrate.check_ready(engine, "UTC")
    finally:
        engine.dispose()
