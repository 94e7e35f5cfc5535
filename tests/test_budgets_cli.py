"""`meter budgets list|create` against a real database."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meter.cli import app
from meter.cli._app import console


@pytest.fixture
def run(db_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METER_DATABASE_URL", db_url)
    monkeypatch.setenv("METER_WEBHOOK_ALLOW_PRIVATE", "1")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_create_then_list(run):
    r = run(
        "budgets", "create", "--scope", "team", "--subject", "search", "--limit", "50",
        "--threshold", "0.5", "--threshold", "0.9", "--webhook-url", "http://127.0.0.1:9/h",
        "--webhook-secret", "cli-secret-77", "--enforce",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "1"
    r = run("budgets", "create", "--scope", "global", "--limit", "1000")
    assert r.exit_code == 0 and r.stdout.strip() == "2"
    r = run("budgets", "list", "--json")
    assert r.exit_code == 0
    budgets = json.loads(r.stdout)["budgets"]
    assert [
        (b["id"], b["scope"], b["subject"], b["weekly_limit_usd"], b["thresholds"], b["enforce"])
        for b in budgets
    ] == [
        (1, "team", "search", "50", ["0.5", "0.9"], True),
        (2, "global", None, "1000", ["0.5", "0.8", "1"], False),
    ]
    assert budgets[0]["has_webhook_secret"] is True
    assert (budgets[0]["spend_usd"], budgets[0]["ratio"]) == ("0", "0")
    wide = console.width
    console.width = 200  # the test runner's terminal is narrow: no wrapping inside cells
    try:
        r = run("budgets", "list")
    finally:
        console.width = wide
    assert r.exit_code == 0
    assert "search" in r.stdout and "(everything)" in r.stdout and "signed" in r.stdout
    assert "cli-secret-77" not in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "team", "--limit", "5"], "--subject: a team budget needs a subject"),
        (["--scope", "global", "--subject", "x", "--limit", "5"], "--subject: a global budget"),
        (["--scope", "team", "--subject", "s", "--limit", "0"], "--limit: must be greater than 0"),
        (["--scope", "team", "--subject", "s", "--limit", "5", "--threshold", "11"], "--threshold"),
        (["--scope", "team", "--subject", "s", "--limit", "5", "--webhook-url", "ftp://x"],
         "--webhook-url: must be an http:// or https:// URL"),
    ],
)  # fmt: skip
def test_bad_options_name_the_option(run, args: list[str], message: str):
    r = run("budgets", "create", *args)
    assert r.exit_code == 2
    assert message in " ".join(r.stderr.split())
