"""`Recorder`: where a metered call's event goes (`meter.Meter` is a Recorder that also makes
metering transports: they belong to the client layer, above this one).

The caller's path is one `write(2)` of a JSON line to this process's spool segment: the event
is durable against `kill -9` before `_submit`/`record` return, and nothing else happens there.
Background threads fsync the spool, drain it in batches to the store (a database, or a meter
server's `POST /v1/events`), replay segments left by dead processes, and refresh the price book.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from meter.events import EventRecord, format_timestamp
from meter.pricing import Price
from meter.recorder import lifecycle
from meter.recorder.drain import Drainer
from meter.recorder.prices import PriceCache
from meter.recorder.spool import DEFAULT_SEGMENT_BYTES, SpoolWriter
from meter.recorder.stores import DatabaseStore, HttpStore, Store
from meter.recorder.validate import build_event
from meter.settings import Settings, get_settings

if TYPE_CHECKING:
    from meter.budgets.guard import BudgetGuard
    from meter.db.session import Database

log = logging.getLogger("meter.recorder")

CLOSE_FLUSH_S = 10.0
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _not_serializable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_line_encoder() -> Callable[[dict[str, Any]], str]:
    """`_ENCODER.encode`, minus the new C encoder it builds on every call (a third of its time):
    the same C encoder, built once, with the same options. Pure Python json: `_ENCODER`."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    c_encoder = make(
        None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def encode(doc: dict[str, Any]) -> str:
        return "".join(c_encoder(doc, 0))

    return encode


_encode_line = _make_line_encoder()
_string = json.encoder.encode_basestring  # what the encoder above uses for every str


def spool_line(event: EventRecord) -> bytes:
    """`_encode_line(event.to_wire())` and a newline, as bytes: the same bytes, formatted
    directly (the recording caller's hot path: about half the time of building the dict and
    encoding it). Counts that are not plain ints take the general path."""
    e = event
    if type(e.prompt_tokens) is not int or type(e.completion_tokens) is not int:
        return (_encode_line(e.to_wire()) + "\n").encode()
    out = (
        f'{{"id":"{e.id}","occurred_at":"{format_timestamp(e.occurred_at)}",'
        f'"model":{_string(e.model)},"prompt_tokens":{e.prompt_tokens},'
        f'"completion_tokens":{e.completion_tokens},"status":{_string(e.status)},'
        f'"usage_source":{_string(e.usage_source)}'
    )
    if e.user is not None:
        out += ',"user":' + _string(e.user)
    if e.team is not None:
        out += ',"team":' + _string(e.team)
    if e.tags is not None:
        out += ',"tags":' + _encode_line(e.tags)
    for name in _OPTIONAL_COUNTS:
        value = getattr(e, name)
        if value is not None:
            if type(value) is not int:
                return (_encode_line(e.to_wire()) + "\n").encode()
            out += f',"{name}":{value}'
    if e.generation_id is not None:
        out += ',"generation_id":' + _string(e.generation_id)
    if e.provider_cost_usd is not None:
        out += ',"provider_cost_usd":' + _string(format(e.provider_cost_usd, "f"))
    return (out + "}\n").encode()


_OPTIONAL_COUNTS = ("cached_tokens", "reasoning_tokens", "latency_ms", "ttft_ms")


@dataclass(frozen=True)
class RecorderStats:
    """What this Recorder did so far: `dropped` events were lost to a full (or unwritable) spool;
    `skipped_lines` were torn or corrupt spool lines; `rejected` events the store refused;
    `expired` events were older than the store's purge cutoff (SPEC section 10): not stored,
    since their days' totals are final."""

    spooled: int
    dropped: int
    stored: int
    duplicates: int
    skipped_lines: int
    rejected: int
    replayed_segments: int
    expired: int = 0


class Recorder:
    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        settings: Settings | None = None,
        spool_dir: str | Path | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        overrides: dict[str, Any] = {}
        if database_url is not None:
            overrides["database_url"] = database_url
        if spool_dir is not None:
            overrides["spool_dir"] = Path(spool_dir)
        if settings is None:
            settings = get_settings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        self.api_url = api_url.rstrip("/") if api_url else None
        self._api_key = api_key
        self._closed = False
        self._guard: BudgetGuard | None = None
        self._guard_lock = threading.Lock()
        self._writer = SpoolWriter(
            Path(settings.spool_dir).expanduser(),
            max_bytes=settings.spool_max_bytes,
            segment_bytes=segment_bytes,
        )
        self._store: Store
        if self.api_url:
            self._store = HttpStore(self.api_url, api_key)
            self._prices = PriceCache(self._store.load_prices)
        else:
            # A database store reads the book's version cheaply: new prices are seen in seconds.
            store = DatabaseStore(settings)
            self._store = store
            self._prices = PriceCache(store.load_prices, store.prices_version)
        self._drain = Drainer(self._writer, self._store)
        lifecycle.register(self)
        # A Meter dropped without close() (say, a client's default one) must not leave its
        # threads running: when it is collected the drain stops and releases its segments.
        # (No reference to self here, or it would never be collected.)
        self._finalizer = weakref.finalize(self, Drainer.abandon, self._drain)
        self._finalizer.atexit = False  # exit is lifecycle's business: it flushes first
        # Nothing here touches the store: opening it, replaying dead segments and loading
        # prices all happen in the background, so a down database never delays the caller.
        self._drain.start()
        self._prices.start()

    def __repr__(self) -> str:  # never the api key
        target = self.api_url or self.settings.database_url
        return f"<Meter {target} spool={self._writer.spool_dir}>"

    @property
    def spool_dir(self) -> Path:
        return self._writer.spool_dir

    # -- what the client calls -------------------------------------------------------------
    def _submit(self, event: EventRecord) -> None:
        """Take one finished call's event: durable in the spool on return. Never raises."""
        try:
            line = spool_line(event)
            self._writer.append(line, event)
        except Exception:  # recording must never break the caller's call
            self._writer.stats.failures += 1
            log.exception("meter: could not spool event %s", getattr(event, "id", "?"))

    def check_budget(
        self, *, team: str | None, user: str | None, tags: dict[str, str] | None = None
    ) -> None:
        """Raise BudgetExceeded when an enforced budget covering the call is used up."""
        guard = self._guard
        if guard is None:
            with self._guard_lock:
                if self._guard is None:
                    from meter.budgets.guard import BudgetGuard

                    self._guard = BudgetGuard(self)
                guard = self._guard
        guard.check(team=team, user=user, tags=tags)

    def price_at(self, model: str, moment: datetime) -> Price | None:
        """The price in effect for `model` at `moment` (cached price book), None if unpriced."""
        return self._prices.price_at(model, moment)

    def database(self) -> Database | None:
        """The open database (opening it if needed, so call it off the hot path); None with
        `api_url`, or while the database cannot be reached or its schema is old."""
        return self._store.database()

    # -- public API --------------------------------------------------------------------------
    def record(
        self,
        *,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        user: str | None = None,
        team: str | None = None,
        occurred_at: datetime | None = None,
        status: str = "ok",
        event_id: str | None = None,
        tags: dict[str, str] | None = None,
        usage_source: str = "provider",
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        latency_ms: int | None = None,
        ttft_ms: int | None = None,
        generation_id: str | None = None,
        provider_cost_usd: Decimal | str | None = None,
    ) -> EventRecord:
        """Record a call made elsewhere. Validates (InvalidRequest names the field; nothing is
        recorded then) and returns the event, already durable in the spool."""
        event = build_event(
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            user=user,
            team=team,
            occurred_at=occurred_at,
            status=status,
            event_id=event_id,
            tags=tags,
            usage_source=usage_source,
            cached_tokens=cached_tokens,
            reasoning_tokens=reasoning_tokens,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            generation_id=generation_id,
            provider_cost_usd=provider_cost_usd,
        )
        self._submit(event)
        # The drain may store this very object (handed off in memory): the caller gets a copy,
        # so that changing it afterwards cannot change what is stored.
        return event.copy()

    def flush(self, timeout: float | None = None) -> bool:
        """True once everything recorded so far (and the dead segments found at start) is
        stored; False if `timeout` seconds passed first. Dropped events are not waited for."""
        if self._closed:
            return self._drain.wait_for(self._writer.position, 0)
        return self._drain.wait_for(self._writer.position, timeout)

    def stats(self) -> RecorderStats:
        w, d = self._writer.stats, self._drain.stats
        return RecorderStats(
            spooled=w.written,
            dropped=w.dropped,
            stored=d.stored,
            duplicates=d.duplicates,
            skipped_lines=d.skipped_lines,
            rejected=d.rejected,
            replayed_segments=d.replayed_segments,
            expired=d.expired,
        )

    def close(self, timeout: float | None = CLOSE_FLUSH_S) -> None:
        """Flush (for up to `timeout` s), stop the threads, release the spool. Events not
        stored by then stay in the spool and are stored by the next Meter that uses it."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._drain.wait_for(self._writer.position, timeout)
        self._drain.stop()
        self._writer.close(is_drained=self._drain.is_drained)
        if self._guard is not None:
            self._guard.close()
        self._store.close()
        lifecycle.unregister(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _after_fork_in_child(self) -> None:
        self._writer.forget_after_fork()
        self._store.after_fork()
        self._prices.after_fork()
        self._guard_lock = threading.Lock()
        self._guard = None  # its refresh thread did not survive the fork; a new one starts lazily
        if not self._closed:
            self._drain.after_fork()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
