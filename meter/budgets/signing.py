"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<raw body>", the exact bytes sent.

Receivers recompute it with the shared secret and reject old timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "sha256="


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Meter-Signature` header value."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, "sha256")
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (used by our tests): constant-time compare of the recomputed value."""
    expected = (
        SIGNATURE_PREFIX
        + hmac.new(
            secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256
        ).hexdigest()
    )
    return hmac.compare_digest(expected, header)


def delivery_headers(
    delivery_id: str, timestamp: int, body: bytes, secret: str | None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "meter-webhooks",
        "X-Meter-Delivery": delivery_id,
        "X-Meter-Timestamp": str(timestamp),
    }
    if secret:
        headers["X-Meter-Signature"] = sign(secret, timestamp, body)
    return headers
