"""Questions over the mesh-wide counts in Redis: how many transactions grouped by X between A and B, and latency
percentiles. Shared by the operations API and `lienthong metering report`.

"Mesh transactions" are the counts taken at the consumer's home gateway (role home or local), so a call that
crossed two gateways counts once; pass roles=None to see every gateway's own count. Resolution is one hour:
`from` is rounded down and `to` up to whole UTC hours.

The counts are kept per gateway (policies.meter: meter:<kind>:{<gateway>}:<label>, one cluster slot per gateway), so
every question reads the hashes of each gateway named in meter:gateways and adds them up, in one pipeline (which
redis-py splits per node on a cluster).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis

from lienthong.problem import bad_request
from policies.meter_stats import outcome_class, outcome_split, percentile
from policies.meter_store import DIMENSIONS, GATEWAYS_KEY, LATENCY_BUCKETS_MS, counts_key

GROUPS = ("service", "consumer", "gateway", "consumer_gateway", "provider_gateway", "endpoint", "outcome", "role",
          "hour", "day")  # fmt: skip
MESH_ROLES = frozenset({"home", "local"})
OUTCOME = DIMENSIONS.index("outcome")
MAX_HOURS = 366 * 24
# Who may see a count: keep(dimensions in DIMENSIONS order) for the call counts, keep_service(service id) for the
# latency histograms (which have no consumer). None: everything (the operator); the ops API passes a member's.
Keep = Callable[[Sequence[str]], bool]
KeepService = Callable[[str], bool]
Client = redis.Redis | redis.RedisCluster


def gateways(client: Client) -> list[str]:
    """The gateways that have counted something (each one's counts carry its tag)."""
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(GATEWAYS_KEY))


def _read(client: Client, kind: str, labels: Sequence[str]) -> list[list[dict[Any, Any]]]:
    """Per label, the hashes meter:<kind>:{<gateway>}:<label> of every gateway, read in one pipeline."""
    names = gateways(client)
    if not names or not labels:
        return [[] for _ in labels]
    pipe = client.pipeline(transaction=False)
    for label in labels:
        for gateway in names:
            pipe.hgetall(counts_key(kind, gateway, label))
    replies = pipe.execute()
    return [replies[i * len(names) : (i + 1) * len(names)] for i in range(len(labels))]


def _fields(hashes: list[dict[Any, Any]]) -> Iterator[tuple[list[str], int]]:
    """(field split on |, count) over the same hash of several gateways."""
    for fields in hashes:
        for raw, value in fields.items():
            yield (raw.decode() if isinstance(raw, bytes) else raw).split("|"), int(value)


def _counts(hashes: list[dict[Any, Any]]) -> Iterator[tuple[list[str], int]]:
    """(dimensions in DIMENSIONS order, count) of call-count hashes, an old outcome label read as its class."""
    for parts, value in _fields(hashes):
        if len(parts) == len(DIMENSIONS):
            parts[OUTCOME] = outcome_class(parts[OUTCOME])
            yield parts, value


def parse_time(value: str, field: str) -> datetime:
    """RFC 3339 date-time (Z or offset) or a plain date (midnight UTC)."""
    text = value.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(field, f"{field} must be an RFC 3339 date-time or a date, got {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise bad_request(field, f"{field} needs a time zone (e.g. Z or +07:00)")
    return parsed.astimezone(UTC)


def parse_group_by(value: str | None, field: str = "group_by") -> list[str]:
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    for name in names:
        if name not in GROUPS:
            raise bad_request(field, f"cannot group by {name[:40]!r}; use any of {', '.join(GROUPS)}")
    return list(dict.fromkeys(names))


def hours(start: datetime, end: datetime, from_field: str = "from", to_field: str = "to") -> list[str]:
    if end <= start:
        raise bad_request(to_field, f"{to_field} must be after {from_field}")
    first = start.replace(minute=0, second=0, microsecond=0)
    count = int((end - first).total_seconds() // 3600) + (0 if (end - first).total_seconds() % 3600 == 0 else 1)
    if count > MAX_HOURS:
        raise bad_request(to_field, f"the window is {count} hours; at most {MAX_HOURS} may be asked at once")
    return [(first + timedelta(hours=i)).strftime("%Y%m%d%H") for i in range(count)]


def _group_key(dims: dict[str, str], hour: str, group_by: list[str]) -> tuple[str, ...]:
    out = []
    for name in group_by:
        if name == "hour":
            out.append(f"{hour[:4]}-{hour[4:6]}-{hour[6:8]}T{hour[8:10]}:00:00Z")
        elif name == "day":
            out.append(f"{hour[:4]}-{hour[4:6]}-{hour[6:8]}")
        elif name == "gateway":
            out.append(dims["consumer_gateway"])
        else:
            out.append(dims[name])
    return tuple(out)


def transactions(
    client: Client,
    start: datetime,
    end: datetime,
    group_by: list[str],
    roles: frozenset[str] | None = MESH_ROLES,
    keep: Keep | None = None,
) -> dict[str, Any]:
    """{"total": n, "groups": [{<dim>: value, ..., "count": n}], <outcome_split>}, groups by count, largest first."""
    window = hours(start, end)
    sums: Counter[tuple[str, ...]] = Counter()
    outcomes: Counter[str] = Counter()
    for hour, hashes in zip(window, _read(client, "h", window), strict=True):
        for parts, value in _counts(hashes):
            dims = dict(zip(DIMENSIONS, parts, strict=True))
            if (roles is not None and dims["role"] not in roles) or (keep is not None and not keep(parts)):
                continue
            sums[_group_key(dims, hour, group_by)] += value
            outcomes[dims["outcome"]] += value
    groups = [{**dict(zip(group_by, key, strict=True)), "count": n} for key, n in sums.most_common()]
    return {"total": sum(sums.values()), "groups": groups, **outcome_split(outcomes)}


def latency(
    client: Client, start: datetime, end: datetime, service: str | None, roles: frozenset[str] | None = MESH_ROLES,
    keep_service: KeepService | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Percentiles (ms, estimated inside the histogram's buckets) per service and endpoint."""
    window = hours(start, end)
    hist: dict[tuple[str, str], Counter[str]] = {}
    for hashes in _read(client, "l", window):
        for parts, value in _fields(hashes):
            if len(parts) != 4:
                continue
            svc, endpoint, role, le = parts
            if (service is not None and svc != service) or (roles is not None and role not in roles):
                continue
            if keep_service is not None and not keep_service(svc):
                continue
            hist.setdefault((svc, endpoint), Counter())[le] += value
    order = [str(b) for b in LATENCY_BUCKETS_MS] + ["inf"]
    items = []
    for (svc, endpoint), counts in sorted(hist.items()):
        items.append(
            {
                "service": svc,
                "endpoint": endpoint,
                "count": sum(counts.values()),
                **{f"p{q}_ms": percentile(counts, LATENCY_BUCKETS_MS, q / 100) for q in (50, 90, 95, 99)},
                "buckets": {le: counts[le] for le in order if counts.get(le)},
            }
        )
    return {"items": items}


# ---- the dashboard's windows: the last hour by minute, the last 30 days by day ----------------------------------

WINDOWS = ("hour", "month")
SERIES_GROUPS = ("service", "consumer", "gateway")
MONTH_DAYS = 30


def parse_window(value: str | None, field: str = "window") -> str:
    if value not in WINDOWS:
        raise bad_request(field, f"{field} must be one of {', '.join(WINDOWS)}, got {str(value)[:40]!r}")
    return value


def window_buckets(window: str, now: datetime) -> tuple[list[str], list[list[str]]]:
    """(labels, Redis key ids per label): 60 minutes ending with the current one (keys YYYYMMDDHHMM of the minute
    hashes), or 30 UTC days ending today (each day the 24 YYYYMMDDHH of the hour hashes)."""
    now = now.astimezone(UTC)
    if window == "hour":
        last = now.replace(second=0, microsecond=0)
        minutes = [last - timedelta(minutes=59 - i) for i in range(60)]
        return [_iso_z(m) for m in minutes], [[m.strftime("%Y%m%d%H%M")] for m in minutes]
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=MONTH_DAYS - 1 - i) for i in range(MONTH_DAYS)]
    return [d.strftime("%Y-%m-%d") for d in days], [[f"{d:%Y%m%d}{h:02d}" for h in range(24)] for d in days]


def _iso_z(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:00Z")


Counts = Counter[tuple[str, ...]]


class DayCache:
    """Folded counts of whole past UTC days, kept `ttl` seconds, so a dashboard refresh reads only today's hours.

    A past day changes only when a dead worker's spool is replayed late (every 30 s), so a few minutes is a bounded
    lag. One per operations app; thread-safe (queries run in worker threads)."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._days: dict[str, tuple[float, Counts]] = {}
        self._lock = threading.Lock()

    def get(self, day: str) -> Counts | None:
        with self._lock:
            hit = self._days.get(day)
            return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl else None

    def put(self, day: str, counts: Counts) -> None:
        with self._lock:
            self._days[day] = (time.monotonic(), counts)
            for old in [d for d, (at, _) in self._days.items() if time.monotonic() - at >= self.ttl]:
                del self._days[old]


def _window_counts(client: Client, window: str, now: datetime, cache: DayCache | None = None,
                   keep: Keep | None = None) -> tuple[list[str], list[Counts]]:  # fmt: skip
    """Per bucket of the window: Counter of the full dimension tuple (DIMENSIONS order) -> mesh transactions."""
    labels, ids = window_buckets(window, now)
    cached: list[Counts | None] = [None] * len(ids)
    if cache is not None and window == "month":
        cached[:-1] = [cache.get(label) for label in labels[:-1]]  # today is still being counted: never cached
    wanted = [key_id for group, hit in zip(ids, cached, strict=True) if hit is None for key_id in group]
    replies = iter(_read(client, "m" if window == "hour" else "h", wanted))
    buckets: list[Counts] = []
    for i, (group, hit) in enumerate(zip(ids, cached, strict=True)):
        if hit is not None:
            buckets.append(hit)
            continue
        counts: Counts = Counter()
        for _ in group:
            for parts, value in _counts(next(replies)):
                if parts[5] in MESH_ROLES:
                    counts[tuple(parts)] += value
        if cache is not None and window == "month" and i < len(ids) - 1:
            cache.put(labels[i], counts)
        buckets.append(counts)
    if keep is not None:  # after the cache, which holds every count
        buckets = [Counter({dims: n for dims, n in counts.items() if keep(dims)}) for counts in buckets]
    return labels, buckets


def _dimension(name: str) -> int:
    return DIMENSIONS.index("consumer_gateway" if name == "gateway" else name)


def timeseries(
    client: Client, window: str, group_by: str, now: datetime, cache: DayCache | None = None,
    keep: Keep | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Mesh transactions per bucket of the window, one series per value of group_by, largest series first."""
    labels, buckets = _window_counts(client, window, now, cache, keep)
    index = _dimension(group_by)
    series: dict[str, list[int]] = {}
    for i, counts in enumerate(buckets):
        for dims, n in counts.items():
            series.setdefault(dims[index], [0] * len(labels))[i] += n
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return {
        "window": window,
        "step": "minute" if window == "hour" else "day",
        "group_by": group_by,
        "buckets": labels,
        "total": sum(sum(counts) for _, counts in ranked),
        "series": [{"key": key, "total": sum(counts), "counts": counts} for key, counts in ranked],
    }


def top_consumers(
    client: Client, window: str, limit: int, now: datetime, cache: DayCache | None = None,
    keep: Keep | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The consumers with the most mesh transactions in the window, with their outcome split."""
    _, buckets = _window_counts(client, window, now, cache, keep)
    per: dict[str, Counter[str]] = {}
    for counts in buckets:
        for dims, n in counts.items():
            per.setdefault(dims[0], Counter())[dims[OUTCOME]] += n
    total = sum(sum(c.values()) for c in per.values())
    ranked = sorted(per.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:limit]
    items = []
    for consumer, outcomes in ranked:
        n = sum(outcomes.values())
        items.append({"consumer": consumer, "count": n, "share": round(n / total, 4) if total else 0.0,
                      **outcome_split(outcomes)})  # fmt: skip
    return {"window": window, "total": total, "items": items}


def error_rates(client: Client, window: str, now: datetime, cache: DayCache | None = None,
                keep: Keep | None = None) -> dict[str, Any]:  # fmt: skip
    """The outcome split over the window (policies.meter_stats: the three answers, client errors, provider and
    platform failures, with rates over the total), for the whole mesh and per service."""
    _, buckets = _window_counts(client, window, now, cache, keep)
    mesh: Counter[str] = Counter()
    per: dict[str, Counter[str]] = {}
    for counts in buckets:
        for dims, n in counts.items():
            mesh[dims[OUTCOME]] += n
            per.setdefault(dims[1], Counter())[dims[OUTCOME]] += n
    services = [{"service": svc, "total": sum(c.values()), **outcome_split(c)} for svc, c in sorted(per.items())]
    return {"window": window, "total": sum(mesh.values()), **outcome_split(mesh), "services": services}


def service_latency(client: Client, window: str, now: datetime, keep_service: KeepService | None = None
                    ) -> dict[str, Any]:  # fmt: skip
    """p50/p95/p99 per service over the window (all its endpoints), estimated from the minute or hour histograms."""
    _, ids = window_buckets(window, now)
    hist: dict[str, Counter[str]] = {}
    for hashes in _read(client, "lm" if window == "hour" else "l", [key_id for group in ids for key_id in group]):
        for parts, value in _fields(hashes):
            if len(parts) != 4 or parts[2] not in MESH_ROLES:
                continue
            if keep_service is not None and not keep_service(parts[0]):
                continue
            hist.setdefault(parts[0], Counter())[parts[3]] += value
    items = [{"service": svc, "count": sum(counts.values()),
              **{f"p{q}_ms": percentile(counts, LATENCY_BUCKETS_MS, q / 100) for q in (50, 95, 99)}}
             for svc, counts in sorted(hist.items())]  # fmt: skip
    return {"window": window, "items": items}
