"""`Meter`: the recorder, plus the metering transports that feed it (`meter.transport()`).

The recorder knows nothing of HTTP clients: the transports belong to this layer, so they are
added here, and every layer points one way (client -> recorder -> database).
"""

from __future__ import annotations

from meter.client._transport import AsyncMeteringTransport, MeteringTransport
from meter.recorder.meter import Recorder


class Meter(Recorder):
    """Records calls (`record`, and every `MeteredClient` call), and makes transports that meter
    what any SDK sends through an `httpx` or `httpx2` client."""

    def transport(
        self,
        user: str | None = None,
        team: str | None = None,
        wrapped: object | None = None,
    ) -> MeteringTransport:
        """A transport for `httpx.Client` or `httpx2.Client` that meters any POST to
        `*/chat/completions` or `*/completions`; `wrapped`: the real transport (of either
        library), by default that library's own."""
        return MeteringTransport(self, user=user, team=team, wrapped=wrapped)

    def async_transport(
        self,
        user: str | None = None,
        team: str | None = None,
        wrapped: object | None = None,
    ) -> AsyncMeteringTransport:
        """The asyncio twin of `transport()`, for `httpx.AsyncClient` or `httpx2.AsyncClient`."""
        return AsyncMeteringTransport(self, user=user, team=team, wrapped=wrapped)
