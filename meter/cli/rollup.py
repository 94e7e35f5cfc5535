"""`meter rollup`. (Being written.)"""

from __future__ import annotations
