"""The metered client: OpenAI-shaped chat completions whose every call is recorded.

`MeteredClient` / `AsyncMeteredClient` for code written against meter; `MeteringTransport` /
`AsyncMeteringTransport` (via `meter.transport()`) for SDKs built on httpx or httpx2, such as
openai and mistralai; `Meter`, the recorder these feed, which makes those transports.
"""

from meter.client._client import AsyncMeteredClient, MeteredClient
from meter.client._meter import Meter
from meter.client._streaming import AsyncStream, Stream
from meter.client._transport import AsyncMeteringTransport, MeteringTransport
from meter.client._types import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    MeterInfo,
    Usage,
)

__all__ = [
    "AsyncMeteredClient",
    "AsyncMeteringTransport",
    "AsyncStream",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Choice",
    "ChunkChoice",
    "Delta",
    "Message",
    "Meter",
    "MeterInfo",
    "MeteredClient",
    "MeteringTransport",
    "Stream",
    "Usage",
]
