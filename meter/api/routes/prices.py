"""`GET /v1/prices` and `POST /v1/prices`: the effective-dated price book.

A price is never edited: a new version takes effect from its `effective_from`, and events
already priced keep their cost (`meter prices reprice` prices the unpriced ones it covers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, WithJsonSchema

from meter import audit
from meter._exceptions import InvalidPrice
from meter.api.auth import AdminPrincipal, ReadPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import (
    AUTH_ERRORS,
    InputTimestamp,
    Money,
    Name,
    NameQuery,
    Problem,
    Timestamp,
)
from meter.db.prices import PriceExists, add_price, list_prices
from meter.pricing import Price, make_price

router = APIRouter(tags=["prices"])


def _price_amount(value: object) -> Decimal:
    # Exact input only: a string (or a whole JSON number). 0.11 as a JSON number has already
    # been through a float by the time anyone sees it.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('give the price as a decimal string, e.g. "0.11"')
    text = str(value).strip()
    if len(text) > 40:
        raise ValueError("is too long")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if d.adjusted() > 12:  # bounded before meter.money scales it
        raise ValueError("is too large")
    return d


PriceAmount = Annotated[
    Decimal,
    PlainValidator(_price_amount),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{1,4}(\.\d{1,6})?$",
            "description": "USD per 1M tokens, at most 6 decimals, as a string",
            "examples": ["0.11"],
        }
    ),
]

PRICE_EXAMPLE: dict[str, Any] = {
    "model": "mistralai/mistral-7b-instruct-v0.1",
    "input_per_million_usd": "0.11",
    "output_per_million_usd": "0.19",
    "effective_from": "2023-09-28T00:00:00Z",
    "context_length": 4096,
}


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PRICE_EXAMPLE]})

    model: Name
    input_per_million_usd: PriceAmount
    output_per_million_usd: PriceAmount
    effective_from: InputTimestamp | None = Field(
        default=None, description="RFC 3339 with an offset; default: now"
    )
    context_length: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)] | None = None


class PriceOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PRICE_EXAMPLE]})

    model: str
    input_per_million_usd: Money
    output_per_million_usd: Money
    effective_from: Timestamp
    context_length: int | None

    @classmethod
    def of(cls, price: Price) -> PriceOut:
        return cls(
            model=price.model,
            input_per_million_usd=price.input_per_million_usd,
            output_per_million_usd=price.output_per_million_usd,
            effective_from=price.effective_from,
            context_length=price.context_length,
        )


class PriceList(BaseModel):
    prices: list[PriceOut]


@router.get(
    "/v1/prices",
    response_model=PriceList,
    summary="Every price version, per model oldest first",
    responses=AUTH_ERRORS,
)
def get_prices(
    _: ReadPrincipal,
    db: DbDep,
    model: Annotated[NameQuery | None, Query(description="Only this model")] = None,
) -> PriceList:
    with db.engine.connect().execution_options(readonly=True) as conn:
        return PriceList(prices=[PriceOut.of(p) for p in list_prices(conn, model)])


@router.post(
    "/v1/prices",
    response_model=PriceOut,
    status_code=201,
    summary="Add a price version",
    responses={**AUTH_ERRORS, 409: {"model": Problem, "description": "Same model and date"}},
)
def post_price(admin: AdminPrincipal, db: DbDep, body: PriceIn) -> PriceOut:
    try:
        price = make_price(
            body.model,
            body.input_per_million_usd,
            body.output_per_million_usd,
            body.effective_from or datetime.now(UTC),
            body.context_length,
        )
    except InvalidPrice as exc:
        raise invalid(("body", exc.field or "body"), str(exc)) from None
    try:
        with db.engine.begin() as conn:
            stored = add_price(conn, price)
            out = PriceOut.of(stored)
            audit.record(
                conn, audit.actor_of(admin), "price.set", out.model, out.model_dump(mode="json")
            )
    except PriceExists as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return out
