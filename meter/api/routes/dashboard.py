"""The dashboard's HTTP side: `GET /` (the login page or a team), `POST /login`, `POST /logout`,
`GET /users/{user}`, `GET /billing`, `GET /reconciliation`, `GET /audit` (admins) and the
stylesheet. What the pages
show is built in meter.dashboard."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from meter._exceptions import InvalidRequest
from meter.api.deps import DbDep, SettingsDep
from meter.dashboard import session, views
from meter.dashboard.pages import render, stylesheet_response
from meter.db.session import Database
from meter.keys import Principal, any_keys, principal_for_key
from meter.settings import Settings

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    open_mode: bool  # no key exists: loopback only, everyone is an admin (see meter serve)


def current_viewer(request: Request, db: Database, settings: Settings) -> Viewer | None:
    if not any_keys(db, settings):
        return Viewer(Principal(role="admin"), open_mode=True)
    principal = session.session_principal(request, db, settings)
    return Viewer(principal, open_mode=False) if principal is not None else None


def _with_csrf(
    request: Request,
    template: str,
    chrome: dict[str, object] | None = None,
    *,
    status_code: int = 200,
    **context: object,
) -> Response:
    """A page with a form: it carries the token the `meter_csrf` cookie must match."""
    token, fresh = session.csrf_token(request)
    response = render(template, {**(chrome or {}), **context, "csrf": token}, status_code)
    if fresh:
        session.set_csrf_cookie(response, request, token)
    return response


def login_page(request: Request, status_code: int = 200, error: str | None = None) -> Response:
    response = _with_csrf(request, "login.html", status_code=status_code, error=error)
    if status_code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if request.cookies.get(session.SESSION_COOKIE):  # expired, or its key was revoked
        session.clear_session_cookie(response, request)
    return response


def _message(
    request: Request, status_code: int, heading: str, message: str, chrome: dict[str, object]
) -> Response:
    """A page that only says something: a refusal, a bad query, nothing to show yet."""
    return _with_csrf(
        request,
        "message.html",
        status_code=status_code,
        heading=heading,
        message=message,
        chrome=chrome,
    )


def _to_home() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


def _chrome(viewer: Viewer, teams: list[str], current: str | None) -> dict[str, object]:
    return {
        "principal": viewer.principal,
        "open_mode": viewer.open_mode,
        "teams": teams,
        "current_team": current,
    }


@router.get("/")
def home(request: Request, db: DbDep, settings: SettingsDep, team: str | None = None) -> Response:
    """A team's dashboard (the key's own team, or the one picked); the login page without a
    session."""
    viewer = current_viewer(request, db, settings)
    if viewer is None:
        return login_page(request)
    scope = viewer.principal.team
    if scope is not None and team is not None and team != scope:
        return _message(
            request,
            403,
            "Not your team",
            f"This key is scoped to team {scope}; it cannot see team {team}.",
            _chrome(viewer, [scope], scope),
        )
    teams = views.visible_teams(db, scope)
    chosen = team or scope or (teams[0] if teams else None)
    if chosen is None:
        return _message(
            request,
            200,
            "No usage yet",
            "No team has usage in the last 12 weeks. Send metered calls, run "
            "`meter rollup` (or wait for the scheduler), then reload.",
            _chrome(viewer, teams, None),
        )
    if chosen not in teams:
        teams = sorted([*teams, chosen])
    page = views.team_page(db, chosen)
    return _with_csrf(
        request,
        "team.html",
        page=page,
        as_of=page.summary.as_of,
        chrome=_chrome(viewer, teams, chosen),
    )


@router.get("/users/{user:path}")
def user_bill(
    user: str, request: Request, db: DbDep, settings: SettingsDep, week: str | None = None
) -> Response:
    """One user's weekly bill by model, with the API's CSV of the same report."""
    viewer = current_viewer(request, db, settings)
    if viewer is None:
        return _to_home()
    scope = viewer.principal.team
    teams = views.visible_teams(db, scope)
    try:
        page = views.user_page(db, user, week, scope)
    except InvalidRequest as exc:
        return _message(
            request,
            422,
            "Bad week",
            str(exc),
            _chrome(viewer, teams, None),
        )
    csv_url = f"/v1/reports/users/{quote(user, safe='/')}?format=csv&week={page.report.week}"
    return _with_csrf(
        request,
        "user.html",
        page=page,
        csv_url=csv_url,
        csv_name=f"meter-{user.replace('/', '_')}-{page.report.week}.csv",
        as_of=page.report.as_of,
        chrome=_chrome(viewer, teams, scope),
    )


@router.get("/billing")
def billing(
    request: Request, db: DbDep, settings: SettingsDep, month: str | None = None
) -> Response:
    """Every user's bill for a month (default this month), with the API's CSV of it."""
    viewer = current_viewer(request, db, settings)
    if viewer is None:
        return _to_home()
    scope = viewer.principal.team
    teams = views.visible_teams(db, scope)
    try:
        page = views.billing_page(db, month, scope)
    except InvalidRequest as exc:
        return _message(
            request,
            422,
            "Bad month",
            str(exc),
            _chrome(viewer, teams, None),
        )
    return _with_csrf(
        request,
        "billing.html",
        page=page,
        csv_url=f"/v1/reports/billing?month={page.month}&format=csv",
        csv_name=f"meter-billing-{page.month}.csv",
        as_of=page.report.as_of,
        chrome=_chrome(viewer, teams, scope),
    )


@router.get("/reconciliation")
def reconciliation(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    period: str | None = None,
    at: str | None = None,
) -> Response:
    """meter's cost against the provider's by model, for a day, week or month (default this
    week): the rows of `GET /v1/reconciliation`, a drift marked."""
    viewer = current_viewer(request, db, settings)
    if viewer is None:
        return _to_home()
    scope = viewer.principal.team
    teams = views.visible_teams(db, scope)
    try:
        page = views.reconciliation_page(db, period, at, scope)
    except InvalidRequest as exc:
        return _message(
            request,
            422,
            "Bad period",
            str(exc),
            _chrome(viewer, teams, None),
        )
    return _with_csrf(
        request,
        "reconciliation.html",
        page=page,
        as_of=page.report.as_of,
        chrome=_chrome(viewer, teams, scope),
    )


AUDIT_ENTRIES = 50


@router.get("/audit")
def audit_log(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """The latest entries of the audit log, for admins (others: 403): who changed what."""
    import json

    from meter.audit.repository import list_entries
    from meter.reports.service import rollup_as_of

    viewer = current_viewer(request, db, settings)
    if viewer is None:
        return _to_home()
    scope = viewer.principal.team
    if viewer.principal.role != "admin":
        return _message(
            request,
            403,
            "Admins only",
            "The audit log is for admin keys. Log in with an admin key to see it.",
            _chrome(viewer, views.visible_teams(db, scope), scope),
        )
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        entries = list_entries(conn, limit=AUDIT_ENTRIES)
        as_of = rollup_as_of(conn)
    rows = [
        {
            "id": e.id,
            "at": e.at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "actor": e.actor,
            "action": e.action,
            "target": e.target or "",
            "details": json.dumps(e.details, sort_keys=True, ensure_ascii=False)
            if e.details
            else "",
        }
        for e in entries
    ]
    return _with_csrf(
        request,
        "audit.html",
        entries=rows,
        as_of=as_of,
        limit=AUDIT_ENTRIES,
        chrome=_chrome(viewer, views.visible_teams(db, scope), scope),
    )


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each); anything else yields no fields."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


@router.post("/login")
async def login(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    form = await _form(request)
    if not session.form_allowed(request, form.get("csrf", "")):
        return login_page(
            request, 403, "This form expired or came from another site: reload and try again."
        )
    key = form.get("key", "").strip()
    # The key lookup is blocking database I/O: off the event loop.
    principal = await asyncio.to_thread(principal_for_key, db, settings, key) if key else None
    if principal is None:
        if not await asyncio.to_thread(any_keys, db, settings):
            return _to_home()  # open mode: nothing to log in to
        return login_page(request, 401, "That key is not valid. Check it, or ask an admin.")
    if not principal.can("read"):
        return login_page(
            request,
            403,
            f"This is an {principal.role} key: it can send events but not read them. "
            "Log in with a read or admin key.",
        )
    response = _to_home()
    session.set_session_cookie(response, request, session.issue_session(principal, key))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    if not session.form_allowed(request, form.get("csrf", "")):
        return render(
            "message.html",
            {
                "heading": "Not logged out",
                "message": "This form expired or came from another site: reload and try again.",
            },
            403,
        )
    response = _to_home()
    session.clear_session_cookie(response, request)
    return response


@router.get("/dashboard.css")
def stylesheet() -> Response:
    return stylesheet_response()
