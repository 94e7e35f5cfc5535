"""Fixtures: a fresh, migrated database per test on SQLite and on the local PostgreSQL.

PostgreSQL is found through METER_TEST_POSTGRES_URL (default: the local server, trust auth).
Where it is unreachable the PostgreSQL half skips loudly, and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# No test may ever contact a host other than this machine (webhooks, fuzzed URLs).
os.environ["METER_WEBHOOK_ALLOW_HOSTS"] = "127.0.0.1,localhost"
# The CLI's rich consoles take their width when first imported: make it the same in every
# worker, whichever test imports them first, so tables never wrap differently.
os.environ["COLUMNS"] = "200"
os.environ.pop("METER_DATABASE_URL", None)
os.environ.pop("METER_ADMIN_KEY", None)

from meter.db import migrate
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.weeks import load_timezone

pytest_plugins = ["tests.client_fixtures"]

POSTGRES_URL = os.environ.get(
    "METER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgresql"]


def _postgres_problem() -> str | None:
    engine = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any failure to connect is the same answer
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


_pg_problem: list[str | None] = []


def require_postgres() -> None:
    if not _pg_problem:
        _pg_problem.append(_postgres_problem())
    problem = _pg_problem[0]
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: PostgreSQL tests must run)")
        pytest.skip(f"SKIPPING POSTGRESQL TESTS: {problem}")


def postgres_admin_url() -> sa.URL:
    return sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")


class PostgresDatabases:
    """Creates throw-away databases from one migrated template per test session."""

    def __init__(self) -> None:
        self.template: str | None = None
        self.admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")

    def _exec(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)

    def create(self, timezone: str = "UTC", migrated: bool = True) -> str:
        name = f"meter_test_{uuid.uuid4().hex[:12]}"
        if migrated and timezone == "UTC":
            if self.template is None:
                self.template = f"meter_tmpl_{uuid.uuid4().hex[:12]}"
                self._exec(f'CREATE DATABASE "{self.template}"')
                engine = make_engine(self.url(self.template))
                migrate.upgrade(engine, "UTC")
                engine.dispose()
            self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        else:
            self._exec(f'CREATE DATABASE "{name}"')
            if migrated:
                engine = make_engine(self.url(name))
                migrate.upgrade(engine, timezone)
                engine.dispose()
        return self.url(name)

    def url(self, name: str) -> str:
        return postgres_admin_url().set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.template:
            self._exec(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    require_postgres()
    dbs = PostgresDatabases()
    yield dbs
    dbs.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine, "UTC")
    engine.dispose()
    return path


class DatabaseFactory:
    """Makes empty or migrated databases of one backend; drops them at the end of the test."""

    def __init__(self, backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.backend = backend
        self.request = request
        self.tmp_path = tmp_path
        self.urls: list[str] = []
        self.engines: list[sa.Engine] = []

    def url(self, timezone: str = "UTC", migrated: bool = True) -> str:
        if self.backend == "sqlite":
            path = self.tmp_path / f"meter-{uuid.uuid4().hex[:8]}.db"
            if migrated and timezone == "UTC":
                shutil.copy(self.request.getfixturevalue("sqlite_template"), path)
            elif migrated:
                engine = make_engine(f"sqlite:///{path}")
                migrate.upgrade(engine, timezone)
                engine.dispose()
            url = f"sqlite:///{path}"
        else:
            url = self.request.getfixturevalue("pg_databases").create(timezone, migrated)
        self.urls.append(url)
        return url

    def database(self, timezone: str = "UTC") -> Database:
        engine = make_engine(self.url(timezone))
        self.engines.append(engine)
        return Database(engine=engine, tz=load_timezone(timezone))

    def cleanup(self) -> None:
        for engine in self.engines:
            engine.dispose()
        if self.backend == "postgresql":
            pg = self.request.getfixturevalue("pg_databases")
            for url in self.urls:
                pg.drop(url)


@pytest.fixture(autouse=True)
def _private_spool(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own METER_SPOOL_DIR (subprocesses inherit it): a Meter one test left
    open must never have its spooled events replayed into another test's database."""
    monkeypatch.setenv("METER_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture
def databases(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(backend, request, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def db(databases: DatabaseFactory) -> Database:
    """A fresh database at head, timezone UTC, on the parametrized backend."""
    return databases.database()


@pytest.fixture
def db_url(databases: DatabaseFactory) -> str:
    """The URL of a fresh, migrated UTC database (for subprocesses and servers)."""
    return databases.url()
