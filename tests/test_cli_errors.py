"""The CLI's errors: one line, naming what is wrong, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from meter.cli import app
from tests.recorder_helpers import free_port


def run(args: list[str], **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "error: bad database URL 'not a url': expected sqlite:///path.db"),
        ("mysql://x", "error: unsupported database 'mysql': meter runs on SQLite or PostgreSQL"),
        ("sqlite:////nonexistent-dir/x.db", "/nonexistent-dir does not exist"),
    ],
)
def test_a_bad_database_url_is_one_line(url: str, message: str):
    code, out = run(["serve"], METER_DATABASE_URL=url)
    assert code == 2
    assert message in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_an_unreachable_database_is_one_line():
    port = free_port()
    code, out = run(
        ["db", "upgrade"], METER_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x"
    )
    assert code == 2
    assert out.startswith(
        f"error: cannot reach the database postgresql+psycopg://postgres@127.0.0.1:{port}/x"
    )
    assert len(out.strip().splitlines()) == 1


def test_bad_settings_name_the_variable():
    code, out = run(["rollup"], METER_TIMEZONE="Mars/Olympus")
    assert code == 2
    assert out.strip() == (
        "error: bad configuration: METER_TIMEZONE: unknown timezone 'Mars/Olympus': "
        "use an IANA name such as Europe/Paris"
    )


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path):
    code, out = run(
        ["serve", "--host", "0.0.0.0", "--port", str(free_port())],
        METER_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}",
    )
    assert code == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in out


def test_a_database_of_another_timezone_is_refused(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert run(["db", "upgrade"], METER_DATABASE_URL=url, METER_TIMEZONE="UTC")[0] == 0
    code, out = run(["prices", "list"], METER_DATABASE_URL=url, METER_TIMEZONE="Europe/Paris")
    assert code == 2
    assert "this database counts weeks in UTC, but METER_TIMEZONE is Europe/Paris" in out
