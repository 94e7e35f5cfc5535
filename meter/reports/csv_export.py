"""A user report's lines as CSV (header row first); unpriced money is an empty cell."""

from __future__ import annotations

import csv
import io

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
