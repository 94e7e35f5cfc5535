"""Schemathesis against the app's own /openapi.json, every operation, as an admin: no 5xx.

Positive and negative cases for each operation, bounded (METER_FUZZ_EXAMPLES per operation,
mode and backend), derandomized so that a failure reproduces. Webhook URLs it invents are never
contacted outside loopback: conftest sets METER_WEBHOOK_ALLOW_HOSTS for the whole session; the
upstream (price sync) is a local mock.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from meter.api.app import create_app
from meter.db.session import Database
from meter.mock_upstream import running
from meter.settings import Settings

ADMIN = "schemathesis-admin-key-0123456789"
MAX_EXAMPLES = int(os.environ.get("METER_FUZZ_EXAMPLES", "20"))


def test_no_operation_answers_a_5xx(db: Database) -> None:
    assert os.environ["METER_WEBHOOK_ALLOW_HOSTS"] == "127.0.0.1,localhost"
    # The price sync reads the upstream's models list: a local one, never the network.
    with running() as (_, upstream_url):
        fuzz_every_operation(db, upstream_url)


def fuzz_every_operation(db: Database, upstream_url: str) -> None:
    settings_ = Settings(admin_key=SecretStr(ADMIN), upstream_base_url=upstream_url)
    app = create_app(settings_, db, scheduler=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # events, prices, keys, metrics, healthz at least

    failures: list[str] = []
    calls: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                calls.append(case.operation.label)
                response = case.call(headers=auth)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                check()
            except Unsatisfiable:
                # Nothing to get wrong (e.g. GET /healthz has no parameters): no negative case.
                assert mode == GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # report every failing operation, not just the first
                failures.append(f"{operation.label} ({mode.value}): {str(exc).strip()[:2000]}")
    assert not failures, "\n\n".join(failures)
    assert len(set(calls)) == len(operations)  # every operation was called
