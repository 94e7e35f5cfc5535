"""What a call's response told us, and the status it earns (SPEC section 2). Pure, no I/O.

| status       | when                                                     | usage_source          |
|--------------|----------------------------------------------------------|-----------------------|
| `ok`         | usage came                                               | `provider`            |
| `incomplete` | the body or stream ended (or broke) without usable usage | `estimated`           |
| `cancelled`  | the caller closed the stream before it ended             | `estimated`           |
| `error`      | HTTP error, or an error payload before any output         | `none` (0 tokens)     |
| `error`      | an error payload after some output                       | `estimated`/`provider`|
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from meter.client._usage import UsageReading, choice_text, generation_id, loads, read_usage


class End(Enum):
    """How a stream stopped."""

    ENDED = "ended"  # `[DONE]` or the end of the body
    BROKEN = "broken"  # the connection failed while reading
    CANCELLED = "cancelled"  # the caller closed it (or dropped it) before it ended


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    usage_source: str
    usage: UsageReading | None = None  # set when usage_source is `provider`
    completion_text: str = ""  # what an estimate counts
    produced_output: bool = False
    generation_id: str | None = None


def _decide(
    usage: UsageReading | None,
    error: object,
    text: str,
    produced: bool,
    end: End,
    gen_id: str | None,
) -> Outcome:
    if error is not None:
        if usage is not None:
            return Outcome("error", "provider", usage, text, produced, gen_id)
        if produced:
            return Outcome("error", "estimated", None, text, produced, gen_id)
        return Outcome("error", "none", None, "", False, gen_id)
    if usage is not None:
        return Outcome("ok", "provider", usage, text, produced, gen_id)
    status = "cancelled" if end is End.CANCELLED else "incomplete"
    return Outcome(status, "estimated", None, text, produced, gen_id)


def http_error_outcome() -> Outcome:
    """An HTTP error or a failed connection before any output: 0 tokens, nothing estimated."""
    return Outcome("error", "none")


@dataclass(slots=True)
class Completion:
    """A non-streaming body, read."""

    doc: dict[str, Any] | None  # None when it was not a JSON object
    outcome: Outcome

    @property
    def error(self) -> object:
        return self.doc.get("error") if self.doc is not None else None


def read_completion(body: bytes) -> Completion:
    """Parse a 2xx non-streaming body (leading whitespace is fine) and decide its outcome.

    A body that is not a JSON object (truncated, not JSON) ended without usage: `incomplete`.
    """
    try:
        doc = loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Completion(None, Outcome("incomplete", "estimated"))
    usage = read_usage(doc.get("usage"))
    choices = doc.get("choices")
    text = ""
    if isinstance(choices, list):
        text = "".join(choice_text(c) for c in choices)
    outcome = _decide(usage, doc.get("error"), text, bool(text), End.ENDED, generation_id(doc))
    return Completion(doc, outcome)


@dataclass(slots=True)
class StreamCapture:
    """Follows a stream's data payloads: usage, text received, errors, time to first token.

    `strip_usage_chunk`: meter asked for usage itself, so the usage-only chunk (empty
    `choices`) it caused is not handed on.
    """

    strip_usage_chunk: bool
    usage: UsageReading | None = None
    error: object = None
    done: bool = False
    generation_id: str | None = None
    first_output_at: float | None = None
    malformed: int = 0
    dropped: bool = False  # the last payload was the usage-only chunk meter caused
    _parts: list[str] = field(default_factory=list)

    def on_data(self, data: str) -> dict[str, Any] | None:
        """One SSE `data` payload -> the chunk to hand on, or None (`[DONE]`, dropped, junk)."""
        self.dropped = False
        if data == "[DONE]":
            self.done = True
            return None
        try:
            doc = loads(data)
        except ValueError:
            self.malformed += 1
            return None
        if not isinstance(doc, dict):
            self.malformed += 1
            return None
        if self.generation_id is None:
            self.generation_id = generation_id(doc)
        raw_usage = doc.get("usage")
        if raw_usage is not None:
            # The usage chunk is the one whose usage is not null, whatever its choices hold.
            reading = read_usage(raw_usage)
            if reading is not None:
                self.usage = reading
        error = doc.get("error")
        if error is not None:
            self.error = error
        choices = doc.get("choices")
        if isinstance(choices, list) and choices:
            for choice in choices:
                text = choice_text(choice)
                if text:
                    if self.first_output_at is None:
                        self.first_output_at = time.perf_counter()
                    self._parts.append(text)
            return doc
        if raw_usage is not None and error is None and self.strip_usage_chunk:
            self.dropped = True
            return None
        return doc

    @property
    def produced_output(self) -> bool:
        return bool(self._parts)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def outcome(self, end: End) -> Outcome:
        if self.done and end is End.CANCELLED:
            end = End.ENDED  # closing after `[DONE]` is not cancelling
        return _decide(
            self.usage, self.error, self.text, self.produced_output, end, self.generation_id
        )
