"""Shared helpers of the client, stream and transport tests: what the database holds, exact
Mistral counts computed independently of meter's own code, the seed model's request."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import sqlalchemy as sa

from meter.db.engine import make_engine
from meter.money import render_usd
from meter.pricing import SEED_MODEL

HELLO = [{"role": "user", "content": "Hello"}]
# What the mock answers to HELLO, counted with mistral-common directly (see test_mock_upstream):
# "<s>▁[INST]▁Hello▁[/INST]" is 9 tokens; the three-sentence reply is 51.
HELLO_PROMPT_TOKENS = 9
HELLO_COMPLETION_TOKENS = 51
HELLO_COST = "0.00001068"  # 9 x $0.11/1M + 51 x $0.19/1M, exactly
MODEL = SEED_MODEL
FAST_RETRY = {"X-Mock-Retry-After": "0"}


@dataclass(frozen=True)
class Stored:
    """One stored event, as a user would check it."""

    model: str
    user: str
    team: str
    tags: Any
    status: str
    usage_source: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    reasoning_tokens: int | None
    latency_ms: int | None
    ttft_ms: int | None
    generation_id: str | None
    provider_cost_usd: str | None
    cost_usd: str | None


def stored_events(url: str) -> list[Stored]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    'SELECT model, "user", team, tags, status, usage_source, prompt_tokens, '
                    "completion_tokens, cached_tokens, reasoning_tokens, latency_ms, ttft_ms, "
                    "generation_id, provider_cost_units, input_cost_units, output_cost_units "
                    "FROM events ORDER BY occurred_at, id"
                )
            ).all()
    finally:
        engine.dispose()
    out = []
    for r in rows:
        cost = None
        if r.input_cost_units is not None:
            cost = render_usd(int(r.input_cost_units) + int(r.output_cost_units))
        tags = r.tags
        if isinstance(tags, str):
            import json

            tags = json.loads(tags)
        out.append(
            Stored(
                r.model,
                r.user,
                r.team,
                tags,
                r.status,
                r.usage_source,
                int(r.prompt_tokens),
                int(r.completion_tokens),
                r.cached_tokens,
                r.reasoning_tokens,
                r.latency_ms,
                r.ttft_ms,
                r.generation_id,
                render_usd(int(r.provider_cost_units))
                if r.provider_cost_units is not None
                else None,
                cost,
            )
        )
    return out


@cache
def _mistral() -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v1()


def mistral_text_tokens(text: str) -> int:
    """Exact Mistral v1 tokens of generated text, straight from mistral-common."""
    return len(_mistral().instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False))


def mistral_chat_tokens(user_text: str) -> int:
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest(messages=[UserMessage(content=user_text)])
    return len(_mistral().encode_chat_completion(request).tokens)


def seed_cost(prompt_tokens: int, completion_tokens: int) -> str:
    """tokens x $0.11 / $0.19 per 1M, in plain notation, computed with Decimal here."""
    total = (
        Decimal(prompt_tokens) * Decimal("0.11") + Decimal(completion_tokens) * Decimal("0.19")
    ) / Decimal(10**6)
    return format(total.normalize(), "f") if total else "0"
