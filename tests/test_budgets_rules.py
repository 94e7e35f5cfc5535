"""The pure parts: thresholds, ratios, the projection, URL policy and signatures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from meter.budgets.rules import (
    crossed_thresholds,
    normalize_thresholds,
    projected_spend,
    ratio,
)
from meter.budgets.signing import delivery_headers, sign, verify
from meter.budgets.url_policy import RefusedUrl, check_before_send, check_for_storage
from meter.settings import get_settings
from meter.weeks import Week

USD = 10**12


def test_thresholds_are_exact_deduplicated_and_ascending():
    assert normalize_thresholds([1.0, "0.5", 0.8, Decimal("0.50")]) == [
        Decimal("0.5"),
        Decimal("0.8"),
        Decimal("1"),
    ]
    for bad in (0, -0.1, 10.000001, "1e400", "NaN", True, "0.1234567"):
        with pytest.raises(ValueError):
            normalize_thresholds([bad])
    assert normalize_thresholds([10, "0.000001"]) == [Decimal("0.000001"), Decimal("10")]


def test_crossing_is_judged_in_integers_and_decimals():
    limit = 3  # units
    assert crossed_thresholds(1, limit, [Decimal("0.333333"), Decimal("0.333334")]) == [
        Decimal("0.333333")
    ]
    # 0.1 + 0.2 != 0.3 in floats; here 3 units of a 10-unit limit is exactly 0.3.
    assert crossed_thresholds(3, 10, [Decimal("0.3")]) == [Decimal("0.3")]
    assert crossed_thresholds(0, 10, [Decimal("0.000001")]) == []
    big = 2**63 - 1
    assert crossed_thresholds(big, big, [Decimal("1")]) == [Decimal("1")]
    assert crossed_thresholds(big - 1, big, [Decimal("1")]) == []


def test_ratio_is_a_truncated_decimal_string():
    assert ratio(30 * USD, 50 * USD) == "0.6"
    assert ratio(2, 3) == "0.666666"
    assert ratio(50 * USD - 1, 50 * USD) == "0.999999"
    assert ratio(0, 5) == "0"
    assert ratio(75 * USD, 50 * USD) == "1.5"


def test_projection_is_linear_pace_over_the_real_week_length():
    tz = ZoneInfo("Europe/Paris")
    week = Week(datetime(2026, 10, 19).date())  # 2026-10-25 ends summer time: 169 hours
    start, end = week.bounds(tz)
    assert end - start == timedelta(hours=169)
    at = start + timedelta(hours=26)
    assert projected_spend(26 * USD, 100 * USD, start, end, at) == 169 * USD
    assert projected_spend(10 * USD, 100 * USD, start, end, at) is None  # 65 < 100
    assert projected_spend(20 * USD, 100 * USD, start, end, start + timedelta(hours=23)) is None
    assert projected_spend(100 * USD, 100 * USD, start, end, at) is None  # already over
    assert projected_spend(50 * USD, 100 * USD, start, end, end) is None  # week over
    assert projected_spend(0, 100 * USD, start, end, at) is None
    # exactly at the limit counts, rounded down to the unit
    utc_start = datetime(2026, 11, 23, tzinfo=UTC)
    utc_end = utc_start + timedelta(days=7)
    assert projected_spend(1, 7, utc_start, utc_end, utc_start + timedelta(days=1)) == 7
    assert projected_spend(1, 3, utc_start, utc_end, utc_start + timedelta(days=3)) is None


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"a":"0.00000011"}'
    expected = hmac.new(b"k", b"1764000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1764000000, body) == f"sha256={expected}"
    assert verify("k", "1764000000", body, f"sha256={expected}")
    assert not verify("k", "1764000001", body, f"sha256={expected}")
    headers = delivery_headers("id-1", 1764000000, body, None)
    assert headers["X-Meter-Delivery"] == "id-1" and "X-Meter-Signature" not in headers


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/x", "https://hooks.example.com/x", "https://[2001:4860::8888]/x"]
)
def test_public_urls_are_stored(url: str):
    assert check_for_storage(url, get_settings(webhook_allow_private=False)) == url


def test_the_allow_list_is_checked_before_any_lookup():
    settings = get_settings(webhook_allow_hosts="hooks.example.com", webhook_allow_private=False)
    with pytest.raises(RefusedUrl, match="not in METER_WEBHOOK_ALLOW_HOSTS"):
        check_before_send("http://127.0.0.1/x", settings)
    with pytest.raises(RefusedUrl, match="not in METER_WEBHOOK_ALLOW_HOSTS"):
        check_before_send("http://other.invalid/x", settings)
    loopback = get_settings(webhook_allow_private=False)  # the session allows loopback only
    with pytest.raises(RefusedUrl, match="loopback"):
        check_before_send("http://localhost:1/x", loopback)
    check_before_send("http://localhost:1/x", get_settings(webhook_allow_private=True))
