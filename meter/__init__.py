"""meter: exact token and cost metering for LLM API calls.

`from meter import Meter, MeteredClient` loads the client and the recorder only: the server,
the CLI and the database parts (FastAPI, Click, Rich, SQLAlchemy, Alembic) are imported where
they are used.
"""

import sys

if "httpx" not in sys.modules:
    # `import httpx` also imports httpx's command-line client (Click, Rich, Pygments: ~50 ms)
    # whenever they are installed, as they are beside meter's own CLI. Imported here without it;
    # `httpx.main` is then httpx's stub for when they are missing (the `httpx` command, a
    # process of its own, is unaffected), and `import httpx._main` still works afterwards.
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["httpx._main"]

from meter._exceptions import (
    BudgetExceeded,
    ConfigError,
    InvalidPrice,
    InvalidRequest,
    MeterError,
    StoreUnavailable,
    UpstreamError,
)
from meter.client import AsyncMeteredClient, Meter, MeteredClient

__all__ = [
    "AsyncMeteredClient",
    "BudgetExceeded",
    "ConfigError",
    "InvalidPrice",
    "InvalidRequest",
    "Meter",
    "MeterError",
    "MeteredClient",
    "StoreUnavailable",
    "UpstreamError",
]
__version__ = "0.1.0"
