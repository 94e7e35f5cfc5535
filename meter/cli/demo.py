"""`meter demo`: the whole flow offline, in a temporary directory that is removed at the end.

A mock upstream, the meter server and a webhook receiver run in this process on free loopback
ports. Metered calls (streaming and not, several teams and users) go through MeteredClient to the
mock; the roll-up runs; a team budget is created under its first threshold, more traffic pushes
the team over it, and the roll-up fires the alert, which the server delivers to the receiver.
The mock bills every call (`usage.cost`) at meter's price except on the large model, where its
catalogue lists 10 % more: the reconciliation shows that drift, on that model only.
Nothing needs the network or an API key; the webhook host allowance is set for this process only.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import typer
import uvicorn
from fastapi import FastAPI
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meter.cli._app import app, console, friendly_errors
from meter.money import format_decimal, render_usd
from meter.pricing import SEED_MODEL
from meter.weeks import load_timezone, week_of

if TYPE_CHECKING:
    from meter import Meter

DEMO_MODEL = "demo/large-model"  # a made-up model with a made-up price, to give real-ish bills
DEMO_INPUT_UNITS = 3_000_000  # $3 per 1M input tokens (units of 1e-12 USD per token)
DEMO_OUTPUT_UNITS = 15_000_000  # $15 per 1M output tokens
PROVIDER_MARKUP = Decimal("1.1")  # what the mock upstream bills for DEMO_MODEL, against meter
TEAMS: dict[str, tuple[str, ...]] = {
    "search": ("alice", "bob", "org/carol"),
    "ads": ("dave", "erin"),
    "support": ("frank", "grace"),
}
BUDGET_TEAM = "search"
HISTORY_WEEKS = 11
START_TIMEOUT_S = 10.0
DELIVERY_TIMEOUT_S = 30.0
CLIENT_KEY = "demo-key-for-the-mock-upstream"  # the mock accepts any key

TASKS = (
    "Summarise this support ticket in two sentences.",
    "Suggest three search queries for a customer looking for running shoes.",
    "Write a short, friendly reply to a customer asking about their refund.",
    "Classify the sentiment of this product review.",
    "Draft an ad headline for a winter sale on hiking gear.",
    "Explain what a token is to a new engineer.",
    "Translate 'the order has shipped' into French and German.",
)
CONTEXT = (
    "Context: our catalogue lists outdoor equipment, from tents and sleeping bags to trail "
    "shoes, with prices, sizes and stock per warehouse. Customers write in several languages. "
)


# -- the parts the demo runs --------------------------------------------------------------------


@contextlib.contextmanager
def serving(asgi_app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi_app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="meter-demo-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("the meter server did not start")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class WebhookReceiver:
    """A tiny webhook endpoint on loopback that answers 204 and counts what it got."""

    received: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet: the demo prints its own summary
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meter-demo-webhook", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/budget"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def provider_catalogue() -> dict[str, Any]:
    """The mock upstream's models list, which is also what it bills by: the seed model at its
    price, and DEMO_MODEL 10 % above meter's price for it."""
    from meter.mock_upstream import MODELS_ENTRY

    def per_token(units: int) -> str:  # units of 1e-12 USD a token -> USD a token, as text
        return render_usd(int(Decimal(units) * PROVIDER_MARKUP)) or "0"  # exact: 3.3M units

    return {"data": [dict(MODELS_ENTRY), {
        "id": DEMO_MODEL,
        "name": "Demo: Large Model",
        "context_length": 32_768,
        "pricing": {"prompt": per_token(DEMO_INPUT_UNITS),
                    "completion": per_token(DEMO_OUTPUT_UNITS)},
    }]}  # fmt: skip


# -- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    team: str
    user: str
    model: str
    prompt: str
    max_tokens: int
    stream: bool


def plan_calls(count: int, rng: random.Random, teams: dict[str, tuple[str, ...]]) -> list[Call]:
    """`count` calls spread over the teams' users: a third streamed, a mix of a cheap and a large
    model, prompts of different lengths (the long ones carry a repeated context)."""
    people = [(team, user) for team, users in teams.items() for user in users]
    calls = []
    for i in range(count):
        team, user = people[i % len(people)]
        large = rng.random() < 0.6
        context = CONTEXT * (rng.randint(60, 180) if large else rng.randint(0, 6))
        calls.append(
            Call(
                team=team,
                user=user,
                model=DEMO_MODEL if large else SEED_MODEL,
                prompt=f"{context}{rng.choice(TASKS)} (request {i})",
                max_tokens=rng.randint(24, 64),
                stream=i % 3 == 0,
            )
        )
    return calls


def send_calls(
    calls: list[Call],
    base_url: str,
    meter: Meter,
    advance: Callable[[], None],
) -> None:
    """Each call through a MeteredClient to the mock upstream; streams read to the end."""
    from meter.client import MeteredClient

    clients: dict[tuple[str, str], MeteredClient] = {}
    with httpx.Client(trust_env=False) as http:  # loopback only: never a proxy
        for call in calls:
            client = clients.get((call.team, call.user))
            if client is None:
                client = clients[(call.team, call.user)] = MeteredClient(
                    api_key=CLIENT_KEY,
                    base_url=base_url,
                    meter=meter,
                    user=call.user,
                    team=call.team,
                    app_name="meter demo",
                    http_client=http,
                )
            messages = [{"role": "user", "content": call.prompt}]
            if call.stream:
                with client.chat.completions.create(
                    model=call.model, messages=messages, max_tokens=call.max_tokens, stream=True
                ) as stream:
                    for _chunk in stream:
                        pass
            else:
                client.chat.completions.create(
                    model=call.model, messages=messages, max_tokens=call.max_tokens
                )
            advance()


def record_history(
    meter: Meter, now: datetime, rng: random.Random, advance: Callable[[], None]
) -> int:
    """Usage of the previous weeks, recorded with `Meter.record` (calls made elsewhere), growing
    week over week so the chart has a shape."""
    recorded = 0
    tz = meter.settings.timezone
    for weeks_ago in range(HISTORY_WEEKS, 0, -1):
        start, _ = week_of(now - timedelta(days=7 * weeks_ago), load_timezone(tz)).bounds(
            load_timezone(tz)
        )
        growth = 1 + (HISTORY_WEEKS - weeks_ago) * 0.12
        for team, users in TEAMS.items():
            for user in users:
                for _ in range(3):
                    meter.record(
                        model=DEMO_MODEL if rng.random() < 0.6 else SEED_MODEL,
                        prompt_tokens=int(rng.randint(60_000, 160_000) * growth),
                        completion_tokens=int(rng.randint(1_500, 6_000) * growth),
                        user=user,
                        team=team,
                        occurred_at=start + timedelta(hours=rng.randint(1, 160)),
                    )
                    recorded += 1
        advance()
    return recorded


# -- the command --------------------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _ceil_cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_CEILING)


@app.command()
@friendly_errors
def demo(
    exit_after: bool = typer.Option(
        False, "--exit", help="End after the summary instead of serving until Ctrl-C."
    ),
    calls: int = typer.Option(300, min=30, max=5000, help="How many metered LLM calls to send."),
) -> None:
    """The whole flow offline: mock upstream, metered traffic, roll-up, budget alert, dashboard.

    Runs on a temporary SQLite database (removed at the end), needs no network and no API key.
    """
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="meter-demo-"))
    try:
        with contextlib.ExitStack() as stack:
            _run(workdir, stack, calls, exit_after)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print("[green]demo stopped; its temporary files are removed[/]")


def _run(workdir: Path, stack: contextlib.ExitStack, calls: int, exit_after: bool) -> None:
    from meter import Meter
    from meter.api.app import create_app
    from meter.db.prices import add_price
    from meter.db.session import open_database
    from meter.keys import create_key
    from meter.mock_upstream import MockUpstream, running
    from meter.pricing import Price
    from meter.rollup import run_rollup
    from meter.settings import get_settings

    console.rule("[bold]meter demo")
    # Settings for this process only: the environment (and any real database) is left alone.
    settings = get_settings(
        database_url=f"sqlite:///{workdir / 'meter.db'}",
        spool_dir=workdir / "spool",
        admin_key=None,
        upstream_base_url="http://127.0.0.1:9/v1",  # unused: every client gets the mock's URL
        webhook_allow_private=True,
        webhook_allow_hosts="127.0.0.1",
    )
    db = open_database(settings, upgrade=True)
    stack.callback(db.dispose)
    with db.engine.begin() as conn:
        add_price(
            conn,
            Price(
                DEMO_MODEL,
                input_units=DEMO_INPUT_UNITS,
                output_units=DEMO_OUTPUT_UNITS,
                effective_from=datetime(2023, 1, 1, tzinfo=UTC),
                context_length=32_768,
            ),
        )
        _, admin_key, _ = create_key(conn, "admin", None, "demo admin")
        _, ads_key, _ = create_key(conn, "read", "ads", "demo read, team ads")
    console.print(f"database    {workdir / 'meter.db'} (temporary)")

    receiver = stack.enter_context(WebhookReceiver())
    _mock, upstream_url = stack.enter_context(running(MockUpstream(catalogue=provider_catalogue())))
    server_url = stack.enter_context(serving(create_app(settings, db, scheduler=False)))
    console.print(f"upstream    {upstream_url} (mock, OpenAI-compatible)")
    console.print(f"meter       {server_url}")
    console.print(f"webhook     {receiver.url}")

    meter = Meter(settings=settings)
    stack.callback(meter.close)
    api = stack.enter_context(
        httpx.Client(
            base_url=server_url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=60,
            trust_env=False,
        )
    )
    rng = random.Random(7)
    now = datetime.now(UTC)
    everyone = plan_calls(calls - calls // 5, rng, TEAMS)
    busy = plan_calls(calls // 5, rng, {BUDGET_TEAM: TEAMS[BUDGET_TEAM]})

    with _progress() as progress:
        history = progress.add_task("history (Meter.record)", total=HISTORY_WEEKS)
        record_history(meter, now, rng, lambda: progress.advance(history))
        live = progress.add_task("metered calls", total=len(everyone))
        send_calls(everyone, upstream_url, meter, lambda: progress.advance(live))
    _flush(meter)
    first = run_rollup(db, wait_seconds=30)
    console.print(
        f"roll-up     {first.events_rolled_up} events, weeks {first.week_labels[0]}.."
        f"{first.week_labels[-1]}"
    )

    # A budget the team is under for now (45% used): the next burst crosses its thresholds.
    summary = api.get(f"/v1/teams/{BUDGET_TEAM}/summary").raise_for_status().json()
    spent = Decimal(summary["weeks"][-1]["cost_usd"])
    limit = _ceil_cents(spent / Decimal("0.45"))
    budget = (
        api.post(
            "/v1/budgets",
            json={
                "scope": "team",
                "subject": BUDGET_TEAM,
                "weekly_limit_usd": str(limit),
                "thresholds": ["0.5", "0.8", "1"],
                "webhook_url": receiver.url,
                "webhook_secret": "demo-webhook-secret",
            },
        )
        .raise_for_status()
        .json()
    )
    console.print(
        f"budget      #{budget['id']}: team {BUDGET_TEAM}, ${limit} a week, "
        f"${budget['spend_usd']} spent so far"
    )
    with _progress() as progress:
        burst = progress.add_task(f"busy hour for {BUDGET_TEAM}", total=len(busy))
        send_calls(busy, upstream_url, meter, lambda: progress.advance(burst))
    _flush(meter)
    second = run_rollup(db, wait_seconds=30)
    console.print(f"roll-up     {second.events_rolled_up} events, {second.alerts_fired} alert(s)")
    alerts = _wait_for_deliveries(api)

    _print_summary(api, alerts)
    _print_reconciliation(api)
    console.print(
        Panel.fit(
            f"[bold]Dashboard[/]  {server_url}/\n"
            f"admin key   [bold]{admin_key}[/]\n"
            f"read key    {ads_key}  (team ads only)\n"
            f"drift       {server_url}/reconciliation  (the provider bills {DEMO_MODEL} "
            "10 % above meter's price)\n"
            "            or, while the demo serves: meter report reconcile, with\n"
            f"            METER_DATABASE_URL={settings.database_url}",
            title="log in",
            border_style="green",
        )
    )
    if exit_after:
        return
    console.print("serving until Ctrl-C ...")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def _flush(meter: Meter) -> None:
    if not meter.flush(timeout=60):
        raise RuntimeError("the demo's events did not reach the database within 60 s")


def _wait_for_deliveries(api: httpx.Client) -> list[dict[str, Any]]:
    """The alerts, once none is pending any more (bounded: the server delivers within seconds)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    with console.status("delivering the alert webhooks ..."):
        while True:
            alerts: list[dict[str, Any]] = api.get("/v1/alerts").raise_for_status().json()["alerts"]
            pending = [a for a in alerts if a["delivery"]["status"] == "pending"]
            if not pending or time.monotonic() > deadline:
                return alerts
            time.sleep(0.2)


def _print_summary(api: httpx.Client, alerts: list[dict[str, Any]]) -> None:
    usage = api.get("/v1/usage/weekly", params={"group_by": "team"}).raise_for_status().json()
    per_team: dict[str, list[Any]] = {}
    for row in usage["rows"]:
        totals = per_team.setdefault(row["team"] or "(none)", [0, 0, Decimal(0)])
        totals[0] += row["requests"]
        totals[1] += row["prompt_tokens"] + row["completion_tokens"]
        totals[2] += Decimal(row["cost_usd"] or 0)
    table = Table(title="Usage, last 12 weeks (from GET /v1/usage/weekly)")
    table.add_column("team")
    table.add_column("requests", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("cost (USD)", justify="right")
    for team in sorted(per_team):
        requests, tokens, cost = per_team[team]
        table.add_row(team, f"{requests:,}", f"{tokens:,}", f"{cost:f}")
    console.print(table)
    alert_table = Table(title="Alerts (from GET /v1/alerts)")
    for column in ("budget", "alert", "spend", "limit", "delivery", "attempts"):
        alert_table.add_column(column)
    for a in reversed(alerts):
        kind = a["type"].removeprefix("budget.")
        alert_table.add_row(
            f"#{a['budget_id']}",
            f"{kind} {a['threshold']}" if a["threshold"] else kind,
            a["spend_usd"],
            a["limit_usd"],
            a["delivery"]["status"],
            str(a["delivery"]["attempts"]),
        )
    console.print(alert_table)


def _print_reconciliation(api: httpx.Client) -> None:
    """meter's cost against the provider's per model over the last 12 weeks: the API's rows for
    each week, added up exactly (only the live calls carry a provider cost)."""
    rows = api.get("/v1/reconciliation").raise_for_status().json()["rows"]
    per_model: dict[str, list[Any]] = {}
    for row in rows:
        totals = per_model.setdefault(row["model"], [0, Decimal(0), Decimal(0), Decimal(0)])
        totals[0] += row["events_with_provider_cost"]
        totals[1] += Decimal(row["cost_usd"])
        totals[2] += Decimal(row["provider_cost_usd"])
        totals[3] += Decimal(row["drift_usd"])
    table = Table(title="Provider truth, last 12 weeks (from GET /v1/reconciliation)")
    table.add_column("model")
    for column in ("with provider cost", "meter (USD)", "provider (USD)", "drift (USD)"):
        table.add_column(column, justify="right", no_wrap=True)
    for model in sorted(per_model):
        events, cost, provider, drift = per_model[model]
        table.add_row(
            model,
            f"{events:,}",
            format_decimal(cost),
            format_decimal(provider),
            f"[bold red]{format_decimal(drift)}[/]" if drift else "0",
        )
    console.print(table)
