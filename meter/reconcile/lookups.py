"""Generation lookups: an estimated event's provider figures, from `GET {upstream}/generation`.

A call cancelled by its client, cut, or ended by an error after some output is stored with
estimated usage and, when the upstream named it, its generation id. OpenRouter knows what it
really billed, but only seconds to minutes later (longer for interrupted streams, sometimes
never). This job asks, and when the answer comes, in one transaction: the event takes the native
token counts, `provider_cost_usd` the `total_cost`, `usage_source` becomes `reconciled`, its cost
is recomputed at the price version it already has, the estimate moves to `estimated_*`, its roll-up
group is marked dirty, and a gateway budget hold still `held` for it is settled at the new exact
cost (`repository.settle_gateway_hold`). A 404 (or any other failure) is retried with backoff
until the lookup's deadline, `METER_LOOKUP_WINDOW_SECONDS` after the event; then the event is left
as it was, its hold settled at the estimate's cost (its group marked, so the roll-up takes the
settled hold over), and the lookup counted `unavailable`.

How lookups are queued: by the ledger (`meter.db.ledger.insert_events`), in the transaction that
stores the event, as a `generation_lookups` row. Every way in (the client's drain, `POST
/v1/events`, the gateway's spool) goes through it, and, like the roll-up's dirty marks, a row
written with its event cannot be missed whatever order transactions commit in. For the common
`provider` event it costs one comparison in the loop that builds the rows; an event store
therefore needs no index for a job to find candidates among millions of events, and no
migration. (bench.recording, same minutes: no change beyond its noise; see the commit.) The
deadline is taken when the event is stored, with the storing process's window setting.

Coordination: every `meter serve` runs this job (APScheduler is per process), so a lookup is
claimed in the database before it is looked up: a conditional UPDATE moves its next attempt a
lease ahead; every later write checks that it still holds that value, so a lookup whose lease
ran out and was taken over is written once. At most METER_LOOKUP_RPS lookups a second per
process (pacing between requests); a 429 pauses it (Retry-After, else doubling), and after a
few 429s in a row the run stops and leaves the rest due.

Lock order in the reconciling (or giving-up) transaction on PostgreSQL: the event's roll-up mark
first (the ledger's `mark_dirty`), while holding nothing, then the lookup row, the event, the
hold. Waiting for the mark, we hold nothing anyone waits for. Holding it, we wait only for rows
no mark holder keeps from us: a roll-up chunk takes its marks before it deletes holds, and only
`open` or `settled` ones (ours is `held` until we commit); a writer replaying the event or its
lookup waits for our rows with `ON CONFLICT DO NOTHING` but locks none of them; the gateway is
done with a hold before its event is stored. So no cycle can form.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.engine import Connection

from meter._exceptions import ConfigError
from meter.db.ledger import mark_dirty
from meter.db.session import Database
from meter.metrics import GENERATION_LOOKUPS
from meter.pricing import cost_of
from meter.reconcile import repository as repo
from meter.reconcile.generation import Generation, GenerationDocumentError, parse_generation
from meter.settings import Settings

log = logging.getLogger("meter.reconcile")

Clock = Callable[[], datetime]
Progress = Callable[[int, int | None, "LookupSummary"], None]  # (done, total or None, so far)

# How many due lookups are read at a time (each is then claimed on its own).
DUE_BATCH = 100


def _utc_now() -> datetime:
    return datetime.now(UTC)


def upstream_key(settings: Settings) -> str | None:
    """OPENROUTER_API_KEY, the only key that can see its generations; None if unset or empty."""
    key = settings.openrouter_api_key
    return key.get_secret_value() if key is not None and key.get_secret_value() else None


@dataclass(frozen=True)
class LookupPolicy:
    """How hard to ask: the rate, the backoff between attempts, the claim's lease."""

    rps: float = 2.0
    first_retry: timedelta = timedelta(seconds=5)  # generations appear seconds to minutes late
    max_retry: timedelta = timedelta(hours=1)
    # Longer than one lookup can take: its timeout plus every 429 pause allowed in a row.
    lease: timedelta = timedelta(minutes=5)
    timeout_seconds: float = 30.0
    max_rate_limit_pause: float = 60.0
    rate_limits_in_a_row: int = 4  # then the run stops; the rest stays due

    @classmethod
    def from_settings(cls, settings: Settings) -> LookupPolicy:
        return cls(rps=settings.lookup_rps)

    def retry_delay(self, attempts: int) -> timedelta:
        """Doubling from `first_retry`, at most `max_retry` (about 30 attempts in a day)."""
        factor: int = 2 ** min(max(attempts - 1, 0), 30)
        delay: timedelta = min(self.first_retry * factor, self.max_retry)
        return delay


@dataclass
class LookupSummary:
    reconciled: int = 0  # events that took the provider's figures
    retried: int = 0  # not found yet, or failed: tried again later
    unavailable: int = 0  # given up on in this run (the deadline passed)
    skipped: int = 0  # claimed by another process, or nothing left to do
    rate_limited: int = 0  # 429 answers
    pending: int = 0  # lookups still pending in the database after the run
    stopped: bool = False  # asked to stop, or stopped by repeated 429s


# -- asking the upstream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one `GET /generation` said: a generation, not found, rate limited or failed."""

    generation: Generation | None = None
    not_found: bool = False
    retry_after: float | None = None  # set (maybe 0) when rate limited
    error: str | None = None

    @property
    def rate_limited(self) -> bool:
        return self.retry_after is not None


def fetch_generation(client: httpx.Client, base_url: str, generation_id: str) -> Answer:
    """Ask once. Transport errors and unexpected answers become `error`, never an exception."""
    try:
        response = client.get(f"{base_url}/generation", params={"id": generation_id})
    except httpx.HTTPError as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}"[:300])
    status = response.status_code
    if status == 404:
        return Answer(not_found=True, error="404: not found (yet)")
    if status == 429:
        return Answer(retry_after=_retry_after(response.headers.get("retry-after")))
    if status != 200:
        return Answer(error=f"HTTP {status}: {response.text[:200]}")
    try:
        return Answer(generation=parse_generation(response.content, generation_id))
    except GenerationDocumentError as exc:
        return Answer(error=f"unusable answer: {exc}")


def _retry_after(value: str | None) -> float:
    """Seconds from Retry-After; 0 when absent or a date (the pacer then doubles its pause)."""
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


class Pacer:
    """At most `rps` requests a second in this process; a 429 pauses every request."""

    def __init__(self, policy: LookupPolicy, stop: threading.Event) -> None:
        self.policy = policy
        self.interval = 1.0 / policy.rps
        self.stop = stop
        self.next_at = 0.0  # time.monotonic() of the next allowed request
        self.in_a_row = 0

    def wait(self) -> bool:
        """Sleep until the next request may go -> False if asked to stop meanwhile."""
        delay = self.next_at - time.monotonic()
        if delay > 0 and self.stop.wait(delay):
            return False
        self.next_at = max(self.next_at, time.monotonic()) + self.interval
        return not self.stop.is_set()

    def rate_limited(self, retry_after: float) -> bool:
        """Pause after a 429 -> False when too many came in a row: stop this run."""
        self.in_a_row += 1
        if self.in_a_row > self.policy.rate_limits_in_a_row:
            return False
        pause = retry_after or 2.0 ** (self.in_a_row - 1)
        self.next_at = time.monotonic() + min(pause, self.policy.max_rate_limit_pause)
        return True

    def answered(self) -> None:
        self.in_a_row = 0


# -- the run ---------------------------------------------------------------------------------


class _LeaseLost(Exception):
    """The claim was taken over: roll this transaction back and leave the lookup to its holder."""


@dataclass
class _Run:
    db: Database
    client: httpx.Client
    base_url: str
    policy: LookupPolicy
    pacer: Pacer
    clock: Clock
    force: bool
    summary: LookupSummary

    def one(self, event_id: uuid.UUID) -> bool:
        """Look up one event's generation -> False when the run must stop."""
        if not self.pacer.wait():  # before claiming: the lease is for the lookup, not the wait
            return False
        now = self.clock()
        with self.db.engine.begin() as conn:
            claim = repo.claim(
                conn, event_id, now, now + self.policy.lease, due_only=not self.force
            )
        if claim is None:
            self.summary.skipped += 1
            return True
        if not claim.generation_id:  # nothing to ask about: the estimate is all there is
            self._record(claim, Answer(error="empty generation id"), final=True)
            return True
        while True:
            answer = fetch_generation(self.client, self.base_url, claim.generation_id)
            if not answer.rate_limited:
                break
            self.summary.rate_limited += 1
            _count("rate_limited")
            go_on = self.pacer.rate_limited(answer.retry_after or 0.0)
            if not go_on:
                log.warning("generation lookups: rate limited by the upstream; stopping this run")
            if not (go_on and self.pacer.wait()):
                with self.db.engine.begin() as conn:
                    repo.release(conn, claim, self.clock())
                return False
        self.pacer.answered()
        try:
            self._record(claim, answer)
        except _LeaseLost:
            self.summary.skipped += 1
            log.info("generation lookup of event %s was taken over; its result dropped", event_id)
        return True

    def _record(self, claim: repo.Claim, answer: Answer, final: bool = False) -> None:
        now = self.clock()
        with self.db.engine.begin() as conn:
            if answer.generation is not None:
                outcome = _reconcile(conn, claim, answer.generation)
            elif final or now >= claim.deadline_at:
                outcome = _give_up(conn, claim, answer.error or "not found")
            else:
                at = min(now + self.policy.retry_delay(claim.attempts + 1), claim.deadline_at)
                if not repo.retry_later(conn, claim, at, answer.error or "not found"):
                    raise _LeaseLost
                outcome = "retried"
        setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
        _count(outcome)


def _reconcile(conn: Connection, claim: repo.Claim, generation: Generation) -> str:
    facts = repo.event_facts(conn, claim.event_id)
    if facts is None:  # gone (deleted with its user): nothing left to correct
        return _give_up(conn, claim, "the event no longer exists")
    if facts.usage_source != "estimated":  # corrected already, or never an estimate
        if not repo.finish(conn, claim, "done", None):
            raise _LeaseLost
        return "skipped"
    _mark(conn, facts)
    if not repo.finish(conn, claim, "done", None):
        raise _LeaseLost
    price = repo.price_version(conn, facts.price_id) if facts.price_id is not None else None
    cost = None
    if price is not None:
        cost = cost_of(price, generation.prompt_tokens, generation.completion_tokens)
    repo.reconcile_event(conn, claim.event_id, generation, cost)
    repo.settle_gateway_hold(conn, claim.event_id, cost.total_units if cost else 0)
    return "reconciled"


def _give_up(conn: Connection, claim: repo.Claim, reason: str) -> str:
    """Leave the event as it is; its hold becomes the estimate's cost, and its group is marked:
    the roll-up chunk that counts it takes a settled hold over (drop_counted_holds), and one that
    already counted the event while its hold was `held` would otherwise not come back to it."""
    facts = repo.event_facts(conn, claim.event_id)
    if facts is not None:
        _mark(conn, facts)
    if not repo.finish(conn, claim, "unavailable", reason):
        raise _LeaseLost
    repo.settle_gateway_hold(conn, claim.event_id, facts.cost_units if facts else 0)
    log.info(
        "generation %s of event %s unavailable after %d attempts: %s",
        claim.generation_id,
        claim.event_id,
        claim.attempts + 1,
        reason,
    )
    return "unavailable"


def _mark(conn: Connection, facts: repo.EventFacts) -> None:
    """The event's roll-up group, marked first, while holding no other lock (module docstring)."""
    mark_dirty(conn, [(facts.week_start, facts.team, facts.user, facts.model)])


def _count(outcome: str) -> None:
    GENERATION_LOOKUPS.labels(outcome=outcome).inc()


@contextlib.contextmanager
def _client(
    settings: Settings, policy: LookupPolicy, given: httpx.Client | None
) -> Iterator[httpx.Client]:
    if given is not None:
        yield given
        return
    with httpx.Client(
        timeout=httpx.Timeout(policy.timeout_seconds, connect=10.0),
        headers={"Authorization": f"Bearer {upstream_key(settings)}"},
    ) as client:
        yield client


def run_lookups(
    db: Database,
    settings: Settings,
    *,
    force: bool = False,
    policy: LookupPolicy | None = None,
    http_client: httpx.Client | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    clock: Clock = _utc_now,
) -> LookupSummary:
    """Look up every due generation (with `force`, every pending one whatever its backoff),
    each at most once per run. Raises ConfigError without OPENROUTER_API_KEY."""
    if upstream_key(settings) is None and http_client is None:
        raise ConfigError(
            "generation lookups need OPENROUTER_API_KEY: the upstream shows a generation only "
            "to the key that made it"
        )
    policy = policy or LookupPolicy.from_settings(settings)
    stop = stop or threading.Event()
    summary = LookupSummary()
    with _client(settings, policy, http_client) as client:
        run = _Run(
            db,
            client,
            settings.upstream_base_url.rstrip("/"),
            policy,
            Pacer(policy, stop),
            clock,
            force,
            summary,
        )
        for done, (event_id, total) in enumerate(_candidates(db, force, clock), 1):
            if not run.one(event_id):
                summary.stopped = True
                break
            if progress:
                progress(done, total, summary)
    with _reading(db) as conn:
        summary.pending = repo.count_by_state(conn).get("pending", 0)
    return summary


@contextlib.contextmanager
def _reading(db: Database) -> Iterator[Connection]:
    """A read-only transaction (on SQLite a deferred BEGIN: it never waits for writers)."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn


def _candidates(db: Database, force: bool, clock: Clock) -> Iterator[tuple[uuid.UUID, int | None]]:
    """(event id, total if known): every pending one at once with `force`, else due ones in
    batches until none is due that this run has not tried already."""
    if force:
        with _reading(db) as conn:
            ids = repo.all_pending(conn)
        for event_id in ids:
            yield event_id, len(ids)
        return
    tried: set[uuid.UUID] = set()
    while True:
        with _reading(db) as conn:
            ids = [i for i in repo.due(conn, clock(), DUE_BATCH) if i not in tried]
        if not ids:
            return
        for event_id in ids:
            tried.add(event_id)
            yield event_id, None
