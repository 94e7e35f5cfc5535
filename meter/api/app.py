"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.types import Receive, Scope, Send

from meter import __version__
from meter.api.errors import install_error_handlers, reject_unknown_query_params
from meter.api.routes import (
    alerts,
    audit,
    budgets,
    dashboard,
    docs,
    events,
    export,
    health,
    keys,
    metrics,
    price_sync,
    prices,
    reconciliation,
    reports,
    rollup,
    tags,
    teams,
    usage,
    users,
)
from meter.budgets.delivery import DeliveryWorker
from meter.db.session import Database
from meter.gateway import routes as gateway
from meter.lifecycle.tasks import add_purge_job
from meter.price_sync.tasks import add_price_check
from meter.reconcile.scheduler import add_lookup_job
from meter.rollup.scheduler import build_scheduler, start_scheduler, stop_scheduler
from meter.settings import Settings

log = logging.getLogger("meter.api")


class MeterApp(FastAPI):
    """The API, with the gateway's calls taken before FastAPI's own layers.

    A gateway call goes straight to its handler (`gateway.GatewayDispatch`): FastAPI's routing,
    dependencies and its five middleware layers per call cost a large share of a proxy's own
    work (see BENCHMARKS.md, Gateway), and the gateway answers its own errors, in OpenAI's
    shape."""

    gateway_dispatch: gateway.GatewayDispatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dispatch = self.gateway_dispatch
        if dispatch is not None and scope["type"] == "http":
            route = dispatch.route(scope["path"])
            if route is not None:
                scope["app"] = self  # as Starlette sets it: Request.app
                await dispatch(route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, db: Database, *, scheduler: bool = True, gateway_at_start: bool = False
) -> FastAPI:
    """Build the app around an open database. `scheduler` runs the roll-up job in-process;
    `gateway_at_start` opens the gateway's spool at once (meter serve: what a killed server
    left there is stored before anything else), else at the first gateway call."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Webhooks go out from a thread of their own: a slow receiver never holds up a request
        # or a roll-up, and what is pending survives a restart in the alerts table.
        webhooks = DeliveryWorker(db, settings)
        webhooks.start()
        app.state.webhooks = webhooks
        # The roll-up runs in the scheduler's threads, never on the event loop;
        # `meter serve --no-scheduler` serves the API only.
        jobs = app.state.scheduler
        if app.state.run_scheduler:
            start_scheduler(jobs)
        if gateway_at_start:
            app.state.gateway = gateway.Gateway.start(settings, db)
            # meter serve: what exists now (modules, the app, its routes) lives as long as the
            # process. Out of the collector's sight, it is not walked again by every full
            # collection, which a request that makes many objects (a month's bill: ~1,000
            # entries) triggers: billing p99 on 5M events 164 -> 103-112 ms in-process.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            running: gateway.Gateway | None = getattr(app.state, "gateway", None)
            if running is not None:
                await running.aclose()
            # Waits for a running roll-up to finish its chunk: off the event loop.
            await asyncio.to_thread(stop_scheduler, jobs)
            # May wait for a send in flight (bounded by its timeouts): off the event loop too.
            await asyncio.to_thread(webhooks.stop)

    app = MeterApp(
        title="meter",
        version=__version__,
        description="Exact token and cost metering for LLM API calls.",
        lifespan=lifespan,
        # Our own /docs and /redoc (routes/docs.py) serve their assets from the package: offline.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(reject_unknown_query_params)],
    )
    app.state.settings = settings
    app.state.db = db
    app.state.run_scheduler = scheduler
    app.state.scheduler = build_scheduler(db, settings.rollup_interval_seconds)
    add_lookup_job(app.state.scheduler, db, settings)  # only with OPENROUTER_API_KEY
    add_price_check(app.state.scheduler, db, settings)  # when METER_PRICE_SYNC_INTERVAL_SECONDS
    add_purge_job(app.state.scheduler, db, settings)  # when METER_RAW_RETENTION_DAYS

    install_error_handlers(app)
    app.gateway_dispatch = gateway.GatewayDispatch(max_body_bytes=settings.gateway_max_body_bytes)

    for module in (
        health,
        events,
        usage,
        reports,
        reconciliation,
        teams,
        prices,
        price_sync,
        keys,
        rollup,
        budgets,
        alerts,
        tags,
        users,
        audit,
        export,
        metrics,
        docs,
        dashboard,
    ):
        app.include_router(module.router)
    return app
