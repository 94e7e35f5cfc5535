"""Shared request dependencies: the database, settings and (later) the caller's key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from meter.db.session import Database
from meter.settings import Settings


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
