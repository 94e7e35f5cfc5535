"""The drain: a background thread that moves spooled events into the store, batch by batch.

It reads from the spool files (never from an in-memory queue), so memory stays flat however long
the store is down; it retries with capped exponential backoff. It also adopts dead segments
(left by processes that are gone), stores them and deletes them. Its Python work comes in small
slices with a GIL release between them, so a busy drain barely touches the caller's latency.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meter._exceptions import StoreUnavailable
from meter.events import EventRecord, InsertResult
from meter.recorder import segments
from meter.recorder.spool import Handoff, OwnSegment, SpoolWriter
from meter.recorder.stores import BatchRejected, Store

log = logging.getLogger("meter.recorder")

BATCH_EVENTS = 10_000  # the PostgreSQL baseline batch: fixed costs per commit amortise
BATCH_BYTES = 6 << 20  # stays under a meter server's 8 MiB body limit
PARSE_SLICE = 128  # events parsed between two GIL releases
HANDOFF_SLICE = 1024  # handed-off events taken between two GIL releases
# How long an idle drain sleeps before looking for new lines (`flush` wakes it at once). Each
# look that finds a few events stores them in a transaction whose Python work takes the GIL from
# the caller's thread: every 50 ms, it cost the caller's median call 0.08 ms more than every
# 0.5 s (bench.client_overhead, alternated runs). Events are durable in the spool meanwhile.
IDLE_POLL_S = 0.5
SCAN_INTERVAL_S = 30.0
USAGE_RESCAN_S = 5.0
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
FSYNC_INTERVAL_S = 0.05


@dataclass
class DrainStats:
    stored: int = 0
    duplicates: int = 0
    expired: int = 0  # older than the server's purge cutoff: not stored, never counted
    skipped_lines: int = 0  # torn or corrupt lines, warned about
    rejected: int = 0  # events the store refused as invalid, warned about
    replayed_segments: int = 0


@dataclass
class Adopted:
    """A dead segment this process locked to replay."""

    path: Path
    fd: int
    offset: int = 0


@dataclass
class ParsedBatch:
    events: list[EventRecord]
    raw: list[bytes]
    skipped: int


def parse_batch(lines: Sequence[bytes], source: Path) -> ParsedBatch:
    """Spool lines -> events; torn and corrupt lines are counted and warned about, not fatal."""
    events: list[EventRecord] = []
    raw: list[bytes] = []
    skipped = 0
    for i, line in enumerate(lines):
        if i and i % PARSE_SLICE == 0:
            time.sleep(0)  # let the caller's threads have the GIL
        doc = segments.parse_line(line)
        try:
            if doc is None:
                raise ValueError("not a JSON object")
            event = EventRecord.from_wire(doc)
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            skipped += 1
            log.warning(
                "meter spool: skipping a torn or corrupt line in %s (%s): %r",
                source.name,
                exc,
                line[:120],
            )
            continue
        events.append(event)
        raw.append(line)
    return ParsedBatch(events, raw, skipped)


def parse_own_batch(
    lines: Sequence[bytes], seg: OwnSegment, offset: int, writer: SpoolWriter, drainer: Drainer
) -> ParsedBatch:
    """Like `parse_batch`, for lines this process wrote to its segment `seg` from `offset`: a
    line that is byte for byte the one handed off for that place takes the event object as it
    was appended instead of being decoded again; any other line is parsed from the file."""
    handoffs = writer.handoffs
    seq = seg.seq
    pending = drainer.pending_handoff
    events: list[EventRecord] = []
    raw: list[bytes] = []
    unmatched: list[bytes] = []
    skipped = 0
    end = offset
    for i, line in enumerate(lines):
        if i and i % HANDOFF_SLICE == 0:
            time.sleep(0)  # let the caller's threads have the GIL
        end += len(line) + 1
        # Hand-offs come in file order: skip those before this line (forgotten or not drained).
        while pending is None or pending[0] < seq or (pending[0] == seq and pending[1] < end):
            if not handoffs:  # only this thread takes from the left: not empty, not empty after
                pending = None
                break
            pending = handoffs.popleft()
        if (
            pending is not None
            and pending[0] == seq
            and pending[1] == end
            and len(pending[2]) == len(line) + 1
            and pending[2].startswith(line)
        ):
            if unmatched:
                skipped += _parse_into(unmatched, seg.path, events, raw)
                unmatched = []
            events.append(pending[3])
            raw.append(line)
            pending = None
        else:
            unmatched.append(line)
    if unmatched:
        skipped += _parse_into(unmatched, seg.path, events, raw)
    drainer.pending_handoff = pending
    return ParsedBatch(events, raw, skipped)


def _parse_into(
    lines: Sequence[bytes], source: Path, events: list[EventRecord], raw: list[bytes]
) -> int:
    """Parse `lines` onto the ends of `events` and `raw`; returns how many were skipped."""
    parsed = parse_batch(lines, source)
    events.extend(parsed.events)
    raw.extend(parsed.raw)
    return parsed.skipped


def store_batch(
    store: Store,
    events: list[EventRecord],
    raw: list[bytes],
    stats: DrainStats,
    spool_dir: Path | None = None,
) -> InsertResult:
    """Store, and when the store refuses the data, split to find and skip the bad events only."""
    if not events:
        return InsertResult(0, 0)
    try:
        result = store.store(events, raw)
    except BatchRejected as exc:
        if len(events) == 1:
            stats.rejected += 1
            log.warning("meter: the store refused event %s, skipped: %s", events[0].id, exc)
            return InsertResult(0, 0)
        half = len(events) // 2
        a = store_batch(store, events[:half], raw[:half], stats, spool_dir)
        b = store_batch(store, events[half:], raw[half:], stats, spool_dir)
        return InsertResult(
            a.inserted + b.inserted, a.duplicates + b.duplicates, a.expired + b.expired
        )
    stats.stored += result.inserted
    stats.duplicates += result.duplicates
    if result.expired:
        stats.expired += result.expired
        if spool_dir is not None:
            segments.note_expired(spool_dir, result.expired)
    return result


class Drainer:
    def __init__(self, writer: SpoolWriter, store: Store) -> None:
        self.writer = writer
        self.store = store
        self.stats = DrainStats()
        self._init_state()

    def _init_state(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._own_offsets: dict[int, int] = {}  # seq -> bytes stored
        self.committed: tuple[int, int] = (-1, 0)
        self._adopted: list[Adopted] = []
        self._recovered = False  # the dead segments found at start are stored
        self._thread: threading.Thread | None = None
        self._fsync_thread: threading.Thread | None = None
        self._abandoned = False
        # The next hand-off from the writer not yet matched to a line (see `parse_own_batch`).
        self.pending_handoff: Handoff | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meter-drain", daemon=True)
        self._fsync_thread = threading.Thread(
            target=self._fsync_loop, name="meter-fsync", daemon=True
        )
        self._thread.start()
        self._fsync_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._fsync_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        self.writer.sync()
        for adopted in self._adopted:
            os.close(adopted.fd)  # not finished: unlocked, for the next process to replay
        self._adopted = []

    def abandon(self) -> None:
        """The Meter was garbage-collected without `close()`: stop without waiting; the thread
        releases the spool itself (what it did not store is left for the next replay)."""
        self._abandoned = True
        self._stop.set()
        self._wake.set()

    def _release_after_abandon(self) -> None:
        self.writer.close(is_drained=self.is_drained)
        for adopted in self._adopted:
            os.close(adopted.fd)
        self._adopted = []
        self.store.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads are gone and its adopted segments are its own.
        Close our copies without unlocking (the lock is shared with the parent)."""
        for adopted in self._adopted:
            with contextlib.suppress(OSError):
                os.close(adopted.fd)
        self.stats = DrainStats()
        self._init_state()
        self._recovered = True  # the parent is replaying what it found
        self.start()

    def is_drained(self, seg: OwnSegment) -> bool:
        return self._own_offsets.get(seg.seq, 0) >= seg.written

    # -- flush ----------------------------------------------------------------------------
    def wait_for(self, target: tuple[int, int], timeout: float | None) -> bool:
        """Wait until everything up to `target` (a writer position) is stored, and the dead
        segments found at start too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._cond:
            while not (self.committed >= target and self._recovered):
                if self._thread is None or not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Wake now and then: a stopped drain must not leave us waiting for ever.
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def _advance(self, seq: int, offset: int) -> None:
        with self._cond:
            self._own_offsets[seq] = offset
            if (seq, offset) > self.committed:
                self.committed = (seq, offset)
            self._cond.notify_all()

    # -- the threads ----------------------------------------------------------------------------
    def _fsync_loop(self) -> None:
        while not self._stop.wait(FSYNC_INTERVAL_S):
            try:
                self.writer.sync()
            except Exception:  # never let the fsync thread die
                log.exception("meter spool: fsync failed")

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        next_scan = 0.0
        next_usage = 0.0
        retry_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_scan:
                    self._adopt_dead_segments()
                    next_scan = now + SCAN_INTERVAL_S
                if now >= next_usage:
                    self.writer.rescan_usage()
                    next_usage = now + USAGE_RESCAN_S
                if now < retry_at:
                    self._sleep(retry_at - now)
                    continue
                worked = self._drain_once()
            except StoreUnavailable:
                retry_at = time.monotonic() + backoff * random.uniform(0.8, 1.0)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Exception:  # a bug must not stop the drain: the events are in the spool
                log.exception("meter: the drain failed; retrying")
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_INITIAL_S
            if not worked:
                if not self._adopted and not self._recovered:
                    with self._cond:
                        self._recovered = True
                        self._cond.notify_all()
                self._sleep(IDLE_POLL_S)
        if self._abandoned:
            self._release_after_abandon()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _adopt_dead_segments(self) -> None:
        segments.remove_stale_creating(self.writer.spool_dir)
        own = {s.path.name for s in self.writer.snapshot()}
        mine = own | {a.path.name for a in self._adopted}
        for path in segments.list_segments(self.writer.spool_dir):
            if path.name in mine:
                continue
            fd = segments.try_adopt(path)
            if fd is not None:
                self._adopted.append(Adopted(path, fd))

    def _drain_once(self) -> bool:
        """Store one batch from the oldest segment that has something; False if none had."""
        if self._adopted:
            return self._drain_adopted(self._adopted[0])
        return any(self._drain_own(seg) for seg in self.writer.snapshot())

    def _drain_adopted(self, adopted: Adopted) -> bool:
        batch = segments.read_lines(
            adopted.fd, adopted.offset, max_lines=BATCH_EVENTS, max_bytes=BATCH_BYTES, final=True
        )
        if batch.lines:
            parsed = parse_batch(batch.lines, adopted.path)
            store_batch(self.store, parsed.events, parsed.raw, self.stats, self.writer.spool_dir)
            self.stats.skipped_lines += parsed.skipped
            adopted.offset = batch.end
            return True
        self._adopted.remove(adopted)
        segments.delete_segment(adopted.path, adopted.fd)
        self.stats.replayed_segments += 1
        return True

    def _drain_own(self, seg: OwnSegment) -> bool:
        if seg.closed:
            return False
        sealed = seg.sealed  # read before `written`: once sealed, `written` is final
        offset = self._own_offsets.get(seg.seq, 0)
        if offset < seg.written:
            batch = segments.read_lines(
                seg.fd, offset, max_lines=BATCH_EVENTS, max_bytes=BATCH_BYTES, final=False
            )
            if not batch.lines:
                return False
            parsed = parse_own_batch(batch.lines, seg, offset, self.writer, self)
            store_batch(self.store, parsed.events, parsed.raw, self.stats, self.writer.spool_dir)
            self.stats.skipped_lines += parsed.skipped
            self._advance(seg.seq, batch.end)
            return True
        self._advance(seg.seq, offset)
        if sealed:
            self.writer.release(seg)
            return True
        return False


def replay_dead_segments(
    spool_dir: Path,
    store: Store,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> DrainStats:
    """Store and delete every dead segment in `spool_dir` (`meter spool replay`).

    `on_progress` gets the number of bytes just replayed. Raises StoreUnavailable if the store
    is down; what was stored stays stored and the rest stays in its segment.
    """
    stats = DrainStats()
    for path in segments.list_segments(spool_dir):
        fd = segments.try_adopt(path)
        if fd is None:
            continue
        adopted = Adopted(path, fd)
        try:
            while True:
                batch = segments.read_lines(
                    fd, adopted.offset, max_lines=BATCH_EVENTS, max_bytes=BATCH_BYTES, final=True
                )
                if not batch.lines:
                    break
                parsed = parse_batch(batch.lines, path)
                store_batch(store, parsed.events, parsed.raw, stats, spool_dir)
                stats.skipped_lines += parsed.skipped
                if on_progress is not None:
                    on_progress(batch.end - adopted.offset)
                adopted.offset = batch.end
        except BaseException:
            os.close(fd)
            raise
        segments.delete_segment(path, fd)
        stats.replayed_segments += 1
    return stats
