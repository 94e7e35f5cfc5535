"""Reports as CSV (header row first): a user report's lines, the billing report's lines; unpriced
money is an empty cell."""

from __future__ import annotations

import csv
import io

from meter.money import render_usd
from meter.reports.period_service import BillingLines
from meter.reports.queries import Totals
from meter.reports.schemas import UserReport, UserReportLine

CSV_COLUMNS = tuple(UserReportLine.model_fields)


def user_report_csv(report: UserReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in report.lines:
        values = line.model_dump()
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return out.getvalue()


BILLING_CSV_COLUMNS = (
    "from",
    "to",
    "timezone",
    "team",
    "user",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "unpriced",
    "input_cost_usd",
    "output_cost_usd",
    "cost_usd",
)


def billing_csv(bill: BillingLines) -> str:
    """One line per (team, user, model); money exact, never rounded; unpriced money empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(BILLING_CSV_COLUMNS)
    dates = (bill.first, bill.to, bill.timezone)
    writer.writerows(
        (
            *dates, team, user, model, t.requests, t.prompt_tokens, t.completion_tokens,
            t.unpriced, *_money(t),
        )
        for team, user, model, t in bill.lines
    )  # fmt: skip
    return out.getvalue()


def _money(t: Totals) -> tuple[str | None, str | None, str | None]:
    """Input, output and total cost; empty when every event counted is unpriced."""
    if t.requests > 0 and t.unpriced == t.requests:
        return ("", "", "")
    i, o = t.input_units, t.output_units
    return (render_usd(i), render_usd(o), render_usd(i + o))
