"""Token counts for estimates and the context-length check.

With the optional extra (`pip install "meter[tokenizer]"`, i.e. `mistral-common[sentencepiece]`)
counts are exact for Mistral v1 models: `MistralTokenizer.v1()` ships inside the package and loads
offline. It is imported lazily, once per process (the import takes about half a second).

Without it, a documented heuristic: about 4 ASCII characters per token (English prose measures
4.2 with the Mistral v1 tokenizer), 1 token per non-ASCII character (CJK is about 1), and for a
chat 1 token for the beginning of sequence plus 7 per message for the `[INST] ... [/INST]`
template. It is an estimate (code and unusual text tokenize denser), never zero for non-empty text.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

HEURISTIC_ASCII_CHARS_PER_TOKEN = 4
HEURISTIC_TOKENS_PER_MESSAGE = 7
HEURISTIC_TOKENS_PER_CHAT = 1
# Upper bound of the template's tokens, for the cheap context check: `[INST]` is 3 tokens,
# `[/INST]` 4, plus BOS/EOS and the separators the template adds between messages.
TEMPLATE_BOUND_PER_MESSAGE = 16
TEMPLATE_BOUND_PER_CHAT = 8

_lock = threading.Lock()
_state: dict[str, Any] = {}


def exact_available() -> bool:
    """True when mistral-common is installed (checked without importing it)."""
    if "available" not in _state:
        try:
            found = importlib.util.find_spec("mistral_common") is not None
        except (ImportError, ValueError):
            found = False
        _state["available"] = found
    return bool(_state["available"])


def _tokenizer() -> Any | None:
    """The Mistral v1 tokenizer, loaded once; None when the extra is not installed."""
    if not exact_available():
        return None
    if "tokenizer" in _state:
        return _state["tokenizer"]
    with _lock:
        if "tokenizer" not in _state:
            try:
                from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

                _state["tokenizer"] = MistralTokenizer.v1()
            except Exception:  # a broken install degrades to the heuristic, never to a crash
                _state["tokenizer"] = None
    return _state["tokenizer"]


def preload() -> None:
    """Load the tokenizer in a background thread so that no call pays for the import."""
    if exact_available() and "tokenizer" not in _state:
        threading.Thread(target=_tokenizer, name="meter-tokenizer-preload", daemon=True).start()


def is_exact() -> bool:
    """True when counts come from the Mistral v1 tokenizer (loads it if needed)."""
    return _tokenizer() is not None


def heuristic_text_tokens(text: str) -> int:
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / HEURISTIC_ASCII_CHARS_PER_TOKEN)
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return non_ascii + math.ceil((len(text) - non_ascii) / HEURISTIC_ASCII_CHARS_PER_TOKEN)


def count_text(text: str) -> int:
    """Tokens of a piece of generated text (no BOS/EOS)."""
    if not text:
        return 0
    tok = _tokenizer()
    if tok is None:
        return heuristic_text_tokens(text)
    return len(tok.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False))


def message_text(content: object) -> str:
    """The text of a message's `content`: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _messages_text(messages: Sequence[object]) -> list[tuple[str, str]]:
    out = []
    for message in messages:
        if isinstance(message, Mapping):
            role = message.get("role")
            out.append(
                (role if isinstance(role, str) else "user", message_text(message.get("content")))
            )
    return out


def count_messages(messages: Sequence[object]) -> int:
    """Prompt tokens of a chat, template included (exact for Mistral v1 when installed)."""
    pairs = _messages_text(messages)
    tok = _tokenizer()
    if tok is None:
        return HEURISTIC_TOKENS_PER_CHAT + sum(
            heuristic_text_tokens(text) + HEURISTIC_TOKENS_PER_MESSAGE for _, text in pairs
        )
    exact = _exact_chat_tokens(tok, pairs)
    if exact is not None:
        return exact
    # A conversation mistral-common refuses (an assistant message last, tool calls...):
    # exact text counts plus the template's measured cost.
    inner = tok.instruct_tokenizer.tokenizer
    return HEURISTIC_TOKENS_PER_CHAT + sum(
        len(inner.encode(text, bos=False, eos=False)) + HEURISTIC_TOKENS_PER_MESSAGE
        for _, text in pairs
    )


def _exact_chat_tokens(tok: Any, pairs: list[tuple[str, str]]) -> int | None:
    try:
        from mistral_common.protocol.instruct.messages import (
            AssistantMessage,
            SystemMessage,
            UserMessage,
        )
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        kinds = {"system": SystemMessage, "assistant": AssistantMessage, "user": UserMessage}
        built = [kinds[role](content=text) for role, text in pairs]
        return len(tok.encode_chat_completion(ChatCompletionRequest(messages=built)).tokens)
    except Exception:  # roles or shapes the v1 template cannot express
        return None


def count_prompt(prompt: object) -> int:
    """Prompt tokens of a legacy completions request (`prompt` is a string or a list of them)."""
    if isinstance(prompt, str):
        return 1 + count_text(prompt)
    if isinstance(prompt, Sequence):
        return sum(1 + count_text(p) for p in prompt if isinstance(p, str))
    return 0


# The longest piece of the Mistral v1 vocabulary is 48 UTF-8 bytes (`▁` is 3 of them): a text
# of N bytes takes at least N / 48 tokens, whatever the tokenizer makes of it.
MAX_PIECE_BYTES = 48


def messages_lower_bound(messages: Sequence[object]) -> int:
    """Tokens a chat takes at least: enough to refuse a huge prompt without tokenizing it."""
    total = sum(len(text.encode("utf-8", "surrogatepass")) for _, text in _messages_text(messages))
    return total // MAX_PIECE_BYTES


def messages_upper_bound(messages: Sequence[object]) -> int:
    """A cheap bound no tokenizer exceeds: one token per UTF-8 byte, plus the template."""
    total = TEMPLATE_BOUND_PER_CHAT
    for _, text in _messages_text(messages):
        total += len(text.encode("utf-8", "surrogatepass")) + TEMPLATE_BOUND_PER_MESSAGE
    return total
