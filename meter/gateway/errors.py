"""Gateway answers in OpenAI's error envelope `{"error": {"message", "type", "param", "code"}}`,
which every OpenAI SDK turns into its typed errors (BadRequestError, AuthenticationError...)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response


def openai_error(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if extra:
        error.update(extra)
    body = json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


def sse_error(message: str, code: str) -> bytes:
    """An error chunk that ends a stream already under way (OpenAI SDKs raise on it)."""
    doc = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return f"data: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()
