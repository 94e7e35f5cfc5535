"""Routes for budgets: limits of a day, week or month with the current period's spend, and a
test delivery of the webhook."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy.engine import Connection

from meter import audit
from meter.api.auth import AdminPrincipal, ReadPrincipal
from meter.api.deps import DbDep, SettingsDep
from meter.api.errors import invalid
from meter.budgets import repository as repo
from meter.budgets import service
from meter.budgets.audit import budget_details
from meter.budgets.schemas import BudgetCreate, BudgetList, BudgetOut, BudgetPatch, TestDelivery
from meter.db.session import Database
from meter.keys import Principal

router = APIRouter(prefix="/v1", tags=["budgets"])


def clock(db: Database) -> service.Clock:
    return service.Clock(datetime.now(UTC), db.tz)


def visible_budget(conn: Connection, budget_id: int, principal: Principal) -> repo.BudgetRow:
    """The budget, if it exists (404) and this key may see it (403 for another team's)."""
    budget = repo.get_budget(conn, budget_id)
    if budget is None:
        raise HTTPException(404, detail=f"no budget {budget_id}")
    if principal.team is not None and not (
        budget.scope == "team" and budget.subject == principal.team
    ):
        raise HTTPException(403, detail=f"team: this key is scoped to team {principal.team!r}")
    return budget


def _one(conn: Connection, budget_id: int, db: Database) -> BudgetOut:
    budget = repo.get_budget(conn, budget_id)
    assert budget is not None
    return service.budget_views(conn, [budget], clock(db))[0]


@router.get("/budgets", response_model=BudgetList)
def list_budgets(principal: ReadPrincipal, db: DbDep) -> BudgetList:
    """Every budget with its current period's spend; a team-scoped key sees its team's budgets
    only."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        budgets = repo.list_budgets(conn, team=principal.team)
        return BudgetList(budgets=service.budget_views(conn, budgets, clock(db)))


@router.post("/budgets", response_model=BudgetOut, status_code=201)
def create_budget(
    data: BudgetCreate, admin: AdminPrincipal, db: DbDep, settings: SettingsDep
) -> BudgetOut:
    try:
        with db.engine.begin() as conn:
            budget_id = service.create_budget(conn, data, settings, clock(db))
            view = _one(conn, budget_id, db)
            audit.record(
                conn,
                audit.actor_of(admin),
                "budget.create",
                f"budget:{budget_id}",
                budget_details(view),
            )
            return view
    except service.BudgetInputError as exc:
        raise invalid(("body", exc.field), str(exc)) from None


@router.get("/budgets/{budget_id}", response_model=BudgetOut)
def get_budget(budget_id: int, principal: ReadPrincipal, db: DbDep) -> BudgetOut:
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        budget = visible_budget(conn, budget_id, principal)
        return service.budget_views(conn, [budget], clock(db))[0]


@router.patch("/budgets/{budget_id}", response_model=BudgetOut)
def update_budget(
    budget_id: int, patch: BudgetPatch, admin: AdminPrincipal, db: DbDep, settings: SettingsDep
) -> BudgetOut:
    try:
        with db.engine.begin() as conn:
            if not service.update_budget(conn, budget_id, patch, settings, clock(db)):
                raise HTTPException(404, detail=f"no budget {budget_id}")
            view = _one(conn, budget_id, db)
            details = {"changed": sorted(patch.model_fields_set), **budget_details(view)}
            audit.record(
                conn, audit.actor_of(admin), "budget.update", f"budget:{budget_id}", details
            )
            return view
    except service.BudgetInputError as exc:
        raise invalid(("body", exc.field), str(exc)) from None


@router.delete("/budgets/{budget_id}", status_code=204, response_class=Response)
def delete_budget(budget_id: int, admin: AdminPrincipal, db: DbDep) -> Response:
    """Deletes the budget and its alerts (pending deliveries included)."""
    with db.engine.begin() as conn:
        exists = repo.get_budget(conn, budget_id) is not None
        before = budget_details(_one(conn, budget_id, db)) if exists else {}
        if not repo.delete_budget(conn, budget_id):
            raise HTTPException(404, detail=f"no budget {budget_id}")
        audit.record(conn, audit.actor_of(admin), "budget.delete", f"budget:{budget_id}", before)
    return Response(status_code=204)


@router.post("/budgets/{budget_id}/test", response_model=TestDelivery)
def test_webhook(
    budget_id: int, principal: AdminPrincipal, db: DbDep, settings: SettingsDep
) -> TestDelivery:
    """Send a signed `budget.test` delivery to the budget's webhook now; say how it went."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        budget = visible_budget(conn, budget_id, principal)
        now = clock(db)
        spend = repo.spend_now(conn, [budget], now.now, now.tz)[budget.id][1]
    # The send happens outside any transaction: a slow receiver holds no database lock.
    try:
        return service.test_delivery(budget, spend, settings, now)
    except service.BudgetInputError as exc:
        raise HTTPException(409, detail=str(exc)) from None
