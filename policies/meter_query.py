"""Questions over the mesh-wide counts in Redis: how many transactions grouped by X between A and B, and latency
percentiles. Shared by the operations API and `lienthong metering report`.

"Mesh transactions" are the counts taken at the consumer's home gateway (role home or local), so a call that
crossed two gateways counts once; pass roles=None to see every gateway's own count. Resolution is one hour:
`from` is rounded down and `to` up to whole UTC hours.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis

from lienthong.problem import bad_request
from policies.meter import DIMENSIONS, LATENCY_BUCKETS_MS

GROUPS = ("service", "consumer", "gateway", "consumer_gateway", "provider_gateway", "endpoint", "outcome", "role",
          "hour", "day")  # fmt: skip
MESH_ROLES = frozenset({"home", "local"})
MAX_HOURS = 366 * 24


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
    client: redis.Redis,
    start: datetime,
    end: datetime,
    group_by: list[str],
    roles: frozenset[str] | None = MESH_ROLES,
) -> dict[str, Any]:
    """{"total": n, "groups": [{<dim>: value, ..., "count": n}]} sorted by count, largest first."""
    window = hours(start, end)
    pipe = client.pipeline(transaction=False)
    for hour in window:
        pipe.hgetall(f"meter:h:{hour}")
    sums: Counter[tuple[str, ...]] = Counter()
    for hour, fields in zip(window, pipe.execute(), strict=True):
        for raw, value in fields.items():
            parts = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
            if len(parts) != len(DIMENSIONS):
                continue
            dims = dict(zip(DIMENSIONS, parts, strict=True))
            if roles is not None and dims["role"] not in roles:
                continue
            sums[_group_key(dims, hour, group_by)] += int(value)
    groups = [{**dict(zip(group_by, key, strict=True)), "count": n} for key, n in sums.most_common()]
    return {"total": sum(sums.values()), "groups": groups}


def latency(
    client: redis.Redis, start: datetime, end: datetime, service: str | None, roles: frozenset[str] | None = MESH_ROLES
) -> dict[str, Any]:
    """Percentiles (bucket upper bounds, ms) from the histograms, per service and endpoint."""
    window = hours(start, end)
    pipe = client.pipeline(transaction=False)
    for hour in window:
        pipe.hgetall(f"meter:l:{hour}")
    hist: dict[tuple[str, str], Counter[str]] = {}
    for fields in pipe.execute():
        for raw, value in fields.items():
            parts = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
            if len(parts) != 4:
                continue
            svc, endpoint, role, le = parts
            if (service is not None and svc != service) or (roles is not None and role not in roles):
                continue
            hist.setdefault((svc, endpoint), Counter())[le] += int(value)
    order = [str(b) for b in LATENCY_BUCKETS_MS] + ["inf"]
    items = []
    for (svc, endpoint), counts in sorted(hist.items()):
        n = sum(counts.values())
        items.append(
            {
                "service": svc,
                "endpoint": endpoint,
                "count": n,
                **{f"p{q}_ms": _percentile(counts, order, n, q / 100) for q in (50, 90, 95, 99)},
                "buckets": {le: counts[le] for le in order if counts.get(le)},
            }
        )
    return {"items": items}


def _percentile(counts: Counter[str], order: list[str], n: int, q: float) -> float | None:
    """The upper bound of the bucket that holds the q-th call (None past the last finite bucket)."""
    target, seen = q * n, 0
    for le in order:
        seen += counts.get(le, 0)
        if seen >= target and seen > 0:
            return None if le == "inf" else float(le)
    return None
