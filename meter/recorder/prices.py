"""The client's price book: cached in memory, kept fresh in the background.

`price_at` is a dict lookup and a bisect. With a database store, the cache reads the price
book's version (a count and a max id: one cheap query) at most every CHECK_S, and reloads the
book when it changed, or every REFRESH_S anyway; so a price added anywhere (`meter prices sync
--apply` elsewhere, another server) is used here within STALE_S + CHECK_S seconds. A meter
server's store (`api_url`) has no such version: its book is reloaded every REFRESH_S.

It never waits on the store, except: the very first calls wait up to FIRST_LOAD_WAIT_S for the
load begun when the Meter was made, so that a price added just before does not show a stale
cost; and a call finding a book unconfirmed for STALE_S (an idle process) waits up to
STALE_WAIT_S for the version check it starts, unless the last one failed (a down database never
delays a call twice). Without any book it uses the seed price.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime

from meter.pricing import SEED_PRICE, Price, PriceBook

REFRESH_S = 30.0
CHECK_S = 1.0
STALE_S = 4.0
STALE_WAIT_S = 0.25
RETRY_S = 5.0
FIRST_LOAD_WAIT_S = 0.25


class PriceCache:
    def __init__(
        self,
        load: Callable[[], PriceBook | None],
        version: Callable[[], object | None] | None = None,
    ) -> None:
        self._load = load
        self._version = version
        self._book = PriceBook.of([SEED_PRICE])
        self._book_version: object | None = None
        self._loaded = threading.Event()
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._refreshing: threading.Event | None = None  # set when the refresh in flight ends
        self._next_refresh = 0.0
        self._reload_due = 0.0  # a full reload even if the version did not change
        self._confirmed = -math.inf  # when the last check that found the book current began
        self._healthy = True  # the last check or load succeeded

    def start(self) -> None:
        self._refresh_soon()

    def price_at(self, model: str, moment: datetime) -> Price | None:
        now = time.monotonic()
        if now >= self._next_refresh:
            done = self._refresh_soon()
            stale = self._version is not None and now - self._confirmed > STALE_S
            if done is not None and stale and self._healthy and self._loaded.is_set():
                done.wait(STALE_WAIT_S)
        if not self._loaded.is_set():
            self._loaded.wait(FIRST_LOAD_WAIT_S)
        return self._book.price_at(model, moment)

    def _refresh_soon(self) -> threading.Event | None:
        with self._lock:
            if self._refreshing is not None:
                return self._refreshing
            done = self._refreshing = threading.Event()
            now = time.monotonic()
            self._next_refresh = now + (CHECK_S if self._version is not None else REFRESH_S)
        threading.Thread(
            target=self._refresh, args=(done, now), name="meter-prices", daemon=True
        ).start()
        return done

    def _refresh(self, done: threading.Event, began: float) -> None:
        book: PriceBook | None = None
        version: object | None = None
        try:
            # The first load goes straight to the book (callers may be waiting for it); the
            # next check then finds a version and loads it once more.
            if self._version is not None and self._loaded.is_set():
                version = self._version()
            # Read before the book: a price added in between makes the next check reload again.
            current = (
                version is not None
                and version == self._book_version
                and time.monotonic() < self._reload_due
            )
            ok = current
            if not current:
                book = self._load()
                ok = book is not None
        except Exception:
            ok = False
        with self._lock:
            self._refreshing = None
            self._healthy = ok
            if book is not None:
                self._book = book
                self._book_version = version
                self._reload_due = began + REFRESH_S
            if ok:
                self._confirmed = began
            elif self._version is not None or not self._loaded.is_set():
                # A down database is not asked every CHECK_S; never loaded (the seed book in
                # use), the book is tried again sooner than a refresh.
                self._next_refresh = time.monotonic() + RETRY_S
        # Loaded or failed, the callers waiting stop waiting either way.
        self._loaded.set()
        done.set()

    def after_fork(self) -> None:
        self._init_state()
