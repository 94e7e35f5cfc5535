"""Settings from the environment (prefix `METER_`), read in this one place."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meter.weeks import load_timezone

DEFAULT_DATABASE_URL = "sqlite:///./meter.db"
DEFAULT_UPSTREAM_BASE_URL = "https://openrouter.ai/api/v1"
# How long after an estimated call its generation is looked for (SPEC section 9).
DEFAULT_LOOKUP_WINDOW_SECONDS = 86_400.0


def default_spool_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meter" / "spool"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METER_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    timezone: str = "UTC"
    rollup_interval_seconds: float = Field(default=60.0, gt=0)
    admin_key: SecretStr | None = None
    upstream_base_url: str = DEFAULT_UPSTREAM_BASE_URL
    openrouter_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_API_KEY")
    )
    spool_dir: Path = Field(default_factory=default_spool_dir)
    spool_max_bytes: int = Field(default=1 << 30, gt=0)
    # PostgreSQL: connections a process keeps open for reuse; as many more open under load.
    database_pool_size: int = Field(default=20, gt=0)
    # The gateway (SPEC section 7).
    gateway_max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    gateway_fail_open: bool = False  # admit calls when the budget state cannot be read
    gateway_timeout_seconds: float = Field(default=600.0, gt=0)  # LLM calls are slow
    gateway_max_connections: int = Field(default=1000, gt=0)  # upstream pool: streams at once
    # Price sync (SPEC section 9): `meter serve` logs the difference this often; None: never.
    price_sync_interval_seconds: float | None = Field(default=None, gt=0)
    # Purge raw events of local days older than this, once rolled up (SPEC section 10); None:
    # keep them for ever. Totals are kept whatever it is.
    raw_retention_days: int | None = Field(default=None, ge=2)
    webhook_allow_private: bool = False
    webhook_allow_hosts: str | None = None
    # Generation lookups (meter.reconcile): the window after an estimated event in which its
    # provider figures are looked for, the rate of lookups of each process, and how often the
    # job of `meter serve` looks for lookups that are due.
    lookup_window_seconds: float = Field(default=DEFAULT_LOOKUP_WINDOW_SECONDS, gt=0)
    lookup_rps: float = Field(default=2.0, gt=0)
    lookup_interval_seconds: float = Field(default=15.0, gt=0)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        load_timezone(value)
        return value

    @property
    def allowed_webhook_hosts(self) -> frozenset[str] | None:
        if not self.webhook_allow_hosts:
            return None
        return frozenset(
            h.strip().lower() for h in self.webhook_allow_hosts.split(",") if h.strip()
        )


def get_settings(**overrides: object) -> Settings:
    """A fresh read of the environment; tests override fields by keyword."""
    return Settings(**overrides)  # type: ignore[arg-type]
