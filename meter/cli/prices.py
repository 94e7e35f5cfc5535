"""`meter prices ...`: the effective-dated price book."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from meter._exceptions import InvalidPrice
from meter.cli._app import app, console, database, fail, friendly_errors
from meter.db.prices import PriceExists, add_price, list_prices, reprice
from meter.events import format_timestamp, parse_timestamp
from meter.money import format_decimal
from meter.pricing import Price, make_price, parse_openrouter_catalogue

prices_app = typer.Typer(help="List, set and import model prices.", no_args_is_help=True)
app.add_typer(prices_app, name="prices")


def _when(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise fail(f"--from: {exc}") from None


@prices_app.command("list")
@friendly_errors
def list_cmd(
    model: str | None = typer.Option(None, help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every price version, oldest first per model (USD per 1M tokens)."""
    db = database()
    with db.engine.connect() as conn:
        prices = list_prices(conn, model)
    if as_json:
        typer.echo(json.dumps({"prices": [price_json(p) for p in prices]}, indent=2))
        return
    table = Table("model", "input $/1M", "output $/1M", "effective from", "context")
    for p in prices:
        table.add_row(
            p.model,
            format_decimal(p.input_per_million_usd),
            format_decimal(p.output_per_million_usd),
            format_timestamp(p.effective_from),
            str(p.context_length or ""),
        )
    console.print(table)


def price_json(p: Price) -> dict[str, object]:
    return {
        "model": p.model,
        "input_per_million_usd": format_decimal(p.input_per_million_usd),
        "output_per_million_usd": format_decimal(p.output_per_million_usd),
        "effective_from": format_timestamp(p.effective_from),
        "context_length": p.context_length,
    }


@prices_app.command("set")
@friendly_errors
def set_cmd(
    model: str = typer.Argument(..., help="Model id, e.g. mistralai/mistral-7b-instruct-v0.1"),
    input_price: str = typer.Option(..., "--input", help="USD per 1M input tokens, e.g. 0.11"),
    output_price: str = typer.Option(..., "--output", help="USD per 1M output tokens"),
    effective_from: str | None = typer.Option(
        None, "--from", help="RFC 3339 time it takes effect (default: now)"
    ),
    context_length: int | None = typer.Option(None, help="The model's context length in tokens"),
) -> None:
    """Add a price version. Events already priced keep their cost."""
    price = make_price(model, input_price, output_price, _when(effective_from), context_length)
    db = database()
    try:
        with db.engine.begin() as conn:
            add_price(conn, price)
    except PriceExists as exc:
        raise fail(str(exc)) from None
    console.print(
        f"{model}: ${format_decimal(price.input_per_million_usd)} in / "
        f"${format_decimal(price.output_per_million_usd)} out per 1M tokens "
        f"from {format_timestamp(price.effective_from)}. "
        "Run `meter prices reprice` to price earlier unpriced events."
    )


@prices_app.command("import")
@friendly_errors
def import_cmd(
    file: str = typer.Argument(..., help="OpenRouter's models JSON (GET /api/v1/models), or -"),
    effective_from: str | None = typer.Option(None, "--from", help="When they take effect"),
) -> None:
    """Import OpenRouter's catalogue: new or changed prices become new versions."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        doc = json.loads(text)
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{file} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise fail(f"{file}: expected an object with a `data` list")
    entries = parse_openrouter_catalogue(doc)
    when = _when(effective_from)
    added, unchanged, skipped = [], 0, []
    db = database()
    with db.engine.begin() as conn:  # all or nothing
        current = {p.model: p for p in list_prices(conn)}
        for entry in entries:
            if entry.skipped or entry.input_units is None or entry.output_units is None:
                skipped.append((entry.model, entry.skipped or "no price"))
                continue
            latest = current.get(entry.model)
            if (
                latest is not None
                and latest.input_units == entry.input_units
                and latest.output_units == entry.output_units
            ):
                unchanged += 1
                continue
            price = Price(
                entry.model, entry.input_units, entry.output_units, when, entry.context_length
            )
            try:
                add_price(conn, price)
            except PriceExists as exc:
                raise InvalidPrice(str(exc), "effective_from") from None
            added.append(price)
            current[entry.model] = price
    console.print(f"added {len(added)}, unchanged {unchanged}, skipped {len(skipped)}")
    if skipped:
        table = Table("skipped model", "reason")
        for model, reason in skipped:
            table.add_row(model, reason)
        console.print(table)


@prices_app.command("reprice")
@friendly_errors
def reprice_cmd() -> None:
    """Price unpriced events that a price now covers; their weeks are rolled up again."""
    db = database()
    with db.engine.begin() as conn:
        result = reprice(conn)
    weeks = ", ".join(result.weeks) if result.weeks else "none"
    console.print(f"priced {result.events} events; weeks queued for roll-up: {weeks}")
