"""Reports by day, week and month, and the billing report (SPEC section 8): validated inputs in,
SPEC-shaped results out, for the API, the CLI and the dashboard alike. Periods are local to the
database's timezone (meter.periods); every number is a sum of daily roll-up rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from meter._exceptions import InvalidRequest
from meter.db.session import Database
from meter.money import render_usd
from meter.periods import PeriodKind, local_date, window_at, window_of, windows_back
from meter.reports import period_queries as pq
from meter.reports.queries import DIMENSIONS, Totals, reading
from meter.reports.ranges import MAX_DAYS, date_range, parse_kind, parse_label
from meter.reports.schemas import (
    BillingEntry,
    BillingReport,
    PeriodUsage,
    PeriodUsageRow,
    TaggedPeriodUsageRow,
)
from meter.reports.service import _blank_is_none, _costs, rollup_as_of
from meter.tags.repository import list_keys
from meter.weeks import now_utc

DEFAULT_COUNT: dict[PeriodKind, int] = {"day": 31, "week": 12, "month": 12}
TAG_PREFIX = "tag:"


def parse_usage_group_by(value: str | None) -> tuple[tuple[str, ...], str | None]:
    """`team,tag:feature` -> (("team",), "feature"); default all three dimensions, no tag."""
    if value is None:
        return DIMENSIONS, None
    names = [part.strip() for part in value.split(",") if part.strip()]
    tags = [n.removeprefix(TAG_PREFIX) for n in names if n.startswith(TAG_PREFIX)]
    if len(tags) > 1:
        raise InvalidRequest("group_by: at most one tag:<key>", "group_by")
    if tags and not tags[0]:
        raise InvalidRequest("group_by: tag: needs a key, e.g. tag:feature", "group_by")
    unknown = [n for n in names if not n.startswith(TAG_PREFIX) and n not in DIMENSIONS]
    if unknown:
        raise InvalidRequest(
            f"group_by: unknown dimension {unknown[0]!r}; use a comma-separated subset of "
            f"{','.join(DIMENSIONS)}, plus at most one tag:<key>",
            "group_by",
        )
    return tuple(d for d in DIMENSIONS if d in names), (tags[0] if tags else None)


def usage(
    db: Database,
    *,
    period: str | None = None,
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    group_by: str | None = None,
    now: datetime | None = None,
) -> PeriodUsage:
    """`GET /v1/usage`: totals per day, week or month (empty periods omitted)."""
    kind = parse_kind(period)
    dims, tag_key = parse_usage_group_by(group_by)
    end = parse_label(kind, last, "to") if last is not None else None
    implicit_end = end is None
    if end is None:
        end = window_of(kind, now or now_utc(), db.tz)
    start = (
        parse_label(kind, first, "from")
        if first is not None
        else windows_back(end, DEFAULT_COUNT[kind])[0]
    )
    if start > end:
        to = f"{end.label} (this {kind})" if implicit_end else end.label
        raise InvalidRequest(
            f"from: {start.label} is after to: {to}; the range is inclusive, oldest first",
            "from",
        )
    if (end.end - start.start).days > MAX_DAYS:
        raise InvalidRequest(f"from: at most {MAX_DAYS} days in one answer", "from")
    with reading(db) as conn:
        if tag_key is not None and tag_key not in list_keys(conn):
            raise InvalidRequest(
                f"group_by: tag key {tag_key!r} is not rolled up; add it with "
                f"`meter tags add {tag_key}` (it is then counted from the raw events kept)",
                "group_by",
            )
        as_of = rollup_as_of(conn)
        found = pq.period_totals(
            conn,
            kind,
            start.start,
            end.last_day,
            team=team,
            user=user,
            model=model,
            group_by=dims,
            tag_key=tag_key,
        )
    rows: list[PeriodUsageRow] = []
    for r in found:
        cost_in, cost_out, cost = _costs(r.totals)
        window = window_at(kind, r.period_start)
        fields = {
            "period": window.label,
            "period_start": window.start.isoformat(),
            "team": _blank_is_none(r.team),
            "user": _blank_is_none(r.user),
            "model": r.model,
            "requests": r.totals.requests,
            "prompt_tokens": r.totals.prompt_tokens,
            "completion_tokens": r.totals.completion_tokens,
            "errors": r.totals.errors,
            "estimated": r.totals.estimated,
            "unpriced": r.totals.unpriced,
            "input_cost_usd": cost_in,
            "output_cost_usd": cost_out,
            "cost_usd": cost,
        }
        if tag_key is not None:
            rows.append(TaggedPeriodUsageRow(**fields, tags={tag_key: r.tag_value}))
        else:
            rows.append(PeriodUsageRow(**fields))
    return PeriodUsage(as_of=as_of, period=kind, rows=rows)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BillingLines:
    """What a bill is made of: its dates, and one line per (team, user, model), key order."""

    first: str
    to: str
    timezone: str
    as_of: str | None
    lines: list[tuple[str, str, str, Totals]]


def billing_lines(
    db: Database,
    *,
    month: str | None = None,
    week: str | None = None,
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    now: datetime | None = None,
) -> BillingLines:
    """The (team, user, model) lines of a month (default this month), a week or a range of
    local dates: the CSV's rows, and what `billing_report` sums per user."""
    span = date_range(db, week=week, month=month, first=first, last=last, default="month", now=now)
    with reading(db) as conn:
        as_of = rollup_as_of(conn)
        lines = pq.billing_lines(conn, span.first, span.last, team)
    return BillingLines(span.first.isoformat(), span.last.isoformat(), db.tz.key, as_of, lines)


def billing_report(
    db: Database,
    *,
    month: str | None = None,
    week: str | None = None,
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    now: datetime | None = None,
) -> tuple[BillingReport, list[tuple[str, str, str, Totals]]]:
    """The bill of a month (default this month), a week or a range of local dates: one entry
    per (user, team), most expensive first; and the (team, user, model) lines behind it."""
    bill = billing_lines(db, month=month, week=week, first=first, last=last, team=team, now=now)
    lines = bill.lines
    # (user, team) -> [requests, prompt, completion, unpriced, cost units]: plain lists, summed in
    # place (a month is ~3,000 lines for ~1,000 entries; frozen Totals cost an object per add).
    per_entry: dict[tuple[str, str], list[int]] = {}
    for t, u, _model, x in lines:
        acc = per_entry.get((u, t))
        if acc is None:
            per_entry[(u, t)] = [
                x.requests, x.prompt_tokens, x.completion_tokens, x.unpriced, x.cost_units
            ]  # fmt: skip
        else:
            acc[0] += x.requests
            acc[1] += x.prompt_tokens
            acc[2] += x.completion_tokens
            acc[3] += x.unpriced
            acc[4] += x.cost_units
    entries = sorted(per_entry.items(), key=lambda e: (-e[1][4], -e[1][0], e[0][1], e[0][0]))
    total = sum(a[4] for _, a in entries)
    # Built without validation: every field is computed here, of the declared type.
    report = BillingReport.model_construct(
        first=bill.first,
        to=bill.to,
        timezone=bill.timezone,
        as_of=bill.as_of,
        users=[
            BillingEntry.model_construct(
                user=u or None,  # '' is how "no user" / "no team" is stored
                team=t or None,
                requests=a[0],
                prompt_tokens=a[1],
                completion_tokens=a[2],
                unpriced=a[3],
                # None when every event counted is unpriced (as _costs says)
                cost_usd=None if a[0] > 0 and a[3] == a[0] else render_usd(a[4]),
            )
            for (u, t), a in entries
        ],
        total_cost_usd=render_usd(total) or "0",
    )
    return report, lines


def today(db: Database, now: datetime | None = None) -> date:
    return local_date(now or now_utc(), db.tz)
