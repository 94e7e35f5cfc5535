"""`meter mock-upstream`: a local OpenAI-compatible upstream for demos and tests."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meter.cli._app import app, console, fail
from meter.mock_upstream import BEHAVIORS, ENV_BEHAVIOR, ENV_GENERATION_DELAY, serve

_HELP = (
    "Run a local OpenAI-compatible upstream (OpenRouter-flavoured) with realistic usage.\n\n"
    "It answers POST /v1/chat/completions, /chat/completions, /v1/completions and /completions, "
    "and GET /v1/models (the seed model in OpenRouter's catalogue shape), "
    "streaming or not, with deterministic text and usage counted with the Mistral v1 tokenizer "
    "when mistral-common is installed; usage.cost is at the model's price in the models list "
    "(the seed price for a model it does not list at a fixed price). Point a client at "
    "base_url=http://127.0.0.1:8001/v1 (any API key). Requests seen: GET /mock/requests.\n\n"
    "Make it misbehave per request with the header X-Mock-Behavior (comma-separated; NAME:N "
    f"only on the first N identical requests), or for every request with --behavior or "
    f"{ENV_BEHAVIOR}: "
    "rate_limit (429 + Retry-After; X-Mock-Retry-After sets the seconds), "
    "server_error (500), bad_gateway (502), unavailable (503), bad_request (400), "
    "payment_required (402), "
    "midstream_error (an error chunk under HTTP 200 after some text), "
    "cut (the connection drops mid-body), no_usage, "
    "usage_in_last_chunk (usage on a chunk that still has choices), "
    "whitespace (blank lines before a JSON body), slow (X-Mock-Delay-Ms between chunks), "
    "fragmented (CRLF, data: without a space, a few bytes per write), "
    "malformed_usage, not_utf8, truncated (JSON cut in half).\n\n"
    "GET /v1/generation?id=GEN answers like OpenRouter's generation lookup for every completion "
    "it served (id = the response id; streams the client aborted count in full): 404 for "
    "--generation-delay seconds after it was served, then its native token counts and "
    "total_cost (the same as its usage.cost); unknown ids stay 404.\n\n"
    "--catalogue FILE replaces the models list GET /v1/models and /models answer (a JSON "
    "object with a `data` list, e.g. to try `meter prices sync`), and so the prices it "
    "charges: list a model above meter's price to see a drift in `meter report reconcile`."
)


@app.command("mock-upstream", help=_HELP)
def mock_upstream(
    port: int = typer.Option(8001, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    behavior: str | None = typer.Option(
        None, help=f"Misbehave on every request (default: ${ENV_BEHAVIOR}); see above."
    ),
    generation_delay: float | None = typer.Option(
        None,
        min=0,
        envvar=ENV_GENERATION_DELAY,
        help="Seconds a generation answers 404 after it was served (default 0), as "
        "OpenRouter's lookups do.",
    ),
    catalogue_file: Path | None = typer.Option(
        None, "--catalogue", help="JSON answered by GET /models (default: the seed model)."
    ),
) -> None:
    catalogue = _read_catalogue(catalogue_file) if catalogue_file else None
    if behavior:
        unknown = [
            b.partition(":")[0]
            for b in behavior.split(",")
            if b.strip() and b.partition(":")[0].strip() not in BEHAVIORS
        ]
        if unknown:
            raise fail(f"unknown behavior {', '.join(unknown)}; known: {', '.join(BEHAVIORS)}")
    console.print(
        f"mock upstream on http://{host}:{port}/v1 (behavior: {behavior or 'normal'}"
        + (f", generations found {generation_delay:g} s after" if generation_delay else "")
        + ")",
        highlight=False,
    )
    serve(host, port, behavior, generation_delay, catalogue)


def _read_catalogue(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"--catalogue: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise fail(f"--catalogue: {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise fail(f"--catalogue: {path} must hold an object with a `data` list")
    return doc
