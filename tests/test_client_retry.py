"""How long to wait before a retry: `Retry-After` honoured up to 60 s. Pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from meter.client._retry import backoff_seconds, retry_after_seconds

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def wait(**headers: str) -> float | None:
    return retry_after_seconds(
        httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()}), NOW
    )


def test_retry_after_in_seconds() -> None:
    assert wait(retry_after="3") == 3.0
    assert wait(retry_after=" 1.5 ") == 1.5
    assert wait(retry_after="0") == 0.0
    assert wait(retry_after="-4") == 0.0


def test_retry_after_as_an_http_date() -> None:
    assert wait(retry_after="Tue, 24 Nov 2026 12:00:20 GMT") == 20.0
    assert wait(retry_after="Tue, 24 Nov 2026 11:59:00 GMT") == 0.0


def test_retry_after_is_capped_at_60_seconds() -> None:
    assert wait(retry_after="3600") == 60.0
    assert wait(retry_after="Wed, 25 Nov 2026 12:00:00 GMT") == 60.0


def test_retry_after_ms_wins_and_garbage_is_ignored() -> None:
    assert wait(retry_after_ms="250", retry_after="9") == 0.25
    assert wait(retry_after="soon") is None
    assert wait(retry_after="nan") is None
    assert wait() is None


def test_backoff_without_retry_after_grows_with_jitter_and_is_bounded() -> None:
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (10, 8.0)]:
        for _ in range(20):
            assert 0.75 * base <= backoff_seconds(attempt) <= base
    assert backoff_seconds(0, httpx.Headers({"retry-after": "2"})) == 2.0
