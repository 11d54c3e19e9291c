"""Benchmark of the snapshot builder (protocol §7) in process: seed a scratch Redis with N services and M grants, then
time a full snapshot (the common part read and signed once, then one gateway's part), the same for a second gateway,
one grant revocation through Store.change, and the delta it makes, for a first and a second gateway.

Times are wall seconds and, beside them, CPU seconds of this process (time.process_time: every thread, so the
common part signed off the loop counts). `make bench` calls run(); tests call it with a small case. The world is
also bench/revocation.py's. Use a scratch Redis: the seed writes under the registry's own key prefix.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

from lienthong import keys
from lienthong.keys import PrivateKey
from lienthong.redis_connection import EmbeddedRedis, async_single_client
from registry.snapshot_builder import SnapshotBuilder
from registry.store import Store, Tx

GATEWAYS = 35


def _doc(i: int) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": f"Service {i}", "version": "1"},
        "paths": {
            "/records/{id}": {
                "get": {
                    "operationId": "getRecord",
                    "summary": f"Read record of service {i}",
                    "parameters": [{"name": "id", "in": "path", "required": True, "x-lienthong-subject": True}],
                    "responses": {"200": {"description": "found"}},
                }
            }
        },
    }


def gateway_code(g: int) -> str:
    return f"gw{g:02d}"


def grant_id(n: int) -> str:
    return f"g-{n:016x}"


def world(services: int, grants: int, gateways: int = GATEWAYS) -> dict[str, dict[str, dict[str, Any]]]:
    """The objects to seed, by kind: services spread over `gateways` gateways, grants over consumers and services."""
    gw_key = keys.public_jwk(keys.generate())
    gws = {
        gateway_code(g): {"code": gateway_code(g), "base_url": f"http://10.0.{g // 250}.{g % 250}:8700",
                          "keys": [gw_key], "version": 1}
        for g in range(gateways)
    }  # fmt: skip
    members: dict[str, dict[str, Any]] = {}
    subsystems: dict[str, dict[str, Any]] = {}
    svc: dict[str, dict[str, Any]] = {}
    for i in range(services):
        member = f"VN/GOV/M{i // 10:04d}"
        subsystem = f"{member}/sub{i % 10}"
        members[member] = {"id": member, "name": member, "home_gateway": gateway_code(i % gateways), "version": 1}
        subsystems[subsystem] = {"id": subsystem, "member": member, "name": subsystem, "version": 1}
        sid = f"{subsystem}/svc"
        svc[sid] = {
            "id": sid, "provider": subsystem, "code": "svc", "version_label": "v1", "name": f"Service {i}",
            "description": "benchmark service", "gateway": gateway_code(i % gateways), "approved": True,
            "timeout_ms": 5000, "upstream_url": f"http://10.1.{i // 250}.{i % 250}:8080", "openapi": _doc(i),
            "endpoints": [{"method": "GET", "path": "/records/{id}", "operation_id": "getRecord",
                           "summary": f"Read record of service {i}", "enabled": True, "subject_param": "id"}],
            "version": 1,
        }  # fmt: skip
    consumers = list(subsystems)
    service_ids = list(svc)
    clients = {
        s: {"subsystem": s, "keys": [{**keys.public_jwk(keys.generate()), "revoked": False}], "version": 1}
        for s in consumers[:2000]
    }
    grant_objs = {
        grant_id(n): {
            "id": grant_id(n), "consumer": consumers[n % len(consumers)],
            "service": service_ids[(n * 7) % len(service_ids)],
            "endpoints": [{"method": "GET", "path": "/records/{id}"}],
            "purposes": ["benchmark"], "fields": ["id", "name"], "quota": {"per_minute": 600, "per_day": 100000},
            "revoked": False, "version": 1,
        }
        for n in range(grants)
    }  # fmt: skip
    return {
        "gateways": gws,
        "members": members,
        "subsystems": subsystems,
        "services": svc,
        "clients": clients,
        "grants": grant_objs,
    }


async def seed(
    redis_url: str, services: int, grants: int, gateways: int = GATEWAYS, skip: tuple[str, ...] = ()
) -> None:
    """Bulk-load the world into the registry's keys (one version that no delta reaches back to); `skip` leaves out
    kinds registered otherwise (bench/revocation.py registers its gateways through the API, with their keys)."""
    redis = async_single_client(redis_url, who="the snapshot benchmark")  # transactions on one primary
    try:
        store = Store(redis)
        for kind, objects in world(services, grants, gateways).items():
            if kind not in skip:
                await store.bulk_load(kind, objects)  # type: ignore[arg-type]
    finally:
        await redis.aclose()


class _Clock:
    """Wall and CPU seconds of one step."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


async def _revoke(store: Store, ident: str) -> None:
    """What the registry's revoke handler does (registry/handlers.py revoke_grant), without the HTTP around it."""

    async def change(tx: Tx) -> None:
        before = await tx.get("grants", ident)
        assert before is not None, ident
        tx.put("grants", ident, before, {**before, "revoked": True}, "grants.revoke")

    await store.change("admin:bench", change)


async def _run(redis_url: str, services: int, grants: int, key: PrivateKey) -> dict[str, float]:
    await seed(redis_url, services, grants)
    redis = async_single_client(redis_url, who="the snapshot benchmark")
    try:
        store = Store(redis)
        builder = SnapshotBuilder(redis, key, keys.public_jwk(key)["kid"])
        out: dict[str, float] = {"services": float(services), "grants": float(grants)}
        clock = _Clock()
        full = await builder.full(gateway_code(0))
        out["full_s"], out["full_cpu_s"] = clock.lap()
        await builder.full(gateway_code(1))  # the common part is signed already: only this gateway's part
        out["full_other_gateway_s"], out["full_other_gateway_cpu_s"] = clock.lap()
        await _revoke(store, grant_id(0))
        out["change_s"], out["change_cpu_s"] = clock.lap()
        delta = await builder.delta(gateway_code(0), full.version, full.version + 1)
        out["delta_s"], out["delta_cpu_s"] = clock.lap()
        other = await builder.delta(gateway_code(1), full.version, full.version + 1)
        out["delta_other_gateway_s"], out["delta_other_gateway_cpu_s"] = clock.lap()
        if delta is None or other is None or delta.kind != "delta":
            raise RuntimeError(f"no delta from version {full.version} after one revocation")
        out["full_mb"] = len(full.body) / 1e6
        out["delta_bytes"] = float(len(delta.body))
        return out
    finally:
        await redis.aclose()


def run(services: int = 10_000, grants: int = 100_000, redis_url: str | None = None) -> dict[str, float]:
    """Seed `services` services and `grants` grants; seconds (wall and CPU) and sizes of full snapshots and deltas.

    Without redis_url a throw-away redis-server is started (and stopped) for the run."""
    key = keys.generate()
    if redis_url is not None:
        return asyncio.run(_run(redis_url, services, grants, key))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp, durable=False) as server:
        return asyncio.run(_run(server.url, services, grants, key))


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:>26}: {value:.4f}")
