"""What every benchmark shares: percentiles, throw-away databases, servers on free loopback
ports, the machine's description, and one result table format (printed, and saved as JSON under
bench/.cache/results/ for `bench.run_all`)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
RESULTS = CACHE / "results"
PYTHON = sys.executable
METER_BIN = str(Path(PYTHON).with_name("meter"))
POSTGRES_URL = os.environ.get(
    "METER_BENCH_POSTGRES_URL",
    os.environ.get(
        "METER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
)


# -- numbers ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a benchmark's table."""

    what: str
    baseline: str
    ours: str
    ratio: str
    target: str
    met: bool | None  # None: informational, no target
    command: str = ""
    notes: str = ""


@dataclass
class Report:
    bench: str
    command: str
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, row: Row) -> None:
        if not row.command:
            row.command = self.command
        self.rows.append(row)
        print_row(row)

    def save(self) -> Path:
        self.machine = machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.bench}.json"
        doc = asdict(self)
        doc["finished"] = time.time()
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\n{self.bench}: results saved to {path.relative_to(REPO)}")
        print(markdown_table(self.rows))
        return path


# Set by `run_all --quick` for its children: sizes far below the targets' own (a smoke run), so
# a fixed per-run cost weighs on every ratio and a verdict would mislead.
SMOKE_ENV = "METER_BENCH_SMOKE"


def verdict(met: bool | None) -> str:
    if met is None:
        return "-"
    if os.environ.get(SMOKE_ENV):
        return "(smoke run: not judged)"
    return "met" if met else "NOT met"


def print_row(row: Row) -> None:
    print(
        f"  {row.what:<48} baseline {row.baseline:>16}  ours {row.ours:>16}  "
        f"ratio {row.ratio:>10}  target {row.target:<18} {verdict(row.met)}",
        flush=True,
    )


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| what | baseline | ours | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = r.what + (f" ({r.notes})" if r.notes else "")
        lines.append(
            f"| {what} | {r.baseline} | {r.ours} | {r.ratio} | {r.target} | {verdict(r.met)} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def say(message: str) -> None:
    print(message, flush=True)


# -- processes and ports ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def process(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    log: Path | None = None,
    unset: Sequence[str] = (),
    cpus: set[int] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, ended (SIGTERM, then SIGKILL) by its own pid when the block exits;
    pinned to `cpus` when given."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    child_env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.Popen(
        list(cmd), env={**child_env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    if cpus is not None:
        # At once, before the child's interpreter has started any thread: its threads inherit.
        os.sched_setaffinity(proc.pid, cpus)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if log is not None:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def upstream(cpus: set[int] | None = None) -> Iterator[str]:
    """The minimal fixed-completion upstream (bench/upstream.py) in its own process; yields its
    base URL (`http://127.0.0.1:PORT/v1`)."""
    port = free_port()
    cmd = [PYTHON, str(REPO / "bench" / "upstream.py"), "--port", str(port)]
    with process(cmd, log=CACHE / "logs" / "upstream.log", cpus=cpus) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def meter_server(database_url: str, name: str) -> Iterator[str]:
    """A real `meter serve` (one uvicorn worker, no roll-up scheduler, no keys: loopback without
    auth); yields its base URL."""
    port = free_port()
    cmd = [METER_BIN, "serve", "--port", str(port), "--no-scheduler"]
    env = {"METER_DATABASE_URL": database_url}
    log = CACHE / "logs" / f"serve-{name}.log"
    with process(cmd, env=env, log=log, unset=("METER_ADMIN_KEY",)) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"


# -- databases -------------------------------------------------------------------------------


def workdir(name: str) -> Path:
    """A scratch directory for this process, removed when it exits (working copies of the 5M
    dataset are gigabytes); directories left by killed runs are swept here too."""
    root = CACHE / "work"
    if root.is_dir():
        for old in root.iterdir():
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
    path = root / f"{name}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def sqlite_template() -> Path:
    """A migrated, empty SQLite database (UTC), cached; copy it, never open it in place."""
    from meter.db import migrate
    from meter.db.engine import make_engine

    path = CACHE / "sqlite-template.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{tmp}")
        migrate.upgrade(engine, "UTC")
        _add_prices(engine)
        engine.dispose()
        checkpoint(tmp)
        tmp.rename(path)
    else:
        upgrade_cached(path)
    return path


def upgrade_cached(path: Path) -> None:
    """A cached database made before the last migration, brought to head (in place)."""
    from meter.db import migrate
    from meter.db.engine import make_engine

    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate.upgrade(engine, "UTC")
    finally:
        engine.dispose()
    checkpoint(path)


def checkpoint(path: Path) -> None:
    """Fold the WAL into the database file, so that the file alone can be copied."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _add_prices(engine: Any) -> None:
    from bench._events import add_bench_prices

    with engine.begin() as conn:
        add_bench_prices(conn)


def new_sqlite(directory: Path, name: str) -> str:
    path = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(sqlite_template(), path)
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def postgres_available() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(pg_dsn(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to connect is the same answer
        return str(exc).splitlines()[0]
    return None


def pg_dsn(url: str) -> str:
    """A libpq DSN from a SQLAlchemy URL."""
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgDatabases:
    """Throw-away PostgreSQL databases named meter_bench_*, dropped by `close` (and by a later
    run if this one was killed first: `sweep` drops those whose creator is gone)."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.admin_url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
        self.created: list[str] = []
        self.template: str | None = None

    def _exec(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(pg_dsn(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(sql)

    def url(self, name: str) -> str:
        return str(self.admin_url.set(database=name).render_as_string(hide_password=False))

    def create(self, migrated: bool = True) -> str:
        from meter.db import migrate
        from meter.db.engine import make_engine

        name = f"meter_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        if migrated:
            if self.template is None:
                self.template = f"meter_bench_{os.getpid()}_tmpl"
                self._exec(f'CREATE DATABASE "{self.template}"')
                self.created.append(self.template)
                engine = make_engine(self.url(self.template))
                migrate.upgrade(engine, "UTC")
                _add_prices(engine)
                engine.dispose()
            self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        else:
            self._exec(f'CREATE DATABASE "{name}"')
        self.created.insert(0, name)
        return self.url(name)

    def drop(self, url: str) -> None:
        import sqlalchemy as sa

        name = sa.make_url(url).database
        self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created = []

    def sweep(self) -> None:
        """Drop meter_bench_<pid>_* databases left by bench processes that no longer run."""
        import psycopg

        with psycopg.connect(pg_dsn(POSTGRES_URL), autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'meter\\_bench\\_%'"
                )
            ]
        for name in names:
            parts = name.split("_")
            try:
                pid = int(parts[2])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or Path(f"/proc/{pid}").exists():
                continue
            self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pg_databases() -> Iterator[PgDatabases]:
    dbs = PgDatabases()
    dbs.sweep()
    try:
        yield dbs
    finally:
        dbs.close()


def backends(requested: str) -> list[str]:
    """`--db sqlite|postgresql|both` -> the list to run; PostgreSQL skipped loudly if down."""
    wanted = ["sqlite", "postgresql"] if requested == "both" else [requested]
    if "postgresql" in wanted:
        problem = postgres_available()
        if problem:
            say(f"SKIPPING POSTGRESQL: {POSTGRES_URL} unreachable: {problem}")
            wanted.remove("postgresql")
    return wanted


def run_json(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    cwd: Path | None = None,
) -> Any:
    """Run a child that prints one JSON document as its last stdout line."""
    done = subprocess.run(
        list(cmd),
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=None,
        timeout=timeout,
        check=True,
    )
    last = done.stdout.decode().strip().splitlines()[-1]
    return json.loads(last)
