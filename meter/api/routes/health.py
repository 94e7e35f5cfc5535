"""`GET /healthz`: is the service up, and can it reach its database."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from meter.api.deps import DbDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: str


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(db: DbDep) -> Health | JSONResponse:
    try:  # a read: on SQLite it never waits for a writer (a roll-up chunk, a gateway call)
        with db.engine.connect().execution_options(readonly=True) as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError:
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return Health(status="ok", database="ok")
