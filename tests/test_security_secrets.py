"""Secrets never leak: a full flow (metered calls through a meter server, keys, a budget with a
webhook secret, a roll-up, an upstream error, a spool left by a down store) with every logger
at DEBUG, then every log line, the database file, the spool files, the API's answers, the
errors and the reprs are searched for each secret.

- the upstream key (OPENROUTER_API_KEY / api_key=) is never stored, logged or shown;
- meter keys are stored only as SHA-256 hashes and compared with hmac.compare_digest;
- the webhook secret is write-only: in no response (create, PATCH, GET, lists) and no log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from meter import AsyncMeteredClient, Meter, MeteredClient, UpstreamError
from meter.api.app import create_app
from meter.db.engine import make_engine
from meter.db.migrate import upgrade
from meter.db.session import Database
from meter.mock_upstream import running
from meter.settings import get_settings
from meter.weeks import load_timezone
from tests.budget_helpers import Receiver
from tests.client_helpers import HELLO, MODEL
from tests.recorder_helpers import free_port

UPSTREAM = "sk-or-v1-UPSTREAM-do-not-leak-5d1e"
ADMIN = "mtr_ADMIN-do-not-leak-9a7c"
WEBHOOK = "whsec-FIRST-do-not-leak-1b2c"
WEBHOOK2 = "whsec-SECOND-do-not-leak-3d4e"


class CaptureAll(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def all_logs_at_debug() -> Iterator[CaptureAll]:
    handler = CaptureAll()
    saved: list[tuple[logging.Logger, int, bool]] = []
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        saved.append((lg, lg.level, lg.propagate))
        lg.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    # Loggers that do not propagate (uvicorn's) get the handler themselves.
    extra = [lg for lg in loggers if not lg.propagate and lg is not root]
    for lg in extra:
        lg.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for lg in extra:
        lg.removeHandler(handler)
    for lg, level, propagate in saved:
        lg.setLevel(level)
        lg.propagate = propagate


class LiveServer:
    def __init__(self, app: object) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            log_level="debug",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_no_secret_leaks_through_a_full_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, all_logs_at_debug: CaptureAll
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM)
    monkeypatch.setenv("METER_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("METER_WEBHOOK_ALLOW_PRIVATE", "1")
    db_path = tmp_path / "secrets.db"
    engine = make_engine(f"sqlite:///{db_path}")
    upgrade(engine, "UTC")
    db = Database(engine, load_timezone("UTC"))
    settings = get_settings()
    assert settings.admin_key is not None and settings.openrouter_api_key is not None

    compared: list[tuple[bytes | str, bytes | str]] = []
    real_compare = hmac.compare_digest

    def spying_compare(a: bytes | str, b: bytes | str) -> bool:
        compared.append((a, b))
        return real_compare(a, b)  # type: ignore[type-var]

    monkeypatch.setattr(hmac, "compare_digest", spying_compare)

    answers: list[str] = []  # every API response body
    errors: list[str] = []
    receiver = Receiver()
    server = LiveServer(create_app(settings, db, scheduler=False))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as api:

            def call(method: str, path: str, **kw: object) -> httpx.Response:
                r = api.request(method, path, **kw)  # type: ignore[arg-type]
                answers.append(r.text)
                return r

            created = call("POST", "/v1/keys", json={"role": "ingest", "name": "app"}).json()
            ingest = created["key"]
            reader = call("POST", "/v1/keys", json={"role": "read"}).json()["key"]
            answers.pop()  # the one answer that shows a key (once, by design)
            answers.pop(0)
            call("GET", "/v1/keys")
            budget = call(
                "POST",
                "/v1/budgets",
                json={
                    "scope": "team",
                    "subject": "search",
                    "weekly_limit_usd": "0.000001",
                    "webhook_url": receiver.url,
                    "webhook_secret": WEBHOOK,
                },
            ).json()
            call("PATCH", f"/v1/budgets/{budget['id']}", json={"webhook_secret": WEBHOOK2})
            call("GET", "/v1/budgets")
            call("GET", f"/v1/budgets/{budget['id']}")
            assert call("POST", f"/v1/budgets/{budget['id']}/test").status_code == 200
            bad = call("POST", "/v1/budgets", json={"webhook_secret": WEBHOOK, "scope": 1})
            assert bad.status_code == 422

            with running() as (mock, upstream_url):
                # Through the meter server with an ingest key; the upstream key from the env.
                with (
                    Meter(api_url=server.url, api_key=ingest, spool_dir=tmp_path / "s1") as meter,
                    MeteredClient(base_url=upstream_url, meter=meter, team="search") as client,
                ):
                    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=200)
                    with client.chat.completions.create(
                        model=MODEL, messages=HELLO, stream=True
                    ) as stream:
                        for _ in stream:
                            pass
                    client.chat.completions.create(
                        model=MODEL,
                        messages=HELLO,
                        extra_headers={
                            "X-Mock-Behavior": "rate_limit:1",
                            "X-Mock-Retry-After": "0",
                        },
                    )
                    with pytest.raises(UpstreamError) as info:
                        client.chat.completions.create(
                            model=MODEL,
                            messages=HELLO,
                            extra_headers={"X-Mock-Behavior": "bad_request"},
                        )
                    errors += [str(info.value), repr(info.value), repr(info.value.body)]

                    async def async_call() -> None:
                        async with AsyncMeteredClient(
                            base_url=upstream_url, meter=meter, api_key=UPSTREAM
                        ) as aclient:
                            await aclient.chat.completions.create(model=MODEL, messages=HELLO)
                            errors.append(repr(aclient))

                    asyncio.run(async_call())
                    errors += [repr(client), repr(meter), str(vars(client.chat.completions))]
                    assert meter.flush(timeout=30)
                    assert meter.stats().stored == 5
                assert {r.headers["authorization"] for r in mock.requests} == {f"Bearer {UPSTREAM}"}

                # A store that is down: the events wait in the spool, which is searched below.
                down = f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/x"
                spooled = Meter(down, spool_dir=tmp_path / "s2")
                with MeteredClient(base_url=upstream_url, meter=spooled, api_key=UPSTREAM) as c2:
                    c2.chat.completions.create(model=MODEL, messages=HELLO)
                    with pytest.raises(UpstreamError) as info:
                        c2.chat.completions.create(
                            model=MODEL,
                            messages=HELLO,
                            extra_headers={"X-Mock-Behavior": "bad_request"},
                        )
                    errors += [str(info.value), repr(c2), repr(spooled)]
                spool_bytes = b"".join(p.read_bytes() for p in (tmp_path / "s2").glob("*"))
                assert spool_bytes.count(b"\n") == 2  # both calls are in the spool
                spooled.close(timeout=0)

            compared.clear()
            assert call(
                "GET", "/v1/events", headers={"Authorization": f"Bearer {reader}"}
            ).is_success
            read_hash = hashlib.sha256(reader.encode()).hexdigest()
            assert (read_hash, read_hash) in compared  # stored hash vs the hash of the key given
            call("POST", "/v1/rollup")
            call("GET", "/v1/alerts")
            call("GET", "/v1/events")
            call("GET", "/v1/usage/weekly")
            call("GET", "/v1/teams/search/summary")
            call("GET", "/openapi.json")
            compared.clear()
            assert call("GET", "/v1/prices").is_success
            assert (ADMIN.encode(), ADMIN.encode()) in compared  # METER_ADMIN_KEY, constant time
    finally:
        server.close()
        receiver.close()
        engine.dispose()

    assert receiver.deliveries  # the test delivery and the alerts were sent (signed)
    errors += [repr(settings), str(settings), settings.model_dump_json(), repr(get_settings())]
    logs = "\n".join(all_logs_at_debug.lines)
    assert "meter" in logs and "httpx" in logs  # the capture did see the flow
    database = b"".join(
        p.read_bytes() for p in tmp_path.glob("secrets.db*")
    )  # the file and its WAL
    with make_engine(f"sqlite:///{db_path}").connect() as conn:
        hashes = set(conn.exec_driver_sql("SELECT key_hash FROM api_keys").scalars())
    assert hashes == {hashlib.sha256(k.encode()).hexdigest() for k in (ingest, reader)}

    for secret in (UPSTREAM, ADMIN, ingest, reader):
        where = {
            "logs": secret in logs,
            "answers": any(secret in a for a in answers),
            "errors and reprs": any(secret in e for e in errors),
            "database": secret.encode() in database,
            "spool": secret.encode() in spool_bytes,
        }
        assert where == dict.fromkeys(where, False), secret
    for secret in (WEBHOOK, WEBHOOK2):
        assert secret not in logs
        assert not any(secret in a for a in answers)
        assert not any(secret in e for e in errors)
    # Stored, as signing needs it, and only the latest one.
    assert WEBHOOK2.encode() in database and WEBHOOK.encode() not in database
