"""`meter prices ...`: the effective-dated price book."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from meter import audit
from meter._exceptions import InvalidPrice
from meter.cli._app import app, console, database, err_console, fail, friendly_errors, settings
from meter.db.prices import PriceExists, add_price, list_prices, reprice
from meter.events import format_timestamp, parse_timestamp
from meter.money import format_decimal
from meter.pricing import Price, make_price, parse_openrouter_catalogue

if TYPE_CHECKING:
    from meter.price_sync.schemas import PriceSyncDiff

prices_app = typer.Typer(help="List, set, import and sync model prices.", no_args_is_help=True)
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
            stored = add_price(conn, price)
            audit.record(conn, audit.CLI, "price.set", price.model, price_json(stored))
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
        details = {
            "added": [price_json(p) for p in added],
            "unchanged": unchanged,
            "skipped": len(skipped),
        }
        audit.record(conn, audit.CLI, "price.import", None, details)
    console.print(f"added {len(added)}, unchanged {unchanged}, skipped {len(skipped)}")
    if skipped:
        table = Table("skipped model", "reason")
        for model, reason in skipped:
            table.add_row(model, reason)
        console.print(table)


@prices_app.command("reprice")
@friendly_errors
def reprice_cmd() -> None:
    """Price unpriced events that a price now covers; their weeks are rolled up again.

    Audited as a long operation: `price.reprice.start`, then `.finish` in the reprice's own
    transaction (or `.abort` if it fails)."""
    db = database()
    with (
        audit.long_operation(db.engine, audit.CLI, "price.reprice") as operation,
        db.engine.begin() as conn,
    ):
        result = reprice(conn)
        operation.finish(conn, {"events": result.events, "weeks": result.weeks})
    weeks = ", ".join(result.weeks) if result.weeks else "none"
    console.print(f"priced {result.events} events; weeks queued for roll-up: {weeks}")


SYNC_IN_SYNC, SYNC_DIFFERS, SYNC_ERROR, SYNC_UPSTREAM = 0, 1, 2, 3
_SYNC_HELP = f"""Compare the upstream's models list with the price book; --apply adds the changes.

Reads GET $METER_UPSTREAM_BASE_URL/models (OPENROUTER_API_KEY as bearer when set) and prints
new models, changed prices (USD per 1M tokens, old -> new), context length changes, models no
longer listed (kept), charges meter does not price (request, web_search, image...) and entries
skipped: variable prices ("-1", kept unpriced), conditional overrides, prices finer than 1e-12
USD a token and malformed entries. Without --apply nothing is written.

--apply adds each new or changed price as a version effective now: events already priced keep
their cost, later ones get the new price (every meter serve within 5 s).

Exit codes: {SYNC_IN_SYNC} in sync, or applied; {SYNC_DIFFERS} differences to apply (without
--apply); {SYNC_ERROR} bad option, configuration or database; {SYNC_UPSTREAM} the upstream's
models list could not be read.
"""


@prices_app.command("sync", help=_SYNC_HELP)
@friendly_errors
def sync_cmd(
    model: str | None = typer.Option(None, help="Compare (and apply) only this model."),
    apply_changes: bool = typer.Option(
        False, "--apply", help="Add the new and changed prices, effective now."
    ),
    fmt: str = typer.Option("table", "--format", help="table, or json (the API's shape)."),
) -> None:
    from meter._exceptions import CatalogueUnavailable
    from meter.price_sync import fetch_catalogue, plan, sync
    from meter.price_sync.schemas import PriceSyncDiff, PriceSyncResult, audit_details
    from meter.price_sync.upstream import models_url

    if fmt not in ("table", "json"):
        raise fail(f"--format: must be table or json, not {fmt!r}")
    cfg = settings()
    db = database()
    try:
        try:
            catalogue = fetch_catalogue(cfg)
        except CatalogueUnavailable as exc:
            raise fail(str(exc), SYNC_UPSTREAM) from None
        result: PriceSyncDiff
        if apply_changes:
            with db.engine.begin() as conn:
                diff, applied = sync(conn, catalogue, model)
                audit.record(conn, audit.CLI, "price.sync", model, audit_details(applied, model))
            result = PriceSyncResult.of_applied(diff, applied, model)
        else:
            with db.engine.connect().execution_options(readonly=True) as conn:
                diff = plan(conn, catalogue, datetime.now(UTC), model)
            result = PriceSyncDiff.of(diff, model)
    except PriceExists as exc:
        raise fail(str(exc)) from None
    finally:
        db.dispose()
    if fmt == "json":
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        err_console.print(f"compared {models_url(cfg)} with the price book", highlight=False)
        _print_sync(result)
    if model is not None and not result.listed and not result.gone:
        err_console.print(
            f"[yellow]{model} is neither listed upstream nor in the price book[/]", highlight=False
        )
    if not apply_changes and (result.new or result.changed):
        raise typer.Exit(SYNC_DIFFERS)


def _print_sync(r: PriceSyncDiff) -> None:
    from meter.price_sync.schemas import PriceSyncResult

    applied = r.applied if isinstance(r, PriceSyncResult) else None
    console.print(
        f"{r.listed} listed: {len(r.new)} new, {len(r.changed)} changed, {r.unchanged} "
        f"unchanged, {len(r.skipped)} skipped; {len(r.gone)} in the book no longer listed",
        highlight=False,
    )
    if r.new:
        table = Table("new model", "input $/1M", "output $/1M", "context", title="New models")
        for n in r.new:
            table.add_row(
                n.model, n.input_per_million_usd, n.output_per_million_usd, _ctx(n.context_length)
            )
        console.print(table)
    if r.changed:
        table = Table("model", "input $/1M", "output $/1M", "context", title="Changed")
        for c in r.changed:
            table.add_row(
                c.model,
                _arrow(c.old_input_per_million_usd, c.new_input_per_million_usd),
                _arrow(c.old_output_per_million_usd, c.new_output_per_million_usd),
                _arrow(_ctx(c.old_context_length), _ctx(c.new_context_length)),
            )
        console.print(table)
    if r.gone:
        table = Table("model", "input $/1M", "output $/1M", "since", title="No longer listed")
        for g in r.gone:
            table.add_row(
                g.model, g.input_per_million_usd, g.output_per_million_usd, g.effective_from
            )
        console.print(table)
        console.print("Their prices stay in the book.")
    if r.unpriced_components:
        table = Table("model", "component", "listed $", title="Charges meter does not price")
        for u in r.unpriced_components:
            table.add_row(u.model, u.component, u.listed_price_usd)
        console.print(table)
    if r.skipped:
        table = Table("model", "skipped because", title="Skipped")
        for s in r.skipped:
            table.add_row(s.model, s.reason)
        console.print(table)
    if applied is not None:
        console.print(f"added {len(applied)} prices effective from {r.as_of}", highlight=False)
    elif r.new or r.changed:
        changes = len(r.new) + len(r.changed)
        console.print(
            f"nothing written: run `meter prices sync --apply` to add these {changes} "
            "prices effective now",
            highlight=False,
        )
    else:
        console.print("the price book is in sync: nothing to apply")


def _arrow(old: str, new: str) -> str:
    return new if old == new else f"{old} -> {new}"


def _ctx(value: int | None) -> str:
    return "" if value is None else str(value)
