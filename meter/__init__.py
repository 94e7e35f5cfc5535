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
from meter.recorder.meter import Meter

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "InvalidPrice",
    "InvalidRequest",
    "Meter",
    "MeterError",
    "StoreUnavailable",
    "UpstreamError",
]
__version__ = "0.1.0"
