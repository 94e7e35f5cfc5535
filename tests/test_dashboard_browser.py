"""The dashboard in a real browser: Debian's chromium, headless, driven by playwright, against a
real meter server on a free loopback port (SQLite and PostgreSQL). Skips loudly without chromium,
fails under CI=true."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.cli.demo import serving
from meter.db.prices import add_price
from meter.db.session import open_database
from meter.pricing import Price
from meter.rollup import run_rollup
from meter.settings import get_settings
from meter.weeks import now_utc
from tests.conftest import IN_CI
from tests.factories import event
from tests.test_rollup_helpers import store

pytestmark = pytest.mark.browser

LARGE = "acme/large"  # $2.50 / $10 per 1M tokens; the provider bills 10 % more
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        problem = "Debian's chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: the browser tests must run)")
        pytest.skip(f"SKIPPING BROWSER TESTS: {problem}")


@pytest.fixture
def server(db_url: str) -> Iterator[dict[str, Any]]:
    """A seeded meter server: two teams over several weeks, rolled up, with a budget; a third
    team's calls this week carry the provider's cost, 10 % above meter's on one model."""
    settings = get_settings(database_url=db_url)
    db = open_database(settings, upgrade=False)
    with db.engine.begin() as conn:
        add_price(conn, Price(LARGE, 2_500_000, 10_000_000, datetime(2026, 1, 1, tzinfo=UTC)))
    now = now_utc()
    events = [
        # meter: 1000 x $2.50/1M + 100 x $10/1M = $0.0035; the provider: $0.00385
        *(event(occurred_at=now, user="dora", team="research", model=LARGE, prompt_tokens=1000,
                completion_tokens=100, provider_cost_usd="0.00385") for _ in range(2)),
        # the provider agrees: 1000 x $0.11/1M + 500 x $0.19/1M = $0.000205
        event(occurred_at=now, user="dora", team="research", prompt_tokens=1000,
              completion_tokens=500, provider_cost_usd="0.000205"),
    ]  # fmt: skip
    for weeks_ago in range(6):
        at = now - timedelta(days=7 * weeks_ago)
        events += [
            event(
                occurred_at=at,
                user="alice",
                team="search",
                prompt_tokens=10_000_000 * (6 - weeks_ago),
                completion_tokens=1_234_567,
            ),
            event(
                occurred_at=at,
                user="org/bob",
                team="search",
                prompt_tokens=3_000_000,
                completion_tokens=0,
            ),
            event(
                occurred_at=at,
                user="carol",
                team="ads",
                prompt_tokens=5_000_000,
                completion_tokens=5_000_000,
            ),
        ]
    store(db, events)
    run_rollup(db)
    with db.engine.begin() as conn:
        admin = create_key(conn, "admin", None, "admin")[1]
        ads = create_key(conn, "read", "ads", "ads")[1]
    try:
        with serving(create_app(settings, db, scheduler=False)) as url:
            api = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {admin}"}, trust_env=False
            )
            budget = api.post(
                "/v1/budgets",
                json={"scope": "team", "subject": "search", "weekly_limit_usd": "10"},
            )
            assert budget.status_code == 201
            monthly = api.post(
                "/v1/budgets",
                json={"scope": "team", "subject": "search", "period": "month", "limit_usd": "40"},
            )
            assert monthly.status_code == 201
            yield {"url": url, "admin": admin, "ads": ads, "api": api}
            api.close()
    finally:
        db.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/")
    assert page.locator("h1").inner_text() == "Log in to meter"
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#weekly-chart svg")


def test_the_dashboard_in_chromium(server: dict[str, Any], browser: Any, backend: str) -> None:
    url, api = server["url"], server["api"]
    summary = api.get("/v1/teams/search/summary").json()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    log_in(page, url, server["admin"])
    page.goto(url + "/?team=search")

    bars = page.locator("#weekly-chart svg rect.bar")
    assert bars.count() == 12
    drawn = [bars.nth(i).get_attribute("data-cost-usd") for i in range(12)]
    assert drawn == [w["cost_usd"] for w in summary["weeks"]]
    assert [bars.nth(i).get_attribute("data-week") for i in range(12)] == [
        w["week"] for w in summary["weeks"]
    ]
    heights = [float(bars.nth(i).get_attribute("height")) for i in range(12)]
    assert heights[-1] > heights[-2] > 0 and heights[0] == 0  # drawn to scale; empty weeks flat

    this_week = page.locator("#this-week .money")
    assert this_week.get_attribute("title") == summary["weeks"][-1]["cost_usd"]
    # (60M x 0.11 + 1,234,567 x 0.19 + 3M x 0.11) / 1M = 7.16456773
    assert this_week.inner_text() == "$7.16"
    budget = page.locator(f"#budget-{summary['budgets'][0]['id']}")
    assert budget.get_attribute("data-ratio") == summary["budgets"][0]["ratio"]
    assert budget.locator("line.mark").count() == 3

    # this week and this month by day: the API's days, summing exactly to its week and month
    week = summary["weeks"][-1]
    days = page.locator("#week-days tbody tr")
    assert days.count() == 7
    assert days.nth(0).get_attribute("data-day") == week["week_start"]
    week_cells = page.locator("#week-days .money")
    assert sum(Decimal(week_cells.nth(i).get_attribute("title")) for i in range(7)) == Decimal(
        week["cost_usd"]
    )
    month_label = page.locator("#month-days tbody tr").nth(0).get_attribute("data-day")[:7]
    month = api.get(
        "/v1/usage", params={"period": "month", "team": "search", "group_by": "",
                             "from": month_label, "to": month_label},
    ).json()["rows"]  # fmt: skip
    month_usd = month[0]["cost_usd"] if month else "0"
    assert page.locator("#this-month .money").get_attribute("title") == month_usd
    cells = page.locator("#month-days .money")
    assert sum(Decimal(cells.nth(i).get_attribute("title")) for i in range(cells.count())) == (
        Decimal(month_usd)
    )
    # month to date against the monthly budget
    monthly = next(b for b in summary["budgets"] if b["period"] == month_label)
    gauge = page.locator(f"#budget-{monthly['id']}")
    assert gauge.get_attribute("data-period") == month_label
    assert gauge.get_attribute("data-ratio") == monthly["ratio"]
    assert monthly["spend_usd"] == month_usd
    assert "monthly limit" in gauge.inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-team-{backend}.png"), full_page=True)

    # the month's billing table, and its CSV link: the API's billing report
    page.click("a.billing-link")
    page.wait_for_selector("#billing")
    billing = api.get("/v1/reports/billing", params={"month": month_label}).json()
    assert (
        page.locator("#billing-total .money").get_attribute("title") == (billing["total_cost_usd"])
    )
    assert page.locator("#billing tbody tr").count() == len(billing["users"])
    href = page.locator("#billing-csv").get_attribute("href")
    by_api = api.get("/v1/reports/billing", params={"month": month_label, "format": "csv"})
    assert context.request.get(url + href).text() == by_api.text
    assert by_api.text.startswith("from,to,timezone,team,user,model,requests,")
    page.screenshot(path=str(ARTIFACTS / f"dashboard-billing-{backend}.png"), full_page=True)
    page.goto(url + "/?team=search")

    # the user page's CSV link returns the API's CSV for that user, authenticated by the cookie
    page.click("#top-users a:text('org/bob')")
    page.wait_for_selector("#bill")
    href = page.locator("#csv").get_attribute("href")
    # the browser context's own cookies (the page's CSP forbids fetch() from a script)
    csv_in_browser = context.request.get(url + href).text()
    week = summary["weeks"][-1]["week"]
    by_api = api.get("/v1/reports/users/org/bob", params={"format": "csv", "week": week})
    assert csv_in_browser == by_api.text
    assert csv_in_browser.splitlines()[1] == (
        "mistralai/mistral-7b-instruct-v0.1,1,3000000,0,0,0.33,0,0.33"
    )
    with page.expect_download() as download:
        page.click("#csv")
    assert Path(download.value.path()).read_bytes() == by_api.content
    page.screenshot(path=str(ARTIFACTS / f"dashboard-user-{backend}.png"), full_page=True)

    # provider truth this week: the drift of the one model the provider bills 10 % more
    page.click("a.reconciliation-link")
    page.wait_for_selector("#reconciliation")
    week = summary["weeks"][-1]["week"]
    rows = api.get("/v1/reconciliation", params={"from": week, "to": week}).json()["rows"]
    assert [(r["model"], r["drift_usd"]) for r in rows] == [
        (LARGE, "-0.0007"),
        ("mistralai/mistral-7b-instruct-v0.1", "0"),
    ]
    assert page.locator("nav.weeks b").inner_text() == week
    large = page.locator(f'#reconciliation tr[data-model="{LARGE}"]')
    assert large.get_attribute("class") == "drifting"
    assert large.locator(".drift").inner_text() == "-$0.0007"
    assert large.locator(".drift").get_attribute("class") == "drift under"
    assert large.locator(".drift").get_attribute("data-usd") == rows[0]["drift_usd"]
    assert large.locator("td.cost").inner_text() == "$0.007"
    assert large.locator("td.provider").inner_text() == "$0.0077"
    seed = page.locator('#reconciliation tr[data-model="mistralai/mistral-7b-instruct-v0.1"]')
    assert seed.get_attribute("class") is None
    assert seed.locator(".drift").inner_text() == "$0"
    assert page.locator("#total-drift .drift").inner_text() == "-$0.0007"
    assert "on acme/large" in page.locator("#total-drift").inner_text()
    # the drift stands out: its colour is not the zero drift's
    colour = "el => getComputedStyle(el).color"
    assert large.locator(".drift").evaluate(colour) != seed.locator(".drift").evaluate(colour)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-reconciliation-{backend}.png"), full_page=True)
    page.click("nav.kinds a:text('Month')")
    page.wait_for_selector("nav.kinds a.active:text('Month')")
    assert page.locator(f'#reconciliation tr[data-model="{LARGE}"] .drift').inner_text() == (
        "-$0.0007"
    )
    context.close()


def test_a_team_scoped_key_sees_only_its_team_in_chromium(
    server: dict[str, Any], browser: Any
) -> None:
    url = server["url"]
    page = browser.new_page()
    log_in(page, url, server["ads"])
    assert page.locator("nav.teams a").all_inner_texts() == ["ads"]
    assert page.locator(".team-name").inner_text() == "ads"
    response = page.goto(url + "/?team=search")
    assert response.status == 403
    assert "cannot see team search" in page.locator(".error").inner_text()
    # provider truth: team ads's own calls only, none of which carried a provider cost
    page.goto(url + "/reconciliation")
    assert page.locator("#reconciliation tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.model)"
    ) == ["mistralai/mistral-7b-instruct-v0.1"]
    assert page.locator("#total-drift .drift").inner_text() == "$0"
    page.close()
