"""Turning `create(...)` arguments into the bytes to send and the call to record. No I/O.

Everything that can refuse a call does so here, before the network: parameters, attribution,
the context length, then the budget. `team` and `tags` stay local; `user` is forwarded unless
the client says `forward_user=False`.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meter._exceptions import InvalidRequest
from meter.client._record import Call
from meter.client._validation import check_context, check_messages, check_params
from meter.events import MAX_NAME_LENGTH

if TYPE_CHECKING:
    from meter.recorder.meter import Recorder


def _user_agent() -> str:
    try:
        return f"meter/{importlib.metadata.version('meter')}"
    except importlib.metadata.PackageNotFoundError:
        return "meter"


USER_AGENT = _user_agent()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What a client adds to every call."""

    url: str  # .../chat/completions
    headers: dict[str, str] = field(repr=False)  # holds the API key: never in a repr
    user: str | None
    team: str | None
    tags: dict[str, str] | None
    forward_user: bool


def make_config(
    *,
    api_key: str | None,
    base_url: str,
    user: str | None,
    team: str | None,
    tags: Mapping[str, str] | None,
    app_url: str | None,
    app_name: str | None,
    forward_user: bool,
) -> ClientConfig:
    check_name("user", user)
    check_name("team", team)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if app_url:
        headers["HTTP-Referer"] = app_url
    if app_name:
        headers["X-Title"] = app_name
    return ClientConfig(
        url=base_url.rstrip("/") + "/chat/completions",
        headers=headers,
        user=user,
        team=team,
        tags=check_tags(tags),
        forward_user=forward_user,
    )


def check_name(param: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"{param} must be a non-empty string of at most {MAX_NAME_LENGTH} characters", param
        )


def check_tags(tags: object) -> dict[str, str] | None:
    if tags is None:
        return None
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise InvalidRequest("tags must be a mapping of strings to strings", "tags")
    return dict(tags)


@dataclass(slots=True)
class Prepared:
    content: bytes
    headers: dict[str, str] = field(repr=False)
    call: Call
    stream: bool
    strip_usage_chunk: bool  # meter asked for usage itself: hide the usage-only chunk


def prepare(
    config: ClientConfig,
    meter: Recorder,
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    table: Mapping[str, Any],
    other: Mapping[str, Any],
    user: str | None,
    team: str | None,
    tags: Mapping[str, str] | None,
    stream: bool,
    extra_headers: Mapping[str, str] | None,
) -> Prepared:
    check_messages(model, messages)
    body: dict[str, Any] = {"model": model, "messages": list(messages)}
    body.update(check_params(table))
    body.update(check_params(other))  # also checks max_completion_tokens, passes the rest
    check_name("user", user)
    check_name("team", team)
    user = user if user is not None else config.user
    team = team if team is not None else config.team
    call_tags = check_tags(tags)
    if config.tags:
        call_tags = {**config.tags, **(call_tags or {})}
    if user is not None and config.forward_user:
        body["user"] = user
    else:
        body.pop("user", None)
    strip = False
    if stream:
        body["stream"] = True
        options = body.get("stream_options")
        if not (isinstance(options, Mapping) and options.get("include_usage") is True):
            body["stream_options"] = {**(options or {}), "include_usage": True}
            strip = True
    else:
        body.pop("stream", None)
    call = Call(meter, model, user, team, call_tags or None, messages=body["messages"])
    call.price = meter.price_at(model, call.occurred_at)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    check_context(body["messages"], max_tokens, call.price.context_length if call.price else None)
    try:
        content = json.dumps(
            body, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"the request cannot be sent as JSON: {exc}", None) from exc
    meter.check_budget(team=team, user=user, tags=call_tags or None)
    headers = config.headers
    accept = "text/event-stream" if stream else "application/json"
    headers = {**headers, "Accept": accept, **(extra_headers or {})}
    return Prepared(content, headers, call, stream, strip)
