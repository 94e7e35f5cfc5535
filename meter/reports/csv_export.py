"""Reports as CSV (header row first): a user report's lines, the billing report's lines; unpriced
money is an empty cell."""

from __future__ import annotations

import csv
import io

from meter.money import render_usd
from meter.reports.queries import Totals
from meter.reports.schemas import BillingReport, UserReport, UserReportLine

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


def billing_csv(report: BillingReport, lines: list[tuple[str, str, str, Totals]]) -> str:
    """One line per (team, user, model); money exact, never rounded; unpriced money empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(BILLING_CSV_COLUMNS)
    for team, user, model, t in lines:
        unpriced_only = t.all_unpriced
        writer.writerow(
            [
                report.first,
                report.to,
                report.timezone,
                team,
                user,
                model,
                t.requests,
                t.prompt_tokens,
                t.completion_tokens,
                t.unpriced,
                "" if unpriced_only else render_usd(t.input_units),
                "" if unpriced_only else render_usd(t.output_units),
                "" if unpriced_only else render_usd(t.cost_units),
            ]
        )
    return out.getvalue()
