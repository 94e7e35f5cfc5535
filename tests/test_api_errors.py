"""The edges of the API: 413, 422 for any bad input, 503 without a database, the last-resort
500, unknown query parameters, offline /docs, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.settings import Settings

MIB = 1024 * 1024
ADMIN = "admin-key-for-edge-tests-0123456789"


@pytest.fixture
def client(db: Database, tmp_path: Path) -> Iterator[TestClient]:
    with db.engine.begin() as conn:
        _, key, _ = create_key(conn, "admin", None, None)
    settings = Settings(spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings, db, scheduler=False)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_a_9_mib_body_gets_413(client: TestClient) -> None:
    body = b'{"events": [' + b" " * (9 * MIB) + b"]}"
    r = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "8 MiB" in r.json()["detail"]
    # A route that takes a JSON body the FastAPI way is limited the same.
    r = client.post("/v1/prices", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_a_streamed_body_is_cut_off_at_8_mib_without_reading_it_all(db: Database) -> None:
    """No Content-Length (chunked upload): the limit is counted while the body arrives."""
    app = create_app(Settings(admin_key=SecretStr(ADMIN)), db, scheduler=False)
    chunks_sent = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal chunks_sent
        chunks_sent += 1
        return {"type": "http.request", "body": b" " * MIB, "more_body": chunks_sent < 64}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            (b"authorization", f"Bearer {ADMIN}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert chunks_sent == 9  # 9 MiB read out of 64: it stopped as soon as 8 MiB was passed


def test_deeply_nested_json_is_a_422_not_a_crash(client: TestClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/events", "/v1/prices", "/v1/keys"):
        r = client.post(path, content=deep, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["body"]
    nested_tag = {"events": [{"tags": {"a": json.loads("[" * 100 + "]" * 100)}}]}
    r = client.post("/v1/events", json=nested_tag)
    assert r.status_code == 422
    assert ["body", "events", 0, "tags", "a"] in [e["loc"] for e in r.json()["detail"]]


def test_bodies_that_are_not_json_are_422(client: TestClient) -> None:
    for body in (b"\xff\xfe\x00", b"nope", b'{"role": "read"'):
        for path in ("/v1/events", "/v1/keys"):
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (path, body, r.text)
    r = client.post(
        "/v1/keys", content=b'{"role": "\\ud800"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422


def test_unknown_query_parameters_are_422_everywhere(client: TestClient) -> None:
    for path in ("/v1/events", "/v1/prices", "/v1/keys", "/healthz", "/metrics"):
        r = client.get(path, params={"limitt": "5"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "limitt"]
        assert r.json()["message"] == "limitt: unknown query parameter"
    assert client.get("/v1/events", params={"limit": "5"}).status_code == 200


def test_absurd_numbers_are_422_on_every_route(client: TestClient) -> None:
    huge_limit = {"scope": "global", "weekly_limit_usd": "1e999999"}
    assert client.post("/v1/budgets", json=huge_limit).status_code == 422
    assert client.get("/v1/budgets/100000000000000000000").status_code in (404, 422)
    price = {"model": "m", "input_per_million_usd": "1e999999", "output_per_million_usd": "1"}
    assert client.post("/v1/prices", json=price).status_code == 422


def test_text_the_database_cannot_hold_is_422_naming_where_it_was(client: TestClient) -> None:
    r = client.get("/v1/events", params={"user": "a\x00b"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "user"]
    # Routes that do not check it themselves: PostgreSQL refuses NUL, the handler names it.
    for path, loc in (
        ("/v1/teams/a%00b/summary", ["path", "team"]),
        ("/v1/usage/weekly?team=a%00b", ["query", "team"]),
    ):
        r = client.get(path)
        assert r.status_code in (200, 403, 422), (path, r.text)
        if r.status_code == 422:
            assert r.json()["detail"][0]["loc"] == loc, r.text


def _unreachable(backend: str, tmp_path: Path) -> Database:
    if backend == "sqlite":
        folder = tmp_path / "a-directory.db"
        folder.mkdir()
        engine = make_engine(f"sqlite:///{folder}")
    else:
        # Nothing listens on port 1 of the loopback interface: refused at once.
        engine = make_engine(
            "postgresql+psycopg://postgres@127.0.0.1:1/meter", connect_args={"connect_timeout": 2}
        )
    return Database(engine=engine, tz=ZoneInfo("UTC"))


def test_an_unreachable_database_is_503(backend: str, tmp_path: Path) -> None:
    db = _unreachable(backend, tmp_path)
    settings = Settings(admin_key=SecretStr(ADMIN))
    event = {
        "id": "019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1b",
        "occurred_at": "2026-11-24T12:00:00Z",
        "model": "m",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }
    try:
        with TestClient(create_app(settings, db, scheduler=False)) as c:
            c.headers["Authorization"] = f"Bearer {ADMIN}"
            for r in (
                c.get("/v1/events"),
                c.post("/v1/events", json={"events": [event]}),
                c.get("/v1/prices"),
                c.get("/v1/keys"),
                c.get("/v1/keys", headers={"Authorization": "Bearer some-stored-key"}),
            ):
                assert r.status_code == 503, r.text
                assert r.json() == {"detail": "database unreachable; retry later"}
            # Monitoring keeps answering when the database does not.
            assert c.get("/metrics").status_code == 200
    finally:
        db.dispose()


def test_the_last_resort_is_a_logged_500_without_internals(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = client.app

    @app.get("/boom", include_in_schema=False)  # type: ignore[attr-defined]
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = c.get("/boom")
    assert r.status_code == 500
    assert "secret" not in r.text
    assert "RuntimeError: secret internal detail" in caplog.text


def test_docs_work_offline(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        assert "text/html" in r.headers["content-type"]
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
        urls += re.findall(r"""url:\s*["']([^"']+)["']""", r.text)
        assert urls, r.text
        assert not [u for u in urls if "//" in u], urls  # nothing from another host
        assert "cdn" not in r.text.lower() and "googleapis" not in r.text
        for url in urls:
            if url.startswith("/docs/assets/"):
                asset = client.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 500
    assert client.get("/docs/assets/../../settings.py").status_code == 404
    assert client.get("/docs/assets/README.md").status_code == 404


def test_openapi_has_examples_and_the_bearer_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ingest = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert ingest["example"]["events"][0]["model"] == "mistralai/mistral-7b-instruct-v0.1"
    assert "cost_usd" not in ingest["schema"]["properties"]["events"]["items"]["properties"]
    price = spec["components"]["schemas"]["PriceIn"]
    assert price["examples"][0]["input_per_million_usd"] == "0.11"
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_metrics_exposition(client: TestClient, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "segment-1").write_bytes(b"x" * 1234)
    event = {
        "id": "019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1c",
        "occurred_at": "2026-11-24T12:00:00Z",
        "model": "m",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "user": "alice-the-user",
        "team": "team-secret",
    }
    client.post("/v1/events", json={"events": [event]})
    r = client.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "meter_spool_depth_bytes 1234.0" in text
    assert re.search(r"^meter_events_ingested_total \d+\.0$", text, re.M)
    assert "meter_rollup_duration_seconds_bucket" in text
    assert "alice-the-user" not in text and "team-secret" not in text
    assert not re.search(r"^meter_\w+\{[^}]*(team|user)=", text, re.M)
