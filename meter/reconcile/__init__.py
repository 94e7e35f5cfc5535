"""Provider truth (SPEC section 9): estimated events corrected with the provider's own figures."""

from meter.reconcile.lookups import LookupPolicy, LookupSummary, run_lookups

__all__ = ["LookupPolicy", "LookupSummary", "run_lookups"]
