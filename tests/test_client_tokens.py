"""Token counts: exact with mistral-common, a documented heuristic otherwise, and a cheap bound
that never undercounts (so the context check may skip the tokenizer safely)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meter import tokens
from tests.client_helpers import mistral_chat_tokens, mistral_text_tokens


def test_counts_are_exact_with_the_tokenizer_installed() -> None:
    assert tokens.is_exact()
    text = "The café on the corner serves a naïve espresso — strong, short and honest."
    assert tokens.count_text(text) == mistral_text_tokens(text)
    assert tokens.count_messages([{"role": "user", "content": "Hello"}]) == 9
    assert tokens.count_prompt("Hello") == 1 + mistral_text_tokens("Hello")
    assert tokens.count_text("") == 0


def test_content_parts_and_odd_conversations_are_counted() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert tokens.count_messages(parts) == mistral_chat_tokens("Hello")
    # mistral-common refuses an assistant message last: exact text counts plus the template.
    odd = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    expected = 1 + (mistral_text_tokens("Hi") + 7) + (mistral_text_tokens("Hello there") + 7)
    assert tokens.count_messages(odd) == expected


def test_the_heuristic_is_four_ascii_characters_or_one_other_character_per_token() -> None:
    assert tokens.heuristic_text_tokens("") == 0
    assert tokens.heuristic_text_tokens("a") == 1
    assert tokens.heuristic_text_tokens("abcd") == 1
    assert tokens.heuristic_text_tokens("abcde") == 2
    assert tokens.heuristic_text_tokens("東京は日本") == 5
    assert tokens.heuristic_text_tokens("café") == 2  # "caf" -> 1, "é" -> 1
    prose = (
        "The tallest building ever would need a foundation that reaches bedrock, a core of "
        "high-strength concrete, and a tapered shape that sheds wind."
    )
    exact = mistral_text_tokens(prose)
    assert abs(tokens.heuristic_text_tokens(prose) - exact) <= exact * 0.25


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=300)),
        min_size=1,
        max_size=5,
    )
)
def test_the_cheap_bound_never_undercounts(pairs: list[tuple[str, str]]) -> None:
    messages = [{"role": role, "content": text} for role, text in pairs]
    assert tokens.messages_upper_bound(messages) >= tokens.count_messages(messages)
