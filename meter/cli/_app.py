"""The root Typer app, shared by every command module, and the CLI's error handling."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from meter._exceptions import MeterError
from meter.db.session import Database, open_database
from meter.settings import Settings, get_settings

app = typer.Typer(
    name="meter",
    help="Meter the tokens and money your LLM calls cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: a long line (a path, a URL) stays one line when piped or captured, not cut at 80;
# and a table piped to a file or a pager gets room for full model names (it is only as wide as
# its content). A terminal keeps its own width.
_PIPED_WIDTH = 160
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err_console = Console(
    stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH
)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn meter's own errors into one red line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MeterError as exc:
            raise fail(str(exc)) from None
        except ValueError as exc:
            raise fail(str(exc)) from None

    return wrapper


def settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise fail(f"bad configuration: {exc}") from None


def database(upgrade: bool = True) -> Database:
    """The configured database; SQLite and the CLI bring the schema to head themselves."""
    return open_database(settings(), upgrade=upgrade)
