"""The schema. Money columns hold integer units of 1e-12 USD (see meter.money); timestamps are
naive UTC (SQLite would silently drop an offset); `team`/`user` are '' when absent so that they
can take part in unique keys."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC everywhere."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class _SecretStr(str):
    """A secret read from the database: a plain str, except that its repr is masked."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


class SecretString(TypeDecorator[str]):
    """A write-only secret (webhook secrets): SQLAlchemy's echo logs result rows by repr, so
    values read back come masked there; bound values are hidden by the engine's
    `hide_parameters`."""

    impl = sa.String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else _SecretStr(value)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012
        datetime: UTCDateTime(),
        int: sa.Integer(),
        str: sa.String(),
        uuid.UUID: sa.Uuid(),
        date: sa.Date(),
        dict[str, str]: sa.JSON(),
        list[str]: sa.JSON(),
    }


BigInt = sa.BigInteger()


class Meta(Base):
    """Facts fixed when the database is created, such as its timezone."""

    __tablename__ = "meter_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(256))


class Price(Base):
    __tablename__ = "prices"
    __table_args__ = (sa.UniqueConstraint("model", "effective_from"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    input_units: Mapped[int] = mapped_column(BigInt)  # 1e-12 USD per token
    output_units: Mapped[int] = mapped_column(BigInt)
    effective_from: Mapped[datetime]
    context_length: Mapped[int | None]
    created_at: Mapped[datetime]


class Event(Base):
    """One LLM call. `id` is client-made (UUIDv7) and is the idempotency key."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_group", "week_start", "team", "user", "model"),
        sa.Index("ix_events_occurred_at", "occurred_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime]
    week_start: Mapped[date]  # local Monday of occurred_at in the database's timezone
    model: Mapped[str] = mapped_column(sa.String(200))
    user: Mapped[str] = mapped_column(sa.String(200), default="")
    team: Mapped[str] = mapped_column(sa.String(200), default="")
    tags: Mapped[dict[str, str] | None]
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    completion_tokens: Mapped[int] = mapped_column(BigInt)
    cached_tokens: Mapped[int | None] = mapped_column(BigInt)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInt)
    status: Mapped[str] = mapped_column(sa.String(16))
    usage_source: Mapped[str] = mapped_column(sa.String(16))
    latency_ms: Mapped[int | None]
    ttft_ms: Mapped[int | None]
    generation_id: Mapped[str | None] = mapped_column(sa.String(200))
    provider_cost_units: Mapped[int | None] = mapped_column(BigInt)
    # What meter estimated before a generation lookup replaced the counts (SPEC section 9).
    estimated_prompt_tokens: Mapped[int | None] = mapped_column(BigInt)
    estimated_completion_tokens: Mapped[int | None] = mapped_column(BigInt)
    price_id: Mapped[int | None] = mapped_column(sa.ForeignKey("prices.id"))
    input_cost_units: Mapped[int | None] = mapped_column(BigInt)  # None: unpriced
    output_cost_units: Mapped[int | None] = mapped_column(BigInt)
    received_at: Mapped[datetime]
    day: Mapped[date]  # local date of occurred_at in the database's timezone (meter.periods)


# What a reader of events (GET /v1/events, the export) selects: the event as stored.
EVENT_COLUMNS = (
    Event.id,
    Event.occurred_at,
    Event.model,
    Event.user,
    Event.team,
    Event.tags,
    Event.prompt_tokens,
    Event.completion_tokens,
    Event.cached_tokens,
    Event.reasoning_tokens,
    Event.status,
    Event.usage_source,
    Event.latency_ms,
    Event.ttft_ms,
    Event.generation_id,
    Event.provider_cost_units,
    Event.input_cost_units,
    Event.output_cost_units,
)


class RollupDirty(Base):
    """A (week, team, user, model) group whose totals must be recomputed.

    Written in the same transaction as the events that touch it (an upsert that locks an
    existing mark, so the writer holds the row's lock until it commits), so a group can never
    be forgotten by a roll-up, whatever order concurrent transactions commit in: the roll-up
    locks the marks it takes, deletes exactly those and recomputes their groups (see
    meter/rollup/engine.py). `n` is always 1.
    """

    __tablename__ = "rollup_dirty"
    week_start: Mapped[date] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    n: Mapped[int] = mapped_column(BigInt, default=1)


class WeeklyUsage(Base):
    """Roll-up totals per (week, team, user, model)."""

    __tablename__ = "weekly_usage"
    __table_args__ = (
        sa.Index("ix_weekly_usage_team_week", "team", "week_start"),
        sa.Index("ix_weekly_usage_user_week", "user", "week_start"),
    )

    week_start: Mapped[date] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInt)
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    completion_tokens: Mapped[int] = mapped_column(BigInt)
    errors: Mapped[int] = mapped_column(BigInt)
    estimated: Mapped[int] = mapped_column(BigInt)
    unpriced: Mapped[int] = mapped_column(BigInt)
    input_cost_units: Mapped[int] = mapped_column(BigInt)  # over priced events only
    output_cost_units: Mapped[int] = mapped_column(BigInt)
    updated_at: Mapped[datetime]


class MonthlyUsage(Base):
    """Roll-up totals per (local month, team, user, model): the sum of the month's daily rows,
    so that a whole month (a month's bill) is read as one row per group. Recomputed by the
    roll-up after the chunks that change the month's days, which mark it in
    rollup_dirty_months; readers take a marked month from its weeks and days instead."""

    __tablename__ = "monthly_usage"
    # SQLite: the rows stored in their key's order, so a month's bill (~3,000 rows) is one
    # range read, not an index lookup and a table lookup per row (9 -> 4.5 ms at 5M events).
    __table_args__ = ({"sqlite_with_rowid": False},)

    month_start: Mapped[date] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInt)
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    completion_tokens: Mapped[int] = mapped_column(BigInt)
    errors: Mapped[int] = mapped_column(BigInt)
    estimated: Mapped[int] = mapped_column(BigInt)
    unpriced: Mapped[int] = mapped_column(BigInt)
    input_cost_units: Mapped[int] = mapped_column(BigInt)  # over priced events only
    output_cost_units: Mapped[int] = mapped_column(BigInt)
    updated_at: Mapped[datetime]


class RollupDirtyMonth(Base):
    """A local month whose monthly_usage rows are not (yet) the sums of its days. Written by
    the roll-up's chunks, in the transaction that changes the days; deleted in the one that
    recomputes the month. Only the roll-up lease holder writes either table."""

    __tablename__ = "rollup_dirty_months"
    month_start: Mapped[date] = mapped_column(primary_key=True)


class DailyUsage(Base):
    """Roll-up totals per (local day, team, user, model): weeks and months are sums of these.

    `week_start` is the day's local Monday, so that a roll-up chunk (which covers week groups)
    finds its days. The provider columns are over the events that carry a provider cost:
    their sum, their count and meter's own cost of them (SPEC section 9's drift).
    """

    __tablename__ = "daily_usage"
    __table_args__ = (
        sa.Index("ix_daily_usage_week_group", "week_start", "team", "user", "model"),
        sa.Index("ix_daily_usage_team_day", "team", "day"),
        sa.Index("ix_daily_usage_user_day", "user", "day"),
    )

    day: Mapped[date] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    week_start: Mapped[date]
    requests: Mapped[int] = mapped_column(BigInt)
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    completion_tokens: Mapped[int] = mapped_column(BigInt)
    errors: Mapped[int] = mapped_column(BigInt)
    estimated: Mapped[int] = mapped_column(BigInt)
    unpriced: Mapped[int] = mapped_column(BigInt)
    input_cost_units: Mapped[int] = mapped_column(BigInt)  # over priced events only
    output_cost_units: Mapped[int] = mapped_column(BigInt)
    reconciled: Mapped[int] = mapped_column(BigInt)
    provider_cost_events: Mapped[int] = mapped_column(BigInt)
    provider_cost_units: Mapped[int] = mapped_column(BigInt)
    provider_meter_cost_units: Mapped[int] = mapped_column(BigInt)
    updated_at: Mapped[datetime]


class TagKey(Base):
    """A tag key whose values are rolled up daily (`meter tags add KEY`)."""

    __tablename__ = "tag_keys"
    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    created_at: Mapped[datetime]


class DailyTagUsage(Base):
    """Roll-up totals per (local day, tag key, tag value, team, user, model), for the rolled-up
    keys only, over the events that carry the key (those without it are the day's totals minus
    these rows). Kept by the same chunks as daily_usage."""

    __tablename__ = "daily_tag_usage"
    __table_args__ = (
        sa.Index("ix_daily_tag_usage_week_group", "week_start", "team", "user", "model"),
        sa.Index("ix_daily_tag_usage_key_value_day", "tag_key", "tag_value", "day"),
    )

    day: Mapped[date] = mapped_column(primary_key=True)
    tag_key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    tag_value: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    week_start: Mapped[date]
    requests: Mapped[int] = mapped_column(BigInt)
    prompt_tokens: Mapped[int] = mapped_column(BigInt)
    completion_tokens: Mapped[int] = mapped_column(BigInt)
    errors: Mapped[int] = mapped_column(BigInt)
    estimated: Mapped[int] = mapped_column(BigInt)
    unpriced: Mapped[int] = mapped_column(BigInt)
    input_cost_units: Mapped[int] = mapped_column(BigInt)
    output_cost_units: Mapped[int] = mapped_column(BigInt)
    updated_at: Mapped[datetime]


class RollupState(Base):
    """One row: the lease that lets one roll-up run at a time, and when one last finished."""

    __tablename__ = "rollup_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    holder: Mapped[str | None] = mapped_column(sa.String(100))
    lease_expires_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]  # `as_of` of every report
    last_run_events: Mapped[int | None] = mapped_column(BigInt)
    last_run_duration_ms: Mapped[int | None]


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)  # SHA-256 hex
    prefix: Mapped[str] = mapped_column(sa.String(16))  # shown in lists to tell keys apart
    role: Mapped[str] = mapped_column(sa.String(16))
    team: Mapped[str | None] = mapped_column(sa.String(200))
    name: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]
    # A gateway key may be bound to one user and to fixed tags (SPEC section 7).
    user: Mapped[str | None] = mapped_column(sa.String(200))
    tags: Mapped[dict[str, str] | None]
    expires_at: Mapped[datetime | None]  # None: never; an expired key is refused (401)
    last_used_at: Mapped[datetime | None]  # written at most once a minute (meter.keys)


class Budget(Base):
    __tablename__ = "budgets"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(sa.String(16))  # team | user | global | tag
    subject: Mapped[str] = mapped_column(sa.String(200), default="")  # '' for global; tag: k=v
    period: Mapped[str] = mapped_column(sa.String(8), server_default="week")  # day|week|month
    # The limit of one period (named when every budget was weekly).
    weekly_limit_units: Mapped[int] = mapped_column(BigInt)
    thresholds: Mapped[list[str]]  # decimal strings, ascending
    webhook_url: Mapped[str | None] = mapped_column(sa.String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(SecretString(500))  # write-only via API
    enforce: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Alert(Base):
    """A fired threshold. The unique key makes each (budget, type, period, threshold) fire once,
    whichever process gets there first; the row is also the delivery's durable outbox entry.
    `week_start` is the start of the budget's period (its Monday for a week budget)."""

    __tablename__ = "alerts"
    __table_args__ = (
        sa.UniqueConstraint("budget_id", "type", "week_start", "threshold"),
        sa.Index("ix_alerts_delivery", "delivery_status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    budget_id: Mapped[int] = mapped_column(sa.ForeignKey("budgets.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(sa.String(40))
    period: Mapped[str] = mapped_column(sa.String(8), server_default="week")
    week_start: Mapped[date]
    threshold: Mapped[str] = mapped_column(sa.String(20))  # decimal string; '' for projections
    spend_units: Mapped[int] = mapped_column(BigInt)
    limit_units: Mapped[int] = mapped_column(BigInt)
    projected_units: Mapped[int | None] = mapped_column(BigInt)
    fired_at: Mapped[datetime]
    payload: Mapped[str | None] = mapped_column(sa.Text)  # exact bytes to sign and send
    delivery_status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]


class GatewayHold(Base):
    """A gateway call's claim on its budgets (meter/gateway/holds.py tells the whole story).

    `open`: admitted, running; `amount_units` is its worst-case cost and `expires_at` is pushed
    forward while it runs, so that a crashed server's claims lapse. `held`: cancelled or cut
    short; the full reservation stays until a generation lookup settles it. `settled`: ended;
    `amount_units` is its exact cost, counted until the roll-up chunk that counts its event
    deletes the row in the same transaction.
    """

    __tablename__ = "gateway_holds"
    # What an admission sums, per budget scope (team, user, global): the holds of one state in
    # the budget's window, read from the index alone. Led by the state, so that summing the
    # few open holds never walks the settled ones, which pile up between two roll-ups (with a
    # team's 3,200 settled holds, (team, day) made an admission 0.8 ms of SQLite work).
    __table_args__ = (
        sa.Index(
            "ix_gateway_holds_team_state", "team", "state", "day", "amount_units", "expires_at"
        ),
        sa.Index(
            "ix_gateway_holds_user_state", "user", "state", "day", "amount_units", "expires_at"
        ),
        sa.Index("ix_gateway_holds_state_day", "state", "day", "amount_units", "expires_at"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), default="")
    user: Mapped[str] = mapped_column(sa.String(200), default="")
    tags: Mapped[dict[str, str] | None]
    model: Mapped[str] = mapped_column(sa.String(200))
    day: Mapped[date]  # local date of the call in the database's timezone
    week_start: Mapped[date]  # its local Monday: the roll-up group it will be counted in
    state: Mapped[str] = mapped_column(sa.String(16))  # open | held | settled
    amount_units: Mapped[int] = mapped_column(BigInt)
    reserved_units: Mapped[int] = mapped_column(BigInt)
    expires_at: Mapped[datetime | None]  # open holds only
    created_at: Mapped[datetime]


class GatewaySettled(Base):
    """The exact cost of the gateway's settled holds, per (day, team, user, tags): what an
    admission adds to the roll-up's total, read as one row per group instead of one per call
    (meter.db.settled keeps it equal to the sum of those holds at every commit). A row goes
    when the roll-up has counted all of its calls."""

    __tablename__ = "gateway_settled"
    __table_args__ = (
        sa.Index("ix_gateway_settled_team_day", "team", "day", "amount_units"),
        sa.Index("ix_gateway_settled_user_day", "user", "day", "amount_units"),
        {"sqlite_with_rowid": False},
    )

    day: Mapped[date] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    tags_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # "" or a digest
    tags: Mapped[dict[str, str] | None]
    amount_units: Mapped[int] = mapped_column(BigInt)


class AuditEntry(Base):
    """One change made with an admin key, the CLI or the scheduler (meter.audit). Append-only:
    nothing in meter updates or deletes a row."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_action_id", "action", "id"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(250))  # key:<id>[:<name>], admin-env, cli, ...
    action: Mapped[str] = mapped_column(sa.String(64))  # dotted: key.create, price.reprice.start
    target: Mapped[str | None] = mapped_column(sa.String(300))  # key:3, budget:7, a model id
    details: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON())


class ErasedEvent(Base):
    """The id of an event deleted by a user's erasure (`delete_events=true`): kept so that a
    replay of that event is a duplicate and cannot bring it back (SPEC section 10)."""

    __tablename__ = "erased_events"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    erased_at: Mapped[datetime]


class GenerationLookup(Base):
    """An estimated event waiting for the provider's own figures (`GET /generation?id=`)."""

    __tablename__ = "generation_lookups"
    __table_args__ = (sa.Index("ix_generation_lookups_due", "state", "next_attempt_at"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    generation_id: Mapped[str] = mapped_column(sa.String(200))
    state: Mapped[str] = mapped_column(sa.String(16))  # pending | done | unavailable
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    deadline_at: Mapped[datetime]  # give up after this (METER_LOOKUP_WINDOW_SECONDS)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime]
