"""`meter mock-upstream`. (Being written.)"""

from __future__ import annotations
