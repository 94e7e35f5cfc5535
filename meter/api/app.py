"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from meter import __version__
from meter.api.routes import (
    alerts,
    budgets,
    dashboard,
    docs,
    events,
    health,
    keys,
    metrics,
    prices,
    reports,
    rollup,
    teams,
    usage,
)
from meter.db.session import Database
from meter.settings import Settings

log = logging.getLogger("meter.api")


def create_app(settings: Settings, db: Database, *, scheduler: bool = True) -> FastAPI:
    """Build the app around an open database. `scheduler` runs the roll-up job in-process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="meter",
        version=__version__,
        description="Exact token and cost metering for LLM API calls.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.run_scheduler = scheduler

    @app.exception_handler(sa.exc.OperationalError)
    async def database_unreachable(request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("database error on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse({"detail": "database unreachable"}, status_code=503)

    for module in (
        health,
        events,
        usage,
        reports,
        teams,
        prices,
        keys,
        rollup,
        budgets,
        alerts,
        metrics,
        docs,
        dashboard,
    ):
        app.include_router(module.router)
    return app
