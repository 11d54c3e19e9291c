"""Worker slots: each gateway worker process claims a small integer under a folder with an exclusive flock.

Files named after the slot (meter spool, audit segments) are then never shared by two live processes, and a
restarted worker takes a free slot again, so it continues the files (and the audit hash chain) a dead one left.
The kernel drops the lock when a process dies, even by kill -9, so a free lock means "nobody writes here now".
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WorkerSlot:
    """A claimed slot; keep the object alive (it holds the lock) for as long as the files are written."""

    def __init__(self, directory: Path, index: int, fd: int) -> None:
        self.directory = directory
        self.index = index
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_slot(directory: Path, limit: int = 1024) -> WorkerSlot:
    """Lock the lowest free slot under directory (slot-N.lock)."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(limit):
        fd = _try_lock(directory / f"slot-{index}.lock")
        if fd is not None:
            return WorkerSlot(directory, index, fd)
    raise RuntimeError(f"no free worker slot under {directory} (limit {limit})")


@contextmanager
def orphan_slots(directory: Path, own: int) -> Iterator[list[int]]:
    """Lock every other slot nobody holds (its worker died) so the caller can adopt its files, then let go."""
    held: list[tuple[int, int]] = []
    try:
        for lock in sorted(directory.glob("slot-*.lock")):
            index = int(lock.stem.removeprefix("slot-"))
            if index == own:
                continue
            fd = _try_lock(lock)
            if fd is not None:
                held.append((index, fd))
        yield [index for index, _ in held]
    finally:
        for _, fd in held:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
