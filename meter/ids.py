"""Time-ordered event ids (UUIDv7, RFC 9562): random keys make inserts several times slower."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_seq = 0
# Random bytes drawn from os.urandom 4 KiB at a time (one system call per 512 ids, not one or two
# per id). A forked child must not reuse its parent's leftover bytes: it starts with none.
_POOL_BYTES = 4096
_pool = b""
_pos = _POOL_BYTES


def _forget_pool_after_fork() -> None:
    global _lock, _pool, _pos
    _lock = threading.Lock()
    _pool = b""
    _pos = _POOL_BYTES


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def uuid7() -> uuid.UUID:
    """A UUIDv7; ids made by one process are strictly increasing (12-bit counter per ms)."""
    global _last_ms, _seq, _pool, _pos
    with _lock:
        if _pos >= _POOL_BYTES:
            _pool = os.urandom(_POOL_BYTES)
            _pos = 0
        rand = int.from_bytes(_pool[_pos : _pos + 8], "big") & ((1 << 62) - 1)
        _pos += 8
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = rand >> 54  # 8 random bits: leave headroom for the counter
        seq = _seq
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    # What uuid.UUID(int=value) sets, without its argument checks (a third of this function's
    # time): `value` is a 128-bit int by construction.
    made = _new(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made


_new = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown
