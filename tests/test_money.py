"""Money: integer units of 1e-12 USD, exact parsing and plain-notation rendering."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter._exceptions import InvalidPrice
from meter.money import (
    format_decimal,
    per_million_to_units_per_token,
    per_token_to_units_per_token,
    render_usd,
    to_decimal,
    units_to_usd,
    usd_to_units,
)


def test_rendering_is_plain_notation_without_exponent():
    assert render_usd(110_000) == "0.00000011"
    assert render_usd(3_000_000_000) == "0.003"
    assert render_usd(0) == "0"
    assert render_usd(10**13) == "10"
    assert render_usd(None) is None


def test_seed_prices_are_whole_units_per_token():
    assert per_million_to_units_per_token("0.11", "input") == 110_000
    assert per_million_to_units_per_token("0.19", "output") == 190_000
    assert per_token_to_units_per_token("0.00000011", "prompt") == 110_000
    assert per_token_to_units_per_token("1.1e-7", "prompt") == 110_000
    assert per_token_to_units_per_token("0", "prompt") == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-0.11", "negative"),
        ("abc", "not a number"),
        ("0.1234567", "more than 6 decimals"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        (0.11, "not a float"),
    ],
)
def test_malformed_prices_are_refused_naming_the_field(value: object, message: str):
    with pytest.raises(InvalidPrice, match=message) as info:
        per_million_to_units_per_token(value, "input_per_million_usd")
    assert "input_per_million_usd" in str(info.value)
    assert info.value.field == "input_per_million_usd"


def test_usd_units_round_trip_and_refuse_extra_precision():
    assert usd_to_units(Decimal("12.000000000001")) == 12_000_000_000_001
    with pytest.raises(InvalidPrice, match="precision"):
        usd_to_units(Decimal("0.0000000000001"))
    assert to_decimal("1E-7") == Decimal("0.0000001")


@pytest.mark.parametrize("huge", ["1e999999", "-1e999999", "123456789012345678901"])
def test_absurdly_large_amounts_are_refused_not_overflowed(huge: str):
    with pytest.raises(InvalidPrice, match="too large"):
        per_million_to_units_per_token(huge, "input_per_million_usd")
    with pytest.raises(InvalidPrice, match="too large"):
        usd_to_units(to_decimal(huge, "weekly_limit_usd"), "weekly_limit_usd")


@given(st.integers(min_value=-(10**27), max_value=10**27))
def test_the_integer_rendering_is_the_decimal_one(units: int) -> None:
    assert render_usd(units) == format_decimal(units_to_usd(units))
    assert Decimal(render_usd(units) or "0") == units_to_usd(units)


def test_rendering_negative_and_whole_amounts() -> None:
    assert render_usd(-700_000_000) == "-0.0007"
    assert render_usd(-(10**12)) == "-1"
    assert render_usd(123 * 10**12 + 1) == "123.000000000001"
    assert render_usd(10**40) == "1" + "0" * 28  # exact beyond Decimal's 28 digits
