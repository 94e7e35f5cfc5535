"""The client's price book: cached in memory, refreshed in the background at most every 30 s.

`price_at` is a dict lookup and a bisect. It never waits on the store, except that the very
first calls wait up to FIRST_LOAD_WAIT_S for the load begun when the Meter was made, so that a
price added just before does not show a stale cost; without any book it uses the seed price.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from meter.pricing import SEED_PRICE, Price, PriceBook

REFRESH_S = 30.0
RETRY_S = 5.0
FIRST_LOAD_WAIT_S = 0.25


class PriceCache:
    def __init__(self, load: Callable[[], PriceBook | None]) -> None:
        self._load = load
        self._book = PriceBook.of([SEED_PRICE])
        self._loaded = threading.Event()
        self._lock = threading.Lock()
        self._refreshing = False
        self._next_refresh = 0.0

    def start(self) -> None:
        self._refresh_soon()

    def price_at(self, model: str, moment: datetime) -> Price | None:
        if time.monotonic() >= self._next_refresh:
            self._refresh_soon()
        if not self._loaded.is_set():
            self._loaded.wait(FIRST_LOAD_WAIT_S)
        return self._book.price_at(model, moment)

    def _refresh_soon(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
            self._next_refresh = time.monotonic() + REFRESH_S
        threading.Thread(target=self._refresh, name="meter-prices", daemon=True).start()

    def _refresh(self) -> None:
        try:
            book = self._load()
        except Exception:
            book = None
        with self._lock:
            self._refreshing = False
            if book is not None:
                self._book = book
            elif not self._loaded.is_set():
                # Never loaded: keep the seed book, and try again sooner than a refresh.
                self._next_refresh = time.monotonic() + RETRY_S
        # Loaded or failed, the first callers stop waiting either way.
        self._loaded.set()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._refreshing = False
        self._next_refresh = 0.0
