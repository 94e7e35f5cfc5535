"""App-wide error handling: every failure becomes a 4xx that names its cause, or a 503.

- 422: bad input. `detail` is FastAPI's list (each `loc` names the field) and `message` says the
  same in one line, e.g. `events[3].occurred_at: Input should have timezone info`. Bodies that
  are not JSON, or nest too deeply, and unknown query parameters are 422 too.
- 503: the database cannot be reached (or is locked for too long); retry later.
- 409: a uniqueness conflict the route did not anticipate (e.g. a race between two creates).
- 500: only what nothing above explains; the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import decimal
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("meter.api")

MAX_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB, then 413 (BodySizeLimit below)
_FASTAPI_PARSE_ERROR = "There was an error parsing the body"
_MAX_ECHOED_INPUT = 200


def field_path(loc: Sequence[Any]) -> str:
    """('body', 'events', 3, 'occurred_at') -> 'events[3].occurred_at'; ('query', 'limit') ->
    'limit'. The name a user would look for in their own request."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie") and len(parts) > 1:
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _public_error(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as sent: `input` only when short and scalar, since echoing a large
    or deeply nested input back costs memory and could recurse."""
    out: dict[str, Any] = {
        "type": error.get("type", "value_error"),
        "loc": list(error.get("loc", ())),
        "msg": str(error.get("msg", "invalid value")),
    }
    if "input" not in error:
        return out
    value = error["input"]
    short_text = isinstance(value, str) and len(value) <= _MAX_ECHOED_INPUT
    if value is None or isinstance(value, bool | int) or short_text:
        out["input"] = value
    return out


def validation_response(errors: Sequence[dict[str, Any]]) -> JSONResponse:
    detail = [_public_error(e) for e in errors]
    message = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in detail[:5])
    if len(detail) > 5:
        message += f"; and {len(detail) - 5} more"
    return JSONResponse({"detail": detail, "message": message}, status_code=422)


def invalid(
    loc: Sequence[str | int], msg: str, type_: str = "value_error"
) -> RequestValidationError:
    """A 422 raised by route code, shaped like pydantic's: invalid(("query", "cursor"), ...)."""
    return RequestValidationError([{"type": type_, "loc": tuple(loc), "msg": msg}])


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_response(list(exc.errors()))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _FASTAPI_PARSE_ERROR:
        # FastAPI says 400 for a body json.loads gives up on: not UTF-8, or nested so deep
        # that it hit Python's recursion limit. It is bad input like any other: 422.
        cause = exc.__cause__
        msg = (
            "JSON nested too deeply"
            if isinstance(cause, RecursionError)
            else "the body is not valid JSON"
        )
        return validation_response([{"type": "json_invalid", "loc": ("body",), "msg": msg}])
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _on_database_unreachable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, _reason(exc))
    return JSONResponse(
        {"detail": "database unreachable; retry later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _unstorable_text_loc(request: Request) -> tuple[str, ...]:
    """Where the text a database refused came from, when a path or query value is to blame."""
    for kind, values in (("path", request.path_params), ("query", request.query_params)):
        for name, value in values.items():
            if isinstance(value, str) and "\x00" in value:
                return (kind, name)
    return ("body",)


async def _on_data_error(request: Request, exc: Exception) -> Response:
    # A value the database refused (out of range, NUL in text) that validation let through.
    log.info("value refused by the database on %s: %s", request.url.path, _reason(exc))
    loc = _unstorable_text_loc(request)
    msg = "must not contain NUL characters" if loc != ("body",) else "a value cannot be stored"
    return validation_response([{"type": "value_error", "loc": loc, "msg": msg}])


async def _on_unicode_error(request: Request, exc: Exception) -> Response:
    return validation_response(
        [{"type": "value_error", "loc": ("body",), "msg": "text must be valid Unicode"}]
    )


async def _on_overflow(request: Request, exc: Exception) -> Response:
    # Bad input that got past validation: SQLite's driver refuses integers beyond 64 bits (an id
    # of 10**20), Decimal arithmetic overflows on "1e999999". A 422, not a crash.
    return validation_response(
        [{"type": "value_error", "loc": ("body",), "msg": "a number is out of range"}]
    )


async def _on_integrity_error(request: Request, exc: Exception) -> Response:
    log.info("conflict on %s: %s", request.url.path, _reason(exc))
    return JSONResponse({"detail": "conflicts with an existing resource"}, status_code=409)


async def _on_dbapi_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return await _on_database_unreachable(request, exc)
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The last resort: a bug. The client learns nothing about internals; the log gets it all.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(413, detail=f"request body larger than {MAX_BODY_BYTES // 1024**2} MiB")


class BodySizeLimit:
    """413 for a body over the limit: at once from Content-Length, else counted as it streams
    in, so that an endless chunked upload is cut off without being read whole.

    Our own rather than FastAPI's `max_body_size`, which answers a too-large Content-Length in
    plain text: every error of this API is JSON.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        gateway_paths: frozenset[str] = frozenset(),
        gateway_max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # The gateway's routes take bigger bodies (long prompts), and answer in OpenAI's shape.
        self.gateway_paths = gateway_paths
        self.gateway_max_bytes = gateway_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = scope.get("path") in self.gateway_paths
        limit = self.gateway_max_bytes if gateway else self.max_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit, gateway)(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            # BodyTooLarge inside a route: FastAPI hands it to _on_http_error
            await self.app(scope, limited_receive(receive, limit), tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await too_large(limit, gateway)(scope, receive, send)


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive`, raising BodyTooLarge once the body read so far is over `limit` bytes."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
        return message

    return limited


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large(limit: int = MAX_BODY_BYTES, gateway: bool = False) -> JSONResponse:
    detail = f"request body larger than {limit // 1024**2} MiB"
    if gateway:
        error = {"message": detail, "type": "invalid_request_error", "param": None, "code": None}
        return JSONResponse({"error": error}, status_code=413)
    return JSONResponse({"detail": detail}, status_code=413)


def install_error_handlers(
    app: FastAPI,
    gateway_paths: frozenset[str] = frozenset(),
    gateway_max_bytes: int = MAX_BODY_BYTES,
) -> None:
    """The handlers above, and the body size limits."""
    app.add_middleware(
        BodySizeLimit,
        max_bytes=MAX_BODY_BYTES,
        gateway_paths=gateway_paths,
        gateway_max_bytes=gateway_max_bytes,
    )
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for unreachable in (
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.DisconnectionError,
        sa.exc.TimeoutError,  # the connection pool is exhausted
    ):
        app.add_exception_handler(unreachable, _on_database_unreachable)
    app.add_exception_handler(sa.exc.DataError, _on_data_error)
    app.add_exception_handler(sa.exc.IntegrityError, _on_integrity_error)
    app.add_exception_handler(sa.exc.DBAPIError, _on_dbapi_error)
    app.add_exception_handler(UnicodeEncodeError, _on_unicode_error)
    app.add_exception_handler(OverflowError, _on_overflow)
    # Decimal arithmetic on an absurd input (e.g. "1e999999" USD) overflows its context.
    app.add_exception_handler(decimal.DecimalException, _on_overflow)
    app.add_exception_handler(Exception, _on_unexpected)


_QUERY_NAMES_ATTR = "_meter_query_names"  # cached on the route object itself


def _query_names(route: APIRoute) -> frozenset[str]:
    """Every query parameter the route or its dependencies declare (a model's fields too)."""
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        pending.extend(dependant.dependencies)
        for field in dependant.query_params:
            annotation = field.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names.update(f.alias or n for n, f in annotation.model_fields.items())
            else:
                names.add(field.alias)
    return frozenset(names)


async def reject_unknown_query_params(request: Request) -> None:
    """An app-wide dependency: a query parameter no route declares is a 422, not ignored
    (a typo such as `?tema=search` would otherwise silently widen the answer)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    allowed: frozenset[str] | None = getattr(route, _QUERY_NAMES_ATTR, None)
    if allowed is None:
        allowed = _query_names(route)
        setattr(route, _QUERY_NAMES_ATTR, allowed)
    unknown = [name for name in request.query_params if name not in allowed]
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", n), "msg": "unknown query parameter"}
                for n in dict.fromkeys(unknown)
            ]
        )
