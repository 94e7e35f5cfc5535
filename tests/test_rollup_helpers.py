"""Helpers for roll-up tests: store events, and compare the roll-up with the raw events."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, timedelta
from typing import Any

import sqlalchemy as sa

from meter.db import models
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.events import EventRecord

TOTALS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "estimated",
    "unpriced",
    "input_cost_units",
    "output_cost_units",
)
GroupKey = tuple[date, str, str, str]


def store(db: Database, events: Sequence[EventRecord]) -> int:
    with db.engine.begin() as conn:
        return insert_events(conn, list(events), load_price_book(conn), db.tz).inserted


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def expected_totals(db: Database) -> dict[GroupKey, tuple[int, ...]]:
    """What the roll-up must hold, computed in Python from every stored event."""
    e = models.Event
    sums: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * len(TOTALS))
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                e.week_start,
                e.team,
                e.user,
                e.model,
                e.prompt_tokens,
                e.completion_tokens,
                e.status,
                e.usage_source,
                e.input_cost_units,
                e.output_cost_units,
            )
        ).all()
    for r in rows:
        s = sums[(_date(r.week_start), r.team, r.user, r.model)]
        s[0] += 1
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
        s[3] += r.status == "error"
        s[4] += r.usage_source == "estimated"
        s[5] += r.input_cost_units is None
        s[6] += r.input_cost_units or 0
        s[7] += r.output_cost_units or 0
    return {k: tuple(v) for k, v in sums.items()}


def rolled_up(db: Database) -> dict[GroupKey, tuple[int, ...]]:
    """weekly_usage as {(week_start, team, user, model): totals}."""
    w = models.WeeklyUsage
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(w.week_start, w.team, w.user, w.model, *(getattr(w, c) for c in TOTALS))
        ).all()
    return {(_date(r[0]), r[1], r[2], r[3]): tuple(r[4:]) for r in rows}


DAILY_TOTALS = (
    *TOTALS,
    "reconciled",
    "provider_cost_events",
    "provider_cost_units",
    "provider_meter_cost_units",
)


def expected_days(db: Database) -> dict[GroupKey, tuple[int, ...]]:
    """What daily_usage must hold, per (local day, team, user, model), from every event."""
    e = models.Event
    sums: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * len(DAILY_TOTALS))
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(e.__table__)).all()
    for r in rows:
        local = r.occurred_at.replace(tzinfo=UTC).astimezone(db.tz).date()
        assert _date(r.day) == local, "the stored day is the local date of occurred_at"
        s = sums[(local, r.team, r.user, r.model)]
        cost = (r.input_cost_units or 0) + (r.output_cost_units or 0)
        values = (
            1,
            r.prompt_tokens,
            r.completion_tokens,
            r.status == "error",
            r.usage_source == "estimated",
            r.input_cost_units is None,
            r.input_cost_units or 0,
            r.output_cost_units or 0,
            r.usage_source == "reconciled",
            r.provider_cost_units is not None,
            r.provider_cost_units or 0,
            cost if r.provider_cost_units is not None else 0,
        )
        for i, v in enumerate(values):
            s[i] += int(v)
    return {k: tuple(v) for k, v in sums.items()}


def rolled_up_days(db: Database) -> dict[GroupKey, tuple[int, ...]]:
    """daily_usage as {(day, team, user, model): totals}; each row's week_start checked."""
    d = models.DailyUsage
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                d.day, d.team, d.user, d.model, d.week_start, *(getattr(d, c) for c in DAILY_TOTALS)
            )
        ).all()
    out = {}
    for r in rows:
        day = _date(r[0])
        assert _date(r[4]) == day - timedelta(days=day.weekday())
        out[(day, r[1], r[2], r[3])] = tuple(int(v) for v in r[5:])
    return out


def weeks_from_days(days: dict[GroupKey, tuple[int, ...]]) -> dict[GroupKey, tuple[int, ...]]:
    """The weekly totals the days add up to (the first len(TOTALS) columns)."""
    weeks: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * len(TOTALS))
    for (day, team, user, model), values in days.items():
        w = weeks[(day - timedelta(days=day.weekday()), team, user, model)]
        for i in range(len(TOTALS)):
            w[i] += values[i]
    return {k: tuple(v) for k, v in weeks.items()}


def months_from_days(days: dict[GroupKey, tuple[int, ...]]) -> dict[GroupKey, tuple[int, ...]]:
    """The monthly totals the days add up to, keyed by the month's first day."""
    months: dict[GroupKey, list[int]] = defaultdict(lambda: [0] * len(TOTALS))
    for (day, team, user, model), values in days.items():
        m = months[(day.replace(day=1), team, user, model)]
        for i in range(len(TOTALS)):
            m[i] += values[i]
    return {k: tuple(v) for k, v in months.items()}


def rolled_up_months(db: Database) -> dict[GroupKey, tuple[int, ...]]:
    """monthly_usage as {(month_start, team, user, model): totals}."""
    m = models.MonthlyUsage
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.month_start, m.team, m.user, m.model, *(getattr(m, c) for c in TOTALS))
        ).all()
    return {(_date(r[0]), r[1], r[2], r[3]): tuple(int(v) for v in r[4:]) for r in rows}


def marked_months(db: Database) -> list[date]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT month_start FROM rollup_dirty_months ORDER BY 1"))
        return [_date(r[0]) for r in rows]


TagKey = tuple[date, str, str, str, str, str]  # (day, key, value, team, user, model)


def expected_tags(db: Database) -> dict[TagKey, tuple[int, ...]]:
    """What daily_tag_usage must hold for the rolled-up keys, from every event."""
    e = models.Event
    sums: dict[TagKey, list[int]] = defaultdict(lambda: [0] * len(TOTALS))
    with db.engine.connect() as conn:
        keys = set(conn.execute(sa.select(models.TagKey.key)).scalars())
        rows = conn.execute(sa.select(e.__table__)).all()
    for r in rows:
        tags = r.tags if isinstance(r.tags, dict) or r.tags is None else json.loads(r.tags)
        for key, value in (tags or {}).items():
            if key not in keys:
                continue
            s = sums[(_date(r.day), key, value, r.team, r.user, r.model)]
            values = (
                1,
                r.prompt_tokens,
                r.completion_tokens,
                r.status == "error",
                r.usage_source == "estimated",
                r.input_cost_units is None,
                r.input_cost_units or 0,
                r.output_cost_units or 0,
            )
            for i, v in enumerate(values):
                s[i] += int(v)
    return {k: tuple(v) for k, v in sums.items()}


def rolled_up_tags(db: Database) -> dict[TagKey, tuple[int, ...]]:
    t = models.DailyTagUsage
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                t.day, t.tag_key, t.tag_value, t.team, t.user, t.model,
                *(getattr(t, c) for c in TOTALS),
            )
        ).all()  # fmt: skip
    return {(_date(r[0]), *r[1:6]): tuple(int(v) for v in r[6:]) for r in rows}


def dirty_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM rollup_dirty")).scalar_one())


def clear(db: Database) -> None:
    """Empty the ledger and the roll-up (hypothesis reuses one database across examples)."""
    with db.engine.begin() as conn:
        for table in (
            "events",
            "weekly_usage",
            "daily_usage",
            "daily_tag_usage",
            "monthly_usage",
            "tag_keys",
            "rollup_dirty",
            "rollup_dirty_months",
        ):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(
            sa.text(
                "UPDATE rollup_state SET holder = NULL, lease_expires_at = NULL, "
                "last_run_at = NULL WHERE id = 1"
            )
        )
