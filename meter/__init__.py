"""meter: exact token and cost metering for LLM API calls."""

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
