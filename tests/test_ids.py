"""UUIDv7 event ids: time-ordered in a process, distinct across threads and forked processes."""

from __future__ import annotations

import itertools
import os
import threading
import uuid

from meter.ids import uuid7


def test_ids_are_version_7_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))


def test_threads_never_share_an_id() -> None:
    out: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(n: int) -> None:
        out[n].extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({i for ids in out for i in ids}) == 20_000


def test_a_forked_child_does_not_repeat_its_parent_s_ids() -> None:
    uuid7()  # the parent has random bytes left over in its pool when it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        data = b"".join(uuid7().bytes for _ in range(2_000))
        os.write(write, data)
        os._exit(0)
    os.close(write)
    parent = {uuid7().bytes for _ in range(2_000)}
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    child = {data[i : i + 16] for i in range(0, len(data), 16)}
    assert len(child) == 2_000
    assert not parent & child
    # Same millisecond and counter in both is possible; the random tails must differ.
    assert not {b[8:] for b in parent} & {b[8:] for b in child}
