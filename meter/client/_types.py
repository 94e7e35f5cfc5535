"""Response objects, shaped like openai's: `resp.choices[0].message.content`, `resp.usage`.

Built by hand from the parsed JSON (no validation pass per call: it would cost more than the
whole metering). Keys the classes do not name are still reachable as attributes, as with
openai's models (`resp.provider`, `resp.system_fingerprint`). Numbers with a fraction read as
float, except money (`usage.cost`), which stays an exact Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meter.client._usage import UsageReading


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return JSONObject(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    return value


class JSONObject:
    """Attribute access over a JSON object (tool calls, logprobs, token details...)."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        return _wrap(self._data.get(key, default))

    def to_dict(self) -> dict[str, Any]:
        return self._data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONObject) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"JSONObject({self._data!r})"


class _Extras:
    """Unknown keys of the raw JSON, reachable as attributes."""

    __slots__ = ()
    _raw: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return _wrap(self._raw[name])
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON as received (fractions as Decimal)."""
        return self._raw


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What meter recorded for the call."""

    event_id: str
    status: str
    usage_source: str
    cost_usd: Decimal | None  # None: the model has no price (never shown as $0)
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    ttft_ms: int | None = None
    generation_id: str | None = None


@dataclass(slots=True)
class Usage(_Extras):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: Decimal | None = None  # the provider's own cost (OpenRouter's `usage.cost`)
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def prompt_tokens_details(self) -> JSONObject | None:
        return _details(self._raw.get("prompt_tokens_details"))

    @property
    def completion_tokens_details(self) -> JSONObject | None:
        return _details(self._raw.get("completion_tokens_details"))


def _details(value: object) -> JSONObject | None:
    return JSONObject(value) if isinstance(value, dict) else None


def usage_of(raw: object, reading: UsageReading | None) -> Usage | None:
    """The response's usage as meter read it; None when absent or unusable."""
    if reading is None:
        return None
    raw_dict = raw if isinstance(raw, dict) else {}
    total = raw_dict.get("total_tokens")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        total = reading.prompt_tokens + reading.completion_tokens
    return Usage(
        reading.prompt_tokens,
        reading.completion_tokens,
        total,
        reading.cached_tokens,
        reading.reasoning_tokens,
        reading.cost_usd,
        raw_dict,
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tool_calls(value: object) -> list[JSONObject] | None:
    if not isinstance(value, list):
        return None
    return [JSONObject(v) for v in value if isinstance(v, dict)]


@dataclass(slots=True)
class Message(_Extras):
    role: str | None
    content: str | None
    tool_calls: list[JSONObject] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(slots=True)
class Choice(_Extras):
    index: int
    message: Message
    finish_reason: str | None = None
    logprobs: Any = None
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(slots=True)
class ChatCompletion(_Extras):
    id: str | None
    model: str | None
    created: int | None
    object: str | None
    choices: list[Choice]
    usage: Usage | None
    meter: MeterInfo
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(slots=True)
class Delta(_Extras):
    role: str | None = None
    content: str | None = None
    tool_calls: list[JSONObject] | None = None
    reasoning: str | None = None
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(slots=True)
class ChunkChoice(_Extras):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(slots=True)
class ChatCompletionChunk(_Extras):
    id: str | None
    model: str | None
    created: int | None
    object: str | None
    choices: list[ChunkChoice]
    usage: Usage | None = None
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _message(raw: object) -> Message:
    m = raw if isinstance(raw, dict) else {}
    return Message(
        _str(m.get("role")),
        _str(m.get("content")),
        _tool_calls(m.get("tool_calls")),
        _str(m.get("refusal")),
        _str(m.get("reasoning")),
        m,
    )


def completion_from(
    doc: dict[str, Any], reading: UsageReading | None, meter: MeterInfo
) -> ChatCompletion:
    choices = []
    raw_choices = doc.get("choices")
    for i, c in enumerate(raw_choices if isinstance(raw_choices, list) else []):
        if not isinstance(c, dict):
            continue
        index = _int(c.get("index"))
        choices.append(
            Choice(
                i if index is None else index,
                _message(c.get("message")),
                _str(c.get("finish_reason")),
                _wrap(c.get("logprobs")),
                c,
            )
        )
    return ChatCompletion(
        _str(doc.get("id")),
        _str(doc.get("model")),
        _int(doc.get("created")),
        _str(doc.get("object")),
        choices,
        usage_of(doc.get("usage"), reading),
        meter,
        doc,
    )


def chunk_from(doc: dict[str, Any], reading: UsageReading | None) -> ChatCompletionChunk:
    """One stream chunk -> objects. Runs once per chunk: plain checks, no helper calls."""
    choices = []
    raw_choices = doc.get("choices")
    if type(raw_choices) is list:
        for i, c in enumerate(raw_choices):
            if type(c) is not dict:
                continue
            d = c.get("delta")
            if type(d) is not dict:
                d = {}
            role, content, reasoning = d.get("role"), d.get("content"), d.get("reasoning")
            index, finish = c.get("index"), c.get("finish_reason")
            calls = d.get("tool_calls")
            logprobs = c.get("logprobs")
            choices.append(
                ChunkChoice(
                    index if type(index) is int else i,
                    Delta(
                        role if type(role) is str else None,
                        content if type(content) is str else None,
                        _tool_calls(calls) if calls is not None else None,
                        reasoning if type(reasoning) is str else None,
                        d,
                    ),
                    finish if type(finish) is str else None,
                    _wrap(logprobs) if logprobs is not None else None,
                    c,
                )
            )
    raw_usage = doc.get("usage")
    usage = usage_of(raw_usage, reading) if raw_usage is not None else None
    ident, model, created, obj = (
        doc.get("id"),
        doc.get("model"),
        doc.get("created"),
        doc.get("object"),
    )
    return ChatCompletionChunk(
        ident if type(ident) is str else None,
        model if type(model) is str else None,
        created if type(created) is int else None,
        obj if type(obj) is str else None,
        choices,
        usage,
        doc,
    )
