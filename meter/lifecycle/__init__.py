"""The data lifecycle (SPEC section 10): retention of raw events and per-user erasure."""
