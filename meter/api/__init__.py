"""The HTTP API: a FastAPI app over the roll-up and the ledger."""
