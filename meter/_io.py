"""Whether a socket has something to read, without reading it or waiting."""

from __future__ import annotations

import select


def readable(fd: int) -> bool:
    """Data, or the end of the stream, waiting on file descriptor `fd` (a negative one, a
    socket already gone, counts as readable: its connection is done)."""
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))
