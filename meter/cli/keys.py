"""`meter keys`. (Being written.)"""

from __future__ import annotations
