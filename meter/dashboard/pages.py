"""Rendering the dashboard's pages: Jinja2 templates shipped in the package, autoescaped, with
headers that keep every page self-contained (no script, nothing fetched from another origin)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from meter import __version__
from meter.dashboard.display import count, drift, exact, moment, money, percent

# The pages need no script at all, and load only their own stylesheet: a CSP this strict also
# proves, in every browser, that nothing is fetched from a CDN.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show spend: not for shared caches or the back button
}

_DEFAULTS: dict[str, Any] = {
    "principal": None,
    "open_mode": False,
    "teams": [],
    "current_team": None,
    "csrf": "",
    "as_of": None,
    "error": None,
}


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("meter.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a missing value is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        money=money,
        exact=exact,
        drift=drift,
        count=count,
        percent=percent,
        moment=moment,
        version=__version__,
    )
    return env


def render(template: str, context: Mapping[str, Any], status_code: int = 200) -> HTMLResponse:
    html = environment().get_template(template).render({**_DEFAULTS, **context})
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


@cache
def stylesheet() -> str:
    return resources.files("meter.dashboard").joinpath("static/dashboard.css").read_text("utf-8")


def stylesheet_response() -> Response:
    return Response(
        stylesheet(),
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
