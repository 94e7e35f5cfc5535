"""Long operations in the audit log: `<action>.start`, then `.finish` or `.abort`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from meter.audit.repository import record


@dataclass
class LongOperation:
    actor: str
    action: str
    target: str | None
    finished: bool = False

    def finish(self, conn: sa.Connection, details: Mapping[str, Any] | None = None) -> None:
        """Write `.finish` in `conn`: the transaction that makes the operation's (last) change."""
        record(conn, self.actor, f"{self.action}.finish", self.target, details)
        self.finished = True


@contextlib.contextmanager
def long_operation(
    engine: sa.Engine,
    actor: str,
    action: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> Iterator[LongOperation]:
    """`.start` committed at once; `.abort` (naming the error's type) if the body raises;
    `.finish` in its own transaction if the body did not call `finish` itself."""
    with engine.begin() as conn:
        record(conn, actor, f"{action}.start", target, details)
    operation = LongOperation(actor, action, target)
    try:
        yield operation
    except BaseException as exc:
        # The original error matters more than a failure to write its entry.
        with contextlib.suppress(sa.exc.SQLAlchemyError), engine.begin() as conn:
            record(conn, actor, f"{action}.abort", target, {"error": type(exc).__name__})
        raise
    if not operation.finished:
        with engine.begin() as conn:
            operation.finish(conn)
