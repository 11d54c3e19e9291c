"""Read what changed in the snapshot between two versions (protocol §7.2), from the `snaplog` stream (registry.store).

The snaplog names, per version, the entries that version touched; a delta from N is the current value (or absence)
of every entry touched after N. Log and values are read in two MULTIs, and the second checks the version has not
moved since the first, so a delta never mixes two versions. No delta is answered (None: the gateway gets a full
snapshot) when the log does not reach back to N, a version in between changed too much to list (a bulk load), or the
delta would name more than `max_entries` entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from registry.store import K_PKI_REVOKED, K_SNAP_SERVICES, K_SNAPLOG, K_VERSION, SNAPSHOT_KINDS, obj_key, upstreams_key

MAX_DELTA_ENTRIES = 2000  # past this many, a full snapshot costs the gateway little more than the delta
READ_ATTEMPTS = 5  # the version moved between the two reads this many times: answer a full snapshot instead

SECTION_KEYS: dict[str, str] = {**{kind: obj_key(kind) for kind in SNAPSHOT_KINDS}, "services": K_SNAP_SERVICES}


@dataclass(frozen=True, slots=True)
class DeltaRead:
    """The stored JSON of every entry touched after `since`, as of `version` (None: the entry is gone)."""

    since: int
    version: int
    sections: dict[str, list[tuple[str, bytes | None]]]
    revoked: dict[bytes, bytes] | None  # the whole `pki:revoked` hash when a revocation happened, else None
    upstreams: dict[str, dict[str, str | None]]  # gateway -> service id -> upstream URL or None


async def read_delta(redis: aioredis.Redis, since: int, max_entries: int = MAX_DELTA_ENTRIES) -> DeltaRead | None:
    """The changes after version `since` up to the current version, or None when only a full snapshot will do."""
    for _ in range(READ_ATTEMPTS):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.get(K_VERSION)
            pipe.xrange(K_SNAPLOG, min=f"{since + 1}-0", max="+", count=max_entries + 1)
            raw_version, log = await pipe.execute()
        version = int(raw_version or 0)
        touched = _touched(log, since, version, max_entries)
        if touched is None:
            return None
        read = await _read_values(redis, since, version, touched)
        if read is not None:
            return read
    return None


def _touched(
    log: list[tuple[bytes, dict[bytes, bytes]]], since: int, version: int, limit: int
) -> set[tuple[str, str]] | None:
    """The union of the entries the versions since+1..version touched; None for a gap, a bulk load or too many."""
    if version <= since or len(log) != version - since:  # one entry per version, so a gap shows in the count
        return None
    if int(log[0][0].split(b"-")[0]) != since + 1:
        return None
    out: set[tuple[str, str]] = set()
    for _entry_id, fields in log:
        listed: Any = orjson.loads(fields[b"touched"])
        if not isinstance(listed, list):  # "*": this version changed too much to list
            return None
        out.update((section, ident) for section, ident in listed)
        if len(out) > limit:
            return None
    return out


async def _read_values(
    redis: aioredis.Redis, since: int, version: int, touched: set[tuple[str, str]]
) -> DeltaRead | None:
    by_key: dict[str, list[str]] = {}
    for section, ident in sorted(touched):
        if section == "pki":
            continue
        key = upstreams_key(section.split(":", 1)[1]) if section.startswith("upstreams:") else SECTION_KEYS.get(section)
        if key is not None:
            by_key.setdefault(key, []).append(ident)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(K_VERSION)
        for key, ids in by_key.items():
            pipe.hmget(key, ids)
        pipe.hgetall(K_PKI_REVOKED)
        results = await pipe.execute()
    if int(results[0] or 0) != version:
        return None  # a change landed between the two reads: read the log again
    values = dict(zip(by_key, results[1:-1], strict=True))
    sections: dict[str, list[tuple[str, bytes | None]]] = {}
    upstreams: dict[str, dict[str, str | None]] = {}
    for section, key in SECTION_KEYS.items():
        if key in values:
            sections[section] = list(zip(by_key[key], values[key], strict=True))
    for section, _ in touched:
        if section.startswith("upstreams:"):
            gateway = section.split(":", 1)[1]
            key = upstreams_key(gateway)
            upstreams[gateway] = {
                i: (v.decode() if v is not None else None) for i, v in zip(by_key[key], values[key], strict=True)
            }
    revoked = results[-1] if any(section == "pki" for section, _ in touched) else None
    return DeltaRead(since, version, sections, revoked, upstreams)
