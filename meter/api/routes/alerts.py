"""Routes for alerts. (Being written.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
