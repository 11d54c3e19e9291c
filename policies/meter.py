"""meter (priority 500, log phase): exact, durable call counts and latency histograms, mesh-wide in Redis.

Durability path: log() appends one JSON line to this worker's spool file with a single write(2) (so a kill -9 after
log() returned cannot lose it; the kernel holds it). A background task every FLUSH_INTERVAL fsyncs the spool, reads
the complete lines past the applied offset, folds them into HINCRBY deltas and applies them with one Lua script that
is idempotent by batch id = (spool file id, start offset): Redis keeps a watermark per spool file and applies a batch
only if the watermark has not passed its start. A crash between "Redis applied" and "we noted it" therefore cannot
count twice, and Redis being down only makes the spool grow. Spools of dead workers (free slot lock) and of this
slot's previous life are replayed on start and every ADOPT_INTERVAL.

The Redis side (key layout with per-gateway hash tags, the batch script, the replay) is policies.meter_store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from lienthong.background import stop_task
from lienthong.problem import Problem
from lienthong.redis_connection import STORE_ERRORS, DeferredClient
from policies.base import CallContext, PolicyBase, read_subjects
from policies.chain import ChainConfig
from policies.meter_store import SpoolApplier
from policies.outcome import classify
from policies.worker_slot import WorkerSlot, claim_slot, orphan_slots

log = logging.getLogger("lienthong.policies.meter")

FLUSH_INTERVAL = 0.05
ROTATE_BYTES = 8 * 1024 * 1024
ADOPT_INTERVAL = 30.0
# the consumer of a call refused before its client was known (no token, an invalid one, a bad certificate)
UNIDENTIFIED = "(unidentified)"
MAX_BACKOFF = 1.0  # between flushes while Redis is unreachable
MAX_FAULT_BACKOFF = 5.0  # between flushes after an unexpected fault (logged with its traceback every time)
FLUSH_ERRORS: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)  # Redis or the disk: expected, kept quiet


def record_of(ctx: CallContext, now: float) -> bytes:
    endpoint = f"{ctx.endpoint.method} {ctx.endpoint.path}" if ctx.endpoint is not None else "-"
    outcome = classify(ctx.status, ctx.error_code, ctx.endpoint.no_data if ctx.endpoint is not None else frozenset())
    service = ctx.service.id if ctx.service is not None else (ctx.service_id or "-")
    provider_gw = ctx.provider_gateway or (ctx.service.gateway if ctx.service is not None else "-")
    end = ctx.response_out or now
    record: dict[str, Any] = {
        "t": ctx.request_in,
        "c": ctx.client or UNIDENTIFIED,
        "s": service,
        "e": endpoint,
        "cg": ctx.consumer_gateway or "-",
        "pg": provider_gw,
        "r": ctx.role,
        "o": outcome,
        "ms": round(max(0.0, end - ctx.request_in) * 1000, 3),
    }
    items = _items(ctx) if outcome == "found" else 1
    if items != 1:
        record["n"] = items
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _items(ctx: CallContext) -> int:
    """The items a found (2xx) call counts: a batch's item count, else 1."""
    endpoint = ctx.endpoint
    if endpoint is None or endpoint.subjects is None or endpoint.subjects.batch is None:
        return 1
    try:
        read_subjects(ctx)  # already read in access when quota or audit ran; cached on ctx
    except Problem:
        return 1
    return ctx.items


class Meter(PolicyBase):
    name = "meter"
    priority = 500

    def __init__(self, gateway: str, data_dir: Path, redis_url: str) -> None:
        self.gateway = gateway
        self.dir = data_dir / "meter"
        self.store = DeferredClient(redis_url, connect_timeout=1, timeout=5)  # plain, Sentinel or cluster
        self.applier = SpoolApplier(self.store, gateway)
        self.slot: WorkerSlot | None = None
        self._fd = -1
        self._path: Path | None = None
        self._written = 0  # bytes appended to the current spool
        self._synced = 0
        self._applied = 0
        self._task: asyncio.Task[None] | None = None
        self._next_adopt = 0.0
        self.redis_ok = True

    def open(self) -> None:
        """Claim a slot and start a fresh spool file; synchronous so scripts and tests can use it without a loop."""
        if self.slot is None:
            self.slot = claim_slot(self.dir)
            self._new_spool()

    def _new_spool(self) -> None:
        assert self.slot is not None
        self._path = self.dir / f"spool-{self.slot.index}-{uuid.uuid4().hex}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._written = self._synced = self._applied = 0

    def log(self, ctx: CallContext) -> None:
        line = record_of(ctx, time.time())
        os.write(self._fd, line)
        self._written += len(line)

    # -- background ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.open()
        self._task = asyncio.create_task(self._run(), name="meter-flush")
        self._task.add_done_callback(_flush_ended)

    async def _run(self) -> None:
        backoff = FLUSH_INTERVAL
        while True:
            await asyncio.sleep(backoff)
            try:
                await self._cycle()
            except asyncio.CancelledError:
                raise
            except FLUSH_ERRORS as exc:
                if self.redis_ok:
                    log.warning("meter flush failed, keeping counts in the spool: %s", exc)
                self.redis_ok = False
                backoff = min(MAX_BACKOFF, backoff * 2)
            except Exception as exc:  # nothing may end the flush: the spool would grow and nothing be counted
                backoff = min(MAX_FAULT_BACKOFF, backoff * 2)
                log.error("meter flush failed unexpectedly; counts stay in the spool, retrying in %.1fs", backoff,
                          exc_info=exc)  # fmt: skip
            else:
                backoff = FLUSH_INTERVAL
                self.redis_ok = True

    async def _cycle(self) -> None:
        await asyncio.to_thread(self.sync_and_apply)
        retired = self.maybe_rotate()  # on the loop thread, where log() writes, so no write is cut off
        if retired is not None:
            await asyncio.to_thread(self.retire, *retired)
        if time.monotonic() >= self._next_adopt:
            await asyncio.to_thread(self.adopt_orphans)

    def flush_once(self) -> None:
        """One full cycle, for callers without an event loop (scripts, stop())."""
        self.sync_and_apply()
        retired = self.maybe_rotate()
        if retired is not None:
            self.retire(*retired)
        if time.monotonic() >= self._next_adopt:
            self.adopt_orphans()

    def sync_and_apply(self) -> None:
        """fsync the spool, then apply to Redis what is on disk; safe to run in a thread beside log()."""
        path, written = self._path, self._written
        if path is None:
            return
        if written > self._synced:
            os.fsync(self._fd)
            self._synced = written
        if self._synced > self._applied:
            self._applied = self.applier.apply_from(path, self._applied, self._synced)

    def maybe_rotate(self) -> tuple[int, Path] | None:
        """Switch to a new spool once the current one is big and fully applied; returns the old one to retire."""
        path = self._path
        if path is None or self._applied < ROTATE_BYTES or not (self._applied == self._written == self._synced):
            return None
        old = (self._fd, path)
        self._new_spool()
        return old

    def retire(self, fd: int, path: Path) -> None:
        os.close(fd)
        self.applier.replay(path)
        path.unlink(missing_ok=True)

    def adopt_orphans(self) -> int:
        """Replay and remove spools nobody writes: this slot's earlier files and files of slots whose lock is free."""
        assert self.slot is not None
        adopted = 0
        with orphan_slots(self.dir, self.slot.index) as free:
            candidates = [p for i in [*free, self.slot.index] for p in self.dir.glob(f"spool-{i}-*.jsonl")]
            for path in candidates:
                if path == self._path:
                    continue
                self.applier.replay(path)
                path.unlink(missing_ok=True)
                adopted += 1
        self._next_adopt = time.monotonic() + ADOPT_INTERVAL
        return adopted

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._fd >= 0:
            try:
                await asyncio.to_thread(self.flush_once)
            except Exception as exc:  # the spool stays on disk either way
                log.warning("meter could not flush at stop; the spool replays on next start: %s", exc)
            os.close(self._fd)
            self._fd = -1
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self.store.close()


def _flush_ended(task: asyncio.Task[None]) -> None:
    """The flush ends only when stopped; should anything else end it, say so loudly rather than go quiet."""
    if not task.cancelled():
        log.critical("the meter's flush loop ended: %r", task.exception())


def build(cfg: ChainConfig) -> Meter:
    return Meter(cfg.gateway, cfg.data_dir, cfg.redis_url)
