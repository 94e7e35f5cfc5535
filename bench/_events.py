"""Synthetic events, fast: 10 teams x 100 users x 3 models, time-ordered UUIDv7 ids.

Three shapes of the same events:
- `records`: meter's `EventRecord`s (what the drain and the API hand to the ledger);
- `sqlite_rows` / `pg_rows`: the stored rows, pre-built for the raw baselines (same values as
  meter stores, so both sides write identical data into identical tables);
- `write_tsv`: PostgreSQL COPY text for the roll-up datasets (cached under bench/.cache/),
  loaded into SQLite too (column affinity turns the numbers back into integers).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.events import EventRecord
from meter.pricing import SEED_MODEL, make_price

TEAMS = [f"team-{t:02d}" for t in range(10)]
USERS_PER_TEAM = 100
MODELS = [SEED_MODEL, "mistralai/mixtral-8x7b-instruct", "meta-llama/llama-3.1-8b-instruct"]
EXTRA_PRICES = {  # per 1M tokens, input and output; the seed model's price is the migration's
    MODELS[1]: ("0.24", "0.24"),
    MODELS[2]: ("0.02", "0.05"),
}
PRICES_FROM = datetime(2023, 1, 2, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def user_of(team: int, j: int) -> str:
    return f"user-{team:02d}-{j:03d}"


def add_bench_prices(conn: Connection) -> None:
    """Prices for the two extra models (the seed model's comes with the schema)."""
    from meter.db.prices import add_price

    existing = {r[0] for r in conn.execute(sa.text("SELECT model FROM prices"))}
    for model, (inp, out) in EXTRA_PRICES.items():
        if model not in existing:
            add_price(conn, make_price(model, inp, out, PRICES_FROM, 4096))


@dataclass(frozen=True)
class PriceRow:
    id: int
    input_units: int
    output_units: int


def load_prices(conn: Connection) -> dict[str, PriceRow]:
    rows = conn.execute(sa.text("SELECT id, model, input_units, output_units FROM prices"))
    return {r[1]: PriceRow(int(r[0]), int(r[2]), int(r[3])) for r in rows}


@dataclass(frozen=True, slots=True)
class Spec:
    """One synthetic event, as plain values."""

    id: uuid.UUID
    micros: int  # since the epoch, UTC
    team: str
    user: str
    model: str
    prompt: int
    completion: int
    status: str
    usage_source: str


def specs(n: int, start: datetime, end: datetime, seed: int = 7) -> Iterator[Spec]:
    """n events evenly spread (with jitter) over [start, end), in time order, ids increasing."""
    rng = random.Random(seed)
    t0 = int((start - EPOCH) / timedelta(microseconds=1))
    span = int((end - start) / timedelta(microseconds=1))
    step = span / n
    last_ms = -1
    seq = 0
    getrandbits = rng.getrandbits
    for i in range(n):
        micros = t0 + int(step * (i + rng.random() * 0.9))
        ms = micros // 1000
        if ms == last_ms:
            seq += 1
        else:
            last_ms, seq = ms, getrandbits(8)
        ident = (ms << 80) | (0x7 << 76) | ((seq & 0xFFF) << 64) | (0b10 << 62) | getrandbits(62)
        team = rng.randrange(10)
        roll = rng.random()
        if roll < 0.02:
            status, source, prompt, completion = "error", "none", 0, 0
        else:
            prompt, completion = 20 + getrandbits(9), 1 + getrandbits(8)
            status, source = ("incomplete", "estimated") if roll < 0.05 else ("ok", "provider")
        yield Spec(
            uuid.UUID(int=ident),
            micros,
            TEAMS[team],
            user_of(team, rng.randrange(USERS_PER_TEAM)),
            MODELS[rng.randrange(3)],
            prompt,
            completion,
            status,
            source,
        )


def moment(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def records(items: list[Spec]) -> list[EventRecord]:
    return [
        EventRecord(
            id=s.id,
            occurred_at=moment(s.micros),
            model=s.model,
            prompt_tokens=s.prompt,
            completion_tokens=s.completion,
            user=s.user,
            team=s.team,
            status=s.status,
            usage_source=s.usage_source,
            latency_ms=800,
            generation_id="gen-bench",
        )
        for s in items
    ]


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _sqlite_time(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")[:26]


def sqlite_rows(items: list[Spec], prices: dict[str, PriceRow]) -> list[tuple[Any, ...]]:
    """The rows meter stores on SQLite (text times, hex ids), pre-built for the raw baseline."""
    received = _sqlite_time(datetime.now(UTC))
    rows = []
    for s in items:
        at = moment(s.micros)
        p = prices.get(s.model)
        rows.append(
            (
                s.id.hex,
                _sqlite_time(at),
                _week_start(at.date()).isoformat(),
                s.model,
                s.user,
                s.team,
                None,
                s.prompt,
                s.completion,
                None,
                None,
                s.status,
                s.usage_source,
                800,
                None,
                "gen-bench",
                None,
                p.id if p else None,
                s.prompt * p.input_units if p else None,
                s.completion * p.output_units if p else None,
                received,
                at.date().isoformat(),
            )
        )
    return rows


def pg_rows(items: list[Spec], prices: dict[str, PriceRow]) -> list[tuple[Any, ...]]:
    """The rows meter stores on PostgreSQL (uuid, naive UTC timestamps), pre-built."""
    received = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for s in items:
        at = moment(s.micros).replace(tzinfo=None)
        p = prices.get(s.model)
        rows.append(
            (
                s.id,
                at,
                _week_start(at.date()),
                s.model,
                s.user,
                s.team,
                None,
                s.prompt,
                s.completion,
                None,
                None,
                s.status,
                s.usage_source,
                800,
                None,
                "gen-bench",
                None,
                p.id if p else None,
                s.prompt * p.input_units if p else None,
                s.completion * p.output_units if p else None,
                received,
                at.date(),
            )
        )
    return rows


def write_tsv(
    path: Path, n: int, start: datetime, end: datetime, prices: dict[str, PriceRow]
) -> None:
    """COPY text (tab-separated, \\N for NULL) in the events table's column order."""
    received = _sqlite_time(end)
    tmp = path.with_suffix(".tmp")
    second_lo = -1
    prefix = ""
    week_lo, week_hi, week_text = 0, -1, ""
    with open(tmp, "w", buffering=1 << 22) as f:
        buf: list[str] = []
        for s in specs(n, start, end):
            sec = s.micros // 1_000_000
            if sec != second_lo:
                second_lo = sec
                at = moment(sec * 1_000_000)
                prefix = _sqlite_time(at)[:20]
                if not (week_lo <= s.micros < week_hi):
                    ws = _week_start(at.date())
                    week_lo = int(
                        (datetime(ws.year, ws.month, ws.day, tzinfo=UTC) - EPOCH)
                        / timedelta(microseconds=1)
                    )
                    week_hi = week_lo + 7 * 86_400_000_000
                    week_text = ws.isoformat()
            p = prices[s.model]
            buf.append(
                f"{s.id.hex}\t{prefix}{s.micros % 1_000_000:06d}\t{week_text}\t{s.model}\t"
                f"{s.user}\t{s.team}\t\\N\t{s.prompt}\t{s.completion}\t\\N\t\\N\t{s.status}\t"
                f"{s.usage_source}\t800\t\\N\tgen-bench\t\\N\t{p.id}\t"
                f"{s.prompt * p.input_units}\t{s.completion * p.output_units}\t{received}\t"
                f"{prefix[:10]}\n"
            )
            if len(buf) >= 100_000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    tmp.rename(path)


def tsv_tuples(path: Path, batch: int = 50_000) -> Iterator[list[tuple[str | None, ...]]]:
    """The TSV back as tuples of text (None for \\N), for SQLite's executemany."""
    out: list[tuple[str | None, ...]] = []
    with open(path) as f:
        for line in f:
            out.append(tuple(None if v == "\\N" else v for v in line.rstrip("\n").split("\t")))
            if len(out) >= batch:
                yield out
                out = []
    if out:
        yield out
