"""Spool segments: append-only JSON-lines files, one writer process each, owned through `flock`.

A segment is `<unix-ns>-<pid>-<random>.jsonl` in the spool directory. Its writer holds an
exclusive `flock` on it for as long as it lives (the lock belongs to the open file description,
so it vanishes with the process, even after `kill -9`). A segment nobody holds is dead: any
process may lock it, store its events and delete it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX = ".jsonl"
# A segment being created: not yet locked, so never mistaken for a dead one.
CREATING_SUFFIX = ".creating"


def new_segment_name() -> str:
    return f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"


def owner_pid(path: Path) -> int | None:
    parts = path.name.split("-")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


EXPIRED_LOG = "expired.log"


def note_expired(spool_dir: Path, count: int) -> None:
    """Add to the spool's count of events the store answered as expired (older than its purge
    cutoff: not stored, never counted), shown by `meter spool status`. One short line each
    time, appended (atomic for a line this short), by any process using the spool."""
    line = f"{count}\n".encode()
    try:
        fd = os.open(spool_dir / EXPIRED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:  # a count for people to read: never worth failing the drain
        pass


def expired_total(spool_dir: Path) -> int:
    try:
        text = (spool_dir / EXPIRED_LOG).read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    return sum(int(n) for n in text.split() if n.isdigit())


def list_segments(spool_dir: Path) -> list[Path]:
    """Every segment in the directory, oldest first (names start with their creation time)."""
    try:
        names = [
            entry.name
            for entry in os.scandir(spool_dir)
            if entry.name.endswith(SUFFIX) and entry.is_file()
        ]
    except OSError:  # no spool yet, or not a directory: the writer reports that, once
        return []
    return [spool_dir / name for name in sorted(names)]


def ensure_dir(spool_dir: Path) -> None:
    # Events name users and teams: keep the spool private to its owner.
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def create_segment(spool_dir: Path) -> tuple[Path, int]:
    """Create, lock, then publish a new segment; returns (path, fd opened read/append)."""
    ensure_dir(spool_dir)
    name = new_segment_name()
    temp = spool_dir / (name + CREATING_SUFFIX)
    fd = os.open(temp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = spool_dir / name
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    return path, fd


def try_adopt(path: Path) -> int | None:
    """Lock a segment whose owner is gone; None if it is alive, or already replayed and gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    # Another replayer may have finished and unlinked it between our open and our lock.
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def remove_stale_creating(spool_dir: Path, older_than_s: float = 60.0) -> None:
    """A process killed between creating and publishing a segment leaves an empty `.creating`
    file behind (it never held an event: the first line is written after publishing)."""
    try:
        entries = [e for e in os.scandir(spool_dir) if e.name.endswith(CREATING_SUFFIX)]
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if time.time() - entry.stat().st_mtime < older_than_s:
                continue
        except FileNotFoundError:
            continue
        fd = try_adopt(path)
        if fd is not None:
            delete_segment(path, fd)


def is_alive(path: Path) -> bool:
    """Is a segment's owner still running (does somebody hold its lock)?"""
    fd = try_adopt(path)
    if fd is None:
        return path.exists()
    os.close(fd)  # closing our own description releases our probe lock
    return False


def delete_segment(path: Path, fd: int) -> None:
    """Unlink before unlocking, so that a process waiting for the lock finds it gone."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


@dataclass
class LineBatch:
    """Complete lines read from a segment, and the offset just past the last one."""

    lines: list[bytes]
    end: int


def read_lines(fd: int, offset: int, *, max_lines: int, max_bytes: int, final: bool) -> LineBatch:
    """Read whole lines from `offset`. A trailing partial line is left for later unless `final`
    (a dead segment: its torn last line is returned so the caller can count and skip it)."""
    chunk = os.pread(fd, max_bytes, offset)
    if not chunk:
        return LineBatch([], offset)
    last_newline = chunk.rfind(b"\n")
    if last_newline < 0:
        if final and len(chunk) < max_bytes:
            return LineBatch([chunk], offset + len(chunk))
        if len(chunk) >= max_bytes:
            # One line longer than a whole read: nothing legitimate is that long; skip it.
            return LineBatch([chunk], offset + len(chunk))
        return LineBatch([], offset)
    body = chunk[: last_newline + 1]
    lines = body.split(b"\n")
    lines.pop()  # the empty string after the last newline
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        return LineBatch(lines, offset + sum(len(line) + 1 for line in lines))
    end = offset + len(body)
    tail = chunk[last_newline + 1 :]
    if final and tail and len(chunk) < max_bytes:
        lines.append(tail)
        end += len(tail)
    return LineBatch(lines, end)


@dataclass(frozen=True)
class SegmentInfo:
    path: Path
    pid: int | None
    alive: bool
    events: int
    bytes: int


def count_lines(path: Path) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def describe(spool_dir: Path) -> Iterator[SegmentInfo]:
    for path in list_segments(spool_dir):
        try:
            size = path.stat().st_size
            events = count_lines(path)
        except FileNotFoundError:
            continue  # replayed and deleted while we looked
        yield SegmentInfo(path, owner_pid(path), is_alive(path), events, size)


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One spool line as a dict, or None when it is torn or corrupt."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
