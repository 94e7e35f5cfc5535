"""The root Typer app, shared by every command module, and the CLI's error handling."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from pydantic import ValidationError
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
    except ValidationError as exc:
        raise fail(f"bad configuration: {describe_settings_error(exc)}") from None


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming the environment variables at fault, not pydantic's report."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        variable = "OPENROUTER_API_KEY" if name == "openrouter_api_key" else f"METER_{name.upper()}"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{variable}: {message}")
    return "; ".join(parts)


def database(upgrade: bool = True) -> Database:
    """The configured database; SQLite and the CLI bring the schema to head themselves."""
    return open_database(settings(), upgrade=upgrade)
