"""Request and response pieces shared by the routes: money, timestamps, names, errors.

Money leaves the API as a plain-notation string rendered by `meter.money` (pydantic would write
`1.1E-7`, FastAPI's encoder a float); timestamps leave in UTC with `Z`. Text that a database
cannot store (NUL characters, lone surrogates) is refused here with a 422 rather than failing
in the driver.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

from meter.events import (
    MAX_NAME_LENGTH,
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
    format_timestamp,
)
from meter.money import format_decimal, units_to_usd


def _render_money(value: Decimal) -> str:
    return format_decimal(value)


# USD as an exact Decimal inside, a plain-notation string in JSON: `"0.00000011"`.
Money = Annotated[
    Decimal,
    PlainSerializer(_render_money, return_type=str, when_used="always"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^-?\d+(\.\d+)?$",
            "description": "USD, exact, as a decimal string in plain notation",
            "examples": ["0.00000011"],
        }
    ),
]


def money(units: int | None) -> Decimal | None:
    """Stored units of 1e-12 USD -> the Decimal a `Money` field renders; None stays None."""
    return None if units is None else units_to_usd(units)


# An instant as it leaves the API: RFC 3339 in UTC with `Z`.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="always"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-24T12:00:00Z"]}),
]

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=5)
# RFC 3339 date-time (seconds optional, as many clients drop them); fromisoformat does the rest.
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})$"
_RFC3339 = re.compile(RFC3339_PATTERN)


RFC3339_HINT = "give an RFC 3339 timestamp with an offset, e.g. 2026-11-24T12:00:00Z"


def rfc3339_to_datetime(text: str) -> datetime:
    """Text already matching RFC3339_PATTERN -> datetime (ValueError for e.g. a 30th of Feb)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.upper())  # 't' and 'z' are allowed by RFC 3339
    except ValueError as exc:
        raise ValueError(f"not a valid date and time ({exc})") from None


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 string WITH an offset (or an aware datetime) -> aware UTC datetime.

    pydantic's own datetime parsing also takes unix numbers, digit strings and naive times;
    one plain function is also cheaper per event than a chain of validators.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and _RFC3339.match(value):
        moment = rfc3339_to_datetime(value)
    else:
        raise ValueError(RFC3339_HINT)
    if moment.tzinfo is None:
        raise ValueError("needs a timezone offset: add Z or +HH:MM")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise ValueError("is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("must be between 1970-01-01 and 9000-01-01")
    return utc


def parse_occurred_at(value: object) -> datetime:
    moment = parse_rfc3339(value)
    if moment > datetime.now(UTC) + MAX_FUTURE:
        raise ValueError("is more than 5 minutes in the future: check the caller's clock")
    return moment


_TIMESTAMP_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 with an offset",
    "examples": ["2026-11-24T12:00:00Z"],
}
# An instant as it comes in: an RFC 3339 string WITH an offset.
InputTimestamp = Annotated[
    datetime, PlainValidator(parse_rfc3339), WithJsonSchema(_TIMESTAMP_SCHEMA)
]
# The time an LLM call happened: also not more than 5 minutes ahead of this server's clock.
OccurredAt = Annotated[
    datetime, PlainValidator(parse_occurred_at), WithJsonSchema(_TIMESTAMP_SCHEMA)
]

# PostgreSQL text cannot hold NUL. A pattern is checked in pydantic's core, with no Python call
# per string; lone surrogates never get this far from JSON (pydantic's parser refuses them).
NO_NUL = r"^[^\x00]*$"


def storable_text(value: str) -> str:
    """Refuse text PostgreSQL or UTF-8 cannot hold, whichever backend is in use."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


# user, team, model, key names: what the schema's String(200) columns hold.
Name = Annotated[
    str,
    Strict(),
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NO_NUL),
]
# The same for query parameters (query strings are always strings, so no Strict()).
NameQuery = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(storable_text),
]


TagKey = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=MAX_TAG_KEY_LENGTH, pattern=NO_NUL)
]
TagValue = Annotated[
    str, Strict(), StringConstraints(max_length=MAX_TAG_VALUE_LENGTH, pattern=NO_NUL)
]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS)]


class Problem(BaseModel):
    """The body of every 4xx/5xx other than a 422: what went wrong, in one sentence."""

    detail: str


# Documented error responses, to spread into a route's `responses=`.
AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Problem, "description": "No key, or an unknown key"},
    403: {"model": Problem, "description": "This key's role or team does not allow it"},
}
