"""All SQL of tag keys. The caller owns the transaction; nothing here commits."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models
from meter.rollup.repository import AGGREGATES

K = models.TagKey


def list_keys(conn: Connection) -> list[str]:
    return [str(k) for k in conn.execute(sa.select(K.key).order_by(K.key)).scalars()]


def insert_key(conn: Connection, key: str, now: datetime) -> None:
    conn.execute(sa.insert(K).values(key=key, created_at=now))


def delete_key(conn: Connection, key: str) -> int:
    """Forget a key and its rolled-up rows -> rows deleted."""
    rows = conn.execute(
        sa.delete(models.DailyTagUsage).where(models.DailyTagUsage.tag_key == key)
    ).rowcount
    conn.execute(sa.delete(K).where(K.key == key))
    return int(rows or 0)


def budgets_using(conn: Connection, key: str) -> list[int]:
    b = models.Budget
    rows = conn.execute(sa.select(b.id, b.subject).where(b.scope == "tag").order_by(b.id)).all()
    return [int(r.id) for r in rows if r.subject.partition("=")[0] == key]


def backfill(conn: Connection, key: str, now: datetime | None = None) -> int:
    """A new key's daily rows from the raw events kept -> rows written.

    Only groups already rolled up (with a weekly row): a group still marked dirty gets its tag
    rows from the chunk that takes its mark, which writes them beside its days (whose range
    has no rows yet when it has no weekly row). The caller holds the roll-up lease.
    """
    if conn.dialect.name == "postgresql":
        each = "CROSS JOIN LATERAL json_each_text(e.tags) AS j(key, value)"
    else:
        each = "JOIN json_each(e.tags) AS j"
    result = conn.execute(
        sa.text(
            'INSERT INTO daily_tag_usage (day, tag_key, tag_value, team, "user", model, '
            "week_start, requests, prompt_tokens, completion_tokens, errors, estimated, "
            "unpriced, input_cost_units, output_cost_units, updated_at) "
            f'SELECT e.day, j.key, j.value, e.team, e."user", e.model, e.week_start, {AGGREGATES} '
            f"FROM events e {each} "
            "WHERE e.tags IS NOT NULL AND j.key = :key AND j.value IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM weekly_usage w WHERE w.week_start = e.week_start "
            'AND w.team = e.team AND w."user" = e."user" AND w.model = e.model) '
            'GROUP BY e.day, j.key, j.value, e.team, e."user", e.model, e.week_start'
        ).bindparams(sa.bindparam("now", type_=models.UTCDateTime())),
        {"key": key, "now": now or datetime.now(UTC)},
    )
    return int(result.rowcount or 0)
