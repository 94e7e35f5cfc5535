"""The incremental SSE decoder, fed as OpenRouter really sends streams."""

from __future__ import annotations

from meter.client._sse import ServerSentEvent, SSEDecoder

OPENROUTER = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9 \xe2\x80\x94 ok"}}]}\n\n'
    b": OPENROUTER PROCESSING\n\n"
    b'data:{"choices":[],"usage":{"prompt_tokens":9}}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
)
EXPECTED = [
    '{"choices":[{"delta":{"content":"café — ok"}}]}',
    '{"choices":[],"usage":{"prompt_tokens":9}}',
    "[DONE]",
]


def decode(reads: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out = [e.data for r in reads for e in decoder.feed(r)]
    return out + [e.data for e in decoder.end()]


def test_whole_stream_in_one_read() -> None:
    assert decode([OPENROUTER]) == EXPECTED


def test_every_split_point_gives_the_same_events() -> None:
    # Splits inside `\r\n`, inside `data:` and inside the UTF-8 of "é" and "—".
    for i in range(len(OPENROUTER) + 1):
        assert decode([OPENROUTER[:i], OPENROUTER[i:]]) == EXPECTED, i


def test_one_byte_at_a_time() -> None:
    assert decode([OPENROUTER[i : i + 1] for i in range(len(OPENROUTER))]) == EXPECTED


def test_lone_carriage_returns_end_lines() -> None:
    assert decode([b"data: a\r\rdata: b\r", b"\r"]) == ["a", "b"]


def test_multiline_data_is_joined_with_newlines_and_event_names_kept() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"event: error\ndata: line one\ndata: line two\nid: 7\nretry: 10\n\n")
    assert events == [ServerSentEvent("line one\nline two", "error")]


def test_comments_and_blank_lines_alone_dispatch_nothing() -> None:
    assert decode([b": keep-alive\n\n\n\n: OPENROUTER PROCESSING\n\n"]) == []


def test_an_event_without_its_blank_line_is_dispatched_at_the_end() -> None:
    assert decode([b"data: [DONE]\n"]) == ["[DONE]"]


def test_a_truncated_last_line_is_dropped() -> None:
    assert decode([b'data: {"a":1}\n\ndata: {"choi']) == ['{"a":1}']


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    assert decode([b"data: \xff\xfeok\n\n"]) == ["\ufffd\ufffdok"]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode([b"data:  two spaces\n\n"]) == [" two spaces"]
