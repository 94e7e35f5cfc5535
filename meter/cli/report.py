"""`meter report`. (Being written.)"""

from __future__ import annotations
