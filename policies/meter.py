"""meter (priority 500, log phase): exact, durable call counts and latency histograms, mesh-wide in Redis.

Durability path: log() appends one JSON line to this worker's spool file with a single write(2) (so a kill -9 after
log() returned cannot lose it; the kernel holds it). A background task every FLUSH_INTERVAL fsyncs the spool, reads
the complete lines past the applied offset, folds them into HINCRBY deltas and applies them with one Lua script that
is idempotent by batch id = (spool file id, start offset): Redis keeps a watermark per spool file and applies a batch
only if the watermark has not passed its start. A crash between "Redis applied" and "we noted it" therefore cannot
count twice, and Redis being down only makes the spool grow. Spools of dead workers (free slot lock) and of this
slot's previous life are replayed on start and every ADOPT_INTERVAL.

Redis layout, every key tagged with the gateway that counted (`{<gateway>}`, a Redis Cluster hash tag):
meter:h:{<gateway>}:<YYYYMMDDHH> hash, field consumer|service|endpoint|consumer_gw|provider_gw|role|outcome -> n;
meter:l:{<gateway>}:<YYYYMMDDHH> hash, field service|endpoint|role|le -> n (le: bucket upper bound in ms, "inf" last).
The counts count items: an answered (2xx) batch call (its endpoint declares `x-lienthong-batch`) counts its item
count (spool field "n", absent for 1), as its quota did; any other outcome counts 1. Histograms count calls.
The same two per UTC minute for the dashboard's last hour, meter:m:{<gateway>}:<YYYYMMDDHHMM> and
meter:lm:{<gateway>}:<YYYYMMDDHHMM>, expire MINUTE_TTL after their last write (the batch that writes them sets the
expiry in the same atomic step). meter:wm:{<gateway>}:<spool file id> is a spool's watermark.

One tag per gateway keeps a batch's watermark and every hash it increments on one cluster slot, so the apply script
(watermark check, increments, new watermark) stays one atomic step and metering stays exactly-once on a cluster too.
A gateway's spools (its workers' and the dead ones it adopts) all live in its own folder, so they share its tag.
Readers (policies.meter_query) add the hashes of every gateway named in the set meter:gateways (GATEWAYS_KEY), which
a gateway joins before it applies its first batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from redis.commands.core import Script

from lienthong.background import stop_task
from lienthong.problem import Problem
from lienthong.redis_connection import STORE_ERRORS, DeferredClient
from policies.base import CallContext, PolicyBase, read_subjects
from policies.chain import ChainConfig
from policies.worker_slot import WorkerSlot, claim_slot, orphan_slots

log = logging.getLogger("lienthong.policies.meter")

FLUSH_INTERVAL = 0.05
MAX_BATCH_LINES = 5000
ROTATE_BYTES = 8 * 1024 * 1024
ADOPT_INTERVAL = 30.0
WATERMARK_TTL = 40 * 86400
MINUTE_TTL = 2 * 3600
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
DIMENSIONS = ("consumer", "service", "endpoint", "consumer_gateway", "provider_gateway", "role", "outcome")
OUTCOMES = ("2xx", "4xx", "5xx", "refused", "platform-error")

GATEWAYS_KEY = "meter:gateways"
ANNOUNCE_INTERVAL = 60.0  # a gateway names itself in GATEWAYS_KEY again this often (a restored Redis may lack it)
MAX_BACKOFF = 1.0  # between flushes while Redis is unreachable
MAX_FAULT_BACKOFF = 5.0  # between flushes after an unexpected fault (logged with its traceback every time)
FLUSH_ERRORS: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)  # Redis or the disk: expected, kept quiet


def counts_key(kind: str, gateway: str, label: str) -> str:
    """meter:<kind>:{<gateway>}:<label>; kind h, l (hour), m, lm (minute), wm (watermark, label: spool file id)."""
    return f"meter:{kind}:{{{gateway}}}:{label}"


# KEYS[1]: the spool's watermark, KEYS[2..]: the hashes the batch increments, per-minute ones first; all of them carry
# one gateway's tag (one cluster slot). ARGV: start, end, watermark ttl, minute-key ttl, how many per-minute hashes
# lead KEYS[2..], then (index into KEYS, field, delta) triples.
APPLY_SCRIPT = """
local wm = tonumber(redis.call('GET', KEYS[1]) or '-1')
if wm > tonumber(ARGV[1]) then return wm end
for i = 6, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
end
for k = 2, 1 + tonumber(ARGV[5]) do redis.call('EXPIRE', KEYS[k], tonumber(ARGV[4])) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return tonumber(ARGV[2])
"""


def outcome(status: int, error_code: str | None) -> str:
    """2xx (any success, 1xx-3xx), 4xx, 5xx from the provider; refused when the mesh said no (its own 4xx: token,
    grant, purpose, quota, path); platform-error when the mesh itself failed (5xx)."""
    if error_code is not None and (status >= 500 or status == 0):
        return "platform-error"
    if error_code is not None:
        return "refused"
    if status >= 500 or status == 0:
        return "5xx"
    return "4xx" if status >= 400 else "2xx"


def bucket(latency_ms: float) -> str:
    for bound in LATENCY_BUCKETS_MS:
        if latency_ms <= bound:
            return str(bound)
    return "inf"


def hour_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H")


@lru_cache(maxsize=4096)
def _minute_label(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y%m%d%H%M")


def minute_key(ts: float) -> str:
    # a flush folds thousands of records from the same few minutes: format each minute once
    return _minute_label(int(ts // 60))


def record_of(ctx: CallContext, now: float) -> bytes:
    endpoint = f"{ctx.endpoint.method} {ctx.endpoint.path}" if ctx.endpoint is not None else "-"
    service = ctx.service.id if ctx.service is not None else (ctx.service_id or "-")
    provider_gw = ctx.provider_gateway or (ctx.service.gateway if ctx.service is not None else "-")
    end = ctx.response_out or now
    record: dict[str, Any] = {
        "t": ctx.request_in,
        "c": ctx.client or "-",
        "s": service,
        "e": endpoint,
        "cg": ctx.consumer_gateway or "-",
        "pg": provider_gw,
        "r": ctx.role,
        "o": outcome(ctx.status, ctx.error_code),
        "ms": round(max(0.0, end - ctx.request_in) * 1000, 3),
    }
    items = _items(ctx)
    if items != 1:
        record["n"] = items
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _items(ctx: CallContext) -> int:
    """The items the call counts: a batch's item count when it was answered (2xx), else 1."""
    endpoint = ctx.endpoint
    if endpoint is None or endpoint.subjects is None or endpoint.subjects.batch is None:
        return 1
    if outcome(ctx.status, ctx.error_code) != "2xx":
        return 1
    try:
        read_subjects(ctx)  # already read in access when quota or audit ran; cached on ctx
    except Problem:
        return 1
    return ctx.items


def fold(lines: Iterable[bytes], gateway: str) -> Counter[tuple[str, str]]:
    """Spool lines of `gateway` -> {(redis hash key, field): delta}. A line that is no record (a damaged disk) is
    logged and skipped: it can never be counted, and failing on it would stop every count behind it."""
    # A batch holds thousands of calls of the same few shapes: count the shapes, then build keys once per shape.
    shapes: Counter[tuple[Any, ...]] = Counter()
    items: Counter[tuple[Any, ...]] = Counter()
    for line in lines:
        try:
            rec = orjson.loads(line)
            shape = (int(rec["t"] // 60), str(rec["c"]), str(rec["s"]), str(rec["e"]), str(rec["cg"]),
                     str(rec["pg"]), str(rec["r"]), str(rec["o"]), bucket(float(rec["ms"])))  # fmt: skip
            n = int(rec.get("n", 1))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("meter: skipping a spool line that is no record (%r): %.200r", exc, line)
            continue
        shapes[shape] += 1
        items[shape] += n
    deltas: Counter[tuple[str, str]] = Counter()
    for (minute_number, c, s, e, cg, pg, r, o, le), calls in shapes.items():
        n = items[(minute_number, c, s, e, cg, pg, r, o, le)]
        minute = _minute_label(minute_number)
        hour = minute[:10]
        dims = "|".join((c, s, e, cg, pg, r, o))
        histogram = f"{s}|{e}|{r}|{le}"
        deltas[(counts_key("h", gateway, hour), dims)] += n
        deltas[(counts_key("l", gateway, hour), histogram)] += calls
        deltas[(counts_key("m", gateway, minute), dims)] += n
        deltas[(counts_key("lm", gateway, minute), histogram)] += calls
    return deltas


class SpoolApplier:
    """Replays one gateway's spool files into Redis, batch by batch, each batch at most once."""

    def __init__(self, store: DeferredClient, gateway: str) -> None:
        self._store = store
        self.gateway = gateway
        self._apply: Script | None = None
        self._announce_at = 0.0

    def watermark(self, path: Path) -> int:
        """How far Redis has applied the spool file at path (0: nothing yet)."""
        value = self._store.get().get(counts_key("wm", self.gateway, path.stem))
        return max(0, int(value)) if value is not None else 0

    def replay(self, path: Path) -> int:
        """Apply what Redis has not yet applied of a spool nobody writes any more; return the offset reached."""
        return self.apply_from(path, self.watermark(path))

    def apply_from(self, path: Path, start: int, end: int | None = None) -> int:
        """Apply complete lines of path from offset start (up to end); return the new applied offset."""
        file_id = path.stem
        with path.open("rb") as f:
            f.seek(start)
            while True:
                limit = None if end is None else end - start
                if limit is not None and limit <= 0:
                    return start
                lines = []
                size = 0
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn tail (power loss mid-write) is never a whole record
                    if limit is not None and size + len(line) > limit:
                        break
                    lines.append(line)
                    size += len(line)
                    if len(lines) >= MAX_BATCH_LINES:
                        break
                if not lines:
                    return start
                start = self._apply_batch(file_id, start, start + size, lines)
                f.seek(start)

    def _apply_batch(self, file_id: str, start: int, end: int, lines: list[bytes]) -> int:
        client = self._store.get()
        if time.monotonic() >= self._announce_at:  # readers must know the tag before it holds a count
            client.sadd(GATEWAYS_KEY, self.gateway)
            self._announce_at = time.monotonic() + ANNOUNCE_INTERVAL
        if self._apply is None:
            self._apply = client.register_script(APPLY_SCRIPT)
        keys, args = self.script_call(file_id, start, end, lines)
        return int(self._apply(keys=keys, args=args))

    def script_call(self, file_id: str, start: int, end: int, lines: list[bytes]) -> tuple[list[str], list[Any]]:
        """APPLY_SCRIPT's KEYS and ARGV for one batch: the spool's watermark, then every hash it increments."""
        deltas = fold(lines, self.gateway)
        hashes = list(dict.fromkeys(key for key, _ in deltas))
        per_minute = [k for k in hashes if k.startswith(("meter:m:", "meter:lm:"))]
        hashes = per_minute + [k for k in hashes if k not in per_minute]
        index = {key: i for i, key in enumerate(hashes, start=2)}
        args: list[Any] = [start, end, WATERMARK_TTL, MINUTE_TTL, len(per_minute)]
        for (key, field), delta in deltas.items():
            args += [index[key], field, delta]
        return [counts_key("wm", self.gateway, file_id), *hashes], args


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
