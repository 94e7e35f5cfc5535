"""Week arithmetic: ISO labels, half-open local boundaries, DST, week 53."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from meter.weeks import Week, load_timezone, parse_week, week_of, weeks_back, weeks_between

UTC_TZ = load_timezone("UTC")
NEW_YORK = load_timezone("America/New_York")


def test_sunday_last_millisecond_is_the_old_week_and_monday_midnight_the_new():
    sunday = datetime(2026, 11, 29, 23, 59, 59, 999000, tzinfo=UTC)
    monday = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert week_of(sunday, UTC_TZ).label == "2026-W48"
    assert week_of(sunday, UTC_TZ).start == date(2026, 11, 23)
    assert week_of(monday, UTC_TZ).label == "2026-W49"
    assert week_of(monday, UTC_TZ).start == date(2026, 11, 30)


def test_week_53_of_2026_exists_and_2025_has_none():
    w53 = parse_week("2026-W53")
    assert w53.start == date(2026, 12, 28)
    assert w53.next().label == "2027-W01"
    assert w53.next().start == date(2027, 1, 4)
    with pytest.raises(ValueError, match="no week 53"):
        parse_week("2025-W53")


def test_new_years_eve_2026_is_in_2026_w53_and_jan_4_2027_starts_w01():
    assert week_of(datetime(2027, 1, 3, 23, 59, 59, tzinfo=UTC), UTC_TZ).label == "2026-W53"
    assert week_of(datetime(2027, 1, 4, tzinfo=UTC), UTC_TZ).label == "2027-W01"
    # ISO year differs from calendar year at the start of 2025: Dec 30 2024 is 2025-W01
    assert week_of(datetime(2024, 12, 30, tzinfo=UTC), UTC_TZ).label == "2025-W01"


@pytest.mark.parametrize("bad", ["2026-48", "2026-W8", "2026W48", "2026-W00", "x", "2026-W54"])
def test_bad_week_labels_are_refused(bad: str):
    with pytest.raises(ValueError):
        parse_week(bad)


def test_us_spring_forward_week_has_167_hours_and_fall_back_169():
    spring = week_of(datetime(2026, 3, 5, 12, tzinfo=UTC), NEW_YORK)  # DST starts Sun Mar 8
    start, end = spring.bounds(NEW_YORK)
    assert spring.label == "2026-W10"
    assert start == datetime(2026, 3, 2, 5, tzinfo=UTC)  # Monday 00:00 EST
    assert end == datetime(2026, 3, 9, 4, tzinfo=UTC)  # next Monday 00:00 EDT
    assert end - start == timedelta(hours=167)
    fall = parse_week("2026-W44")  # DST ends Sun Nov 1
    start, end = fall.bounds(NEW_YORK)
    assert end - start == timedelta(hours=169)


def test_new_york_monday_midnight_boundary_is_local():
    # 04:59:59 UTC on Monday Mar 9 is still Sunday 23:59:59 in New York (EDT, UTC-4)
    assert week_of(datetime(2026, 3, 9, 3, 59, 59, tzinfo=UTC), NEW_YORK).label == "2026-W10"
    assert week_of(datetime(2026, 3, 9, 4, 0, 0, tzinfo=UTC), NEW_YORK).label == "2026-W11"
    # the same instant in UTC is already the next week
    assert week_of(datetime(2026, 3, 9, 3, 59, 59, tzinfo=UTC), UTC_TZ).label == "2026-W11"


def test_week_ranges():
    assert [w.label for w in weeks_back(parse_week("2027-W02"), 3)] == [
        "2026-W53",
        "2027-W01",
        "2027-W02",
    ]
    assert weeks_between(parse_week("2026-W52"), parse_week("2027-W01")) == [
        Week(date(2026, 12, 21)),
        Week(date(2026, 12, 28)),
        Week(date(2027, 1, 4)),
    ]


def test_naive_datetime_and_unknown_timezone_are_refused():
    with pytest.raises(ValueError):
        week_of(datetime(2026, 1, 1), UTC_TZ)
    with pytest.raises(ValueError, match="unknown timezone"):
        load_timezone("Mars/Olympus")
