"""Helpers of the gateway tests: a real meter server (uvicorn, lifespan on) in a thread, in front
of the mock upstream, and what the upstream and the database saw."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from meter.api.app import create_app
from meter.db import settled
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.keys import create_key
from meter.settings import Settings, get_settings
from meter.weeks import load_timezone
from tests.recorder_helpers import free_port

SERVER_KEY = "sk-or-server-key-never-shown"


def database_at(url: str) -> Iterator[Database]:
    """The database at `url`, for a fixture: keys, budgets and holds live where the gateway
    spools its events."""
    engine = make_engine(url)
    yield Database(engine, load_timezone("UTC"))
    engine.dispose()


def assert_settled_totals_exact(db: Database) -> None:
    """The gateway's settled totals add up its settled holds, group by group (meter.db.settled).
    Read again while a settlement may commit between the two reads (liveness bound: 5 s)."""
    for _ in range(100):
        with db.engine.connect().execution_options(readonly=True) as conn:
            groups, holds = settled.totals_by_group(conn), settled.recount(conn)
        if groups == holds:
            return
        time.sleep(0.05)
    assert groups == holds


def gateway_settings(db_url: str, upstream_url: str, spool: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "upstream_base_url": upstream_url,
        "openrouter_api_key": SERVER_KEY,
        "spool_dir": spool,
        "webhook_allow_private": True,
    }
    values.update(overrides)
    return get_settings(**values)


class GatewayServer:
    """`meter serve`'s app on a free loopback port, in a thread; `base_url` ends in /v1."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.port = free_port()
        self.app = create_app(settings, db, scheduler=False, gateway_at_start=True)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):  # liveness bound: 10 s
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def flush(self) -> None:
        """Everything the gateway spooled so far is in the database."""
        assert self.app.state.gateway.meter.flush(10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@contextmanager
def gateway_server(settings: Settings, db: Database) -> Iterator[GatewayServer]:
    server = GatewayServer(settings, db)
    try:
        yield server
    finally:
        server.stop()


def gateway_key(
    db: Database,
    team: str = "search",
    user: str | None = "alice",
    tags: dict[str, str] | None = None,
) -> str:
    with db.engine.begin() as conn:
        _, key, _ = create_key(conn, "gateway", team, "test", user=user, tags=tags)
    return key
