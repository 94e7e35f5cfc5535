"""The event schema: what one LLM call records. Every layer imports it from here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

STATUSES = ("ok", "incomplete", "cancelled", "error")
USAGE_SOURCES = ("provider", "estimated", "none")
# Limits on one event, shared by `Meter.record`, the client and `POST /v1/events`, so that an
# event one side accepts is never refused by the other after its caller has gone.
MAX_NAME_LENGTH = 200
# Far above any context window, and low enough that tokens x the dearest storable price
# (meter.money caps it at ~$9,223 per 1M tokens) still fits the 64-bit cost columns.
MAX_TOKENS_PER_EVENT = 10**9
MAX_MILLIS = 2**31 - 1  # latency columns are 32-bit integers
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 100
MAX_TAG_VALUE_LENGTH = 500


@dataclass(slots=True)
class EventRecord:
    id: uuid.UUID
    occurred_at: datetime  # aware
    model: str
    prompt_tokens: int
    completion_tokens: int
    user: str | None = None
    team: str | None = None
    tags: dict[str, str] | None = None
    status: str = "ok"
    usage_source: str = "provider"
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    latency_ms: int | None = None
    ttft_ms: int | None = None
    generation_id: str | None = None
    provider_cost_usd: Decimal | None = None

    def copy(self) -> EventRecord:
        """A copy that shares nothing mutable with this one (the tags dict is copied)."""
        return EventRecord(
            self.id,
            self.occurred_at,
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.user,
            self.team,
            None if self.tags is None else dict(self.tags),
            self.status,
            self.usage_source,
            self.cached_tokens,
            self.reasoning_tokens,
            self.latency_ms,
            self.ttft_ms,
            self.generation_id,
            self.provider_cost_usd,
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON shape of `POST /v1/events` and of the spool: money and ids as strings."""
        doc: dict[str, Any] = {
            "id": str(self.id),
            "occurred_at": format_timestamp(self.occurred_at),
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "status": self.status,
            "usage_source": self.usage_source,
        }
        # Only the fields that are set (one test each: this runs once per event recorded).
        if self.user is not None:
            doc["user"] = self.user
        if self.team is not None:
            doc["team"] = self.team
        if self.tags is not None:
            doc["tags"] = self.tags
        if self.cached_tokens is not None:
            doc["cached_tokens"] = self.cached_tokens
        if self.reasoning_tokens is not None:
            doc["reasoning_tokens"] = self.reasoning_tokens
        if self.latency_ms is not None:
            doc["latency_ms"] = self.latency_ms
        if self.ttft_ms is not None:
            doc["ttft_ms"] = self.ttft_ms
        if self.generation_id is not None:
            doc["generation_id"] = self.generation_id
        if self.provider_cost_usd is not None:
            doc["provider_cost_usd"] = format(self.provider_cost_usd, "f")
        return doc

    @classmethod
    def from_wire(cls, doc: dict[str, Any]) -> EventRecord:
        """Read back what `to_wire` wrote (the spool); the API validates with its own schema."""
        get = doc.get
        cost = get("provider_cost_usd")
        return cls(
            uuid.UUID(doc["id"]),
            parse_timestamp(doc["occurred_at"]),
            doc["model"],
            int(doc["prompt_tokens"]),
            int(doc["completion_tokens"]),
            get("user"),
            get("team"),
            get("tags"),
            get("status", "ok"),
            get("usage_source", "provider"),
            get("cached_tokens"),
            get("reasoning_tokens"),
            get("latency_ms"),
            get("ttft_ms"),
            get("generation_id"),
            None if cost is None else Decimal(cost),
        )


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, microseconds when there are any (as `isoformat` writes them;
    formatted by hand because `isoformat` with an offset takes twice as long)."""
    u = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    if u.microsecond:
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (2x faster than f"")
            u.year,
            u.month,
            u.day,
            u.hour,
            u.minute,
            u.second,
            u.microsecond,
        )
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031
        u.year,
        u.month,
        u.day,
        u.hour,
        u.minute,
        u.second,
    )


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 with an offset (or `Z`); a timestamp without one is refused."""
    # Python 3.11's fromisoformat reads `Z` itself, not RFC 3339's lowercase `z`.
    stripped = text.strip()
    if "z" in stripped:
        stripped = stripped.replace("z", "Z")
    moment = datetime.fromisoformat(stripped)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone offset: add Z or +HH:MM")
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


# An erased user's pseudonym starts so (meter.lifecycle.erasure); no event may carry one.
ERASED_PREFIX = "erased-"


@dataclass(frozen=True)
class InsertResult:
    """What storing a batch of events did: rows inserted, events already stored (same id), and
    events older than the purge cutoff (SPEC section 10), counted apart and never stored."""

    inserted: int
    duplicates: int
    expired: int = 0
