"""The gateway's on-disk copy of its snapshot (protocol §7.3): the last full envelope, then each delta applied since,
one envelope per line, exactly as the registry signed them, so that a restart verifies and replays them.

A full envelope replaces the file (temp file, fsync, rename); a delta is appended and fsynced. A crash halfway
through an append leaves a last line that does not verify: replay stops there, and the next poll brings that delta
again. The file's mtime is when the registry last confirmed the snapshot (the max-age rule counts from it).
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_DELTAS = 1000  # past this many deltas (or a file twice the full one), the gateway asks for a full snapshot


def write_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename, so a crash never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SnapshotCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._full_size = 0
        self._delta_count = 0
        self._delta_size = 0

    def read(self) -> tuple[list[bytes], float] | None:
        """The envelopes, full one first, and when the registry last confirmed them; None without a cache."""
        try:
            raw = self.path.read_bytes()
            confirmed = self.path.stat().st_mtime
        except OSError:
            return None
        lines = [line for line in raw.split(b"\n") if line.strip()]
        if lines:
            self._full_size, self._delta_count = len(lines[0]), len(lines) - 1
            self._delta_size = sum(len(line) for line in lines[1:])
        return lines, confirmed

    def replace(self, envelope: bytes) -> None:
        write_atomically(self.path, envelope + b"\n")
        self._full_size, self._delta_count, self._delta_size = len(envelope), 0, 0

    def append(self, envelope: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(envelope + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._delta_count += 1
        self._delta_size += len(envelope)

    def confirm(self, at: float) -> None:
        try:
            os.utime(self.path, (at, at))
        except OSError:
            pass

    @property
    def wants_full(self) -> bool:
        """The deltas on disk have grown past what a full snapshot costs to fetch once."""
        return self._delta_count >= MAX_DELTAS or self._delta_size > 2 * max(self._full_size, 1 << 20)
