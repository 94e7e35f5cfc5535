"""Foreign failures mapped at the boundary to `UpstreamError` (meter's exception tree)."""

from __future__ import annotations

from collections.abc import Mapping

from meter._exceptions import UpstreamError
from meter.client._usage import loads

_BODY_LIMIT = 2000  # characters of a non-JSON error body kept on the exception


def error_from_response(status_code: int, body: bytes) -> UpstreamError:
    """An HTTP error answer: `.body` is the parsed JSON when it is JSON, else the text."""
    try:
        parsed: object = loads(body)
    except ValueError:
        parsed = body.decode("utf-8", "replace")[:_BODY_LIMIT]
    return UpstreamError(
        f"upstream answered HTTP {status_code}: {_message(parsed)}", status_code, parsed
    )


def error_from_payload(error: object, status_code: int | None = 200) -> UpstreamError:
    """An error payload under HTTP 200 (OpenRouter's mid-stream error chunk, or a body).

    `.status_code` is the payload's numeric `code` when it has one, else the HTTP status.
    """
    code = error.get("code") if isinstance(error, Mapping) else None
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
        status_code = code
    elif isinstance(code, str) and code.isdigit() and 100 <= int(code) <= 599:
        status_code = int(code)
    return UpstreamError(
        f"upstream reported an error: {_message({'error': error})}", status_code, error
    )


def error_from_transport(exc: Exception) -> UpstreamError:
    """A connection that failed, timed out or broke (an httpx or httpx2 error): no HTTP status."""
    kind = type(exc).__name__
    detail = str(exc) or kind
    return UpstreamError(f"upstream connection failed ({kind}): {detail}", None, None)


def malformed_body(status_code: int, body: bytes) -> UpstreamError:
    text = body.decode("utf-8", "replace")
    return UpstreamError(
        f"upstream answered HTTP {status_code} with a body that is not a JSON object",
        status_code,
        text[:_BODY_LIMIT],
    )


def _message(parsed: object) -> str:
    if isinstance(parsed, Mapping):
        error = parsed.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
            if isinstance(message, str) and message:
                code = error.get("code")
                return f"{message} (code {code})" if code is not None else message
        elif isinstance(error, str) and error:
            return error
        message = parsed.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(parsed, str) and parsed.strip():
        return parsed.strip()[:200]
    return "no details"
