"""The gateway's routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

They are dispatched by `GatewayDispatch`, an ASGI middleware in front of the API's router: a
gateway call skips FastAPI's routing, dependencies and exception layers, whose cost per call is
a large share of a proxy's own (see BENCHMARKS.md, Gateway).

Only `gateway` keys may call them (every other key gets 403 here, and a gateway key gets 403
everywhere else); with no key at all (open mode, loopback only) calls go through unattributed.
Every answer that is not the upstream's own is in OpenAI's error envelope.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meter._exceptions import InvalidRequest
from meter.api.errors import BodyTooLarge, content_length, limited_receive, too_large
from meter.budgets.repository import BudgetRow
from meter.client._record import Call
from meter.db import fast
from meter.db.session import Database
from meter.gateway.errors import openai_error
from meter.gateway.holds import BudgetGate, BudgetUnavailable, Claim, Refusal, StaleCovering
from meter.gateway.proxy import (
    Recording,
    forward_plain,
    forward_stream,
    make_http_client,
    response_headers,
    upstream_headers,
)
from meter.gateway.request import TAGS_HEADER, GatewayRequest, parse_request, parse_tags_header
from meter.ids import uuid7
from meter.keys import Principal, any_keys, hash_key, principal_for_key, use_note
from meter.metrics import GATEWAY_CALLS
from meter.money import format_decimal
from meter.settings import Settings

log = logging.getLogger("meter.gateway")

MODELS_CACHE_S = 300.0  # GET /v1/models: the upstream's answer is reused for at most this long
SETTLE_WAIT_S = 5.0  # the longest an admission waits for this server's settlements in flight
# PostgreSQL: how soon after a call ends its settlement is made, if no admission made it first
SETTLE_AFTER_S = 0.01
# OpenAI routes meter does not serve: 404 in OpenAI's envelope rather than FastAPI's.
UNSERVED = frozenset(
    {
        "embeddings",
        "responses",
        "moderations",
        "images",
        "audio",
        "files",
        "batches",
        "fine_tuning",
        "assistants",
        "threads",
        "vector_stores",
        "uploads",
        "realtime",
    }
)


@dataclass
class Gateway:
    """One server process's gateway: its spool (a Meter), budget gate and upstream pool."""

    settings: Settings
    db: Database
    meter: Any  # meter.recorder.meter.Recorder
    gate: BudgetGate
    _http: httpx.AsyncClient | None = None
    _models: tuple[float, Response] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop_reader: fast.OwnReader | None = None
    _urls: dict[str, httpx.URL] = field(default_factory=dict)
    # The settlements left to the next admission are made by then at the latest
    _settle_timer: asyncio.TimerHandle | None = None
    _flushes: set[asyncio.Future[None]] = field(default_factory=set)

    def settle_later(self, claim: Claim, cost_units: int, awaiting_lookup: bool) -> None:
        """On the event loop: a call's settlement, left to this server's next admission
        (BudgetGate.settle_later), made SETTLE_AFTER_S from now if none came by then."""
        self.gate.settle_later(claim, cost_units, awaiting_lookup=awaiting_lookup)
        if self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_AFTER_S, self._settle_left
            )

    def _settle_left(self) -> None:
        """SQLite: on the event loop's connection unless another connection is writing;
        else (and on PostgreSQL) in a worker thread."""
        self._settle_timer = None
        if not self.gate.unsettled():
            return
        reader = self.loop_reader()
        if reader is not None:
            try:
                self.gate.flush(reader, wait=False)
                return
            except fast.Busy:
                pass
        flush = asyncio.ensure_future(anyio.to_thread.run_sync(self.gate.flush))
        self._flushes.add(flush)  # kept until done: the loop holds tasks weakly
        flush.add_done_callback(self._flushes.discard)

    def upstream_url(self, path: str) -> httpx.URL:
        """The upstream's URL of a path, parsed once."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.settings.upstream_base_url.rstrip("/") + path)
        return url

    def loop_reader(self) -> fast.OwnReader | None:
        """SQLite: a connection of the event loop's own, so that an admission's reads (a few
        tens of microseconds, never waiting: WAL readers do not wait for writers) skip the
        trip to a worker thread. None on PostgreSQL, whose reads are network round trips."""
        if self._loop_reader is None and self.db.engine.dialect.name == "sqlite":
            self._loop_reader = fast.OwnReader(self.db.engine)
        return self._loop_reader

    @classmethod
    def start(cls, settings: Settings, db: Database) -> Gateway:
        from meter.recorder.meter import Recorder

        return cls(settings, db, Recorder(settings=settings), BudgetGate(db))

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_http_client(self.settings)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._loop_reader is not None:
            self._loop_reader.close()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        await anyio.to_thread.run_sync(self.gate.flush)  # the settlements left
        self.gate.close()
        await anyio.to_thread.run_sync(self.meter.close)


def gateway_of(request: Request) -> Gateway:
    app = request.app
    gateway: Gateway | None = getattr(app.state, "gateway", None)
    if gateway is None:
        with _START_LOCK:
            gateway = getattr(app.state, "gateway", None)
            if gateway is None:
                gateway = Gateway.start(app.state.settings, app.state.db)
                app.state.gateway = gateway
    return gateway


_START_LOCK = threading.Lock()


def _authenticate(
    request: Request,
    gateway: Gateway,
    reader: fast.Reader | None = None,
    later: list[Callable[[], None]] | None = None,
) -> Principal | Response:
    token = _bearer(request)
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if token is None:
        if not any_keys(gateway.db, gateway.settings):
            return Principal(role="gateway")  # open mode: loopback only, unattributed
        return openai_error(
            401,
            "missing API key: send `Authorization: Bearer <meter gateway key>`",
            type="invalid_request_error",
            code="invalid_api_key",
            headers=unauthorized,
        )
    principal = principal_for_key(gateway.db, gateway.settings, token, reader, later)
    if principal is None:
        return openai_error(
            401,
            "invalid API key",
            type="invalid_request_error",
            code="invalid_api_key",
            headers=unauthorized,
        )
    if principal.role != "gateway":
        return openai_error(
            403,
            f"this key has role {principal.role}; the gateway takes keys of role gateway "
            "(meter keys create --role gateway --team T)",
            type="permission_denied",
            code="wrong_role",
        )
    return principal


def _upstream_key_missing() -> Response:
    return openai_error(
        503,
        "the meter server has no upstream key: set OPENROUTER_API_KEY where `meter serve` runs",
        type="server_error",
        code="upstream_key_missing",
    )


def _database_unreachable(exc: Exception) -> Response:
    log.warning("gateway: the database cannot be reached, refusing: %s", exc)
    return openai_error(
        503,
        "meter's database cannot be reached, so the key cannot be checked; retry later",
        type="server_error",
        code="database_unavailable",
        headers={"Retry-After": "1"},
    )


async def chat_completions(request: Request) -> Response:
    return await _completions(request, "chat", "/chat/completions")


async def completions(request: Request) -> Response:
    return await _completions(request, "completions", "/completions")


async def _completions(request: Request, kind: str, path: str) -> Response:
    gateway = gateway_of(request)
    settings = gateway.settings
    raw = await request.body()
    occurred_at = datetime.now(UTC)
    req: GatewayRequest | None = None
    invalid: InvalidRequest | None = None
    header_tags: dict[str, str] | InvalidRequest | None
    try:
        req = parse_request(kind, raw, lambda model: gateway.meter.price_at(model, occurred_at))
    except InvalidRequest as exc:
        invalid = exc
    try:
        header_tags = parse_tags_header(request.headers.get(TAGS_HEADER))
    except InvalidRequest as exc:
        header_tags = exc
    # The database: the key, the budgets covering the call and, when one does, its
    # reservation (a bad key is a 401 before a bad body is a 400). In one trip to a worker
    # thread; on SQLite the reads on the event loop, and a worker thread only for a write.
    event_id = uuid7()
    reader = gateway.loop_reader()
    if reader is None:
        admission = await anyio.to_thread.run_sync(
            _admission, request, gateway, req, header_tags, event_id, occurred_at
        )
    else:
        reader.fresh()
        later: list[Callable[[], None]] = []
        admission = _admission(
            request, gateway, req, header_tags, event_id, occurred_at, reader, later
        )
        for write in later:  # the key's last use, once a minute
            await anyio.to_thread.run_sync(write)
    if isinstance(admission, Response):
        return admission
    principal, tags, budgets, reserved = admission
    if isinstance(reserved, Claim):  # read on the loop: reserve there too, unless it must wait
        pending = reserved
        try:
            reserved = _reserve_claim(gateway, pending, budgets, reader, wait=False)
        except fast.Busy:
            reserved = await anyio.to_thread.run_sync(_reserve_claim, gateway, pending, budgets)
    if settings.openrouter_api_key is None:
        return _upstream_key_missing()
    if invalid is None and isinstance(tags, InvalidRequest):
        invalid = tags
    if invalid is not None or req is None or isinstance(tags, InvalidRequest):
        assert invalid is not None
        GATEWAY_CALLS.labels("invalid").inc()
        return openai_error(400, str(invalid), type="invalid_request_error", param=invalid.param)
    call = Call(
        gateway.meter,
        req.model,
        principal.user or req.body_user,
        principal.team,
        tags,
        messages=req.messages,
        prompt=req.prompt,
        price=req.price,
        occurred_at=occurred_at,
        event_id=event_id,
    )
    if (
        isinstance(reserved, tuple)
        and reserved[1] is not None
        and gateway.gate.unsettled()
        and isinstance(budgets, list)
    ):
        # Refused while this server's last calls' settlements were still being made (by
        # another admission or a batch): judged again once they are, as if made first.
        pending = reserved[0]
        reserved = await anyio.to_thread.run_sync(_reserve_settled, gateway, pending, budgets)
    claim = _reserve(gateway, req, call, budgets, reserved)
    if isinstance(claim, Response):
        return claim
    recording = Recording(call, claim, gateway.settle_later)
    outgoing = gateway.http().build_request(
        "POST",
        gateway.upstream_url(path),
        content=req.content,
        headers=upstream_headers(settings, request.scope["headers"], req.stream),
    )
    if req.stream:
        return await forward_stream(gateway.http(), outgoing, recording, req.strip_usage_chunk)
    return await forward_plain(gateway.http(), outgoing, recording)


Tags = dict[str, str] | InvalidRequest | None
# A reservation made in the admission's trip: the claim and its refusal (None: admitted), or
# why the budget state could not be read; or, when the admission read on the event loop, the
# claim still to reserve.
Reserved = tuple[Claim, Refusal | None] | BudgetUnavailable | Claim | None
Admission = tuple[Principal, Tags, list[BudgetRow] | BudgetUnavailable, Reserved]


def _admission(
    request: Request,
    gateway: Gateway,
    req: GatewayRequest | None,
    header_tags: Tags,
    event_id: uuid.UUID,
    occurred_at: datetime,
    reader: fast.Reader | None = None,
    later: list[Callable[[], None]] | None = None,
) -> Response | Admission:
    """The caller's key, then the enforced budgets covering the call, then, when the call is
    valid and covered, its reservation: in a worker thread, one trip for all three, the key
    and the budgets read on one connection. With `reader` (on the event loop), the reads
    alone: writes (the key's last use, the reservation) are left to the caller, in `later`
    and as the claim to reserve. Tags: the key's, else the X-Meter-Tags header's (a bad
    header matters only then)."""
    inline = later is not None
    writes: list[Callable[[], None]] = later if later is not None else []
    reserved: Reserved = None
    read = False  # the admission's reads done: its writes are due
    # PostgreSQL (not inline): the key's digest, for the principal remembered for it
    token = None if inline else _bearer(request)
    digest = None if token is None else hash_key(token)
    try:
        with fast.reading(gateway.db.engine, reader) as on:
            if digest is not None and req is not None:
                remembered = _admit_remembered(
                    gateway, digest, req, header_tags, event_id, occurred_at, on, writes
                )
                if remembered is not None:
                    read = True
                    return remembered
            principal = _authenticate(request, gateway, on, writes)
            if isinstance(principal, Response):
                return principal
            if digest is not None and principal.role == "gateway":
                gateway.gate.remember_key(digest, principal)
            tags = principal.tags or header_tags
            budgets: list[BudgetRow] | BudgetUnavailable = []
            user = None
            claim: Claim | None = None
            if req is not None and not isinstance(tags, InvalidRequest):
                user = principal.user or req.body_user
                known = None if inline else gateway.gate.known(principal.team, user, tags)
                if known:  # PostgreSQL: admitted under them if they still are all the call's
                    claim = _claim(gateway, req, principal, user, tags, event_id, occurred_at)
                    try:
                        if claim is not None:
                            reserved = _reserve_claim(gateway, claim, known, on, verify=True)
                            budgets = known
                    except StaleCovering:
                        pass
                if reserved is None:
                    try:
                        budgets = gateway.gate.covering(principal.team, user, tags, on)
                    except BudgetUnavailable as exc:
                        budgets = exc
                if reserved is None and isinstance(budgets, list) and budgets:
                    claim = claim or _claim(
                        gateway, req, principal, user, tags, event_id, occurred_at
                    )
                    # On the same connection as the reads (PostgreSQL: no second checkout
                    # and ping); on the event loop, by the caller.
                    if claim is not None:
                        reserved = claim if inline else _reserve_claim(gateway, claim, budgets, on)
        read = True
    except sa.exc.OperationalError as exc:
        return _database_unreachable(exc)
    finally:
        if read and not inline:
            # After the connection is back: a write that waited for a second connection
            # while holding the first could wait for ever once every thread did the same.
            for write in writes:
                write()
    return principal, tags, budgets, reserved


def _admit_remembered(
    gateway: Gateway,
    digest: str,
    req: GatewayRequest,
    header_tags: Tags,
    event_id: uuid.UUID,
    occurred_at: datetime,
    on: fast.Reader,
    writes: list[Callable[[], None]],
) -> Admission | None:
    """PostgreSQL: a call whose key and covering budgets were read for an earlier call,
    admitted in one round trip: its reservation made only if, in the same statement, the key
    is still there and the budgets still are all the call's, unchanged (BudgetGate.admit).
    None when it cannot be: nothing was reserved, and the caller reads the key and the
    budgets (a revoked key is refused there)."""
    principal = gateway.gate.key_principal(digest)
    if principal is None or principal.key_id is None:
        return None
    tags = principal.tags or header_tags
    if isinstance(tags, InvalidRequest):
        return None
    user = principal.user or req.body_user
    known = gateway.gate.known(principal.team, user, tags)
    claim = _claim(gateway, req, principal, user, tags, event_id, occurred_at)
    if not known or claim is None:
        return None
    try:
        reserved = _reserve_claim(
            gateway, claim, known, on, verify=True, api_key=(principal.key_id, digest)
        )
    except StaleCovering:
        gateway.gate.forget_key(digest)
        return None
    note = use_note(gateway.db.engine, principal.key_id, None, datetime.now(UTC))
    if note is not None:
        writes.append(note)
    return principal, tags, known, reserved


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _claim(
    gateway: Gateway,
    req: GatewayRequest,
    principal: Principal,
    user: str | None,
    tags: dict[str, str] | None,
    event_id: uuid.UUID,
    occurred_at: datetime,
) -> Claim | None:
    """The call's claim on the budgets that may cover it; None when it cannot be sent with a
    bounded cost (refused by `_reserve` if a budget covers it)."""
    if (
        gateway.settings.openrouter_api_key is None
        or req.price is None
        or req.unbounded_param(req.price) is not None
    ):
        return None
    return Claim(
        event_id=event_id,
        team=principal.team,
        user=user,
        tags=tags,
        model=req.model,
        occurred_at=occurred_at,
        worst_case_units=req.worst_case_units(req.price),
    )


def _reserve_claim(
    gateway: Gateway,
    claim: Claim,
    budgets: list[BudgetRow] | BudgetUnavailable,
    writer: fast.Reader | None = None,
    *,
    wait: bool = True,
    verify: bool = False,
    api_key: tuple[int, str] | None = None,
) -> Reserved:
    """The claim reserved under its budgets, or why it could not be; on `writer` if given
    (with `wait=False`, fast.Busy while another connection writes), else on a pooled one.
    With `verify`, StaleCovering when `budgets` are no longer the claim's (BudgetGate.admit)."""
    assert isinstance(budgets, list)
    try:
        return claim, gateway.gate.admit(
            claim, budgets, writer, wait=wait, verify=verify, api_key=api_key
        )
    except BudgetUnavailable as exc:
        return exc


def _reserve_settled(gateway: Gateway, claim: Claim, budgets: list[BudgetRow]) -> Reserved:
    """The claim reserved once this server's settlements left and in flight are made."""
    if not gateway.gate.wait_settled(SETTLE_WAIT_S):
        log.warning("gateway: settlements still running after %s s, not waited for", SETTLE_WAIT_S)
    return _reserve_claim(gateway, claim, budgets)


def _reserve(
    gateway: Gateway,
    req: GatewayRequest,
    call: Call,
    budgets: list[BudgetRow] | BudgetUnavailable,
    reserved: Reserved,
) -> Claim | Response | None:
    """The call's hold under the enforced budgets covering it: None when none covers it, a
    Response when it is refused (402, 400 unbounded_cost, 503 budget_unavailable). `reserved`:
    the reservation the admission's trip made (for every covered call with a bounded cost)."""
    fail_open = gateway.settings.gateway_fail_open
    if isinstance(budgets, BudgetUnavailable):
        return None if fail_open else _budget_unavailable(budgets)
    if not budgets:
        return None
    param = req.unbounded_param(call.price)
    if param is not None:
        GATEWAY_CALLS.labels("unbounded_cost").inc()
        return openai_error(
            400,
            f"an enforced budget covers this call, and its cost has no bound because of "
            f"`{param}`: "
            + (
                "the model needs a price and a context length in meter's price book"
                if param == "model"
                else "fallback models, plugins and non-text content can cost any amount"
            ),
            type="invalid_request_error",
            param=param,
            code="unbounded_cost",
        )
    # Covered, bounded and with an upstream key: `_admission` reserved it (or, after reading
    # on the event loop, `_reserve_claim`).
    assert reserved is not None and not isinstance(reserved, Claim)
    if isinstance(reserved, BudgetUnavailable):
        return None if fail_open else _budget_unavailable(reserved)
    claim, refusal = reserved
    if refusal is None:
        return claim
    GATEWAY_CALLS.labels("refused_budget").inc()
    return openai_error(
        402,
        f"budget {refusal.budget_id} has no room for this call: spent "
        f"${format_decimal(refusal.spend_usd)} and reserved "
        f"${format_decimal(refusal.reserved_usd)} of ${format_decimal(refusal.limit_usd)}; "
        "this call may cost up to "
        f"${format_decimal(refusal.needed_usd)} (lower max_tokens to need less)",
        type="budget_exceeded",
        code="budget_exceeded",
        headers={"x-should-retry": "false"},
        extra={
            "budget_id": refusal.budget_id,
            "limit_usd": format_decimal(refusal.limit_usd),
            "spend_usd": format_decimal(refusal.spend_usd),
            "reserved_usd": format_decimal(refusal.reserved_usd),
        },
    )


def _budget_unavailable(exc: Exception) -> Response:
    log.warning("gateway: budget state unavailable, refusing (fail closed): %s", exc)
    GATEWAY_CALLS.labels("budget_unavailable").inc()
    return openai_error(
        503,
        "the budget state cannot be read, so no call is admitted (set METER_GATEWAY_FAIL_OPEN=1 "
        "on the server to let calls through instead)",
        type="server_error",
        code="budget_unavailable",
    )


async def models(request: Request) -> Response:
    gateway = gateway_of(request)
    principal = await anyio.to_thread.run_sync(_authenticate, request, gateway)
    if isinstance(principal, Response):
        return principal
    settings = gateway.settings
    if settings.openrouter_api_key is None:
        return _upstream_key_missing()
    cached = gateway._models
    if cached is not None and time.monotonic() - cached[0] < MODELS_CACHE_S:
        return cached[1]
    try:
        upstream = await gateway.http().get(
            settings.upstream_base_url.rstrip("/") + "/models",
            headers=upstream_headers(settings, request.scope["headers"], stream=False),
        )
    except httpx.TimeoutException as exc:
        return openai_error(
            504,
            f"the upstream did not answer in time ({type(exc).__name__})",
            type="upstream_error",
            code="upstream_timeout",
        )
    except httpx.HTTPError as exc:
        return openai_error(
            502,
            f"the upstream could not be reached ({type(exc).__name__})",
            type="upstream_error",
            code="upstream_unreachable",
        )
    answer = Response(
        upstream.content, upstream.status_code, headers=response_headers(upstream, decoded=True)
    )
    if upstream.status_code == 200:
        gateway._models = (time.monotonic(), answer)
    return answer


async def _not_served(request: Request) -> Response:
    return openai_error(
        404,
        f"meter's gateway does not serve {request.url.path}: it meters /v1/chat/completions "
        "and /v1/completions, and lists /v1/models",
        type="invalid_request_error",
        code="unknown_url",
    )


_ROUTES: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
    "/v1/chat/completions": ("POST", chat_completions),
    "/v1/completions": ("POST", completions),
    "/v1/models": ("GET", models),
}


def _route(path: str) -> tuple[str | None, Callable[[Request], Awaitable[Response]]] | None:
    """The gateway's handler of a path (and the method it takes), or None: not the gateway's."""
    route = _ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith("/v1/") and path[4:].split("/", 1)[0] in UNSERVED:
        return None, _not_served
    return None


class GatewayDispatch:
    """The gateway's paths, answered straight from the ASGI call (`MeterApp` hands them over
    before any of FastAPI's layers), within a body size limit of their own; None from `route`
    for every other path, which goes on to the API."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    route = staticmethod(_route)

    async def __call__(
        self,
        route: tuple[str | None, Callable[[Request], Awaitable[Response]]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        method, handler = route
        limit = self.max_body_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit, gateway=True)(scope, receive, send)
            return
        request = Request(scope, limited_receive(receive, limit))
        try:
            if method is not None and request.method != method:
                response = openai_error(
                    405,
                    f"{request.url.path} takes {method}",
                    type="invalid_request_error",
                    code="method_not_allowed",
                    headers={"Allow": method},
                )
            else:
                response = await handler(request)
        except BodyTooLarge:  # the body is read before anything is sent
            response = too_large(limit, gateway=True)
        except Exception:
            log.exception("gateway: %s %s failed", request.method, request.url.path)
            response = openai_error(
                500,
                "meter's gateway failed on this call; the server's log says why",
                type="server_error",
                code="internal_error",
            )
        await response(scope, receive, send)
