"""Reports over the weekly roll-up: usage, per-user bills, team summaries (one code path)."""

from meter.reports.service import team_summary, user_report, weekly_usage

__all__ = ["team_summary", "user_report", "weekly_usage"]
