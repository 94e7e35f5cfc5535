"""The gateway's budget holds without HTTP: admission is atomic and exact, expired holds stop
counting, cut-short calls keep their reservation, and the roll-up takes over settled holds."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from meter.budgets import service
from meter.budgets.repository import delete_budget
from meter.budgets.schemas import BudgetCreate, BudgetPatch
from meter.db import fast, models
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.events import EventRecord
from meter.gateway.holds import BudgetGate, Claim, StaleCovering
from meter.ids import uuid7
from meter.pricing import SEED_MODEL
from meter.rollup.engine import run_rollup
from meter.weeks import week_of
from tests.budget_helpers import loopback_settings
from tests.gateway_helpers import assert_settled_totals_exact, database_at

W = 1_000_000  # one claim's worst case, in units of 1e-12 USD


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    yield from database_at(db_url)


def budget(db: Database, limit_units: int, **fields: Any) -> int:
    doc: dict[str, Any] = {
        "scope": "team",
        "subject": "search",
        "weekly_limit_usd": str(Decimal(limit_units) / 10**12),
        "enforce": True,
        "thresholds": [],
    }
    doc.update(fields)
    if "limit_usd" in doc:
        del doc["weekly_limit_usd"]
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, BudgetCreate(**doc), loopback_settings(), service.Clock(datetime.now(UTC), db.tz)
        )


def claim(
    units: int = W,
    team: str = "search",
    event_id: uuid.UUID | None = None,
    tags: dict[str, str] | None = None,
    occurred_at: datetime | None = None,
) -> Claim:
    return Claim(
        event_id=event_id or uuid7(),
        team=team,
        user="alice",
        tags=tags,
        model=SEED_MODEL,
        occurred_at=occurred_at or datetime.now(UTC),
        worst_case_units=units,
    )


def states(db: Database) -> list[tuple[str, int]]:
    assert_settled_totals_exact(db)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT state, amount_units FROM gateway_holds")).all()
    return sorted((r[0], int(r[1])) for r in rows)


def test_admission_is_exact_and_the_refusal_says_why(db: Database) -> None:
    budget_id = budget(db, 3 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    assert [b.id for b in budgets] == [budget_id]
    assert [gate.admit(claim(), budgets) for _ in range(3)] == [None, None, None]
    refusal = gate.admit(claim(1), budgets)
    assert refusal is not None
    assert (refusal.budget_id, refusal.spend_usd, refusal.reserved_usd, refusal.limit_usd) == (
        budget_id,
        Decimal(0),
        Decimal(3 * W) / 10**12,
        Decimal(3 * W) / 10**12,
    )
    assert gate.covering("other", None) == []
    gate.close()


def test_settled_holds_free_the_difference_and_held_ones_keep_it(db: Database) -> None:
    budget(db, 3 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    first, second, third = claim(), claim(), claim()
    for c in (first, second, third):
        assert gate.admit(c, budgets) is None
    gate.settle(first, W // 4, awaiting_lookup=False)
    gate.settle(second, W // 4, awaiting_lookup=True)  # cancelled: keeps all of it
    assert states(db) == sorted([("settled", W // 4), ("held", W), ("open", W)])
    assert gate.admit(claim(3 * W // 4), budgets) is None  # exactly what the settlement freed
    assert gate.admit(claim(1), budgets) is not None
    gate.close()


def test_an_expired_open_hold_stops_counting_and_renewal_keeps_it(db: Database) -> None:
    budget(db, 2 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    running, crashed = claim(), claim()
    assert gate.admit(running, budgets) is None
    assert gate.admit(crashed, budgets) is None
    assert gate.admit(claim(1), budgets) is not None
    past = datetime.now(UTC) - timedelta(seconds=1)
    with db.engine.begin() as conn:  # both holds' servers stopped renewing a while ago
        conn.execute(
            sa.text("UPDATE gateway_holds SET expires_at = :t"), {"t": past.replace(tzinfo=None)}
        )
    gate._running = {running.event_id}
    gate.renew()
    assert gate.admit(claim(), budgets) is None  # the crashed server's hold lapsed
    assert gate.admit(claim(1), budgets) is not None  # the renewed one still counts
    gate.close()


def test_the_rollup_takes_over_settled_and_open_holds_of_counted_events(db: Database) -> None:
    budget(db, 100 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    settled, cancelled, crashed = claim(), claim(), claim()
    for c in (settled, cancelled, crashed):
        assert gate.admit(c, budgets) is None
    gate.settle(settled, 990_000, awaiting_lookup=False)
    gate.settle(cancelled, 500_000, awaiting_lookup=True)
    events = [
        EventRecord(
            id=c.event_id,
            occurred_at=c.occurred_at,
            model=SEED_MODEL,
            prompt_tokens=9,
            completion_tokens=0,
            user="alice",
            team="search",
            status="ok",
            usage_source="provider",
        )
        for c in (settled, cancelled, crashed)
    ]
    with db.engine.begin() as conn:
        insert_events(conn, events, load_price_book(conn), db.tz)
    run_rollup(db)
    assert states(db) == [("held", W)]  # waits for its lookup
    gate.close()


@pytest.mark.parametrize("gates", [2])
def test_concurrent_admissions_from_two_gates_fill_the_budget_exactly(
    db: Database, db_url: str, gates: int
) -> None:
    """50 threads on two gates (two engines: two servers' pools) against room for exactly 10."""
    budget(db, 10 * W)
    engines = [database_at(db_url) for _ in range(gates)]
    dbs = [next(e) for e in engines]
    pool = [BudgetGate(d) for d in dbs]
    budgets = pool[0].covering("search", "alice")
    barrier = threading.Barrier(50)
    admitted: list[bool] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait(30)
        ok = pool[i % gates].admit(claim(), budgets) is None
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    _run_and_check_ten_of_fifty(db, threads, admitted, pool, engines)


def _run_and_check_ten_of_fifty(
    db: Database,
    threads: list[threading.Thread],
    admitted: list[bool],
    gates: list[BudgetGate],
    engines: list[Iterator[Database]],
) -> None:
    """Run the threads; exactly 10 of their 50 admissions went through, each an open W."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(admitted) == 50
    assert admitted.count(True) == 10
    assert states(db) == [("open", W)] * 10
    for g in gates:
        g.close()
    for e in engines:
        next(e, None)


def test_a_tag_budget_covers_only_calls_with_its_tag(db: Database) -> None:
    from meter.tags.service import add_tag_key

    add_tag_key(db, "project", actor="cli")
    tag_budget = budget(db, 2 * W, scope="tag", subject="project=x")
    gate = BudgetGate(db)
    assert gate.covering("other", None, {"project": "y"}) == []
    tagged = gate.covering("other", None, {"project": "x", "env": "prod"})
    assert [b.id for b in tagged] == [tag_budget]
    assert gate.admit(claim(team="other", tags={"project": "x"}), tagged) is None
    assert gate.admit(claim(team="other", tags={"project": "y"}), tagged) is None  # not its tag
    assert gate.admit(claim(team="other", tags={"project": "x"}), tagged) is None
    refusal = gate.admit(claim(1, team="other", tags={"project": "x"}), tagged)
    assert refusal is not None and refusal.reserved_usd == Decimal(2 * W) / 10**12
    gate.close()


def test_a_month_budget_counts_the_holds_of_every_day_of_its_month(db: Database) -> None:
    month = budget(db, 2 * W, period="month", limit_usd=str(Decimal(2 * W) / 10**12))
    week = budget(db, 5 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    assert sorted(b.id for b in budgets) == sorted([month, week])
    now = datetime.now(UTC)
    first_of_month = now.replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    assert gate.admit(claim(occurred_at=first_of_month), budgets) is None
    assert gate.admit(claim(), budgets) is None
    refusal = gate.admit(claim(1), budgets)
    assert refusal is not None and refusal.budget_id == month
    gate.close()


def test_the_loops_connection_is_busy_while_another_writes_and_has_done_nothing(
    db: Database,
) -> None:
    """SQLite: the event loop's own connection (`wait=False`) admits and settles as a pooled
    one does; while another connection holds the write lock it raises Busy at once, having
    reserved or settled nothing, for the caller to do it on a pooled connection instead."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the event loop's own connection is SQLite's")
    budget(db, 2 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    own = fast.OwnReader(db.engine)
    try:
        first, second = claim(), claim()
        assert gate.admit(first, budgets, own, wait=False) is None
        with db.engine.begin():  # BEGIN IMMEDIATE: the write lock, until the block ends
            with pytest.raises(fast.Busy):
                gate.admit(second, budgets, own, wait=False)
            with pytest.raises(fast.Busy):
                gate.settle(first, W // 2, awaiting_lookup=False, writer=own, wait=False)
        assert states(db) == [("open", W)]
        gate.settle(first, W // 2, awaiting_lookup=False, writer=own, wait=False)
        assert gate.admit(second, budgets) is None  # the fallback: a pooled connection
        assert gate.admit(claim(W // 2), budgets, own, wait=False) is None  # fills it exactly
        assert gate.admit(claim(1), budgets, own, wait=False) is not None
        assert states(db) == sorted([("settled", W // 2), ("open", W), ("open", W // 2)])
    finally:
        own.close()
        gate.close()


def test_the_loops_connection_and_pooled_ones_together_fill_the_budget_exactly(
    db: Database, db_url: str
) -> None:
    """SQLite: two servers, each with its event loop's connection admitting in a row (falling
    back to the pool when Busy, as the gateway does) while 20 threads admit through the pools,
    against room for exactly 10."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the event loop's own connection is SQLite's")
    budget(db, 10 * W)
    engines = [database_at(db_url) for _ in range(2)]
    dbs = [next(e) for e in engines]
    gates = [BudgetGate(d) for d in dbs]
    budgets = gates[0].covering("search", "alice")
    barrier = threading.Barrier(22)
    admitted: list[bool] = []
    lock = threading.Lock()

    def note(ok: bool) -> None:
        with lock:
            admitted.append(ok)

    def loop(gate: BudgetGate, d: Database) -> None:
        own = fast.OwnReader(d.engine)
        barrier.wait(30)
        try:
            for _ in range(15):
                c = claim()
                try:
                    refusal = gate.admit(c, budgets, own, wait=False)
                except fast.Busy:
                    refusal = gate.admit(c, budgets)
                note(refusal is None)
        finally:
            own.close()

    def pooled(i: int) -> None:
        barrier.wait(30)
        note(gates[i % 2].admit(claim(), budgets) is None)

    threads = [threading.Thread(target=loop, args=(g, d)) for g, d in zip(gates, dbs, strict=True)]
    threads += [threading.Thread(target=pooled, args=(i,)) for i in range(20)]
    _run_and_check_ten_of_fifty(db, threads, admitted, gates, engines)


def test_several_budgets_are_judged_together_and_a_deleted_one_no_longer_limits(
    db: Database,
) -> None:
    """Team, user and global budgets on one call: the first without room refuses, with its own
    figures; a budget deleted between the covering read and the admission limits nothing."""
    team = budget(db, 10 * W)
    user = budget(db, 3 * W, scope="user", subject="alice")
    everyone = budget(db, 10**18, scope="global", subject="")  # exact far beyond a float
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    assert [b.id for b in budgets] == sorted([team, user, everyone])
    settled = claim(W)
    assert gate.admit(settled, budgets) is None
    gate.settle(settled, W // 2, awaiting_lookup=False)
    assert gate.admit(claim(2 * W), budgets) is None
    refusal = gate.admit(claim(W // 2 + 1), budgets)
    assert refusal is not None
    assert (refusal.budget_id, refusal.spend_usd, refusal.reserved_usd, refusal.needed_usd) == (
        user,
        Decimal(W // 2) / 10**12,
        Decimal(2 * W) / 10**12,
        Decimal(W // 2 + 1) / 10**12,
    )
    assert gate.admit(claim(W // 2), budgets) is None  # exactly the room left
    with db.engine.begin() as conn:
        delete_budget(conn, user)
    assert gate.admit(claim(W), budgets) is None  # read before the deletion: no longer limits
    assert states(db) == sorted(
        [("settled", W // 2), ("open", 2 * W), ("open", W // 2), ("open", W)]
    )
    gate.close()


def test_an_admission_waiting_for_the_lock_sees_what_its_holder_committed(db: Database) -> None:
    """PostgreSQL: an admission reads the budget's state once its lock is granted. While
    another transaction holds the budget's row and adds a hold of 2W, an admission of W waits;
    once that commits, it sees the new hold and refuses (W + 2W + W > 3W). Read before the
    lock, it would have seen W alone and admitted: 4W reserved under a limit of 3W."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises every writer before it reads")
    budget_id = budget(db, 3 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    assert gate.admit(claim(), budgets) is None  # W of 3W reserved
    outcome: list[Any] = []
    now = datetime.now(UTC)
    with db.engine.begin() as holder:
        holder.execute(
            sa.text("SELECT id FROM budgets WHERE id = :id FOR NO KEY UPDATE"), {"id": budget_id}
        )
        holder.execute(
            sa.insert(models.GatewayHold).values(
                event_id=uuid7(), team="search", user="alice", tags=None, model=SEED_MODEL,
                day=now.astimezone(db.tz).date(), week_start=week_of(now, db.tz).start,
                state="open", amount_units=2 * W, reserved_units=2 * W,
                expires_at=now + timedelta(minutes=1), created_at=now,
            )
        )  # fmt: skip
        waiter = threading.Thread(target=lambda: outcome.append(gate.admit(claim(), budgets)))
        waiter.start()
        deadline = time.monotonic() + 10
        while _waiting_for_locks(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _waiting_for_locks(db) == 1 and outcome == []
    waiter.join(10)  # the holder committed
    assert not waiter.is_alive()
    refusal = outcome[0]
    assert refusal is not None and refusal.budget_id == budget_id
    assert refusal.reserved_usd == Decimal(3 * W) / 10**12
    assert states(db) == [("open", W), ("open", 2 * W)]
    gate.close()


def _waiting_for_locks(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
        )


def test_remembered_budgets_admit_only_while_they_still_are_the_calls(db: Database) -> None:
    """PostgreSQL: a call's covering budgets, once read, are admitted under in one round trip;
    each admission checks, after its locks, that they still are all the enforced budgets
    covering the call, unchanged. A budget created, changed, disabled or deleted since makes
    it stale: nothing reserved, and the next read sees the budgets as they are."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("remembered budgets are PostgreSQL's (SQLite's reads cost no round trip)")
    team_budget = budget(db, 10 * W)
    gate = BudgetGate(db)
    assert gate.known("search", "alice") is None
    first = gate.covering("search", "alice")
    assert gate.known("search", "alice") == first and gate.known("ads", "alice") is None
    assert gate.admit(claim(), first, verify=True) is None
    assert states(db) == [("open", W)]

    def stale_after(change: Callable[[Any], Any]) -> list[int]:
        remembered = gate.known("search", "alice")
        assert remembered is not None
        before = states(db)
        with db.engine.begin() as conn:
            change(conn)
        with pytest.raises(StaleCovering):
            gate.admit(claim(), remembered, verify=True)
        assert states(db) == before  # nothing reserved
        return [b.id for b in gate.covering("search", "alice")]

    clock = service.Clock(datetime.now(UTC) + timedelta(seconds=1), db.tz)
    user_budget = budget(db, 5 * W, scope="user", subject="alice")
    assert stale_after(lambda conn: None) == [team_budget, user_budget]  # created
    lower = BudgetPatch(weekly_limit_usd=Decimal(2 * W) / 10**12)
    assert stale_after(
        lambda conn: service.update_budget(conn, team_budget, lower, loopback_settings(), clock)
    ) == [team_budget, user_budget]  # changed
    off = BudgetPatch(enforce=False)
    assert stale_after(
        lambda conn: service.update_budget(conn, user_budget, off, loopback_settings(), clock)
    ) == [team_budget]  # no longer enforced
    budgets_now = gate.known("search", "alice")
    assert budgets_now is not None and budgets_now[0].weekly_limit_units == 2 * W
    refusal = gate.admit(claim(2 * W), budgets_now, verify=True)  # W + 2W > 2W: refused
    assert refusal is not None and refusal.budget_id == team_budget
    assert gate.admit(claim(), budgets_now, verify=True) is None
    assert stale_after(lambda conn: delete_budget(conn, team_budget)) == []  # deleted
    assert gate.known("search", "alice") is None
    assert states(db) == [("open", W), ("open", W)]
    gate.close()


def test_settlements_left_to_the_next_admission_are_made_before_it_is_judged(
    db: Database,
) -> None:
    """A call's settlement is left to the server's next admission, which makes every
    settlement left (after its locks, in its transaction: on PostgreSQL in its one statement)
    before it reads the budgets: the next call is judged on the exact costs. What no admission
    takes is made by `flush`, many holds at once, their groups exact."""
    budget(db, 2 * W + W // 2)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    first, second = claim(), claim()
    assert gate.admit(first, budgets) is None
    assert gate.admit(second, budgets) is None
    gate.settle_later(first, W // 4, awaiting_lookup=False)
    gate.settle_later(second, W // 2, awaiting_lookup=False)
    assert gate.unsettled()
    assert states(db) == [("open", W), ("open", W)]  # left, not made
    # 2W reserved + W > 2.5W; settled first: W/4 + W/2 + W <= 2.5W
    third = claim()
    assert gate.admit(third, budgets) is None
    assert not gate.unsettled()
    assert states(db) == sorted([("settled", W // 4), ("settled", W // 2), ("open", W)])
    # A refused admission makes them too: what it refused was judged on them.
    gate.settle_later(third, W, awaiting_lookup=True)  # cut short: keeps its reservation
    refusal = gate.admit(claim(2 * W), budgets)
    assert refusal is not None and refusal.reserved_usd == Decimal(W) / 10**12
    assert states(db) == sorted([("settled", W // 4), ("settled", W // 2), ("held", W)])
    # Left with no admission after them: flush makes them, in one statement.
    more = [claim(W // 10, tags={"f": "x"}) for _ in range(3)]
    for c in more:
        assert gate.admit(c, budgets) is None
        gate.settle_later(c, W // 20, awaiting_lookup=False)
    assert gate.wait_settled(2.0)  # flushes what is left, then nothing is in flight
    assert not gate.unsettled()
    assert states(db) == sorted(
        [("settled", W // 4), ("settled", W // 2), ("held", W)] + [("settled", W // 20)] * 3
    )
    with db.engine.connect() as conn:
        tagged = conn.execute(
            sa.text("SELECT amount_units FROM gateway_settled WHERE tags_key <> ''")
        ).scalar_one()
    assert int(tagged) == 3 * (W // 20)  # three holds of one group, summed in one statement
    gate.close()


def test_settlements_not_made_are_left_for_the_next_attempt(db: Database) -> None:
    """An admission that fails (the database gone for a moment) leaves the settlements it
    carried to the next one; closing the gate makes what is left."""
    budget(db, 10 * W)
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    first = claim()
    assert gate.admit(first, budgets) is None
    gate.settle_later(first, W // 3, awaiting_lookup=False)
    with db.engine.begin() as conn:  # the admission's statement fails: no such column
        conn.execute(sa.text("ALTER TABLE gateway_holds RENAME COLUMN reserved_units TO r"))
    try:
        with pytest.raises(Exception, match="reserved_units"):
            gate.admit(claim(), budgets)
        assert gate.unsettled()
    finally:
        with db.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE gateway_holds RENAME COLUMN r TO reserved_units"))
    assert states(db) == [("open", W)]
    gate.close()  # makes what is left
    assert not gate.unsettled()
    assert states(db) == [("settled", W // 3)]


def test_a_remembered_key_admits_only_while_it_is_still_there(db: Database) -> None:
    """PostgreSQL: an admission under a key read for an earlier call checks, in its statement,
    that the key (its id and digest) is still there and unexpired: a revoked key makes it
    stale, nothing reserved."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("remembered keys are PostgreSQL's")
    from meter.keys import create_key, hash_key

    budget(db, 10 * W)
    with db.engine.begin() as conn:
        key_id, token, _ = create_key(conn, "gateway", "search", "t", user="alice")
        other_id, other, _ = create_key(
            conn, "gateway", "search", "t", expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        past = datetime.now(UTC) - timedelta(seconds=1)  # expired since
        conn.execute(
            sa.update(models.ApiKey).where(models.ApiKey.id == other_id).values(expires_at=past)
        )
    gate = BudgetGate(db)
    budgets = gate.covering("search", "alice")
    digest = hash_key(token)
    assert gate.admit(claim(), budgets, verify=True, api_key=(key_id, digest)) is None
    for wrong in ((key_id, hash_key("another")), (other_id, hash_key(other))):  # wrong; expired
        with pytest.raises(StaleCovering):
            gate.admit(claim(), budgets, verify=True, api_key=wrong)
    with db.engine.begin() as conn:
        conn.execute(sa.delete(models.ApiKey).where(models.ApiKey.id == key_id))
    with pytest.raises(StaleCovering):
        gate.admit(claim(), budgets, verify=True, api_key=(key_id, digest))
    assert states(db) == [("open", W)]
    gate.close()
