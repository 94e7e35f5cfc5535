"""Migrations up, down and up again; no drift between models and migrations; timezone pinning."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from meter._exceptions import ConfigError
from meter.db import migrate, models, settled
from meter.db.engine import make_engine
from meter.ids import uuid7
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


def test_0008_sums_the_holds_settled_before_it(databases: DatabaseFactory):
    """Holds settled under 0007 get their groups: an admission right after the upgrade sees
    the same spend as before it."""
    engine = make_engine(databases.url(migrated=False))
    tags = {"feature": "chat"}
    holds = [  # (team, user, tags, state, amount)
        ("search", "alice", tags, "settled", 10**15 + 1),
        ("search", "alice", tags, "settled", 2),
        ("search", "alice", None, "settled", 3),
        ("search", "", None, "settled", 4),
        ("search", "alice", tags, "held", 100),  # not settled: counted as reserved instead
        ("ads", "bob", None, "open", 200),
    ]
    try:
        migrate.upgrade(engine, "UTC", revision="0007")
        h = models.GatewayHold.__table__
        with engine.begin() as conn:
            for team, user, hold_tags, state, amount in holds:
                conn.execute(
                    sa.insert(h).values(
                        event_id=uuid7(),
                        team=team,
                        user=user,
                        tags=hold_tags,
                        model="m/x",
                        day=date(2026, 12, 7),
                        week_start=date(2026, 12, 7),
                        state=state,
                        amount_units=amount,
                        reserved_units=amount,
                        created_at=datetime.now(UTC),
                    )
                )
        migrate.upgrade(engine, "UTC")
        with engine.connect() as conn:
            groups = settled.totals_by_group(conn)
            assert groups == settled.recount(conn)
        day = date(2026, 12, 7)
        assert groups == {
            (day, "search", "alice", settled.tags_key(tags)): 10**15 + 3,
            (day, "search", "alice", ""): 3,
            (day, "search", "", ""): 4,
        }
    finally:
        engine.dispose()
