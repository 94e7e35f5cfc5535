"""The `meter` command line. Each command group lives in its own module."""

from __future__ import annotations

from meter.cli import (  # noqa: F401  (each registers its commands)
    audit,
    budgets,
    db,
    demo,
    export,
    keys,
    mock_upstream,
    prices,
    purge,
    reconcile,
    report,
    rollup,
    serve,
    spool,
    tags,
    users,
)
from meter.cli._app import app


def main() -> None:
    app()
