"""The dashboard's server-rendered pages through the real app: login, cookies, CSRF, scoping,
no external URL, and money to the cent with the exact value on hover."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.dashboard.chart import nice_step
from meter.dashboard.display import drift, exact, percent, to_cents
from meter.db.prices import add_price
from meter.db.session import Database
from meter.pricing import Price
from meter.rollup import run_rollup
from meter.settings import get_settings
from meter.weeks import now_utc
from tests.factories import event
from tests.test_rollup_helpers import store


def seeded(db: Database) -> dict[str, str]:
    """Two teams over three weeks, rolled up; returns keys by name."""
    now = now_utc()
    store(
        db,
        [
            # 123,456,789 x $0.11 / 1M = $13.58024679 exactly: shown as $13.58
            event(
                occurred_at=now,
                user="alice",
                team="search",
                prompt_tokens=123_456_789,
                completion_tokens=0,
            ),
            event(occurred_at=now, user="org/bob", team="search", prompt_tokens=1_000),
            event(occurred_at=now - timedelta(days=7), user="alice", team="search"),
            event(occurred_at=now - timedelta(days=14), user="alice", team="search"),
            event(occurred_at=now, user="carol", team="ads", prompt_tokens=2_000_000),
        ],
    )
    run_rollup(db)
    keys = {}
    with db.engine.begin() as conn:
        for name, role, team in (
            ("admin", "admin", None),
            ("read", "read", None),
            ("ads", "read", "ads"),
            ("ingest", "ingest", None),
        ):
            keys[name] = create_key(conn, role, team, name)[1]
    return keys


def app_client(db: Database, base_url: str = "http://testserver") -> TestClient:
    settings = get_settings(timezone=db.tz.key)
    return TestClient(create_app(settings, db, scheduler=False), base_url=base_url)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def log_in(client: TestClient, key: str) -> object:
    page = client.get("/")
    return client.post(
        "/login", data={"key": key, "csrf": csrf_of(page.text)}, follow_redirects=False
    )


def cookie_header(response: object, name: str) -> str:
    headers = response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
    found = [h for h in headers if h.startswith(f"{name}=")]
    assert len(found) == 1, headers
    return str(found[0])


def test_without_a_session_the_login_page_asks_for_a_key(db: Database) -> None:
    seeded(db)
    with app_client(db) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert '<input id="key" name="key" type="password"' in page.text
    assert "13.58" not in page.text  # no numbers before login
    csrf = cookie_header(page, "meter_csrf").lower()
    assert "httponly" in csrf and "samesite=strict" in csrf


def test_a_read_key_logs_in_with_an_httponly_samesite_cookie(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        response = log_in(client, keys["read"])
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = cookie_header(response, "meter_session")
        assert keys["read"] not in cookie  # a signed session, never the key itself
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
        assert "secure" not in flags  # plain http: a Secure cookie would never come back
        page = client.get("/")
    assert page.status_code == 200
    assert 'Team <span class="team-name">ads</span>' in page.text  # first team, alphabetically
    assert 'href="/?team=search"' in page.text


def test_over_https_the_session_cookie_is_secure(db: Database) -> None:
    keys = seeded(db)
    with app_client(db, base_url="https://testserver") as client:
        response = log_in(client, keys["admin"])
    assert "secure" in [
        p.strip().lower() for p in cookie_header(response, "meter_session").split(";")
    ]


def test_a_bad_key_gets_the_login_page_with_401(db: Database) -> None:
    seeded(db)
    with app_client(db) as client:
        response = log_in(client, "mtr_not-a-key")
        assert response.status_code == 401
        assert "That key is not valid" in response.text
        assert "meter_session=" not in response.headers.get("set-cookie", "")
        assert client.get("/").text.count('name="key"') == 1  # still logged out


def test_an_ingest_key_is_refused_with_a_clear_message(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        response = log_in(client, keys["ingest"])
    assert response.status_code == 403
    assert "This is an ingest key: it can send events but not read them." in response.text
    assert "meter_session=" not in response.headers.get("set-cookie", "")


def test_login_without_the_form_token_or_from_another_origin_is_refused(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        token = csrf_of(client.get("/").text)
        no_token = client.post("/login", data={"key": keys["admin"]}, follow_redirects=False)
        other_site = client.post(
            "/login",
            data={"key": keys["admin"], "csrf": token},
            headers={"Origin": "http://evil.example"},
            follow_redirects=False,
        )
        same_site = client.post(
            "/login",
            data={"key": keys["admin"], "csrf": token},
            headers={"Origin": "http://testserver"},
            follow_redirects=False,
        )
    assert no_token.status_code == 403 and other_site.status_code == 403
    assert "came from another site" in other_site.text
    assert same_site.status_code == 303


def test_logout_clears_the_session(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["admin"])
        page = client.get("/")
        assert "Log out" in page.text
        response = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
        assert response.status_code == 303
        assert 'meter_session=""' in cookie_header(response, "meter_session")
        assert 'name="key"' in client.get("/").text


def test_revoking_the_key_ends_its_sessions(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["read"])
        assert "Team <span" in client.get("/").text
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        listed = client.get("/v1/keys", headers=admin).json()["keys"]
        read_id = next(k["id"] for k in listed if k["name"] == "read")
        assert client.delete(f"/v1/keys/{read_id}", headers=admin).status_code == 204
        assert 'name="key"' in client.get("/").text


def test_open_mode_shows_the_dashboard_without_login(db: Database) -> None:
    store(db, [event(occurred_at=now_utc(), user="alice", team="search")])
    run_rollup(db)
    with app_client(db) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert "open mode" in page.text and "Team <span" in page.text


def test_money_is_shown_to_the_cent_with_the_exact_value_on_hover(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["admin"])
        team = client.get("/?team=search").text
        summary = client.get(
            "/v1/teams/search/summary", headers={"Authorization": f"Bearer {keys['admin']}"}
        ).json()
    this_week = summary["weeks"][-1]["cost_usd"]
    assert this_week == "13.58035698"
    assert '<span class="money" title="13.58035698" data-usd="13.58035698">$13.58</span>' in team
    # alice's own line: exactly 13.58024679, also to the cent
    assert '<span class="money" title="13.58024679" data-usd="13.58024679">$13.58</span>' in team
    # the chart's bars carry the API's exact weekly amounts, oldest first
    bars = re.findall(r'<rect class="bar[^"]*"[^>]*data-cost-usd="([^"]*)"', team)
    assert bars == [w["cost_usd"] for w in summary["weeks"]]
    assert len(bars) == 12


def test_no_page_refers_to_another_origin(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        pages = [client.get("/").text]
        log_in(client, keys["admin"])
        pages += [
            client.get(p).text
            for p in ("/", "/?team=ads", "/users/org/bob", "/reconciliation", "/x/y")
        ]
        css = client.get("/dashboard.css")
        csp = client.get("/").headers["content-security-policy"]
    assert css.status_code == 200 and "url(" not in css.text and "@import" not in css.text
    assert "default-src 'none'" in csp
    for html in pages:
        assert "http://" not in html and "https://" not in html
        assert not re.search(r'(?:src|href|action)="//', html)
        assert "<script" not in html


def test_a_team_scoped_key_sees_only_its_team(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["ads"])
        own = client.get("/")
        other = client.get("/?team=search")
    assert 'Team <span class="team-name">ads</span>' in own.text
    assert "?team=search" not in own.text and "13.58" not in own.text
    assert other.status_code == 403
    assert "This key is scoped to team ads; it cannot see team search." in other.text


def test_the_session_cookie_reads_the_csv_api_but_never_writes(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["read"])
        user_page = client.get("/users/org/bob").text
        link = re.search(r'id="csv" href="([^"]+)"', user_page)
        assert link is not None
        url = link.group(1).replace("&amp;", "&")
        by_cookie = client.get(url)
        by_key = client.get(url, headers={"Authorization": f"Bearer {keys['read']}"})
        write = client.post("/v1/rollup")
    assert url.startswith("/v1/reports/users/org/bob?format=csv&week=")
    assert by_cookie.status_code == 200
    assert by_cookie.text == by_key.text
    assert by_cookie.text.splitlines()[1] == (
        "mistralai/mistral-7b-instruct-v0.1,1,1000,1,0,0.00011,0.00000019,0.00011019"
    )
    assert write.status_code == 401


def test_the_user_page_is_the_user_report(db: Database) -> None:
    keys = seeded(db)
    with app_client(db) as client:
        log_in(client, keys["admin"])
        page = client.get("/users/alice")
        bad = client.get("/users/alice?week=2025-W53")
    assert page.status_code == 200
    assert 'id="total"><span class="money" title="13.58024679"' in page.text
    assert bad.status_code == 422 and "2025-W53" in bad.text


@pytest.mark.parametrize(
    ("exact", "shown"),
    [
        ("12.3456789", "$12.35"),
        ("12.345", "$12.35"),
        ("0.004", "<$0.01"),
        ("0.005", "$0.01"),
        ("0", "$0.00"),
        ("1234567.891", "$1,234,567.89"),
        ("-2.5", "-$2.50"),
    ],
)
def test_money_to_the_cent(exact: str, shown: str) -> None:
    assert to_cents(exact) == shown


def test_percent_and_axis_steps() -> None:
    assert percent("0.5") == "50%"
    assert percent("0.823456") == "82.3%"
    assert nice_step(Decimal("13.58")) == 5
    assert nice_step(Decimal("0.003")) == Decimal("0.001")
    assert nice_step(Decimal(0)) == Decimal("0.25")


# -- provider truth: the reconciliation page ----------------------------------------------------

LARGE = "acme/large"
SEED = "mistralai/mistral-7b-instruct-v0.1"


def reconciled(db: Database) -> dict[str, str]:
    """Week 2026-W48 (the factory's day, 2026-11-24): the provider agrees with meter on the seed
    model and bills team search 10 % more on the large one; a cancelled call of team ads waits
    for its generation lookup. Returns keys by name."""
    with db.engine.begin() as conn:
        # $2.50 / $10 per 1M tokens: 1000 in + 100 out cost $0.0035
        add_price(conn, Price(LARGE, 2_500_000, 10_000_000, datetime(2026, 1, 1, tzinfo=UTC)))
    store(
        db,
        [
            # 1000 x $0.11/1M + 500 x $0.19/1M = $0.000205, as the provider says
            *(event(team="search", user="alice", prompt_tokens=1000, completion_tokens=500,
                    provider_cost_usd="0.000205") for _ in range(3)),
            *(event(team="search", user="alice", model=LARGE, prompt_tokens=1000,
                    completion_tokens=100, provider_cost_usd="0.00385") for _ in range(2)),
            event(team="ads", user="carol", model=LARGE, prompt_tokens=1000,
                  completion_tokens=100, provider_cost_usd="0.0035"),
            event(team="ads", user="carol", status="cancelled", usage_source="estimated",
                  generation_id="gen-ads"),
        ],
    )  # fmt: skip
    run_rollup(db)
    with db.engine.begin() as conn:
        return {
            "admin": create_key(conn, "admin", None, "admin")[1],
            "ads": create_key(conn, "read", "ads", "ads")[1],
        }


def table_rows(html: str) -> list[tuple[str, bool, list[str]]]:
    """(model, marked as drifting, cell texts) of each row of the reconciliation table."""
    rows = re.findall(r'<tr data-model="([^"]*)"( class="drifting")?>(.*?)</tr>', html, re.S)
    return [
        (model, bool(marked), [re.sub(r"<[^>]+>", "", c).strip() for c in
                               re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)])
        for model, marked, body in rows
    ]  # fmt: skip


def test_the_reconciliation_page_shows_the_drift_per_model(db: Database) -> None:
    keys = reconciled(db)
    with app_client(db) as client:
        log_in(client, keys["admin"])
        page = client.get("/reconciliation?period=week&at=2026-W48")
        api_rows = client.get(
            "/v1/reconciliation",
            params={"from": "2026-W48", "to": "2026-W48"},
            headers={"Authorization": f"Bearer {keys['admin']}"},
        ).json()["rows"]
    assert page.status_code == 200
    html = page.text
    assert table_rows(html) == [
        (LARGE, True, ["acme/large", "3", "3", "$0.0105", "$0.0112", "-$0.0007", "0", "0", "0"]),
        (SEED, False, [SEED, "4", "3", "$0.000615", "$0.000615", "$0", "1", "0", "1"]),
    ]
    # the API's exact strings, the drift marked and signed
    assert [(r["model"], r["drift_usd"]) for r in api_rows] == [(LARGE, "-0.0007"), (SEED, "0")]
    assert (
        '<span class="drift under" data-usd="-0.0007" '
        'title="the provider billed more than meter counts">-$0.0007</span>'
    ) in html
    assert '<span class="money exact" data-usd="0.0112">$0.0112</span>' in html
    # the period at a glance: its total drift, on which model
    tile = re.search(
        r'<div class="tile drifting" id="total-drift">(.*?)</div>\s*</div>', html, re.S
    )
    assert tile is not None and 'data-usd="-0.0007"' in tile.group(1)
    assert "on acme/large" in tile.group(1)
    total = re.search(r'id="drift-total">(.*?)</th>', html, re.S)
    assert total is not None and 'data-usd="-0.0007"' in total.group(1)
    assert '<span class="money exact" data-usd="0.011115">$0.011115</span>' in html
    assert '<span class="money exact" data-usd="0.011815">$0.011815</span>' in html
    assert re.search(r'id="lookups-pending">1<', html)
    # the period switch and the neighbours
    assert 'href="/reconciliation?period=week&amp;at=2026-W47"' in html
    assert 'href="/reconciliation?period=week&amp;at=2026-W49"' in html
    assert 'href="/reconciliation?period=month" class="active"' not in html


def test_the_reconciliation_page_by_day_and_by_month(db: Database) -> None:
    keys = reconciled(db)
    with app_client(db) as client:
        log_in(client, keys["admin"])
        day = client.get("/reconciliation?period=day&at=2026-11-24").text
        other_day = client.get("/reconciliation?period=day&at=2026-11-25").text
        month = client.get("/reconciliation?period=month&at=2026-11").text
        bad_kind = client.get("/reconciliation?period=year")
        bad_label = client.get("/reconciliation?period=week&at=2026-W99")
    expected = [(LARGE, True, "-$0.0007"), (SEED, False, "$0")]
    assert [(m, marked, cells[5]) for m, marked, cells in table_rows(day)] == expected
    assert [(m, marked, cells[5]) for m, marked, cells in table_rows(month)] == expected
    assert 'href="/reconciliation?period=month" class="active" aria-current="page"' in month
    assert "(2026-11-01 to 2026-11-30)" in month and "(2026-11-24)" in day
    assert table_rows(other_day) == [] and "No usage in 2026-11-25." in other_day
    assert bad_kind.status_code == 422 and "must be day, week or month" in bad_kind.text
    assert bad_label.status_code == 422 and "at: " in bad_label.text


def test_a_team_scoped_key_reconciles_only_its_team(db: Database) -> None:
    keys = reconciled(db)
    with app_client(db) as client:
        log_in(client, keys["ads"])
        html = client.get("/reconciliation?period=week&at=2026-W48").text
    assert table_rows(html) == [
        (LARGE, False, ["acme/large", "1", "1", "$0.0035", "$0.0035", "$0", "0", "0", "0"]),
        (SEED, False, [SEED, "1", "0", "no provider cost", "1", "0", "1"]),
    ]
    assert "Only team ads's usage is shown" in html
    assert "0.0007" not in html and "search" not in html


def test_without_a_session_the_reconciliation_page_sends_to_the_login(db: Database) -> None:
    reconciled(db)
    with app_client(db) as client:
        response = client.get("/reconciliation", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


@pytest.mark.parametrize(
    ("usd", "html"),
    [
        ("-0.0007", '<span class="drift under" data-usd="-0.0007" '
                    'title="the provider billed more than meter counts">-$0.0007</span>'),
        ("1234.5", '<span class="drift over" data-usd="1234.5" '
                   'title="meter counts more than the provider billed">+$1,234.5</span>'),
        ("0", '<span class="drift zero" data-usd="0">$0</span>'),
    ],
)  # fmt: skip
def test_a_drift_is_exact_and_signed(usd: str, html: str) -> None:
    assert drift(usd) == html


def test_exact_money_keeps_every_digit() -> None:
    assert (
        exact("0.00000011") == '<span class="money exact" data-usd="0.00000011">$0.00000011</span>'
    )
    assert exact("-12345.6") == '<span class="money exact" data-usd="-12345.6">-$12,345.6</span>'


def test_admins_see_the_latest_audit_entries_and_no_secret(db: Database) -> None:
    keys = seeded(db)
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with app_client(db) as client:
        made = client.post("/v1/keys", json={"role": "read", "name": "ci"}, headers=admin)
        assert made.status_code == 201, made.text
        budget = client.post(
            "/v1/budgets",
            json={"scope": "team", "subject": "search", "weekly_limit_usd": "5",
                  "webhook_url": "https://hooks.example.com/m", "webhook_secret": "s3cret-abc"},
            headers=admin,
        )  # fmt: skip
        assert budget.status_code == 201, budget.text
        log_in(client, keys["admin"])
        home = client.get("/")
        page = client.get("/audit")
        log_in(client, keys["read"])
        refused = client.get("/audit")
        read_home = client.get("/")
    assert 'href="/audit"' in home.text and 'href="/audit"' not in read_home.text
    assert page.status_code == 200
    rows = re.findall(r'<tr id="audit-\d+">(.*?)</tr>', page.text, re.S)
    actions = [re.search(r"<code>([a-z.]+)</code>", r).group(1) for r in rows]  # type: ignore[union-attr]
    assert actions == ["budget.create", "key.create"]  # newest first
    with db.engine.connect() as conn:
        admin_id = conn.execute(sa.text("SELECT id FROM api_keys WHERE name = 'admin'")).scalar()
    assert all(f"key:{admin_id}:admin" in r for r in rows)
    assert "s3cret-abc" not in page.text and made.json()["key"] not in page.text
    assert "&#34;has_webhook_secret&#34;: true" in page.text
    assert refused.status_code == 403 and "Admins only" in refused.text
