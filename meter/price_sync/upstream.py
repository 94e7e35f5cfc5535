"""`GET {METER_UPSTREAM_BASE_URL}/models`: the provider's catalogue, read exactly.

Numbers in the body are parsed as Decimal (a price given as a JSON number is never a float);
every failure is one CatalogueUnavailable naming what went wrong.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from meter._exceptions import CatalogueUnavailable
from meter.settings import Settings

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
MAX_BYTES = 64 * 1024 * 1024  # OpenRouter's full list is a few MB


def models_url(settings: Settings) -> str:
    return f"{settings.upstream_base_url.rstrip('/')}/models"


def fetch_catalogue(settings: Settings, client: httpx.Client | None = None) -> dict[str, Any]:
    """The catalogue as JSON, with `OPENROUTER_API_KEY` as bearer when it is set."""
    url = models_url(settings)
    headers = {"Accept": "application/json"}
    if settings.openrouter_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.openrouter_api_key.get_secret_value()}"
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT)
    try:
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise CatalogueUnavailable(
                    f"{url} answered HTTP {response.status_code}: {_snippet(response.text)}",
                    response.status_code,
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise CatalogueUnavailable(f"{url}: the catalogue is over {MAX_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise CatalogueUnavailable(f"cannot read {url}: {exc or type(exc).__name__}") from exc
    finally:
        if own:
            http.close()
    try:
        doc = json.loads(bytes(body), parse_float=Decimal)
    except ValueError as exc:
        raise CatalogueUnavailable(f"{url} did not answer JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise CatalogueUnavailable(f"{url} did not answer a catalogue (an object with `data`)")
    return doc


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")
