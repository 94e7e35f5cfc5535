"""`GET /v1/prices/sync` (the difference between the upstream's catalogue and the price book)
and `POST /v1/prices/sync` (apply it: new versions effective now). Both admin only: a sync
contacts the upstream with the server's `OPENROUTER_API_KEY`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from meter import audit
from meter._exceptions import CatalogueUnavailable
from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.schemas import AUTH_ERRORS, NameQuery, Problem
from meter.db.prices import PriceExists
from meter.price_sync import fetch_catalogue, plan, sync
from meter.price_sync.schemas import PriceSyncDiff, PriceSyncResult, audit_details
from meter.settings import Settings

router = APIRouter(tags=["prices"])

ModelQuery = Annotated[NameQuery | None, Query(description="Compare only this model")]
ERRORS: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    502: {"model": Problem, "description": "The upstream's models list could not be read"},
}


def _catalogue(request: Request) -> dict[str, object]:
    settings: Settings = request.app.state.settings
    try:
        return fetch_catalogue(settings)
    except CatalogueUnavailable as exc:
        raise HTTPException(502, detail=str(exc)) from None


@router.get(
    "/v1/prices/sync",
    response_model=PriceSyncDiff,
    summary="What a price sync would change (writes nothing)",
    responses=ERRORS,
)
def get_price_sync(
    _: AdminPrincipal, db: DbDep, request: Request, model: ModelQuery = None
) -> PriceSyncDiff:
    catalogue = _catalogue(request)
    with db.engine.connect().execution_options(readonly=True) as conn:
        return PriceSyncDiff.of(plan(conn, catalogue, datetime.now(UTC), model), model)


@router.post(
    "/v1/prices/sync",
    response_model=PriceSyncResult,
    summary="Add the upstream's new and changed prices, effective now",
    description=(
        "New and changed prices become versions effective now: events already priced keep "
        "their cost. Variable (`-1`), conditional (`overrides`), too fine (< 1e-12 USD a "
        "token) and malformed entries are skipped and listed; models no longer listed keep "
        "their price. Every meter server prices with the new versions within 5 s."
    ),
    responses={**ERRORS, 409: {"model": Problem, "description": "Another sync at that moment"}},
)
def post_price_sync(
    admin: AdminPrincipal, db: DbDep, request: Request, model: ModelQuery = None
) -> PriceSyncResult:
    catalogue = _catalogue(request)
    try:
        with db.engine.begin() as conn:
            diff, applied = sync(conn, catalogue, model)
            audit.record(
                conn, audit.actor_of(admin), "price.sync", model, audit_details(applied, model)
            )
    except PriceExists as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return PriceSyncResult.of_applied(diff, applied, model)
