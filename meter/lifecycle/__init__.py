"""Data lifecycle (SPEC section 10): what happens to stored data after it was counted."""
