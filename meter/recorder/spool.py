"""The writing side of the spool: this process's own segments, appended with one `write(2)` each.

`append` is the only thing on the caller's path: one `os.write` of a JSON line under a lock, so
the event survives the process being killed the moment `append` returns. A background thread
calls `fsync` (at least every 100 ms) for power loss. Segments rotate at `segment_bytes`; each
stays open and locked until the drain has stored it and deleted it.

When the spool directory holds `max_bytes` or more, new events are dropped, never waited for:
they are counted in `dropped` and a warning is logged at most once a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meter.recorder import segments

if TYPE_CHECKING:
    from meter.events import EventRecord

log = logging.getLogger("meter.recorder")

DEFAULT_SEGMENT_BYTES = 64 << 20
DROP_WARNING_INTERVAL_S = 60.0
# Events just appended, kept for this process's drain so that it need not parse back what it
# wrote: at most this many (two drain batches, ~20 MB), the oldest forgotten first (the drain
# parses those from the file, which stays the source of truth).
HANDOFF_EVENTS = 20_000


# An event this process appended: (segment seq, offset just past its line, the line with its
# newline, the event it encodes). A plain tuple: one is made per event, on the caller's path. The
# drain uses the event only when the line it reads from the file at that place is byte for byte
# this one.
Handoff = tuple[int, int, bytes, "EventRecord"]


@dataclass
class OwnSegment:
    """One of this process's segments. `seq` orders them; `written` is its size so far."""

    seq: int
    path: Path
    fd: int
    written: int = 0
    sealed: bool = False  # rotated: nothing more will be appended
    closed: bool = False


@dataclass
class SpoolStats:
    written: int = 0
    dropped: int = 0
    bytes_written: int = 0
    failures: int = 0
    last_drop_warning: float = field(default=-DROP_WARNING_INTERVAL_S)


class SpoolWriter:
    def __init__(
        self,
        spool_dir: Path,
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._segments: list[OwnSegment] = []  # oldest first; the last one is active
        self._next_seq = 0
        self._dirty = False
        # Bytes in the directory from other segments (other processes, dead ones), refreshed by
        # `rescan_usage`; our own bytes are counted exactly as we write and delete.
        self._others_bytes = 0
        self._own_bytes = 0
        # (seq, offset) just past the last line appended: what `flush` waits for.
        self.position: tuple[int, int] = (-1, 0)
        # Appended under `_lock` in file order; the drain pops from the left without it. Full,
        # the deque forgets its oldest entry: the caller never waits, memory stays bounded.
        self.handoffs: deque[Handoff] = deque(maxlen=HANDOFF_EVENTS)

    # -- the caller's path --------------------------------------------------------------------
    def append(self, line: bytes, event: EventRecord | None = None) -> bool:
        """Write one newline-terminated line; False (counted, never raised) when dropped.
        `event` (what the line encodes) is handed to this process's drain, in memory."""
        with self._lock:
            if self._others_bytes + self._own_bytes + len(line) > self.max_bytes:
                self._drop()
                return False
            try:
                seg = self._active()
                written = os.write(seg.fd, line)
                if written < len(line):  # only on a full disk: finish the line or fail
                    os.write(seg.fd, line[written:])
            except OSError as exc:
                # Disk full or the like: the event cannot be made durable; never raise.
                self.stats.failures += 1
                self._drop(f"cannot write to the spool ({exc})")
                return False
            seg.written += len(line)
            self._own_bytes += len(line)
            self.stats.written += 1
            self.stats.bytes_written += len(line)
            self._dirty = True
            self.position = (seg.seq, seg.written)
            if event is not None:
                self.handoffs.append((seg.seq, seg.written, line, event))
            if seg.written >= self.segment_bytes:
                seg.sealed = True
        return True

    def _active(self) -> OwnSegment:
        if self._segments and not self._segments[-1].sealed:
            return self._segments[-1]
        path, fd = segments.create_segment(self.spool_dir)
        seg = OwnSegment(self._next_seq, path, fd)
        self._next_seq += 1
        self._segments.append(seg)
        return seg

    def _drop(self, reason: str | None = None) -> None:
        self.stats.dropped += 1
        now = time.monotonic()
        if now - self.stats.last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self.stats.last_drop_warning = now
            log.warning(
                "meter spool: %s; dropping new events (%d so far). Events already spooled are "
                "kept and stored once the database or meter server is reachable again.",
                reason
                or f"the spool {self.spool_dir} is full ({self.max_bytes} bytes, "
                "METER_SPOOL_MAX_BYTES)",
                self.stats.dropped,
            )

    # -- the background side ---------------------------------------------------------------------
    def sync(self) -> None:
        """fsync what was appended since the last call (the fsync thread, every <= 100 ms)."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            fds = [s.fd for s in self._segments if not s.closed]
        for fd in fds:
            # OSError: closed by the drain meanwhile, since it was stored and deleted.
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def snapshot(self) -> list[OwnSegment]:
        with self._lock:
            return list(self._segments)

    def release(self, seg: OwnSegment) -> None:
        """The drain stored all of a sealed segment: delete it."""
        with self._lock:
            if seg not in self._segments:
                return
            self._segments.remove(seg)
            seg.closed = True
            self._own_bytes -= seg.written
            segments.delete_segment(seg.path, seg.fd)

    def rescan_usage(self) -> None:
        own = {s.path.name for s in self.snapshot()}
        total = 0
        for path in segments.list_segments(self.spool_dir):
            if path.name in own:
                continue
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        self._others_bytes = total

    def close(self, *, is_drained: Callable[[OwnSegment], bool]) -> None:
        """Stop writing. Fully stored segments are deleted; the others are unlocked and left for
        the next process to replay. (An append after this opens a new segment.)"""
        with self._lock:
            for seg in self._segments:
                seg.closed = True
                if is_drained(seg):
                    segments.delete_segment(seg.path, seg.fd)
                else:
                    os.close(seg.fd)
            self._segments = []
            self._own_bytes = 0

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's segments are the parent's. Close our copies of their
        descriptors without unlocking (the lock is shared with the parent) and start afresh."""
        self._lock = threading.Lock()
        for seg in self._segments:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._segments = []
        self._own_bytes = 0
        self._dirty = False
        self.position = (-1, 0)
        self.handoffs = deque(maxlen=HANDOFF_EVENTS)
        self.stats = SpoolStats()
