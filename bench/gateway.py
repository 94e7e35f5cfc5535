"""Gateway (SPEC sections 6 and 7): `meter serve`'s OpenAI-compatible gateway against a direct
httpx call to the same local upstream, a bare pass-through proxy on the same stack
(bench/passthrough.py: uvicorn + httpx, no metering, the floor for a Python proxy) and
LiteLLM's proxy (`litellm --config`, its own venv, no database), all in one run.

The proxies are pinned to core 0; the upstream (bench/upstream.py) and this process, the load
generator, to core 1. PostgreSQL's server is not pinned. Measured, each proxy against the
same calls:

- latency at concurrency 1, non-streaming: every target called in turn, the order rotating
  call by call, one httpx.Client for all; added = target - direct, p50 and p99;
- streams: time to first byte (and to the first `data:` event), same rotation; then streams of
  the model `bench-paced`, whose upstream pauses 20 ms between frames: the gaps between the
  client's `data:` events show a chunk held back (two arriving together);
- the proxy process's CPU time per call (utime + stime from /proc/<pid>/stat, its threads and
  children included), over blocks of sequential calls to one proxy, alternated; for meter the
  block ends when its events are committed, so the recording is included (PostgreSQL's own
  server processes are not);
- throughput at concurrency 32 (bench/_loadgen.py: 32 keep-alive connections, pre-built
  requests), each target alone, two rounds in opposite orders;
- hard budgets: meter with 10 gateway keys of 10 teams, without budgets, with an enforced team
  budget for each team, and with one enforced global budget, per database; rotation at
  concurrency 1 and throughput at 32 as above.

Targets (SPEC section 6): added latency p50 <= 1.5 ms and p99 <= 5 ms; streams: added time to
first byte p50 <= 2 ms, no chunk held back; CPU per call <= 1.35x the pass-through's and <= 1/3
of LiteLLM's; team budgets: added p50 <= +0.3 ms over budgets off on SQLite (on PostgreSQL
plus one commit, measured here), throughput >= 80% of budgets off.

    .venv/bin/python -m bench.gateway [--db sqlite|postgresql|both] [--calls 2000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from bench import _ab, _loadgen
from bench._common import (
    CACHE,
    METER_BIN,
    PYTHON,
    REPO,
    PgDatabases,
    Report,
    Row,
    backends,
    free_port,
    new_sqlite,
    pct,
    pg_databases,
    pg_dsn,
    process,
    say,
    upstream,
    wait_http,
    workdir,
)

COMMAND = ".venv/bin/python -m bench.gateway"
PROXY_CPUS = {0}
LOAD_CPUS = {1}
TEAMS = [f"team-{i}" for i in range(10)]
LIMIT_USD = Decimal("1000")  # a week: never reached here, every call is admitted
UPSTREAM_KEY = "sk-bench"
PACED_MODEL = "bench-paced"  # bench/upstream.py pauses between this model's frames
PAUSE_MS = 20.0
CONCURRENCY = 32

P50_TARGET_MS = 1.5
P99_TARGET_MS = 5.0
TTFB_TARGET_MS = 2.0
CPU_VS_BARE = 1.35
CPU_VS_LITELLM = 1 / 3
BUDGET_P50_MS = 0.3
BUDGET_RATE = 0.80


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    """Something that answers POST /v1/chat/completions: the upstream itself or a proxy."""

    name: str
    base_url: str  # .../v1
    keys: list[str]
    pid: int | None = None  # the proxy's process, for its CPU time
    db_url: str | None = None  # meter's database, to see its events committed
    calls: int = 0  # answers received (meter must have recorded as many events)
    _engine: Any = None
    _i: int = 0

    def key(self) -> str:
        self._i += 1
        return self.keys[self._i % len(self.keys)]

    def count_events(self) -> int:
        if self._engine is None:
            self._engine = sa.create_engine(self.db_url, poolclass=sa.pool.NullPool)
        with self._engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() or 0)

    def open_holds(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT state, COUNT(*) FROM gateway_holds GROUP BY state"))
            return {r[0]: int(r[1]) for r in rows}

    def wait_recorded(self, timeout: float = 60.0) -> float:
        """meter: wait until every answered call's event is committed; the seconds waited."""
        if self.db_url is None:
            return 0.0
        t0 = time.monotonic()
        while True:
            stored = self.count_events()
            if stored >= self.calls:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{self.name}: {stored} events stored of {self.calls} calls")
            time.sleep(0.05)


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float:
    """CPU time of a process (all its threads) and of its descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
                times[int(entry)] = stat[1]
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of a process pinned to `cpus` (threads started before its pin included)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


# -- servers ---------------------------------------------------------------------------------


def prepare_meter_db(url: str, budgets: str) -> list[str]:
    """Migrate, create 10 gateway keys of 10 teams, and the enforced budgets: `off` none,
    `teams` one per team, `global` one for everything. Returns the keys."""
    from meter.budgets import service
    from meter.budgets.schemas import BudgetCreate
    from meter.db import migrate
    from meter.db.engine import make_engine
    from meter.keys import create_key
    from meter.settings import get_settings
    from meter.weeks import load_timezone

    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "UTC")
        settings = get_settings(database_url=url)
        clock = service.Clock(datetime.now(UTC), load_timezone("UTC"))
        with engine.begin() as conn:
            keys = [create_key(conn, "gateway", team, f"bench {team}")[1] for team in TEAMS]
            docs: list[dict[str, Any]] = []
            if budgets == "teams":
                docs = [{"scope": "team", "subject": t} for t in TEAMS]
            elif budgets == "global":
                docs = [{"scope": "global"}]
            for doc in docs:
                data = BudgetCreate.model_validate(
                    {**doc, "weekly_limit_usd": LIMIT_USD, "enforce": True}
                )
                service.create_budget(conn, data, settings, clock)
    finally:
        engine.dispose()
    return keys


def litellm_config(path: Path, upstream_url: str, master_key: str) -> None:
    """LiteLLM's proxy config (JSON is YAML): the benchmark's model and the paced one as
    OpenAI-compatible models at the local upstream; no database; a master key (LiteLLM refuses
    to start without one, and meter checks a key on every call too)."""
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": upstream_url,
                "api_key": UPSTREAM_KEY,
            },
        }
        for name in (_ab.MODEL, PACED_MODEL)
    ]
    doc = {
        "model_list": models,
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }
    path.write_text(json.dumps(doc, indent=2))


@contextlib.contextmanager
def servers(
    dbs: list[str], with_litellm: bool, pg: PgDatabases | None, work: Path, pin: bool
) -> Iterator[dict[str, Target]]:
    """The upstream, then every proxy started at once and waited for; yields targets by name."""
    cpus = PROXY_CPUS if pin else None
    logs = CACHE / "logs"
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(upstream(cpus=LOAD_CPUS if pin else None))
        targets = {"direct": Target("direct", up, [UPSTREAM_KEY])}
        waits: list[tuple[Target, str, Any, float]] = []

        port = free_port()
        cmd = [PYTHON, str(REPO / "bench" / "passthrough.py"), "--port", str(port)]
        cmd += ["--upstream", up]
        proc = stack.enter_context(process(cmd, log=logs / "gateway-passthrough.log", cpus=cpus))
        bare = Target("bare", f"http://127.0.0.1:{port}/v1", [UPSTREAM_KEY], pid=proc.pid)
        waits.append((bare, f"http://127.0.0.1:{port}/health", proc, 30))

        if with_litellm:
            from bench import setup_litellm

            python = setup_litellm.ensure()
            master = "sk-" + secrets.token_hex(24)
            config = work / "litellm.yaml"
            litellm_config(config, up, master)
            port = free_port()
            cmd = [str(python.with_name("litellm")), "--config", str(config)]
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
            proc = stack.enter_context(
                process(cmd, env=env, log=logs / "gateway-litellm.log", cpus=cpus)
            )
            lite = Target("litellm", f"http://127.0.0.1:{port}/v1", [master], pid=proc.pid)
            waits.append((lite, f"http://127.0.0.1:{port}/health/liveliness", proc, 300))

        for db in dbs:
            for budgets in ("off", "teams", "global"):
                name = f"meter-{db}-{budgets}"
                url = new_sqlite(work, name) if db == "sqlite" else pg.create()  # type: ignore[union-attr]
                keys = prepare_meter_db(url, budgets)
                port = free_port()
                cmd = [METER_BIN, "serve", "--port", str(port), "--no-scheduler"]
                env = {
                    "METER_DATABASE_URL": url,
                    "METER_UPSTREAM_BASE_URL": up,
                    "OPENROUTER_API_KEY": UPSTREAM_KEY,
                    "METER_SPOOL_DIR": str(work / f"spool-{name}"),
                }
                proc = stack.enter_context(
                    process(
                        cmd,
                        env=env,
                        log=logs / f"gateway-{name}.log",
                        unset=("METER_ADMIN_KEY",),
                        cpus=cpus,
                    )
                )
                target = Target(name, f"http://127.0.0.1:{port}/v1", keys, proc.pid, url)
                waits.append((target, f"http://127.0.0.1:{port}/healthz", proc, 120))

        for target, health, proc, timeout in waits:
            wait_http(health, timeout=timeout, proc=proc)
            if pin:
                pin_tree(proc.pid, PROXY_CPUS)
            targets[target.name] = target
        yield targets


# -- calls -----------------------------------------------------------------------------------

PLAIN_BODY = json.dumps(_ab.bare_payload(stream=False)).encode()
STREAM_BODY = json.dumps(_ab.bare_payload(stream=True)).encode()
PACED_BODY = json.dumps({**_ab.bare_payload(stream=True), "model": PACED_MODEL}).encode()

Caller = Callable[[], float | list[float] | None]


def _headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.key()}", "Content-Type": "application/json"}


def plain_caller(client: httpx.Client, target: Target) -> Caller:
    """A non-streamed call, its JSON parsed (as in bench.client_overhead's baseline)."""
    url = target.base_url + "/chat/completions"

    def call() -> None:
        response = client.post(url, content=PLAIN_BODY, headers=_headers(target))
        if response.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {response.status_code}: {response.text}")
        response.json()["choices"][0]["message"]["content"]
        target.calls += 1

    return call


def stream_caller(client: httpx.Client, target: Target) -> Caller:
    """A streamed call read to its end; returns the time to its first byte of body (ms) and
    keeps the time to its first `data:` event in `first_event`."""
    url = target.base_url + "/chat/completions"
    first_event: list[float] = []

    def call() -> float:
        clock = time.perf_counter
        t0 = clock()
        ttfb = None
        with client.stream("POST", url, content=STREAM_BODY, headers=_headers(target)) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"{target.name}: HTTP {resp.status_code}")
            seen = b""
            for chunk in resp.iter_raw():
                if ttfb is None:
                    ttfb = (clock() - t0) * 1000
                if seen is not None:
                    seen += chunk
                    if seen.startswith(b"data:") or b"\ndata:" in seen:
                        first_event.append((clock() - t0) * 1000)
                        seen = None
        target.calls += 1
        return ttfb if ttfb is not None else float("nan")

    call.first_event = first_event  # type: ignore[attr-defined]
    return call


def paced_caller(client: httpx.Client, target: Target) -> Caller:
    """A stream of the paced model; returns the gaps (ms) between its `data:` events' arrivals,
    0.0 for an event that came in the same read as the one before it (held back until the next
    was there: the upstream sent them PAUSE_MS apart)."""
    url = target.base_url + "/chat/completions"

    def call() -> list[float]:
        clock = time.perf_counter
        arrivals: list[float] = []
        buffer = b""
        with client.stream("POST", url, content=PACED_BODY, headers=_headers(target)) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"{target.name}: HTTP {resp.status_code}")
            for chunk in resp.iter_raw():
                now = clock()
                buffer += chunk.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                arrivals += [now for e in events if e.startswith(b"data:")]
        target.calls += 1
        return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]

    return call


def rotate(
    callers: dict[str, Caller], n: int, warmup: int, seconds: float
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """n calls of each caller, one after the other, the order rotating call by call; per call:
    its wall time (ms) and what it returned. Stops early (fewer calls) after `seconds`."""
    names = list(callers)
    for _ in range(warmup):
        for name in names:
            callers[name]()
    walls: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, list[Any]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    for i in range(n):
        if time.monotonic() > deadline:
            say(f"    time limit: {i} calls each of {n}")
            break
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = clock()
            value = callers[name]()
            walls[name].append((clock() - t0) / 1e6)
            values[name].append(value)
    return walls, values


def cpu_block(target: Target, call: Caller, n: int, seconds: float) -> tuple[float, int]:
    """CPU seconds of the target's process over n sequential calls (and, for meter, until their
    events are committed), and the calls made."""
    assert target.pid is not None
    target.wait_recorded()
    before = cpu_seconds(target.pid)
    deadline = time.monotonic() + seconds
    done = 0
    while done < n and time.monotonic() < deadline:
        call()
        done += 1
    target.wait_recorded()
    return cpu_seconds(target.pid) - before, done


def load(target: Target, n: int, seconds: float) -> dict[str, float]:
    """Throughput at CONCURRENCY, and the proxy's CPU seconds per call meanwhile."""
    parts = urlsplit(target.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + "/chat/completions"
    requests = [
        _loadgen.request_bytes(host, port, path, PLAIN_BODY, {"Authorization": f"Bearer {k}"})
        for k in target.keys
    ]
    target.wait_recorded()
    before = cpu_seconds(target.pid) if target.pid else 0.0
    result = _loadgen.run(host, port, requests, n, CONCURRENCY, seconds)
    target.calls += result.calls
    if result.errors:
        raise RuntimeError(f"{target.name}: {len(result.errors)} errors, first {result.errors[0]}")
    waited = target.wait_recorded()
    cpu = (cpu_seconds(target.pid) - before) if target.pid else float("nan")
    return {
        "rate": result.rate,
        "calls": result.calls,
        "seconds": result.seconds,
        "cpu_ms_per_call": cpu / result.calls * 1000,
        "cpu_share": cpu / (result.seconds + waited),
        "recorded_after_s": waited,
        "p50_ms": pct(result.latencies_ms, 50),
        "p99_ms": pct(result.latencies_ms, 99),
    }


def pg_commit_ms(url: str, n: int) -> float:
    """p50 of one single-row INSERT and its COMMIT on this server (what a transaction's commit
    costs here: the WAL flush, synchronous_commit on)."""
    import psycopg

    with psycopg.connect(pg_dsn(url)) as conn:
        conn.execute("CREATE TABLE bench_commit (id integer)")
        conn.commit()
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_commit VALUES (%s)", (i,))
            conn.commit()
            times.append((time.perf_counter() - t0) * 1000)
        conn.execute("DROP TABLE bench_commit")
        conn.commit()
    return pct(times, 50)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Sizes:
    calls: int = 2000
    warmup: int = 200
    stream_calls: int = 1000
    paced_calls: int = 10
    cpu_calls: int = 1000
    cpu_rounds: int = 2
    load_calls: int = 4000
    load_rounds: int = 2
    seconds: float = 120.0  # the bound of each phase's loop
    extra: dict[str, Any] = field(default_factory=dict)


def loadavg() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def ms(x: float) -> str:
    return f"{x:.3f} ms"


def added(x: float) -> str:
    return f"{x:+.3f} ms"


def run(report: Report, dbs: list[str], sizes: Sizes, with_litellm: bool, pin: bool) -> None:
    work = workdir("gateway")
    extra = report.extra
    extra["loadavg"] = {}

    def phase(name: str) -> None:
        extra["loadavg"][name] = loadavg()
        say(f"\n{name} (load {loadavg()})")

    with pg_databases() as pg, servers(dbs, with_litellm, pg, work, pin) as targets:
        if pin:
            os.sched_setaffinity(0, LOAD_CPUS)
        main_meter = f"meter-{dbs[0]}-off"
        main = ["direct", "bare", main_meter] + (["litellm"] if with_litellm else [])
        proxies = [n for n in main if n != "direct"]
        client = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=50))

        # 1. latency at concurrency 1, non-streaming
        phase(f"latency, concurrency 1: {sizes.calls} calls each to {', '.join(main)}, rotating")
        callers = {n: plain_caller(client, targets[n]) for n in main}
        walls, _ = rotate(callers, sizes.calls, sizes.warmup, sizes.seconds)
        lat = {n: {"p50": pct(w, 50), "p99": pct(w, 99), "n": len(w)} for n, w in walls.items()}
        extra["latency"] = lat
        base = lat["direct"]
        for n in proxies:
            say(f"  {n}: p50 {lat[n]['p50']:.3f} ms, p99 {lat[n]['p99']:.3f} ms")
        for n in proxies:
            is_meter = n == main_meter
            for q, goal in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS)):
                over = lat[n][q] - base[q]
                report.add(
                    Row(
                        what=f"{label(n)}: added latency {q}, c=1 (n={lat[n]['n']})",
                        baseline=f"direct {ms(base[q])}",
                        ours=ms(lat[n][q]),
                        ratio=added(over),
                        target=f"<= +{goal:g} ms" if is_meter else "(reference)",
                        met=over <= goal if is_meter else None,
                    )
                )

        # 2. streams: time to first byte, then chunks held back or not
        phase(f"streams: {sizes.stream_calls} each, rotating")
        callers = {n: stream_caller(client, targets[n]) for n in main}
        walls, values = rotate(callers, sizes.stream_calls, sizes.warmup // 4, sizes.seconds)
        ttfb = {n: pct(values[n], 50) for n in main}
        first = {n: pct(callers[n].first_event, 50) for n in main}  # type: ignore[attr-defined]
        whole = {n: pct(walls[n], 50) for n in main}
        extra["streams"] = {"ttfb_p50": ttfb, "first_event_p50": first, "whole_p50": whole}
        for n in proxies:
            is_meter = n == main_meter
            say(
                f"  {n}: first byte p50 {ttfb[n]:.3f} ms, first data event {first[n]:.3f} ms, "
                f"whole stream {whole[n]:.3f} ms"
            )
            report.add(
                Row(
                    what=f"{label(n)}: stream, added time to first byte p50",
                    baseline=f"direct {ms(ttfb['direct'])}",
                    ours=ms(ttfb[n]),
                    ratio=added(ttfb[n] - ttfb["direct"]),
                    target=f"<= +{TTFB_TARGET_MS:g} ms" if is_meter else "(reference)",
                    met=ttfb[n] - ttfb["direct"] <= TTFB_TARGET_MS if is_meter else None,
                    notes=f"first data event {added(first[n] - first['direct'])}, "
                    f"whole stream {added(whole[n] - whole['direct'])}",
                )
            )
        phase(f"paced streams ({PAUSE_MS:g} ms between frames): {sizes.paced_calls} each")
        callers = {n: paced_caller(client, targets[n]) for n in main}
        _, values = rotate(callers, sizes.paced_calls, 0, sizes.seconds)
        extra["paced"] = {}
        for n in main:
            gaps = [g for call_gaps in values[n] for g in call_gaps]
            held = sum(1 for g in gaps if g == 0.0)
            extra["paced"][n] = {
                "gaps": len(gaps),
                "held_back": held,
                "min_ms": min(gaps),
                "p50_ms": pct(gaps, 50),
                "max_ms": max(gaps),
            }
            say(
                f"  {n}: {len(gaps)} gaps, {held} events in the same read as the one before; min "
                f"{min(gaps):.1f}, p50 {pct(gaps, 50):.1f}, max {max(gaps):.1f} ms"
            )
        d = extra["paced"]["direct"]
        for n in proxies:
            p = extra["paced"][n]
            is_meter = n == main_meter
            report.add(
                Row(
                    what=f"{label(n)}: paced stream, events held back (read with the one before)",
                    baseline=f"direct {d['held_back']} of {d['gaps']}",
                    ours=f"{p['held_back']} of {p['gaps']}",
                    ratio=f"gap p50 {p['p50_ms']:.1f} ms",
                    target="none" if is_meter else "(reference)",
                    met=p["held_back"] == 0 if is_meter else None,
                    notes=f"gaps min {p['min_ms']:.1f} / max {p['max_ms']:.1f} ms, "
                    f"upstream pause {PAUSE_MS:g} ms",
                )
            )

        # 3. CPU time per call at concurrency 1, blocks alternated
        phase(f"CPU per call: {sizes.cpu_rounds} rounds of {sizes.cpu_calls} calls per proxy")
        cpu: dict[str, list[tuple[float, int]]] = {n: [] for n in proxies}
        for r in range(sizes.cpu_rounds):
            order = proxies if r % 2 == 0 else proxies[::-1]
            for n in order:
                spent, done = cpu_block(
                    targets[n], plain_caller(client, targets[n]), sizes.cpu_calls, sizes.seconds
                )
                cpu[n].append((spent, done))
                say(f"  round {r + 1} {n}: {spent / done * 1000:.3f} ms CPU per call ({done})")
        per_call = {n: sum(s for s, _ in v) / sum(c for _, c in v) * 1000 for n, v in cpu.items()}
        extra["cpu_ms_per_call"] = per_call
        extra["cpu_rounds"] = cpu
        ours_cpu = per_call[main_meter]
        report.add(
            Row(
                what="meter gateway: CPU per call vs bare pass-through, c=1",
                baseline=f"{per_call['bare']:.3f} ms",
                ours=f"{ours_cpu:.3f} ms",
                ratio=f"{ours_cpu / per_call['bare']:.2f}x",
                target=f"<= {CPU_VS_BARE}x",
                met=ours_cpu / per_call["bare"] <= CPU_VS_BARE,
                notes=f"recording included ({dbs[0]})",
            )
        )
        if with_litellm:
            report.add(
                Row(
                    what="meter gateway: CPU per call vs LiteLLM proxy, c=1",
                    baseline=f"{per_call['litellm']:.3f} ms",
                    ours=f"{ours_cpu:.3f} ms",
                    ratio=f"{ours_cpu / per_call['litellm']:.2f}x",
                    target="<= 0.33x",
                    met=ours_cpu / per_call["litellm"] <= CPU_VS_LITELLM,
                )
            )

        # 4. throughput at concurrency 32, every target alone, rounds in opposite orders
        every = main + [f"meter-{db}-{b}" for db in dbs for b in ("off", "teams", "global")]
        every = list(dict.fromkeys(every))
        phase(f"throughput, concurrency {CONCURRENCY}: {sizes.load_calls} calls per target")
        loads: dict[str, list[dict[str, float]]] = {n: [] for n in every}
        for r in range(sizes.load_rounds):
            order = every if r % 2 == 0 else every[::-1]
            for n in order:
                got = load(targets[n], sizes.load_calls, sizes.seconds / 4)
                loads[n].append(got)
                say(
                    f"  round {r + 1} {n}: {got['rate']:,.0f}/s, CPU {got['cpu_ms_per_call']:.3f}"
                    f" ms/call ({got['cpu_share']:.0%} of a core), load {loadavg()}"
                )
        rate = {n: sum(x["rate"] for x in v) / len(v) for n, v in loads.items()}
        cpu32 = {n: sum(x["cpu_ms_per_call"] for x in v) / len(v) for n, v in loads.items()}
        extra["throughput"] = loads
        for n in every:
            if n == "direct" or n.endswith(("-teams", "-global")):
                continue
            report.add(
                Row(
                    what=f"{label(n)}: throughput, c={CONCURRENCY}",
                    baseline=f"direct {rate['direct']:,.0f}/s",
                    ours=f"{rate[n]:,.0f}/s",
                    ratio=f"{rate[n] / rate['direct']:.0%}",
                    target="(reported)",
                    met=None,
                    notes=f"CPU {cpu32[n]:.3f} ms/call",
                )
            )

        # 5. hard budgets, per database: rotation at concurrency 1 over off / teams / global
        for db in dbs:
            names = [f"meter-{db}-{b}" for b in ("off", "teams", "global")]
            commit = pg_commit_ms(targets[names[0]].db_url, 300) if db == "postgresql" else 0.0
            phase(f"budgets, {db}: {sizes.calls} calls each to {', '.join(names)}, rotating")
            callers = {n: plain_caller(client, targets[n]) for n in names}
            walls, _ = rotate(callers, sizes.calls, sizes.warmup, sizes.seconds)
            blat = {
                n: {"p50": pct(w, 50), "p99": pct(w, 99), "n": len(w)} for n, w in walls.items()
            }
            extra[f"budgets_{db}"] = {"latency": blat, "commit_p50_ms": commit}
            off = blat[names[0]]
            goal = BUDGET_P50_MS + commit
            for n, kind in ((names[1], "10 team budgets"), (names[2], "one global budget")):
                over = blat[n]["p50"] - off["p50"]
                teams = n == names[1]
                say(f"  {n}: p50 {blat[n]['p50']:.3f} ms ({added(over)}), p99 {blat[n]['p99']:.3f}")
                target = f"<= +{BUDGET_P50_MS:g} ms" + (
                    f" + one commit ({commit:.3f} ms)" if db == "postgresql" else ""
                )
                report.add(
                    Row(
                        what=f"{db}: {kind} enforced, added p50 over budgets off, c=1",
                        baseline=ms(off["p50"]),
                        ours=ms(blat[n]["p50"]),
                        ratio=added(over),
                        target=target if teams else "(reported apart)",
                        met=over <= goal if teams else None,
                        notes=f"p99 {ms(off['p99'])} -> {ms(blat[n]['p99'])}",
                    )
                )
                report.add(
                    Row(
                        what=f"{db}: {kind} enforced, throughput c={CONCURRENCY}",
                        baseline=f"{rate[names[0]]:,.0f}/s",
                        ours=f"{rate[n]:,.0f}/s",
                        ratio=f"{rate[n] / rate[names[0]]:.0%}",
                        target=f">= {BUDGET_RATE:.0%}" if teams else "(reported apart)",
                        met=rate[n] / rate[names[0]] >= BUDGET_RATE if teams else None,
                        notes=f"CPU {cpu32[names[0]]:.3f} -> {cpu32[n]:.3f} ms/call",
                    )
                )

        # 6. every answered call recorded; every hold settled
        phase("checks")
        checks = {}
        for n, t in targets.items():
            if t.db_url is None:
                continue
            t.wait_recorded()
            checks[n] = {"calls": t.calls, "events": t.count_events(), "holds": t.open_holds()}
            say(f"  {n}: {checks[n]}")
            if checks[n]["events"] != t.calls or checks[n]["holds"].get("open"):
                raise RuntimeError(f"{n}: calls, events and holds do not match: {checks[n]}")
        extra["checks"] = checks
        client.close()
        for t in targets.values():
            if t._engine is not None:
                t._engine.dispose()


def label(name: str) -> str:
    if name == "bare":
        return "bare pass-through (uvicorn + httpx)"
    if name == "litellm":
        return "LiteLLM proxy 1.110.2"
    _, db, budgets = name.split("-")
    return f"meter gateway ({db}{'' if budgets == 'off' else ', ' + budgets + ' budgets'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--calls", type=int, default=2000, help="per target at concurrency 1")
    parser.add_argument("--load-calls", type=int, default=4000, help="per target at c=32")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    sizes = Sizes(calls=args.calls, load_calls=args.load_calls)
    if args.quick:
        sizes = Sizes(
            calls=300, warmup=30, stream_calls=200, paced_calls=3, cpu_calls=200,
            cpu_rounds=2, load_calls=500, load_rounds=1, seconds=60,
        )  # fmt: skip
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    if not pin:
        say("not pinning: fewer than 2 cores, or --no-pin")
    report = Report("gateway", COMMAND + (" --quick" if args.quick else ""))
    report.extra["sizes"] = sizes.__dict__
    report.extra["pinned"] = pin
    dbs = backends(args.db)
    if not dbs:
        say("no database to run on")
        return 1
    t0 = time.perf_counter()
    run(report, dbs, sizes, not args.no_litellm, pin)
    report.extra["seconds"] = time.perf_counter() - t0
    report.save()
    say(f"gateway: {report.extra['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
