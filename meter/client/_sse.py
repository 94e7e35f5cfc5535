"""An incremental Server-Sent Events decoder: bytes in, events out. Pure, no I/O.

It follows the WHATWG rules that matter for LLM streams: lines end with `\\r\\n`, `\\n` or `\\r`
(a `\\r` at the end of a read may be half of a `\\r\\n`); `data:` may have no space after the
colon; lines starting with `:` are comments (OpenRouter's `: OPENROUTER PROCESSING`); several
`data` lines of one event are joined with `\\n`; a blank line dispatches the event. Lines are split
on bytes and decoded whole, so a UTF-8 character split across reads is never broken; bytes that
are not UTF-8 become U+FFFD rather than an exception.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str | None = None


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
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
                events.extend(self._dispatch())
                continue
            if raw[0] == 0x3A:  # ":" a comment
                continue
            line = raw.decode("utf-8", "replace")
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            # `id` and `retry` do not matter for a one-shot LLM stream; unknown fields are ignored.
        return events

    def _dispatch(self) -> list[ServerSentEvent]:
        if not self._data:
            self._event = None
            return []
        event = ServerSentEvent("\n".join(self._data), self._event)
        self._data = []
        self._event = None
        return [event]
