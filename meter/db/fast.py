"""Statements on a hot path (every gateway call's key and budgets; a hard budget's reservation
and settlement) without SQLAlchemy's work per execution: compiled once per dialect, run on a
raw DBAPI connection, their parameters encoded by their types' bind processors and their
columns decoded by their result processors.

`Connection.execute` costs ~90 us of Python per statement here (events, execution context,
the cursor's result proxy, BEGIN and COMMIT on SQLite), several times what the database takes
for a lookup by primary key or a one-row INSERT (BENCHMARKS.md, Gateway). Statements take named
parameters; their IN lists are fixed when they are built (rendered once, at compile time).

On PostgreSQL a connection used here is in autocommit while it is lent (a read is one round
trip, not BEGIN, the read and a ROLLBACK), and `Reader.transaction` runs its statements in
psycopg's pipeline mode: what needs no answer yet goes out with what comes next, so a
transaction costs a round trip per answer it waits for, not one per statement. A `Procedure`
goes further: its statements run as ONE statement, the call of a PL/pgSQL function of the
connection's own, which in autocommit is a whole transaction in one message and one answer.
"""

from __future__ import annotations

import hashlib
import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

CACHE_MAX = 4096  # an OwnReader's remembered results (keys, budget lookups); then forgotten


class Busy(Exception):
    """SQLite: another connection holds the write lock, and this one was told not to wait."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None  # the parameters in order (SQLite's qmark); None: by name
    defaults: dict[str, Any]  # the statement's own values (its literals, its IN lists), encoded
    encoders: dict[str, Callable[[Any], Any]]  # the caller's parameters that need encoding
    decoders: list[tuple[int, Callable[[Any], Any]]]  # (column, result processor)
    row: Any  # the rows' namedtuple type; None for a statement without rows


def _compile(statement: Any, dialect: Dialect, column_keys: Sequence[str] | None) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=column_keys)
    # The IN lists rendered now, the caller's parameters left as placeholders.
    required = {b.key: None for b in compiled.binds.values() if b.required}
    expanded = compiled.construct_expanded_state(required)
    encoders: dict[str, Callable[[Any], Any]] = dict(expanded.processors)
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            encoders[name] = process
    defaults = {}
    for name, value in expanded.parameters.items():
        if name not in required:
            process = encoders.get(name)
            defaults[name] = process(value) if process is not None else value
    decoders: list[tuple[int, Callable[[Any], Any]]] = []
    row: Any = None
    columns: list[Any] = []
    if statement.is_select:
        columns = list(statement.selected_columns)
    elif getattr(statement, "_returning", ()):
        columns = list(statement.returning)
    if columns:
        decoders = [
            (i, p)
            for i, c in enumerate(columns)
            if (p := c.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]
        row = namedtuple("row", [c.key for c in columns], rename=True)  # type: ignore[misc,no-redef]
    return _Compiled(
        sql=expanded.statement,
        names=tuple(expanded.positiontup) if compiled.positional else None,  # type: ignore[arg-type]
        defaults=defaults,
        encoders={k: p for k, p in encoders.items() if k in required},
        decoders=decoders,
        row=row,
    )


class FastStatement:
    """A statement with named bind parameters, compiled on first use for each dialect.
    `column_keys`: an INSERT's columns (each a parameter of the same name)."""

    def __init__(self, statement: Any, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = _compile(
                self.statement, dialect, self.column_keys
            )
        return found

    def _send(self, reader: Reader, params: Mapping[str, Any], cursor: Any = None) -> _Compiled:
        compiled = self._for(reader.dialect)
        values = {**compiled.defaults, **params}
        for name, encode in compiled.encoders.items():
            value = values[name]
            if value is not None:
                values[name] = encode(value)
        sql = compiled.sql
        cursor = reader.cursor if cursor is None else cursor
        try:
            if compiled.names is not None:
                cursor.execute(sql, tuple(values[n] for n in compiled.names))
            else:
                cursor.execute(sql, values)
        except reader.dialect.loaded_dbapi.Error as exc:
            raise reader.error(sql, exc) from exc
        return compiled

    def execute(self, reader: Reader, params: Mapping[str, Any]) -> int:
        """Run it; the number of rows it changed (-1: not known yet, in a pipeline)."""
        self._send(reader, params)
        return int(reader.cursor.rowcount)

    def run(self, reader: Reader, params: Mapping[str, Any]) -> list[Any]:
        """Its rows for `params`, as named tuples, read now."""
        compiled = self._send(reader, params)
        return _fetch(reader, compiled, reader.cursor)


def _fetch(reader: Reader, compiled: _Compiled, cursor: Any) -> list[Any]:
    try:
        found = cursor.fetchall()
    except reader.dialect.loaded_dbapi.Error as exc:
        raise reader.error(compiled.sql, exc) from exc
    out = []
    for raw in found:
        decoded = list(raw)
        for i, process in compiled.decoders:
            decoded[i] = process(decoded[i])
        out.append(compiled.row._make(decoded))
    return out


class FastSelect(FastStatement):
    """A SELECT whose rows an OwnReader may remember until the database changes."""

    def __init__(self, statement: sa.Select[*tuple[Any, ...]]) -> None:
        super().__init__(statement)

    def rows(self, reader: Reader, params: Mapping[str, Any]) -> list[Any]:
        """The rows for `params`; from an OwnReader, as of its last `fresh` (the same list for
        the same parameters until something is committed: not to change)."""
        cache = reader.cache
        if cache is None:
            return self.run(reader, params)
        key = (id(self), *params.items())
        hit = cache.get(key)
        if hit is not None:
            return hit
        found = self.run(reader, params)
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[key] = found
        return found


# A compiled parameter and the cast SQLAlchemy's psycopg dialect renders after it.
_PARAM = re.compile(
    r"%\((\w+)\)s(?:::((?:TIMESTAMP WITH(?:OUT)? TIME ZONE|[A-Z]+(?:\(\d+\))?)(?:\[\])?))?"
)
_MADE = "meter_functions"  # the connection's info: the functions made on it
_RAW_CURSOR = "meter_raw_cursor"  # and the raw cursor that calls them


@dataclass(frozen=True)
class _Built:
    name: str
    create: str
    call: str
    raw_call: str  # the same with $n placeholders, for a RawCursor: no query to convert
    names: list[str]  # the function's parameters, in order
    defaults: dict[str, Any]  # the statements' own values, under their function-wide names
    encoders: dict[str, Callable[[Any], Any]]  # the caller's parameters that need encoding
    last: _Compiled  # the statement whose rows are returned (decoders, row type)
    returns_rows: bool


class Procedure:
    """PostgreSQL: statements run in order as ONE statement, the call of a PL/pgSQL function
    made on each connection at its first use there (in pg_temp: the connection's own, gone
    with it). On a connection in autocommit the call is a whole transaction: one message, one
    answer, the commit included, with none of the Python work of a pipelined transaction
    (BENCHMARKS.md, section 8), and each statement still sees what committed before it
    started, as in a transaction of separate statements at READ COMMITTED (a VOLATILE
    function's statements each take a new snapshot): a lock taken by one statement is followed
    by reads that see the commits it waited for. Rows come from the last statement; the
    others' are discarded (a SELECT among them runs for its locks). The function's plans are
    kept for the connection's life, as psycopg's prepared statements are.

    `unflushed`: the commit does not wait for the WAL to reach the disk (synchronous_commit off
    for that transaction alone), for a write whose loss in a crash of the database is harmless.
    Parameters are named as for FastStatement; the caller's are shared by every statement."""

    def __init__(self, *statements: FastStatement, unflushed: bool = False) -> None:
        if not statements:
            raise ValueError("a procedure needs a statement")
        self.statements = statements
        self.unflushed = unflushed
        self._built: dict[str, _Built] = {}

    def _for(self, dialect: Dialect) -> _Built:
        found = self._built.get(dialect.name)
        if found is None:
            found = self._built[dialect.name] = self._build(dialect)
        return found

    def _build(self, dialect: Dialect) -> _Built:
        if dialect.name != "postgresql":
            raise ValueError("a Procedure runs on PostgreSQL only")
        args: dict[str, str] = {}  # function-wide name -> SQL type, in order
        defaults: dict[str, Any] = {}
        encoders: dict[str, Callable[[Any], Any]] = {}
        body: list[str] = []
        if self.unflushed:
            body.append("PERFORM set_config('synchronous_commit', 'off', true);")
        compiled = [s._for(dialect) for s in self.statements]
        for i, c in enumerate(compiled):

            def name_of(match: re.Match[str], i: int = i, c: _Compiled = c) -> str:
                name, cast = match.group(1), match.group(2)
                if cast is None:
                    raise ValueError(f"parameter {name} has no cast to give its argument a type")
                wide = f"s{i}_{name}" if name in c.defaults else name
                if args.setdefault(wide, cast) != cast:
                    raise ValueError(f"parameter {name} is cast to {args[wide]} and to {cast}")
                if name in c.defaults:
                    defaults[wide] = c.defaults[name]
                elif name in c.encoders:
                    encoders[wide] = c.encoders[name]
                return f"${list(args).index(wide) + 1}::{cast}"

            sql = _PARAM.sub(name_of, c.sql).replace("%%", "%")
            last = i == len(compiled) - 1
            if last and c.row is not None:
                body.append(f"RETURN QUERY {sql};")
            elif sql.startswith("SELECT "):
                body.append(f"PERFORM {sql[len('SELECT ') :]};")
            elif c.row is None:
                body.append(f"{sql};")
            else:
                raise ValueError("only the last statement may return rows")
        statement = self.statements[-1].statement
        returns_rows = compiled[-1].row is not None
        if returns_rows:
            columns = statement.selected_columns if statement.is_select else statement.returning
            types = [c.type.compile(dialect=dialect) for c in columns]
            returns = "TABLE(" + ", ".join(f"r{i} {t}" for i, t in enumerate(types)) + ")"
        else:
            returns = "void"
        signature = ", ".join(f"p{i} {t}" for i, t in enumerate(args.values()))
        text = "BEGIN\n" + "\n".join(body) + "\nEND"
        digest = hashlib.sha256(f"{signature}|{returns}|{text}".encode()).hexdigest()[:24]
        name = f"pg_temp.meter_{digest}"
        create = (
            f"CREATE OR REPLACE FUNCTION {name}({signature}) RETURNS {returns} "
            f"LANGUAGE plpgsql VOLATILE AS $meter$\n{text}\n$meter$"
        )
        arguments = ", ".join(f"%({n})s::{t}" for n, t in args.items())
        placeholders = ", ".join(f"${i + 1}::{t}" for i, t in enumerate(args.values()))
        call, raw_call = (
            (f"SELECT * FROM {name}({arguments})", f"SELECT * FROM {name}({placeholders})")
            if returns_rows
            else (f"SELECT {name}({arguments})", f"SELECT {name}({placeholders})")
        )
        return _Built(
            name,
            create,
            call,
            raw_call,
            list(args),
            defaults,
            encoders,
            compiled[-1],
            returns_rows,
        )

    def run(self, reader: Reader, params: Mapping[str, Any]) -> list[Any]:
        """Run them (on a connection in autocommit: as one transaction) -> the last
        statement's rows."""
        built = self._for(reader.dialect)
        info = reader.raw.info
        made: set[str] = info.setdefault(_MADE, set())
        values = []
        for name in built.names:
            value = params[name] if name in params else built.defaults[name]
            encode = built.encoders.get(name)
            values.append(value if encode is None or value is None else encode(value))
        dbapi = reader.dialect.loaded_dbapi
        # A raw cursor ($n placeholders): psycopg converts a %(name)s query of more than 50
        # parameters at every call, which took more CPU than the rest of the call.
        cursor = info.get(_RAW_CURSOR)
        if cursor is None or cursor.closed:
            cursor = info[_RAW_CURSOR] = dbapi.RawCursor(reader.raw.driver_connection)
        for attempt in (1, 2):
            try:
                if built.name not in made:
                    cursor.execute(built.create)
                    made.add(built.name)
                cursor.execute(built.raw_call, values)
                break
            except dbapi.Error as exc:
                # Gone from the connection (DISCARD TEMP, say): made again, once.
                if attempt == 1 and getattr(exc, "sqlstate", None) == "42883":
                    made.discard(built.name)
                    continue
                raise reader.error(built.call, exc) from exc
        if not built.returns_rows:
            return []
        return _fetch(reader, built.last, cursor)


class Reader:
    """One connection's cursor, for a few fast statements in a row (and, with `transaction`,
    writes)."""

    cache: dict[tuple[Any, ...], list[Any]] | None = None  # OwnReader on SQLite

    def __init__(self, dialect: Dialect, cursor: Any, raw: Any) -> None:
        self.dialect = dialect
        self.cursor = cursor
        self.raw = raw  # the DBAPI connection (SQLAlchemy's pool proxy, or our own)
        self.is_sqlite = dialect.name == "sqlite"

    def error(self, sql: str | None, exc: Exception) -> Exception:
        """A DBAPI error as SQLAlchemy raises it (OperationalError...), for callers' handlers."""
        error = self.dialect.loaded_dbapi.Error
        return sa.exc.DBAPIError.instance(
            sql, None, exc, error, hide_parameters=True, dialect=self.dialect
        )

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[None]:
        """One write transaction, committed on the way out and rolled back on an exception.
        SQLite: `BEGIN IMMEDIATE`, so its reads and writes are one serialised snapshot; with
        `wait=False` it raises Busy at once, instead of waiting, while another connection
        writes. PostgreSQL: in pipeline mode; a statement's answer is waited for only when its
        rows are read (and, for the others, at the commit)."""
        if self.is_sqlite:
            with self._sqlite_transaction(wait):
                yield
            return
        driver = self.raw.driver_connection
        try:
            with driver.pipeline():
                self.cursor.execute("BEGIN")
                yield
                self.cursor.execute("COMMIT")
        except BaseException as exc:
            with suppress(Exception):  # broken: the pool finds out when it is returned
                driver.rollback()
            if isinstance(exc, self.dialect.loaded_dbapi.Error):
                raise self.error(None, exc) from exc
            raise

    @contextmanager
    def _sqlite_transaction(self, wait: bool) -> Iterator[None]:
        cursor = self.cursor
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except self.dialect.loaded_dbapi.OperationalError as exc:
            if not wait and "locked" in str(exc):
                raise Busy(str(exc)) from exc
            raise self.error("BEGIN IMMEDIATE", exc) from exc
        try:
            yield
            cursor.execute("COMMIT")
        except BaseException as exc:
            with suppress(Exception):  # the connection is gone
                cursor.execute("ROLLBACK")
            if isinstance(exc, self.dialect.loaded_dbapi.Error):
                raise self.error(None, exc) from exc
            raise


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
def reading(engine: Engine, lent: Reader | None = None) -> Iterator[Reader]:
    """`lent` when the caller has a connection to use (left as it is), else a connection from
    the engine's pool (checked at checkout, meter.db.engine) and a cursor; on the way out whatever
    it read is ended (the pool rolls back on return) and it goes back. PostgreSQL: in
    autocommit while lent (each read is one round trip)."""
    if lent is not None:
        yield lent
        return
    raw = _connect(engine)
    try:
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            raw.driver_connection.autocommit = True
        cursor = raw.cursor()
        try:
            yield Reader(engine.dialect, cursor, raw)
        finally:
            cursor.close()
            if postgres:
                try:
                    raw.driver_connection.autocommit = False
                except Exception:
                    raw.invalidate()  # in a state we cannot vouch for: not back to the pool
    finally:
        raw.close()


class OwnReader(Reader):
    """A connection of its own, outside the pool, for one thread (the gateway's event loop on
    SQLite): it never waits for a pooled connection that worker threads hold. SQLite in
    autocommit, so each SELECT is its own short read transaction; its write transactions
    (`transaction(wait=False)`) never wait for the write lock either: the caller takes a
    worker thread instead when it is Busy.

    What it read is kept until the database changes: SQLite's `PRAGMA data_version` changes
    whenever another connection, in any process, commits (not when this one does), and `fresh`
    forgets everything then. So a key revoked or a budget created anywhere is seen by the very
    next call, as when every call read the tables (4 us for the pragma instead of ~80 us for
    the key's and the budgets' reads)."""

    def __init__(self, engine: Engine) -> None:
        raw = _connect(engine)
        raw.detach()  # ours until closed; the pool opens another in its place
        super().__init__(engine.dialect, raw.cursor(), raw)
        self._version: int | None = None
        if self.is_sqlite:
            self.cache = {}
            # Never wait for the write lock on the event loop (Busy instead), and leave the
            # WAL's checkpoints, and their writes to the database file, to the pool's
            # connections (the spool's writer commits after every batch of events).
            self.cursor.execute("PRAGMA busy_timeout=0")
            self.cursor.execute("PRAGMA wal_autocheckpoint=0")

    def fresh(self) -> None:
        """Forget what was read if another connection committed since (SQLite; else a no-op)."""
        if self.cache is None:
            return
        self.cursor.execute("PRAGMA data_version")
        version = self.cursor.fetchone()[0]
        if version != self._version:
            self.cache.clear()
            self._version = version

    def close(self) -> None:
        self.cursor.close()
        self.raw.close()
