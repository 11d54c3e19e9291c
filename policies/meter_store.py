"""The meter's side in Redis: its keys, the batch script that applies a spool batch exactly once, and the applier
that replays spool files batch by batch (policies.meter writes the spools; policies.meter_query reads the counts).

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

import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from redis.commands.core import Script

from lienthong.redis_connection import DeferredClient

log = logging.getLogger("lienthong.policies.meter")

MAX_BATCH_LINES = 5000
WATERMARK_TTL = 40 * 86400
MINUTE_TTL = 2 * 3600
# fine below 5 ms, where a local call lands, so that the percentiles interpolated inside a bucket stay close
LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
DIMENSIONS = ("consumer", "service", "endpoint", "consumer_gateway", "provider_gateway", "role", "outcome")
GATEWAYS_KEY = "meter:gateways"
ANNOUNCE_INTERVAL = 60.0  # a gateway names itself in GATEWAYS_KEY again this often (a restored Redis may lack it)


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


def bucket(latency_ms: float) -> str:
    for bound in LATENCY_BUCKETS_MS:
        if latency_ms <= bound:
            return str(bound)
    return "inf"


@lru_cache(maxsize=4096)
def _minute_label(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y%m%d%H%M")


def minute_key(ts: float) -> str:
    # a flush folds thousands of records from the same few minutes: format each minute once
    return _minute_label(int(ts // 60))


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
