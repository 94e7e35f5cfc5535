"""API keys: roles, team scope, SHA-256 hashes. (Filled in by the API work.)"""

from __future__ import annotations

import sqlalchemy as sa

from meter.db import models
from meter.db.session import Database
from meter.settings import Settings


def any_keys(db: Database, settings: Settings) -> bool:
    """Is there any way to authenticate? Without one, meter serves loopback only, open."""
    if settings.admin_key is not None:
        return True
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(models.ApiKey)).scalar_one() > 0
