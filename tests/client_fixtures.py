"""Fixtures of the client, stream, transport and SDK tests: one mock upstream per test module,
reset for each test, and a Meter on the parametrized database with its own spool."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from meter import Meter
from meter.mock_upstream import MockUpstream, running
from tests.client_helpers import Stored, stored_events
from tests.conftest import IN_CI


def require(package: str, why: str) -> Any:
    """Import `package`; where it is missing the test skips, and fails under CI=true."""
    try:
        module: ModuleType = importlib.import_module(package)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{package} is not installed (CI=true: {why} must run)")
        pytest.skip(f"SKIPPING: {package} is not installed ({why})", allow_module_level=True)
    return module


@pytest.fixture(params=["httpx", "httpx2"])
def httpx_lib(request: pytest.FixtureRequest) -> Any:
    """The HTTP library a test's client comes from: httpx, or httpx2 (openai 3.x's)."""
    return require(request.param, f"the {request.param} tests")


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockUpstream, str]]:
    """The mock upstream and its base URL."""
    with running() as pair:
        yield pair


@pytest.fixture
def mock(upstream: tuple[MockUpstream, str]) -> MockUpstream:
    upstream[0].reset()
    return upstream[0]


@pytest.fixture
def meter(db_url: str, tmp_path: Path) -> Iterator[Meter]:
    with Meter(db_url, spool_dir=tmp_path / "spool") as m:
        yield m


def events(meter: Meter, db_url: str) -> list[Stored]:
    """Everything stored so far, once the meter has flushed."""
    assert meter.flush(10)
    return stored_events(db_url)


def only_event(meter: Meter, db_url: str) -> Stored:
    stored = events(meter, db_url)
    assert len(stored) == 1, stored
    return stored[0]


@pytest.fixture
def openai_http(httpx_lib: Any) -> Any:
    """The HTTP library of a client handed to the openai SDK: each one the installed openai
    takes (2.x: httpx; 3.x: httpx2, and httpx still)."""
    openai = require("openai", "the openai SDK tests")
    if int(openai.__version__.split(".")[0]) < 3 and httpx_lib.__name__ == "httpx2":
        pytest.skip(f"openai {openai.__version__} takes an httpx client only")
    return httpx_lib
