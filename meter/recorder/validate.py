"""`Meter.record`'s arguments -> an EventRecord, or InvalidRequest naming the bad field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from meter._exceptions import InvalidRequest
from meter.events import (
    ERASED_PREFIX,
    MAX_NAME_LENGTH,
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
    MAX_TOKENS_PER_EVENT,
    STATUSES,
    USAGE_SOURCES,
    EventRecord,
)
from meter.ids import uuid7

# The API refuses events further ahead than this (SPEC section 3); refuse them here too, since
# a meter server would reject them after the caller had gone.
MAX_FUTURE = timedelta(minutes=5)


def _count(value: object, field: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field}: must be an integer, got {value!r}", field)
    if value < 0:
        raise InvalidRequest(f"{field}: must be >= 0, got {value}", field)
    if value > MAX_TOKENS_PER_EVENT:
        raise InvalidRequest(f"{field}: must be <= {MAX_TOKENS_PER_EVENT}, got {value}", field)
    return value


def _name(value: object, field: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field}: must be a non-empty string, got {value!r}", field)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{field}: at most {MAX_NAME_LENGTH} characters", field)
    if "\x00" in value:
        raise InvalidRequest(f"{field}: NUL characters are not allowed", field)
    return value


def _tags(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidRequest("tags: must be a dict of str -> str", "tags")
    if len(value) > MAX_TAGS:
        raise InvalidRequest(f"tags: at most {MAX_TAGS} tags", "tags")
    for k, v in value.items():
        if not k or len(k) > MAX_TAG_KEY_LENGTH or len(v) > MAX_TAG_VALUE_LENGTH:
            raise InvalidRequest(
                f"tags: keys of 1 to {MAX_TAG_KEY_LENGTH} characters, values of at most "
                f"{MAX_TAG_VALUE_LENGTH}",
                "tags",
            )
        if "\x00" in k or "\x00" in v:
            raise InvalidRequest("tags: NUL characters are not allowed", "tags")
    return dict(value)


def _moment(value: object) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, datetime):
        raise InvalidRequest(f"occurred_at: must be a datetime, got {value!r}", "occurred_at")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(
            "occurred_at: needs a timezone (e.g. datetime.now(UTC)); naive times are ambiguous",
            "occurred_at",
        )
    if value - datetime.now(UTC) > MAX_FUTURE:
        raise InvalidRequest("occurred_at: more than 5 minutes in the future", "occurred_at")
    return value.astimezone(UTC)


def _event_id(value: object) -> uuid.UUID:
    if value is None:
        return uuid7()
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidRequest(f"event_id: must be a UUID, got {value!r}", "event_id")


def _choice(value: object, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{field}: must be one of {', '.join(allowed)}, got {value!r}", field)
    assert isinstance(value, str)
    return value


def _cost(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool | float):
        raise InvalidRequest(
            "provider_cost_usd: give money as a string or Decimal", "provider_cost_usd"
        )
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(
            f"provider_cost_usd: {value!r} is not a number", "provider_cost_usd"
        ) from None
    if not d.is_finite() or d < 0:
        raise InvalidRequest("provider_cost_usd: must be a finite amount >= 0", "provider_cost_usd")
    return d


def _ok_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKENS_PER_EVENT


def _ok_user(value: object) -> bool:
    return _ok_name(value) and not value.startswith(ERASED_PREFIX)  # type: ignore[attr-defined]


def _user(value: object) -> str | None:
    """A user id, which may not be an erased user's pseudonym (SPEC section 10)."""
    user = _name(value, "user", optional=True)
    if user is not None and user.startswith(ERASED_PREFIX):
        raise InvalidRequest(
            f"user: must not start with {ERASED_PREFIX!r}: such ids are erased users' pseudonyms",
            "user",
        )
    return user


def _ok_name(value: object) -> bool:
    # The common case of `_name`, checked in one expression; anything else goes through `_name`
    # (which accepts it or raises naming the field). `not v.strip()` == `v == "" or v.isspace()`.
    return (
        type(value) is str
        and 0 < len(value) <= MAX_NAME_LENGTH
        and not value.isspace()
        and "\x00" not in value
    )


def build_event(
    *,
    model: object,
    prompt_tokens: object,
    completion_tokens: object,
    user: object,
    team: object,
    occurred_at: object,
    status: object,
    event_id: object,
    tags: object,
    usage_source: object,
    cached_tokens: object,
    reasoning_tokens: object,
    latency_ms: object,
    ttft_ms: object,
    generation_id: object,
    provider_cost_usd: object,
) -> EventRecord:
    # Every value passes the same checks as `_count`/`_name`/... ; the common, valid case is
    # tested inline (this runs once per event recorded), the rest goes through the helpers.
    prompt = prompt_tokens if _ok_count(prompt_tokens) else _count(prompt_tokens, "prompt_tokens")
    completion = (
        completion_tokens
        if _ok_count(completion_tokens)
        else _count(completion_tokens, "completion_tokens")
    )
    assert isinstance(prompt, int) and isinstance(completion, int)
    return EventRecord(
        uuid7() if event_id is None else _event_id(event_id),
        datetime.now(UTC) if occurred_at is None else _moment(occurred_at),
        model if _ok_name(model) else (_name(model, "model", optional=False) or ""),  # type: ignore[arg-type]
        prompt,
        completion,
        user if user is None or _ok_user(user) else _user(user),  # type: ignore[arg-type]
        team if team is None or _ok_name(team) else _name(team, "team", optional=True),  # type: ignore[arg-type]
        None if tags is None else _tags(tags),
        status if status == "ok" and type(status) is str else _choice(status, "status", STATUSES),
        usage_source
        if usage_source == "provider" and type(usage_source) is str
        else _choice(usage_source, "usage_source", USAGE_SOURCES),
        None if cached_tokens is None else _count(cached_tokens, "cached_tokens"),
        None if reasoning_tokens is None else _count(reasoning_tokens, "reasoning_tokens"),
        None if latency_ms is None else _count(latency_ms, "latency_ms"),
        None if ttft_ms is None else _count(ttft_ms, "ttft_ms"),
        None if generation_id is None else _name(generation_id, "generation_id", optional=True),
        None if provider_cost_usd is None else _cost(provider_cost_usd),
    )
