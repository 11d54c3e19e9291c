"""The registry's storage in Redis: one JSON string per object, a global version, atomic changes and a change log.

Layout (prefix `lienthong:registry:`):
- `obj:{kind}`          hash id -> the object's JSON (kinds: members, subsystems, gateways, services, clients,
                        grants, admins)
- `snap:services`       hash id -> the service's live (approved) revision as the snapshot shows it (no upstream
                        URL); a service never approved has none, one with a pending change keeps its last approved
                        revision (the object's `live` field) here until an admin approves the change
- `upstreams:{gateway}` hash service id -> the live revision's upstream URL, read only by the gateway hosting it
- `kids`                hash kid -> {"role", "owner"}: which principal a key id belongs to
- `pki:revoked`         hash serial (lowercase hex) -> not_after: certificates revoked with the key they were issued
                        under (kind `certificates` keeps every issued one); the snapshot's `pki.revoked`
- `version`             the global version; +1 per change; it is the snapshot version
- `changes`             stream: the append-only change log
- `snaplog`             stream: one entry per version (id `<version>-1`), `touched` = the JSON list of the snapshot
                        entries that version changed, as [section, id] (sections: members, subsystems, gateways,
                        clients, grants, services, `upstreams:<gateway>`, and `pki`), or "*" when it changed too much
                        to say (a bulk load); the last SNAPLOG_LENGTH versions, from which deltas are built
- channel `events`      the new version, published in the same transaction as the change

Objects are stored as the JSON the snapshot needs, so a snapshot is a concatenation of stored strings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from lienthong.problem import Problem
from lienthong.redis_connection import wait_replicated

PREFIX = "lienthong:registry:"
K_VERSION = PREFIX + "version"
K_CHANGES = PREFIX + "changes"
K_KIDS = PREFIX + "kids"
K_SNAP_SERVICES = PREFIX + "snap:services"
K_PKI_REVOKED = PREFIX + "pki:revoked"
K_SNAPLOG = PREFIX + "snaplog"
SNAPLOG_LENGTH = 10_000  # versions a delta can start from; a gateway further behind gets a full snapshot
CHANNEL = PREFIX + "events"

Kind = Literal["members", "subsystems", "gateways", "services", "clients", "grants", "admins", "certificates"]
SNAPSHOT_KINDS: tuple[Kind, ...] = ("members", "subsystems", "gateways", "clients", "grants")

T = TypeVar("T")


def obj_key(kind: Kind) -> str:
    return f"{PREFIX}obj:{kind}"


def upstreams_key(gateway: str) -> str:
    return f"{PREFIX}upstreams:{gateway}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def live_revision(service: dict[str, Any] | None) -> dict[str, Any] | None:
    """What gateways serve of a service: itself once approved, else the last approved revision it keeps (if any)."""
    if service is None:
        return None
    if service.get("approved"):
        return {k: v for k, v in service.items() if k != "live"}
    live: dict[str, Any] | None = service.get("live")
    return live


def snapshot_service(service: dict[str, Any]) -> dict[str, Any]:
    """The service as every gateway sees it: the upstream URL is left out (it travels in `upstreams`)."""
    return {k: v for k, v in service.items() if k not in ("upstream_url", "live")}


@dataclass
class Tx:
    """What one change reads (under WATCH) and the writes it queues; applied all at once or not at all."""

    pipe: Any
    who: str
    writes: list[tuple[Kind, str, dict[str, Any]]] = field(default_factory=list)
    kid_writes: dict[str, dict[str, str]] = field(default_factory=dict)
    revoked_serials: dict[str, str] = field(default_factory=dict)  # serial -> not_after, for `pki:revoked`
    log: list[dict[str, Any]] = field(default_factory=list)
    _upstream_moves: list[tuple[str | None, str | None, str, str | None]] = field(default_factory=list)
    _live: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # service id -> its new live revision

    async def get(self, kind: Kind, ident: str) -> dict[str, Any] | None:
        for k, i, value in reversed(self.writes):
            if k == kind and i == ident:
                return value
        raw = await self.pipe.hget(obj_key(kind), ident)
        return orjson.loads(raw) if raw is not None else None

    async def all(self, kind: Kind) -> list[dict[str, Any]]:
        raw = await self.pipe.hvals(obj_key(kind))
        return [orjson.loads(v) for v in raw]

    async def kid_owner(self, kid: str) -> dict[str, str] | None:
        if kid in self.kid_writes:
            return self.kid_writes[kid]
        raw = await self.pipe.hget(K_KIDS, kid)
        return orjson.loads(raw) if raw is not None else None

    def put(
        self, kind: Kind, ident: str, before: dict[str, Any] | None, after: dict[str, Any], action: str
    ) -> dict[str, Any]:
        """Queue the new state of one object, bumping its own version, and log the change."""
        stamped = dict(after)
        stamped["version"] = int(before["version"]) + 1 if before else 1
        stamped["updated_at"] = now_iso()
        stamped.setdefault("created_at", before.get("created_at") if before else stamped["updated_at"])
        self.writes.append((kind, ident, stamped))
        if kind == "services":  # only the live (approved) revision reaches snapshots and upstreams
            old_live, new_live = live_revision(before), live_revision(stamped)
            self._live[ident] = new_live
            old_gw = old_live.get("gateway") if old_live else None
            new_gw, url = (new_live.get("gateway"), new_live.get("upstream_url")) if new_live else (None, None)
            self._upstream_moves.append((old_gw, new_gw, ident, url))
        self.log.append({"action": action, "kind": kind, "id": ident, "before": before, "after": stamped})
        return stamped

    def touched(self) -> list[tuple[str, str]]:
        """The snapshot entries this change touches, as [section, id] (the `snaplog` stream)."""
        out: set[tuple[str, str]] = {(kind, ident) for kind, ident, _ in self.writes if kind in SNAPSHOT_KINDS}
        out.update(("services", ident) for ident in self._live)
        for old_gw, new_gw, ident, _url in self._upstream_moves:
            out.update((f"upstreams:{gw}", ident) for gw in (old_gw, new_gw) if gw)
        if self.revoked_serials:
            out.add(("pki", ""))
        return sorted(out)

    async def ids(self, kind: Kind) -> list[str]:
        """The ids of every object of a kind, without reading the objects."""
        return [k.decode() for k in await self.pipe.hkeys(obj_key(kind))]

    def index_kid(self, kid: str, role: str, owner: str) -> None:
        self.kid_writes[kid] = {"role": role, "owner": owner}

    async def revoke_certificates(self, kid: str) -> None:
        """Every certificate issued under `kid` is revoked with that key: marked, and its serial queued for the
        snapshot's pki.revoked (the snapshot builder leaves it out there once it has expired)."""
        for cert in await self.all("certificates"):
            if cert.get("kid") != kid or cert.get("revoked"):
                continue
            self.put("certificates", cert["serial"], cert, {**cert, "revoked": True, "revoked_at": now_iso()},
                     "certificates.revoke")  # fmt: skip
            self.revoked_serials[cert["serial"]] = cert["not_after"]


class Store:
    """Async access to the registry's data; every change goes through `change()`."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def version(self) -> int:
        return int(await self.redis.get(K_VERSION) or 0)

    async def get(self, kind: Kind, ident: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(obj_key(kind), ident)
        return orjson.loads(raw) if raw is not None else None

    async def all(self, kind: Kind) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in await self.redis.hvals(obj_key(kind))]

    async def ids(self, kind: Kind) -> list[str]:
        raw: list[bytes] = await self.redis.hkeys(obj_key(kind))  # type: ignore[assignment]
        return [k.decode() for k in raw]

    async def kid_owner(self, kid: str) -> dict[str, str] | None:
        raw = await self.redis.hget(K_KIDS, kid)
        return orjson.loads(raw) if raw is not None else None

    async def change(self, who: str, fn: Callable[[Tx], Awaitable[T]], attempts: int = 50) -> T:
        """Run fn under WATCH of the global version, then apply its writes, the version bump, the change log
        entries and the event in one MULTI/EXEC. Any concurrent change makes this one re-read and retry."""
        for _ in range(attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(K_VERSION)
                    tx = Tx(pipe=pipe, who=who)
                    result = await fn(tx)
                    if not tx.writes and not tx.kid_writes:
                        return result
                    new_version = int(await pipe.get(K_VERSION) or 0) + 1
                    pipe.multi()
                    self._queue(pipe, tx, new_version)
                    await pipe.execute()
                    await self._durable()
                    return result
                except WatchError:
                    continue
        raise Problem(503, "busy", "the registry is busy with other changes; retry", headers={"Retry-After": "1"})

    async def _durable(self) -> None:
        """A change is acknowledged only once a replica holds it, when the primary has one (docs/policies.md): a
        failover right after the answer must not lose what the client was told is done."""
        if await wait_replicated(self.redis) == 0:
            raise Problem(503, "storage-unavailable", "the change was written, but no Redis replica confirmed it "
                          "within 1 s; read it back before retrying", headers={"Retry-After": "1"})  # fmt: skip

    @staticmethod
    def _queue(pipe: Any, tx: Tx, new_version: int) -> None:
        for kind, ident, value in tx.writes:
            pipe.hset(obj_key(kind), ident, orjson.dumps(value))
        for ident, live in tx._live.items():
            if live is None:
                pipe.hdel(K_SNAP_SERVICES, ident)
            else:
                pipe.hset(K_SNAP_SERVICES, ident, orjson.dumps(snapshot_service(live)))
        for old_gw, new_gw, ident, url in tx._upstream_moves:
            if old_gw and old_gw != new_gw:
                pipe.hdel(upstreams_key(old_gw), ident)
            if new_gw and url:
                pipe.hset(upstreams_key(new_gw), ident, url)
        for kid, owner in tx.kid_writes.items():
            pipe.hset(K_KIDS, kid, orjson.dumps(owner))
        for serial, not_after in tx.revoked_serials.items():
            pipe.hset(K_PKI_REVOKED, serial, not_after)
        pipe.set(K_VERSION, new_version)
        log_version(pipe, new_version, orjson.dumps(tx.touched()))
        at = now_iso()
        for entry in tx.log:
            pipe.xadd(
                K_CHANGES,
                {
                    "version": str(new_version),
                    "who": tx.who,
                    "action": entry["action"],
                    "kind": entry["kind"],
                    "id": entry["id"],
                    "at": at,
                    "before": orjson.dumps(entry["before"]),
                    "after": orjson.dumps(entry["after"]),
                },
            )
        pipe.publish(CHANNEL, str(new_version))

    async def changes(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Change log entries whose global version is above `since`, oldest first."""
        out: list[dict[str, Any]] = []
        start = "-"
        while len(out) < limit:
            raw: Any = await self.redis.xrange(K_CHANGES, min=start, max="+", count=500)
            batch: list[tuple[bytes, dict[bytes, bytes]]] = raw
            if not batch:
                break
            for entry_id, fields in batch:
                version = int(fields[b"version"])
                if version <= since:
                    continue
                out.append(
                    {
                        "seq": entry_id.decode(),
                        "version": version,
                        "who": fields[b"who"].decode(),
                        "action": fields[b"action"].decode(),
                        "kind": fields[b"kind"].decode(),
                        "id": fields[b"id"].decode(),
                        "at": fields[b"at"].decode(),
                        "before": orjson.loads(fields[b"before"]),
                        "after": orjson.loads(fields[b"after"]),
                    }
                )
                if len(out) >= limit:
                    break
            start = "(" + batch[-1][0].decode()
        return out

    async def bulk_load(self, kind: Kind, objects: dict[str, dict[str, Any]], batch: int = 5000) -> None:
        """Seed many objects at once (benchmarks and imports); one version bump at the end, no change log."""
        items = list(objects.items())
        for i in range(0, len(items), batch):
            async with self.redis.pipeline(transaction=False) as pipe:
                for ident, obj in items[i : i + batch]:
                    pipe.hset(obj_key(kind), ident, orjson.dumps(obj))
                    live = live_revision(obj) if kind == "services" else None
                    if live is not None:
                        pipe.hset(K_SNAP_SERVICES, ident, orjson.dumps(snapshot_service(live)))
                        if live.get("upstream_url"):
                            pipe.hset(upstreams_key(live["gateway"]), ident, live["upstream_url"])
                await pipe.execute()
        while True:  # a new version that no delta can describe
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(K_VERSION)
                    version = int(await pipe.get(K_VERSION) or 0) + 1
                    pipe.multi()
                    pipe.set(K_VERSION, version)
                    log_version(pipe, version, b'"*"')
                    pipe.publish(CHANNEL, str(version))
                    await pipe.execute()
                    return
                except WatchError:
                    continue


def log_version(pipe: Any, version: int, touched: bytes) -> None:
    """Queue the snaplog entry of a new version; every version has one, so a gap in the log is a trimmed past."""
    pipe.xadd(K_SNAPLOG, {"touched": touched}, id=f"{version}-1", maxlen=SNAPLOG_LENGTH, approximate=True)
