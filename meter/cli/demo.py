"""`meter demo`. (Being written.)"""

from __future__ import annotations
