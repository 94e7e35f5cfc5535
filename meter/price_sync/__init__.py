"""Price sync (SPEC section 9): compare the upstream's models list with the price book, and add
what changed as prices effective now.

    upstream.fetch_catalogue  GET {upstream}/models -> the catalogue JSON (exact decimals)
    diff.diff_catalogue       catalogue entries x price book -> PriceDiff (pure)
    service.plan / sync       the same against a database (the caller owns the transaction)
    schemas                   the JSON shape shared by the API and `meter prices sync --format json`
    tasks                     the optional scheduled check of `meter serve` (logs, never applies)
"""

from meter.price_sync.diff import Changed, PriceDiff, diff_catalogue
from meter.price_sync.service import apply, plan, sync
from meter.price_sync.upstream import fetch_catalogue

__all__ = ["Changed", "PriceDiff", "apply", "diff_catalogue", "fetch_catalogue", "plan", "sync"]
