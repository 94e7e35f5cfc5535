"""When to retry and how long to wait. Pure (the caller sleeps).

Retried: HTTP 429, 502 and 503 (rate limited, provider down, no provider available), and
connections that could not be opened (nothing was sent). A retried call is one event.
The wait honours `Retry-After` (seconds or an HTTP date; `retry-after-ms` too) up to 60 s,
else an exponential backoff with jitter, as openai-python does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 502, 503})
MAX_RETRY_AFTER_SECONDS = 60.0
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait an upstream asked for, capped at 60 s; None when it did not ask (or garbled it)."""
    wait: float | None = None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        wait = _number(millis)
        wait = wait / 1000 if wait is not None else None
    if wait is None:
        value = headers.get("retry-after")
        if value is None:
            return None
        wait = _number(value)
        if wait is None:
            try:
                moment = parsedate_to_datetime(value.strip())
            except (TypeError, ValueError, IndexError):
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            wait = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(wait, 0.0), MAX_RETRY_AFTER_SECONDS)


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def backoff_seconds(attempt: int, headers: Mapping[str, str] | None = None) -> float:
    """The wait before retry number `attempt + 1` (attempt counts from 0)."""
    if headers is not None:
        asked = retry_after_seconds(headers)
        if asked is not None:
            return asked
    base: float = min(INITIAL_BACKOFF_SECONDS * 2.0**attempt, MAX_BACKOFF_SECONDS)
    return base * (1 - 0.25 * random.random())
