"""Reads on a hot path (every gateway call's key and budgets) without SQLAlchemy's work per
execution: a SELECT compiled once per dialect, run on the pool's raw DBAPI connection, its
columns decoded by their own types' result processors.

`Connection.execute` costs ~90 us of Python per statement here (events, execution context,
the cursor's result proxy, BEGIN and COMMIT on SQLite), several times what the database takes
for a lookup by primary key; a gateway call made two of them, each with its own connection
(BENCHMARKS.md, Gateway). Only for plain SELECTs whose parameters need no bind processing
(strings, numbers); everything else goes through SQLAlchemy.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

CACHE_MAX = 4096  # an OwnReader's remembered results (keys, budget lookups); then forgotten
# (SQL, parameter names in order or None for named, (column, result processor) pairs, row
# type, literals)
_Compiled = tuple[str, tuple[str, ...] | None, list[Any], Any, dict[str, Any]]


class FastSelect:
    """A SELECT with named bind parameters, compiled on first use for each dialect."""

    def __init__(self, statement: sa.Select[*tuple[Any, ...]]) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            # The statement's own literals (`scope == "global"`) are bound parameters too.
            defaults = {
                name: bind.effective_value
                for name, bind in compiled.binds.items()
                if not bind.required
            }
            positional = tuple(compiled.positiontup) if compiled.positional else None  # type: ignore[arg-type]
            columns = list(self.statement.selected_columns)
            # Only the columns whose type decodes anything (dates, JSON...): (index, function).
            processors = [
                (i, p)
                for i, c in enumerate(columns)
                if (p := c.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
            ]
            row = namedtuple("row", [c.key for c in columns])  # type: ignore[misc]
            found = (compiled.string, positional, processors, row, defaults)
            self._compiled[dialect.name] = found
        return found

    def rows(self, reader: Reader, params: Mapping[str, Any]) -> list[Any]:
        """The rows for `params`, as named tuples; from an OwnReader, as of its last `fresh`
        (the same list for the same parameters until something is committed: not to change)."""
        cache = reader.cache
        if cache is not None:
            key = (id(self), *params.items())
            hit = cache.get(key)
            if hit is not None:
                return hit
        found = self._run(reader, params)
        if cache is not None:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            cache[key] = found
        return found

    def _run(self, reader: Reader, params: Mapping[str, Any]) -> list[Any]:
        sql, positional, processors, row, defaults = self._compile(reader.dialect)
        values = {**defaults, **params} if defaults else params
        cursor = reader.cursor
        try:
            cursor.execute(sql, tuple(values[p] for p in positional) if positional else values)
            found = cursor.fetchall()
        except reader.dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy raises them (OperationalError...), for the callers' handlers.
            raise sa.exc.DBAPIError.instance(
                sql,
                None,
                exc,
                reader.dialect.loaded_dbapi.Error,
                hide_parameters=True,
                dialect=reader.dialect,
            ) from exc
        out = []
        for raw in found:
            decoded = list(raw)
            for i, process in processors:
                decoded[i] = process(decoded[i])
            out.append(row._make(decoded))
        return out


class Reader:
    """One pooled connection's cursor, for a few FastSelects in a row."""

    cache: dict[tuple[Any, ...], list[Any]] | None = None  # OwnReader on SQLite

    def __init__(self, dialect: Dialect, cursor: Any) -> None:
        self.dialect = dialect
        self.cursor = cursor


def _connect(engine: Engine) -> Any:
    """A pooled DBAPI connection; failing to connect raises as SQLAlchemy does."""
    error = engine.dialect.loaded_dbapi.Error
    try:
        return engine.raw_connection()
    except error as exc:
        raise sa.exc.DBAPIError.instance(
            None, None, exc, error, hide_parameters=True, dialect=engine.dialect
        ) from exc


@contextmanager
def reading(engine: Engine) -> Iterator[Reader]:
    """A connection from the engine's pool (pre-pinged where the engine does) and a cursor; on
    the way out whatever it read is ended (the pool rolls back on return) and it goes back."""
    raw = _connect(engine)
    try:
        cursor = raw.cursor()
        try:
            yield Reader(engine.dialect, cursor)
        finally:
            cursor.close()
    finally:
        raw.close()


class OwnReader(Reader):
    """A connection of its own, outside the pool, for one thread's reads (the gateway's event
    loop on SQLite): never waits for a pooled connection that worker threads hold. SQLite in
    autocommit, so each SELECT is its own short read transaction.

    What it read is kept until the database changes: SQLite's `PRAGMA data_version` changes
    whenever another connection, in any process, commits (this one never writes), and `fresh`
    forgets everything then. So a key revoked or a budget created anywhere is seen by the very
    next call, as when every call read the tables (4 us for the pragma instead of ~80 us for
    the key's and the budgets' reads)."""

    def __init__(self, engine: Engine) -> None:
        raw = _connect(engine)
        raw.detach()  # ours until closed; the pool opens another in its place
        self._raw = raw
        super().__init__(engine.dialect, raw.cursor())
        self._version: int | None = None
        if engine.dialect.name == "sqlite":
            self.cache = {}

    def fresh(self) -> None:
        """Forget what was read if anything was committed since (SQLite; else a no-op)."""
        if self.cache is None:
            return
        self.cursor.execute("PRAGMA data_version")
        version = self.cursor.fetchone()[0]
        if version != self._version:
            self.cache.clear()
            self._version = version

    def close(self) -> None:
        self.cursor.close()
        self._raw.close()
