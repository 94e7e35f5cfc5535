"""The `meter` command line. Each command group lives in its own module."""

from __future__ import annotations

from meter.cli import db, prices, serve  # noqa: F401  (they register their commands)
from meter.cli._app import app


def main() -> None:
    app()
