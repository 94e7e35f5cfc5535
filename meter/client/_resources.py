"""The `client.chat.completions` namespaces, shaped like openai's, for both client twins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx

from meter.client._streaming import AsyncStream, Stream
from meter.client._types import ChatCompletion

if TYPE_CHECKING:
    from meter.client._client import AsyncMeteredClient, MeteredClient


class Completions:
    def __init__(self, client: MeteredClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> Stream: ...

    def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> ChatCompletion | Stream:
        """Create a chat completion; other OpenAI/OpenRouter parameters pass through unchanged.

        Raises InvalidRequest (nothing sent), BudgetExceeded (nothing sent) or UpstreamError
        (the call was recorded with status `error`).
        """
        table = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
            "repetition_penalty": repetition_penalty,
            "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty,
            "min_p": min_p,
            "stop": stop,
            "logit_bias": logit_bias,
        }
        c = self._client
        prepared = c._prepare(
            model, messages, table, params, user, team, tags, stream, extra_headers, extra_body
        )
        result: ChatCompletion | Stream = c._create(prepared, timeout)
        return result


class AsyncCompletions:
    def __init__(self, client: AsyncMeteredClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> AsyncStream: ...

    async def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        min_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        logit_bias: Mapping[str | int, float] | None = None,
        user: str | None = None,
        team: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | httpx.Timeout | None = None,
        **params: Any,
    ) -> ChatCompletion | AsyncStream:
        """As `Completions.create`; a stream is returned once its response headers arrived."""
        table = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
            "repetition_penalty": repetition_penalty,
            "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty,
            "min_p": min_p,
            "stop": stop,
            "logit_bias": logit_bias,
        }
        c = self._client
        prepared = c._prepare(
            model, messages, table, params, user, team, tags, stream, extra_headers, extra_body
        )
        result: ChatCompletion | AsyncStream = await c._create(prepared, timeout)
        return result


class Chat:
    def __init__(self, client: MeteredClient) -> None:
        self.completions = Completions(client)


class AsyncChat:
    def __init__(self, client: AsyncMeteredClient) -> None:
        self.completions = AsyncCompletions(client)
