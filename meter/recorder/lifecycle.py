"""Process events every live Meter must react to: exit, SIGTERM and fork.

- At interpreter exit, each Meter is closed (it flushes for up to EXIT_FLUSH_S).
- `atexit` does not run on SIGTERM: a handler (installed once, from the main thread only)
  flushes every Meter, then chains the handler that was there before, or, if that was the
  default, dies of SIGTERM as the process would have.
- After `fork`, background threads do not exist in the child and the parent's segments and
  connections are the parent's: each Meter starts afresh in the child.
Whatever is not flushed in time stays in the spool and is stored by the next process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any, Protocol

EXIT_FLUSH_S = 5.0
SIGTERM_FLUSH_S = 5.0


class _Lifecycle(Protocol):
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self, timeout: float | None = ...) -> None: ...
    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False
_install_lock = threading.Lock()
_previous_sigterm: Any = None


def register(meter: _Lifecycle) -> None:
    _live.add(meter)
    _install_once()


def unregister(meter: _Lifecycle) -> None:
    _live.discard(meter)


def _install_once() -> None:
    global _installed, _previous_sigterm
    with _install_lock:
        if _installed:
            return
        _installed = True
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None:
            return  # installed from outside Python: leave it alone
        _previous_sigterm = previous
        signal.signal(signal.SIGTERM, _on_sigterm)


def _at_exit() -> None:
    for meter in list(_live):
        with contextlib.suppress(Exception):
            meter.close(timeout=EXIT_FLUSH_S)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    for meter in list(_live):
        with contextlib.suppress(Exception):
            meter.flush(timeout=SIGTERM_FLUSH_S)
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action: terminate by the signal, so the exit status says SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    global _install_lock
    _install_lock = threading.Lock()
    for meter in list(_live):
        with contextlib.suppress(Exception):
            meter._after_fork_in_child()
