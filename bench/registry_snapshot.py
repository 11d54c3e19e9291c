"""Benchmark of the snapshot build: seed a scratch Redis with N services and M grants, then time the build of one
gateway's document and its JWS signing. `make bench` calls run(); tests call it with a small case.

Use a scratch Redis: the seed writes under the registry's own key prefix.
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
from registry.store import Store

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


def _world(services: int, grants: int) -> dict[str, dict[str, dict[str, Any]]]:
    gw_key = keys.public_jwk(keys.generate())
    gateways = {
        f"gw{g:02d}": {"code": f"gw{g:02d}", "base_url": f"http://10.0.0.{g}:8700", "keys": [gw_key], "version": 1}
        for g in range(GATEWAYS)
    }
    members: dict[str, dict[str, Any]] = {}
    subsystems: dict[str, dict[str, Any]] = {}
    svc: dict[str, dict[str, Any]] = {}
    for i in range(services):
        member = f"VN/GOV/M{i // 10:04d}"
        subsystem = f"{member}/sub{i % 10}"
        members[member] = {"id": member, "name": member, "home_gateway": f"gw{i % GATEWAYS:02d}", "version": 1}
        subsystems[subsystem] = {"id": subsystem, "member": member, "name": subsystem, "version": 1}
        sid = f"{subsystem}/svc"
        svc[sid] = {
            "id": sid, "provider": subsystem, "code": "svc", "version_label": "v1", "name": f"Service {i}",
            "description": "benchmark service", "gateway": f"gw{i % GATEWAYS:02d}", "approved": True,
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
        f"g-{n:016x}": {
            "id": f"g-{n:016x}", "consumer": consumers[n % len(consumers)],
            "service": service_ids[(n * 7) % len(service_ids)],
            "endpoints": [{"method": "GET", "path": "/records/{id}"}],
            "purposes": ["benchmark"], "fields": ["id", "name"], "quota": {"per_minute": 600, "per_day": 100000},
            "revoked": False, "version": 1,
        }
        for n in range(grants)
    }  # fmt: skip
    return {
        "gateways": gateways,
        "members": members,
        "subsystems": subsystems,
        "services": svc,
        "clients": clients,
        "grants": grant_objs,
    }


async def _run(redis_url: str, services: int, grants: int, key: PrivateKey) -> dict[str, float]:
    redis = async_single_client(redis_url, who="the snapshot benchmark")  # transactions on one primary
    try:
        store = Store(redis)
        for kind, objects in _world(services, grants).items():
            await store.bulk_load(kind, objects)  # type: ignore[arg-type]
        builder = SnapshotBuilder(redis, key, keys.public_jwk(key)["kid"])
        started = time.perf_counter()
        version, upstreams, parts = await builder._read("gw00", with_body=True)
        read_s = time.perf_counter() - started
        body = builder.shared_body(parts)
        build_s = time.perf_counter() - started
        jws = builder.sign(builder.header(version, "gw00", upstreams), builder.encode_body(body))
        total_s = time.perf_counter() - started
        again = time.perf_counter()
        await builder.build("gw01")  # a second gateway at the same version reuses the shared body
        other_gateway_s = time.perf_counter() - again
        return {
            "services": float(services),
            "grants": float(grants),
            "read_s": read_s,
            "build_s": build_s,
            "sign_s": total_s - build_s,
            "total_s": total_s,
            "other_gateway_s": other_gateway_s,
            "body_mb": len(body) / 1e6,
            "jws_mb": len(jws) / 1e6,
        }
    finally:
        await redis.aclose()


def run(services: int = 10_000, grants: int = 100_000, redis_url: str | None = None) -> dict[str, float]:
    """Seed `services` services and `grants` grants, build and sign one gateway's snapshot; seconds and sizes.

    Without redis_url a throw-away redis-server is started (and stopped) for the run."""
    key = keys.generate()
    if redis_url is not None:
        return asyncio.run(_run(redis_url, services, grants, key))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp, durable=False) as server:
        return asyncio.run(_run(server.url, services, grants, key))


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:>16}: {value:.3f}")
