"""An incremental Server-Sent Events decoder: bytes in, events out. Pure, no I/O.

It follows the WHATWG rules that matter for LLM streams: lines end with `\\r\\n`, `\\n` or `\\r`
(a `\\r` at the end of a read may be half of a `\\r\\n`); `data:` may have no space after the
colon; lines starting with `:` are comments (OpenRouter's `: OPENROUTER PROCESSING`); several
`data` lines of one event are joined with `\\n`; a blank line dispatches the event. Lines are split
on bytes and decoded whole, so a UTF-8 character split across reads is never broken; bytes that
are not UTF-8 become U+FFFD rather than an exception.
"""

from __future__ import annotations

from typing import NamedTuple


class ServerSentEvent(NamedTuple):  # a tuple: cheapest to make, once per stream chunk
    data: str
    event: str | None = None


COMMENT = ":"  # the `event` of a comment, from a decoder made with keep_comments=True


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "_event", "_keep_comments", "_skip_lf")

    def __init__(self, *, keep_comments: bool = False) -> None:
        # A proxy re-emitting events keeps comments (keep-alives such as OpenRouter's
        # `: OPENROUTER PROCESSING`): they come out in place, as events whose `event` is COMMENT.
        self._keep_comments = keep_comments
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one read; returns the events it completed (often none or one)."""
        if self._skip_lf:
            # The previous read ended with `\r`: a `\n` starting this one belongs to it.
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        return self._lines(lines)

    def end(self) -> list[ServerSentEvent]:
        """The stream ended: dispatch an event whose lines were complete but not blank-terminated.

        A last line without its line end is a truncated read and is dropped.
        """
        self._buffer = b""
        return self._dispatch()

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for raw in lines:
            if not raw:
                if self._data:
                    events.extend(self._dispatch())
                else:
                    self._event = None
            elif raw.startswith(b"data:"):  # the hot path: one per chunk
                value = raw[6:] if raw[5:6] == b" " else raw[5:]
                self._data.append(value.decode("utf-8", "replace"))
            elif raw[0] == 0x3A:  # ":" a comment
                if self._keep_comments:
                    events.append(ServerSentEvent(raw[1:].decode("utf-8", "replace"), COMMENT))
            else:
                name, colon, value_text = raw.decode("utf-8", "replace").partition(":")
                if colon and value_text.startswith(" "):
                    value_text = value_text[1:]
                if name == "data":
                    self._data.append(value_text)
                elif name == "event":
                    self._event = value_text
                # `id` and `retry` do not matter for a one-shot LLM stream; others are ignored.
        return events

    def _dispatch(self) -> list[ServerSentEvent]:
        if not self._data:
            self._event = None
            return []
        data = self._data
        event = ServerSentEvent(data[0] if len(data) == 1 else "\n".join(data), self._event)
        self._data = []
        self._event = None
        return [event]
