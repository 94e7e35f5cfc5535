"""The one exception tree of meter. Foreign errors are mapped to it at the boundary.

MeterError
├── ConfigError          bad settings, a database of another timezone, an old schema
├── InvalidRequest       (also a ValueError) a parameter out of range; nothing was sent
├── InvalidPrice         (also a ValueError) a price meter cannot represent exactly
├── UpstreamError        the LLM endpoint answered an error (.status_code, .body)
│   └── CatalogueUnavailable  its models list could not be read (price sync)
├── BudgetExceeded       an enforced budget is at or over its limit; nothing was sent
└── StoreUnavailable     the database or meter server could not be reached
"""

from __future__ import annotations

from decimal import Decimal


class MeterError(Exception):
    """Root of every error meter raises on purpose."""


class ConfigError(MeterError):
    """Settings or the database do not allow meter to start."""


class InvalidRequest(MeterError, ValueError):
    """A request parameter is out of range. `param` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidPrice(MeterError, ValueError):
    """A price that is negative, not a number, or finer than meter's money unit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UpstreamError(MeterError):
    """The upstream answered with an error. The call was recorded with status `error`."""

    def __init__(self, message: str, status_code: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class CatalogueUnavailable(UpstreamError):
    """`GET {upstream}/models` failed, or did not answer a catalogue: nothing was compared."""


class BudgetExceeded(MeterError):
    """An enforced budget covering the call is at or over its weekly limit."""

    def __init__(
        self,
        message: str,
        budget_id: int,
        scope: str,
        subject: str | None,
        limit_usd: Decimal,
        spend_usd: Decimal,
    ) -> None:
        super().__init__(message)
        self.budget_id = budget_id
        self.scope = scope
        self.subject = subject
        self.limit_usd = limit_usd
        self.spend_usd = spend_usd


class StoreUnavailable(MeterError):
    """The database or the meter server could not be reached."""
