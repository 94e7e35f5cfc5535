"""An application that meters its calls into a meter server loads the client and the recorder,
not the server, the CLI or the database parts; and the layers import one way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from meter.mock_upstream import MockUpstream
from tests.client_helpers import MODEL

HEAVY = ("sqlalchemy", "alembic", "fastapi", "click", "rich")
PACKAGE = Path(__file__).resolve().parent.parent / "meter"

APPLICATION = """
import json, os, sys
from meter import Meter, MeteredClient

meter = Meter(api_url="http://127.0.0.1:{dead_port}", api_key="k")  # the server is down
client = MeteredClient(api_key="k", base_url="{base_url}", meter=meter, team="search")
resp = client.chat.completions.create(model="{model}", messages=[{{"role": "user",
                                                                  "content": "Hello"}}])
print(json.dumps({{
    "usage": [resp.usage.prompt_tokens, resp.usage.completion_tokens],
    "status": resp.meter.status,
    "loaded": sorted(m for m in {heavy!r} if m in sys.modules),
    "spooled": meter.stats().spooled,
}}))
sys.stdout.flush()
# What is loaded is measured; how this process ends (a Meter whose server is down, its
# threads retrying) is not this test's subject: leave without the exit-time flush.
os._exit(0)
"""


def test_an_application_metering_into_a_server_loads_no_server_or_database_parts(
    upstream: tuple[MockUpstream, str], mock: MockUpstream
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    code = APPLICATION.format(dead_port=dead_port, base_url=upstream[1], model=MODEL, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc == {"usage": [9, 51], "status": "ok", "loaded": [], "spooled": 1}
    assert len(mock.requests) == 1


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_recorder_and_the_database_never_import_the_client() -> None:
    """client -> recorder -> database: nothing below the client reaches back up to it."""
    offenders = {
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for layer in ("recorder", "db")
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _imports(path)
        if name == "meter.client" or name.startswith("meter.client.")
    }
    assert offenders == set()
