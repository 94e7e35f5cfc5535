"""The gateway: `meter serve` as an OpenAI-compatible endpoint that meters every call (SPEC 7).

- `request`: parse and check a client's body (pure): what to send, who pays, the worst case.
- `holds`: hard budgets: reservations, their settlement, and why they cannot overshoot.
- `proxy`: forwarding with httpx, relaying streams event by event, recording each call.
- `routes`: the FastAPI routes and OpenAI's error envelope.
"""
