"""Hard budgets for the gateway: a call reserves its worst case before it is sent.

Why gateway calls never take an enforced budget past its limit, whatever the concurrency:

1. Before sending, a call covered by enforced budgets computes its worst-case cost W (prompt
   upper bound x input price + n x cap x output price; meter.gateway.request) and, in one
   transaction, locks those budgets' rows (PostgreSQL, in id order: admissions to a budget run
   one at a time across every server; SQLite's BEGIN IMMEDIATE serialises every writer), reads
   each budget's state in ONE statement (one snapshot) and inserts its hold of W only if, for
   every budget, spend + reserved + W <= limit. The next admission to that budget reads after
   this commit, so it sees this hold.
2. spend = the roll-up's total for the period + the exact cost of the gateway's settled calls
   not yet rolled up, read from their totals per (day, team, user, tags), which every writer
   of a settled hold keeps equal to the sum of those holds in its own transaction
   (meter.db.settled); reserved = the open holds. A call's money is always in exactly one of
   three places: its open hold (W, while it runs), its settled hold (its exact cost, once it
   ended), or the roll-up (once the chunk that counts its event deleted the hold, in the same
   transaction: meter.rollup.repository.drop_counted_holds). One snapshot sees each call in one
   place, never in none: the roll-up commits the move atomically, and a settlement only lowers
   a hold to the exact cost, which is <= W whenever the call stayed within its reservation.
3. So at every admission, the sum over admitted calls of what they can cost is <= limit: by
   induction, each admission keeps sum(spend) + sum(W of running calls) <= limit, and a
   running call's real cost never exceeds its W (a call that does is counted in
   meter_reservation_exceeded_total: a provider billing beyond max_tokens or the context).
4. A call cut short (cancelled, incomplete) keeps its full W (state `held`) until its
   generation lookup knows the provider's real figures, or gives up (meter.reconcile):
   providers may bill the whole completion after a client abort. A running stream renews its
   hold's expiry; a crashed server's open holds stop counting when they expire (HOLD_TTL), and
   its finished calls are counted again once its spool is replayed and rolled up.

Where it runs changes none of this (meter.db.fast: the statements compiled once, run on the
raw connection). On SQLite, the gateway admits and settles on its event loop's own connection
with BEGIN IMMEDIATE, the same serialisation as every other writer's; while another connection
holds the write lock it does nothing and raises Busy at once, and the call waits for the lock
in a worker thread instead. On PostgreSQL the admission is one statement in autocommit, on the
connection that read the key: a transaction in one round trip, the call of a function of that
connection's own (meter.db.fast.Procedure) that takes the lock, then reads the states and
inserts the hold only if every budget has room, in a statement whose snapshot is taken once
the lock is granted; the states are read from its answer. A call's settlement is left to the
server's next admission, which makes every settlement left in its own transaction, after its
locks and before its read (`settle_later`; on PostgreSQL in the same statement), or to a batch
of its own SETTLE_AFTER_S later if no admission came (meter.gateway.routes.Gateway.settle_later);
an admission refused while some were being made by others is judged again once they are. So
that server's next call is judged on its last calls' exact costs; an admission on another
server may see the full reservation meanwhile, which is more, never less, than the cost.

Spend recorded by other paths (the Python client, POST /v1/events) counts from the roll-up that
includes it, so it can take a budget past its limit; the gateway then refuses. Budgets count
meter's cost, never the provider's `usage.cost`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from meter.budgets.repository import BudgetRow
from meter.budgets.rules import budget_window
from meter.db import fast
from meter.db.session import Database
from meter.gateway import repository as repo
from meter.keys import Principal
from meter.metrics import RESERVATION_EXCEEDED
from meter.money import units_to_usd
from meter.weeks import week_of

log = logging.getLogger("meter.gateway")

HOLD_TTL = timedelta(seconds=60)  # an open hold not renewed for this long stops counting
RENEW_EVERY_S = 15.0
LAPSED_KEPT = timedelta(days=1)


@dataclass(frozen=True)
class Refusal:
    """An enforced budget has no room for this call's worst case."""

    budget_id: int
    limit_usd: Decimal
    spend_usd: Decimal
    reserved_usd: Decimal
    needed_usd: Decimal


@dataclass(frozen=True)
class Claim:
    """Who a call is for, and what it may cost at most."""

    event_id: uuid.UUID
    team: str | None
    user: str | None
    tags: dict[str, str] | None
    model: str
    occurred_at: datetime
    worst_case_units: int


def _call_key(team: str | None, user: str | None, tags: dict[str, str] | None) -> tuple[Any, ...]:
    return (team, user, *sorted((tags or {}).items()))


def _refusal(states: Sequence[repo.BudgetState], worst_case_units: int) -> Refusal | None:
    """The first enforced budget without room for `worst_case_units`, as a Refusal."""
    for state in states:
        if state.enforce and state.spend_units + state.reserved_units + worst_case_units > (
            state.limit_units
        ):
            return Refusal(
                budget_id=state.budget_id,
                limit_usd=units_to_usd(state.limit_units),
                spend_usd=units_to_usd(state.spend_units),
                reserved_usd=units_to_usd(state.reserved_units),
                needed_usd=units_to_usd(worst_case_units),
            )
    return None


class BudgetUnavailable(Exception):
    """The budget state cannot be read (or written): the gateway fails closed."""


class StaleCovering(Exception):
    """The budgets remembered for a call no longer are all those covering it, unchanged:
    nothing was reserved; read them again."""


KNOWN_MAX = 4096  # calls' (team, user, tags) whose covering budgets are remembered; then forgotten


class BudgetGate:
    """Admission, settlement and renewal of gateway holds for one server process."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._running: set[uuid.UUID] = set()  # this process's open holds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # PostgreSQL: the enforced budgets last read for a call's (team, user, tags), when
        # there were some. An admission under them checks, after taking their locks, that they
        # still are all those covering the call, unchanged: one round trip, not two.
        self._known: dict[tuple[Any, ...], list[BudgetRow]] = {}
        # And the principal of each key read for a call (by digest): a call under remembered
        # budgets checks in the same statement that the key is still there (not revoked).
        self._keys: dict[str, Principal] = {}
        self._remember = db.engine.dialect.name == "postgresql"
        # The settlements of calls that ended, made by the next admission (after its locks,
        # in its transaction) or by `flush` (Gateway.settle_later calls it soon after, if no
        # admission came); and those being made now, by batch.
        self._unsettled: list[repo.Settlement] = []
        self._in_flight: set[int] = set()
        self._given_up: set[int] = set()  # in flight, no longer waited for (`wait_settled`)
        self._batches = 0
        self._settled = threading.Condition(self._lock)

    # -- which budgets a call falls under ---------------------------------------------------

    def covering(
        self,
        team: str | None,
        user: str | None,
        tags: dict[str, str] | None = None,
        reader: fast.Reader | None = None,
    ) -> list[BudgetRow]:
        """The enforced budgets covering a call, read now (a budget created a moment ago
        applies to the next call). Raises BudgetUnavailable when they cannot be read.
        `reader`: the caller's connection (the admission's), else one of its own."""
        try:
            with fast.reading(self.db.engine, reader) as own:
                found = repo.covering_budgets(own, team, user, tags)
        except Exception as exc:
            raise BudgetUnavailable(str(exc)) from exc
        if self._remember:
            key = _call_key(team, user, tags)
            if found:
                if len(self._known) >= KNOWN_MAX:
                    self._known.clear()
                self._known[key] = found
            else:
                self._known.pop(key, None)
        return found

    def known(
        self, team: str | None, user: str | None, tags: dict[str, str] | None = None
    ) -> list[BudgetRow] | None:
        """PostgreSQL: the enforced budgets `covering` last found for such a call, if it found
        some (to admit under, with `admit(..., verify=True)`); else None."""
        return self._known.get(_call_key(team, user, tags)) if self._remember else None

    def remember_key(self, digest: str, principal: Principal) -> None:
        """PostgreSQL: the principal a gateway key (by its digest) was just read to be."""
        if self._remember and principal.key_id is not None:
            if len(self._keys) >= KNOWN_MAX:
                self._keys.clear()
            self._keys[digest] = principal

    def key_principal(self, digest: str) -> Principal | None:
        """PostgreSQL: the principal remembered for a key, to admit under with
        `admit(..., verify=True, api_key=(principal.key_id, digest))`; else None."""
        return self._keys.get(digest)

    def forget_key(self, digest: str) -> None:
        self._keys.pop(digest, None)

    # -- admission ----------------------------------------------------------------------------

    def admit(
        self,
        claim: Claim,
        budgets: Sequence[BudgetRow],
        writer: fast.Reader | None = None,
        *,
        wait: bool = True,
        verify: bool = False,
        api_key: tuple[int, str] | None = None,
    ) -> Refusal | None:
        """Reserve the claim's worst case under `budgets`, atomically across servers; a
        Refusal (nothing reserved) when one of them has no room. `writer`: the connection to
        do it on (the admission's own), else one from the pool. With `wait=False` (SQLite, on
        the event loop) it raises fast.Busy, having done nothing, while another connection
        holds the write lock. With `verify` (PostgreSQL; `budgets` from `known`) it raises
        StaleCovering, having done nothing, unless `budgets` are still all the enforced
        budgets covering the claim, unchanged, and, with `api_key` (the id and digest of the
        caller's key, from `key_principal`), unless that key is still there."""
        now = datetime.now(UTC)
        week = week_of(claim.occurred_at, self.db.tz)
        windows = [budget_window(b, claim.occurred_at, self.db.tz) for b in budgets]
        day = claim.occurred_at.astimezone(self.db.tz).date()
        hold = {
            "event_id": claim.event_id,
            "team": claim.team or "",
            "user": claim.user or "",
            "tags": claim.tags,
            "model": claim.model,
            "day": day,
            "week_start": week.start,
            "state": repo.OPEN,
            "amount_units": claim.worst_case_units,
            "reserved_units": claim.worst_case_units,
            "expires_at": now + HOLD_TTL,
            "created_at": now,
        }
        try:
            with fast.reading(self.db.engine, writer) as on:
                if on.is_sqlite:
                    with self._carried() as settling, on.transaction(wait=wait):
                        repo.settle(on, settling)  # the calls that ended, first
                        states = repo.budget_states(on, budgets, windows, now)
                        refusal = _refusal(states, claim.worst_case_units)
                        if refusal is None:
                            repo.insert_hold(on, hold)
                else:  # the lock and the conditional INSERT: one statement, committed
                    call = (claim.team, claim.user, claim.tags) if verify else None
                    with self._carried() as settling:
                        states, admitted, fresh = repo.admit_if_room(
                            on, budgets, windows, now, hold, call, settling, api_key
                        )
                    if not fresh:
                        raise StaleCovering()
                    refusal = None if admitted else _refusal(states, claim.worst_case_units)
                    if refusal is None and not admitted:  # cannot be: the same sums
                        raise BudgetUnavailable("the admission disagreed with its own states")
        except (fast.Busy, BudgetUnavailable, StaleCovering):
            raise
        except Exception as exc:
            raise BudgetUnavailable(str(exc)) from exc
        if refusal is not None:  # rolled back, or nothing inserted: nothing reserved
            return refusal
        with self._lock:
            self._running.add(claim.event_id)
        self._start_renewing()
        return None

    # -- the end of a call ----------------------------------------------------------------------

    def settle(
        self,
        claim: Claim,
        cost_units: int,
        *,
        awaiting_lookup: bool,
        writer: fast.Reader | None = None,
        wait: bool = True,
    ) -> None:
        """The call ended: its hold becomes its exact cost at once (or, for a call cut short
        whose provider figures can still be looked up, keeps its full reservation). `writer`
        and `wait` as for `admit`: with `wait=False` it raises fast.Busy, having done
        nothing, while another connection holds the write lock."""
        try:
            # Not flushed (PostgreSQL), and losing it in a crash of the database loses nothing
            # that matters: the hold is open again, counts its whole reservation (more than
            # the cost, never less) until it expires or the roll-up counts its event, as when
            # a server dies before settling.
            self._make([self._settlement(claim, cost_units, awaiting_lookup)], writer, wait)
        except fast.Busy:
            raise
        except Exception:
            # The hold stays open and expires within HOLD_TTL; the event is in the spool and
            # reaches the roll-up anyway.
            log.exception("could not settle the gateway hold of %s", claim.event_id)
        with self._lock:
            self._running.discard(claim.event_id)

    def _settlement(self, claim: Claim, cost_units: int, awaiting_lookup: bool) -> repo.Settlement:
        if cost_units > claim.worst_case_units:
            RESERVATION_EXCEEDED.inc()
            log.warning(
                "gateway call %s cost %d units, over its reservation of %d",
                claim.event_id,
                cost_units,
                claim.worst_case_units,
            )
        if awaiting_lookup:
            return repo.Settlement(claim.event_id, repo.HELD, claim.worst_case_units, claim.tags)
        return repo.Settlement(claim.event_id, repo.SETTLED, cost_units, claim.tags)

    def _make(
        self, settlements: list[repo.Settlement], writer: fast.Reader | None, wait: bool
    ) -> None:
        """Settlements in a transaction of their own (PostgreSQL: one statement)."""
        with (
            fast.reading(self.db.engine, writer) as on,
            on.transaction(wait=wait) if on.is_sqlite else contextlib.nullcontext(),
        ):
            repo.settle(on, settlements)

    # -- settlements made by the next admission, or by a batch ------------------------------

    def settle_later(self, claim: Claim, cost_units: int, *, awaiting_lookup: bool) -> None:
        """`settle`, left to this server's next admission (which makes every settlement left
        since the last one in its own transaction, after taking its budgets' locks and before
        reading their states, so it and every admission after it see them) or to `flush`.
        Returns at once."""
        settlement = self._settlement(claim, cost_units, awaiting_lookup)
        with self._lock:
            self._unsettled.append(settlement)

    def unsettled(self) -> bool:
        """Whether settlements are left to make, or being made (and still waited for)."""
        return bool(self._unsettled or len(self._in_flight) > len(self._given_up))

    def _take(self) -> tuple[int, list[repo.Settlement]]:
        with self._lock:
            if not self._unsettled:
                return 0, []
            self._batches += 1
            self._in_flight.add(self._batches)
            taken, self._unsettled = self._unsettled, []
            return self._batches, taken

    def _finish(self, batch: int, taken: list[repo.Settlement], *, made: bool) -> None:
        """A batch made, or not (then left for the next admission or flush)."""
        if not taken:
            return
        with self._lock:
            self._in_flight.discard(batch)
            self._given_up.discard(batch)
            if made:
                self._running.difference_update(s.event_id for s in taken)
            else:
                self._unsettled[:0] = taken
            self._settled.notify_all()

    @contextlib.contextmanager
    def _carried(self) -> Iterator[list[repo.Settlement]]:
        """The settlements left, taken by a statement that makes them; left again if it
        fails (for the next admission, or `flush`)."""
        batch, taken = self._take()
        try:
            yield taken
        except BaseException:
            self._finish(batch, taken, made=False)
            raise
        self._finish(batch, taken, made=True)

    def flush(self, writer: fast.Reader | None = None, *, wait: bool = True) -> None:
        """Make the settlements left, in a transaction of their own (on PostgreSQL one
        statement). `writer` and `wait` as for `admit`: with `wait=False` it raises fast.Busy,
        having done nothing, while another connection holds SQLite's write lock."""
        batch, taken = self._take()
        if not taken:
            return
        try:
            self._make(taken, writer, wait)
        except fast.Busy:
            self._finish(batch, taken, made=False)
            raise
        except Exception:
            # Their holds stay open and expire within HOLD_TTL; their events are in the spool
            # and reach the roll-up anyway.
            log.exception("could not settle %d gateway holds", len(taken))
        self._finish(batch, taken, made=True)

    def wait_settled(self, timeout: float) -> bool:
        """Make the settlements left, then wait for those being made by others, at most
        `timeout` seconds; a batch still running then is never waited for again (its holds
        count their full reservations, never less than the costs, until it ends) -> whether
        every one of them ended."""
        with self._lock:
            others = self._in_flight - self._given_up
        self.flush()
        with self._settled:
            ended = self._settled.wait_for(lambda: others.isdisjoint(self._in_flight), timeout)
            if not ended:
                self._given_up |= others & self._in_flight
            return ended

    # -- renewal of running calls' holds ------------------------------------------------------

    def _start_renewing(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._renew_loop, name="meter-gateway-holds", daemon=True
            )
            self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            self.renew()

    def renew(self) -> None:
        with self._lock:
            running = list(self._running)
        now = datetime.now(UTC)
        try:
            with self.db.engine.begin() as conn:
                repo.extend(conn, running, now + HOLD_TTL)
                repo.delete_lapsed(conn, now - LAPSED_KEPT)
        except Exception:
            log.exception("could not renew the gateway's open holds")

    def close(self) -> None:
        self.flush()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
