"""A client's request to the gateway, checked before any network I/O. Pure: no I/O.

The checks are the client's (meter.client._validation: the seed model's parameter table);
errors are InvalidRequest naming the parameter, which the routes answer as OpenAI's 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from meter._exceptions import InvalidRequest
from meter.client._usage import loads
from meter.client._validation import RANGES, check_context, check_messages, check_params
from meter.events import (
    ERASED_PREFIX,
    MAX_NAME_LENGTH,
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
)
from meter.pricing import Price
from meter.tokens import TEMPLATE_BOUND_PER_CHAT, messages_upper_bound

TAGS_HEADER = "x-meter-tags"
_CHECKED = (*RANGES, "stop", "logit_bias")
# Fields whose presence makes a call's cost unbounded for a reservation: another model may
# answer (`models`, `route` fallbacks at other prices) or the provider adds priced work.
_UNBOUNDED_FIELDS = ("models", "route", "plugins")
# Request fields that the provider turns into prompt tokens besides the messages.
_PROMPT_EXTRAS = ("tools", "functions", "tool_choice", "response_format")


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """What to forward, and what the meter needs to know about it."""

    kind: str  # "chat" or "completions"
    model: str
    price: Price | None  # in effect when the call came in; None: unpriced
    doc: dict[str, Any] = field(repr=False)  # the client's body, parsed
    content: bytes  # the body to send upstream
    stream: bool
    strip_usage_chunk: bool  # meter asked for usage itself: hide the chunk that causes
    messages: list[Any] | None
    prompt: object
    body_user: str | None
    n: int
    max_tokens: int | None  # max_tokens or max_completion_tokens

    def prompt_upper_bound(self) -> int:
        """Prompt tokens no tokenizer exceeds: one per UTF-8 byte, plus the template; the
        tools and response format a provider also puts in the prompt count the same way."""
        if self.messages is not None:
            bound = messages_upper_bound(self.messages)
            for message in self.messages:  # tool calls, names...: prompt text too
                if isinstance(message, Mapping):
                    bound += sum(
                        len(json.dumps(v, ensure_ascii=False, default=str).encode())
                        for k, v in message.items()
                        if k not in ("role", "content")
                    )
        else:
            bound = TEMPLATE_BOUND_PER_CHAT + _prompt_bytes(self.prompt)
        for name in _PROMPT_EXTRAS:
            if self.doc.get(name) is not None:
                bound += len(json.dumps(self.doc[name], ensure_ascii=False).encode())
        return bound

    def unbounded_param(self, price: Price | None) -> str | None:
        """The parameter that leaves this call's cost without a bound, or None."""
        if price is None or price.context_length is None:
            return "model"
        for name in _UNBOUNDED_FIELDS:
            if self.doc.get(name) is not None:
                return name
        if self.messages is not None and not all(_text_only(m) for m in self.messages):
            return "messages"
        if self.messages is None and not _prompt_is_text(self.prompt):
            return "prompt"
        return None

    def worst_case_units(self, price: Price) -> int:
        """The most this call can cost: prompt bound x input price + n x cap x output price,
        where cap is max_tokens, else the model's context length (what the provider can
        produce, reasoning included)."""
        cap = self.max_tokens or price.context_length or 0
        return self.prompt_upper_bound() * price.input_units + self.n * cap * price.output_units


def _prompt_bytes(prompt: object) -> int:
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8", "surrogatepass"))
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)  # token ids
        return sum(_prompt_bytes(p) + 1 for p in prompt)
    return 0


def _prompt_is_text(prompt: object) -> bool:
    if isinstance(prompt, str):
        return True
    if isinstance(prompt, list):
        return all(isinstance(p, str | int) or _prompt_is_text(p) for p in prompt)
    return False


def _text_only(message: object) -> bool:
    if not isinstance(message, Mapping):
        return False
    content = message.get("content")
    if content is None or isinstance(content, str):
        return True
    if isinstance(content, list):
        return all(isinstance(p, Mapping) and p.get("type") == "text" for p in content)
    return False


def parse_request(kind: str, raw: bytes, price_of: Callable[[str], Price | None]) -> GatewayRequest:
    """Check a client's body (InvalidRequest names the parameter); the stream gets
    `stream_options.include_usage` when the client did not ask for usage itself. `price_of`
    gives the model's price in effect now (its context length bounds prompt + max_tokens)."""
    try:
        doc = loads(raw)
    except ValueError:
        raise InvalidRequest("the body must be a JSON object", None) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object", None)
    model = doc.get("model")
    messages: list[Any] | None = None
    prompt: object = None
    if kind == "chat":
        check_messages(model, doc.get("messages"))
        messages = list(doc["messages"])
    else:
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model must be a non-empty string", "model")
        prompt = doc.get("prompt")
        if prompt is None or not _prompt_is_text(prompt):
            raise InvalidRequest(
                "prompt must be a string, a list of strings, or a list of token ids", "prompt"
            )
    assert isinstance(model, str)
    price = price_of(model)
    check_params({name: doc.get(name) for name in _CHECKED if name in doc})
    n = doc.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest(f"n must be an integer >= 1 (got {n!r})", "n")
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(f"stream must be true or false (got {stream!r})", "stream")
    user = doc.get("user")
    if user is not None and (
        not isinstance(user, str)
        or not user
        or len(user) > MAX_NAME_LENGTH
        or "\x00" in user
        or user.startswith(ERASED_PREFIX)
    ):
        raise InvalidRequest(
            f"user must be a non-empty string of at most {MAX_NAME_LENGTH} characters, not "
            f"starting with {ERASED_PREFIX!r} (an erased user's pseudonym)",
            "user",
        )
    max_tokens = doc.get("max_tokens") or doc.get("max_completion_tokens")
    if messages is not None:
        check_context(messages, max_tokens, price.context_length if price else None)
    content = raw
    strip = False
    if stream:
        options = doc.get("stream_options")
        if not (isinstance(options, Mapping) and options.get("include_usage") is True):
            # Re-encoded from a plain parse (the exact parse holds Decimals json cannot write):
            # numbers go out as the upstream would read them from the client's text anyway.
            plain = json.loads(raw)
            base = plain.get("stream_options")
            plain["stream_options"] = {
                **(base if isinstance(base, dict) else {}),
                "include_usage": True,
            }
            content = json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode()
            strip = True
    return GatewayRequest(
        kind=kind,
        model=model,
        price=price,
        doc=doc,
        content=content,
        stream=bool(stream),
        strip_usage_chunk=strip,
        messages=messages,
        prompt=prompt,
        body_user=user,
        n=n,
        max_tokens=max_tokens,
    )


def parse_tags_header(value: str | None) -> dict[str, str] | None:
    """`X-Meter-Tags: feature=chat,env=prod` (percent-encoded where needed) -> tags."""
    if value is None or not value.strip():
        return None
    tags: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        key, val = unquote(key.strip()), unquote(val.strip())
        if not eq or not key:
            raise InvalidRequest(
                f"X-Meter-Tags: each tag must be key=value (got {item.strip()!r})", "X-Meter-Tags"
            )
        if len(key) > MAX_TAG_KEY_LENGTH or len(val) > MAX_TAG_VALUE_LENGTH or "\x00" in key + val:
            raise InvalidRequest(
                f"X-Meter-Tags: keys up to {MAX_TAG_KEY_LENGTH} and values up to "
                f"{MAX_TAG_VALUE_LENGTH} characters",
                "X-Meter-Tags",
            )
        tags[key] = val
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"X-Meter-Tags: at most {MAX_TAGS} tags", "X-Meter-Tags")
    return tags or None
