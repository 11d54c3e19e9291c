"""The transaction log's local spool and its shipper to the central store, in the gateway worker's own process.

Spool: the log phase appends one JSON line per call to this worker's spool file (txlog/spool-<slot>-<uuid>.jsonl
under the gateway's data dir) with a single write(2), so a kill -9 after the call was answered cannot lose it.
Shipper: every SHIP_INTERVAL a thread fsyncs the spool and ships the complete lines past the shipped offset in
batches whose id is (spool file, byte range); the store applies a batch only if its watermark for that file has not
passed the batch's start, in the same transaction as the rows (policies/txlog_store.py), so nothing is stored twice.
A store that is down only makes the spool grow: shipping is retried with backoff (logged once when it stops and when
it resumes). Spools of dead workers (their slot lock is free) and this slot's earlier files are shipped from the
store's watermark and removed, on start and every ADOPT_INTERVAL. Retention runs here too, once an hour.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from lienthong.background import stop_task
from policies.txlog_store import DAY_US, BatchId, StoreUnavailable, TxlogStore
from policies.worker_slot import WorkerSlot, claim_slot, orphan_slots

log = logging.getLogger("lienthong.policies.txlog")

SHIP_INTERVAL = 0.5
MAX_BACKOFF = 5.0
MAX_BATCH_LINES = 10_000
ROTATE_BYTES = 16 * 1024 * 1024
ADOPT_INTERVAL = 30.0
RETENTION_INTERVAL = 3600.0
# the data tracker's index outlives the log: a person may ask about a year back (issue 19), the tracker's default
INDEX_RETENTION_DAYS = 400


class Spool:
    """This worker's spool files: one slot (policies/worker_slot.py), the current file appended to."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.slot: WorkerSlot | None = None
        self.fd = -1
        self.path: Path | None = None
        self.written = 0
        self.synced = 0

    def open(self) -> None:
        if self.slot is None:
            self.slot = claim_slot(self.dir)
            self.new_file()

    def new_file(self) -> None:
        assert self.slot is not None
        self.path = self.dir / f"spool-{self.slot.index}-{uuid.uuid4().hex}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.written = self.synced = 0

    def append(self, line: bytes) -> None:
        os.write(self.fd, line)  # one write(2): in the kernel once it returns, whatever happens to the process
        self.written += len(line)

    def sync(self) -> None:
        written = self.written
        if written > self.synced:
            os.fsync(self.fd)
            self.synced = written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.slot is not None:
            self.slot.release()
            self.slot = None


def spool_id(gateway: str, path: Path) -> str:
    return f"{gateway}/{path.stem}"


def read_batches(path: Path, start: int, end: int | None) -> Iterator[tuple[int, int, list[bytes]]]:
    """(start, end, lines) of the complete lines from offset start (up to end), MAX_BATCH_LINES at a time."""
    with path.open("rb") as f:
        f.seek(start)
        while end is None or start < end:
            lines: list[bytes] = []
            size = 0
            for line in f:
                if not line.endswith(b"\n") or (end is not None and start + size + len(line) > end):
                    break  # a torn tail (power loss mid-write) is never a whole record
                size += len(line)
                lines.append(line)
                if len(lines) >= MAX_BATCH_LINES:
                    break
            if not size:
                return
            yield start, start + size, lines
            start += size
            f.seek(start)


class Shipper:
    def __init__(self, gateway: str, spool: Spool, store: TxlogStore, retention_days: int) -> None:
        self.gateway = gateway
        self.spool = spool
        self.store = store
        self.retention_days = retention_days
        self.shipped = 0  # offset of the current spool file the store holds
        self.store_ok = True
        self._task: asyncio.Task[None] | None = None
        self._next_adopt = 0.0
        self._next_retention = 0.0

    def ship(self, path: Path, start: int, end: int | None = None) -> int:
        """Ship path's complete lines from start (up to end); return the offset the store now holds."""
        sid = spool_id(self.gateway, path)
        reached = start
        for lo, hi, lines in read_batches(path, start, end):
            if not self.store.ingest(BatchId(sid, lo, hi), lines):
                # applied before (a shipper died before it noted so): go on from where the store is
                return self.ship(path, self.store.watermark(sid), end)
            reached = hi
        return reached

    def replay(self, path: Path) -> None:
        """Ship what the store lacks of a file nobody writes any more, then remove it."""
        self.ship(path, self.store.watermark(spool_id(self.gateway, path)))
        path.unlink(missing_ok=True)

    def cycle(self) -> None:
        """fsync, ship the current spool, adopt orphans and apply retention when due; run in a thread."""
        path = self.spool.path
        if path is not None:
            self.spool.sync()
            if self.spool.synced > self.shipped:
                self.shipped = self.ship(path, self.shipped, self.spool.synced)
        now = time.monotonic()
        if now >= self._next_adopt:
            self.adopt_orphans()
            self._next_adopt = now + ADOPT_INTERVAL
        if self.retention_days > 0 and now >= self._next_retention:
            today = int(time.time() * 1_000_000) // DAY_US
            cutoff = (today - self.retention_days) * DAY_US
            index_cutoff = (today - max(self.retention_days, INDEX_RETENTION_DAYS)) * DAY_US
            dropped = self.store.drop_before(cutoff, index_cutoff)
            if dropped:
                log.info("txlog retention: dropped %d (days or rows) older than %d days", dropped, self.retention_days)
            self._next_retention = now + RETENTION_INTERVAL

    def adopt_orphans(self) -> int:
        slot = self.spool.slot
        if slot is None:
            return 0
        adopted = 0
        with orphan_slots(self.spool.dir, slot.index) as free:
            for index in [*free, slot.index]:
                for path in sorted(self.spool.dir.glob(f"spool-{index}-*.jsonl")):
                    if path != self.spool.path:
                        self.replay(path)
                        adopted += 1
        return adopted

    def maybe_rotate(self) -> tuple[int, Path] | None:
        """On the loop thread (where log() appends): a new file once the current one is big and all shipped."""
        spool = self.spool
        if spool.path is None or self.shipped < ROTATE_BYTES or not self.shipped == spool.synced == spool.written:
            return None
        old = (spool.fd, spool.path)
        spool.new_file()
        self.shipped = 0
        return old

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="txlog-ship")

    async def _run(self) -> None:
        backoff = SHIP_INTERVAL
        while True:
            await asyncio.sleep(backoff)
            try:
                await asyncio.to_thread(self.cycle)
                retired = self.maybe_rotate()
                if retired is not None:
                    os.close(retired[0])
                    retired[1].unlink(missing_ok=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing may end shipping: the spool keeps every record until it is stored
                backoff = min(MAX_BACKOFF, backoff * 2)
                if self.store_ok:
                    expected = isinstance(exc, StoreUnavailable | OSError)
                    log.warning("txlog shipping failed, records stay in the spool (retrying): %s", exc,
                                exc_info=None if expected else exc)  # fmt: skip
                self.store_ok = False
            else:
                if not self.store_ok:
                    log.warning("txlog shipping resumed")
                backoff, self.store_ok = SHIP_INTERVAL, True

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        try:
            await asyncio.to_thread(self.cycle)
        except Exception as exc:  # the spool stays on disk and is shipped by the next worker of this slot
            log.warning("txlog could not ship at stop; the spool is shipped on next start: %s", exc)
