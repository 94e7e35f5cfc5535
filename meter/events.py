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
        for name in (
            "user",
            "team",
            "tags",
            "cached_tokens",
            "reasoning_tokens",
            "latency_ms",
            "ttft_ms",
            "generation_id",
        ):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.provider_cost_usd is not None:
            doc["provider_cost_usd"] = format(self.provider_cost_usd, "f")
        return doc

    @classmethod
    def from_wire(cls, doc: dict[str, Any]) -> EventRecord:
        """Read back what `to_wire` wrote (the spool); the API validates with its own schema."""
        cost = doc.get("provider_cost_usd")
        return cls(
            id=uuid.UUID(doc["id"]),
            occurred_at=parse_timestamp(doc["occurred_at"]),
            model=doc["model"],
            prompt_tokens=int(doc["prompt_tokens"]),
            completion_tokens=int(doc["completion_tokens"]),
            user=doc.get("user"),
            team=doc.get("team"),
            tags=doc.get("tags"),
            status=doc.get("status", "ok"),
            usage_source=doc.get("usage_source", "provider"),
            cached_tokens=doc.get("cached_tokens"),
            reasoning_tokens=doc.get("reasoning_tokens"),
            latency_ms=doc.get("latency_ms"),
            ttft_ms=doc.get("ttft_ms"),
            generation_id=doc.get("generation_id"),
            provider_cost_usd=Decimal(cost) if cost is not None else None,
        )


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, microseconds when there are any."""
    utc = moment.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 with an offset (or `Z`); a timestamp without one is refused."""
    moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone offset: add Z or +HH:MM")
    return moment.astimezone(UTC)
