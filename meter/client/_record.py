"""One metered call: who and what it was for, and its event once the outcome is known.

Shared by the client and the transports. Recording happens once per call (a retried call is one
event), on the caller's path but without database work: `Meter._submit` never blocks.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from meter.client._capture import Outcome
from meter.client._types import MeterInfo
from meter.events import EventRecord
from meter.ids import uuid7
from meter.money import render_usd
from meter.pricing import Price, cost_of
from meter.tokens import count_messages, count_prompt, count_text

if TYPE_CHECKING:
    from meter.recorder.meter import Recorder

logger = logging.getLogger("meter.client")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Call:
    meter: Recorder
    model: str
    user: str | None = None
    team: str | None = None
    tags: dict[str, str] | None = None
    messages: Sequence[object] | None = None  # chat completions
    prompt: object = None  # legacy completions
    price: Price | None = None
    occurred_at: datetime = field(default_factory=_now)
    started: float = field(default_factory=time.perf_counter)
    info: MeterInfo | None = None
    # Known before the call is sent: the gateway's budget hold carries the same id.
    event_id: uuid.UUID = field(default_factory=uuid7)

    def estimate_prompt_tokens(self) -> int:
        if self.messages is not None:
            return count_messages(self.messages)
        return count_prompt(self.prompt)

    def record(self, outcome: Outcome, first_output_at: float | None = None) -> MeterInfo:
        """Submit the call's event (once; later calls return the first record)."""
        if self.info is not None:
            return self.info
        latency_ms = round((time.perf_counter() - self.started) * 1000)
        ttft_ms = (
            round((first_output_at - self.started) * 1000) if first_output_at is not None else None
        )
        usage = outcome.usage
        cached = reasoning = None
        provider_cost: Decimal | None = None
        if outcome.usage_source == "provider" and usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            cached, reasoning, provider_cost = (
                usage.cached_tokens,
                usage.reasoning_tokens,
                usage.cost_usd,
            )
        elif outcome.usage_source == "estimated":
            prompt = self.estimate_prompt_tokens()
            completion = count_text(outcome.completion_text)
            if outcome.produced_output:
                completion = max(completion, 1)  # never a silent zero for a call with output
        else:
            prompt = completion = 0
        event = EventRecord(
            id=self.event_id,
            occurred_at=self.occurred_at,
            model=self.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            user=self.user,
            team=self.team,
            tags=self.tags,
            status=outcome.status,
            usage_source=outcome.usage_source,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            generation_id=outcome.generation_id,
            provider_cost_usd=provider_cost,
        )
        try:
            self.meter._submit(event)
        except Exception:  # never raises by contract; a broken recorder must not break calls
            logger.exception("meter: could not record event %s", event.id)
        cost = None
        if self.price is not None:
            units = cost_of(self.price, prompt, completion).total_units
            cost = Decimal(render_usd(units) or "0")
        self.info = MeterInfo(
            event_id=str(event.id),
            status=outcome.status,
            usage_source=outcome.usage_source,
            cost_usd=cost,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            generation_id=outcome.generation_id,
        )
        return self.info
