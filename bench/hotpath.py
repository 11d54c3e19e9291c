"""The gateway's own Python cost per call, in process: the hot path from request in to log phase, upstream stubbed.

    python -m bench.hotpath [--policies all|none|a,b] [--calls N] [--role local|home|provider] [--profile]

No server and no network: a `CallHandler` is driven directly with the bench's request (the same service, grant and
headers as bench/mesh.py), the upstream answers a canned record instantly, and the log phase runs as in the app.
What it prints (µs per call) is what the gateway adds on top of its HTTP server and the upstream round trip, so a
change to the hot path can be judged in seconds and without the noise of a shared machine's load tests. Redis
(quota, meter) is an embedded server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.app import chain_config
from gateway.assertions import AssertionSigner
from gateway.calls import CallHandler
from gateway.settings import GatewaySettings, parse_policies
from gateway.upstream import UpstreamResponse
from lienthong import keys, tokens
from lienthong.redis_connection import EmbeddedRedis
from lienthong.snapshot import Snapshot
from policies.chain import build_chain

SERVICE = "VN/GOV/BENCH/echo/record"
CONSUMER = "VN/GOV/BTP/justice"
PURPOSE = "benchmark"
RECORD = b'{"id":"001203004567","full_name":"NGUYEN VAN A","birth_date":"2003-04-05","status":"ok"}'


class StubUpstream:
    """Answers every call at once with the bench record, as the nginx upstream would."""

    async def call(self, **kwargs: Any) -> UpstreamResponse:
        del kwargs
        return UpstreamResponse(200, [("content-type", "application/json")], RECORD)


class StubSnapshots:
    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.confirmed_at = time.time() + 3600
        self.max_age = 600.0


def snapshot_doc(gw_key: keys.PrivateKey, other_key: keys.PrivateKey, client_key: keys.PrivateKey,
                 province_key: keys.PrivateKey) -> dict[str, Any]:
    return {
        "version": 1, "instance": "VN", "gateway": "national",
        "members": [{"id": "VN/GOV/BTP", "home_gateway": "national"},
                    {"id": "VN/GOV/BENCH", "home_gateway": "national"},
                    {"id": "VN/PROV/NGHEAN", "home_gateway": "nghean"}],
        "subsystems": [],
        "gateways": [{"code": "national", "base_url": "http://127.0.0.1:1", "keys": [keys.public_jwk(gw_key)]},
                     {"code": "nghean", "base_url": "http://127.0.0.1:2", "keys": [keys.public_jwk(other_key)]}],
        "services": [{"id": SERVICE, "provider": "VN/GOV/BENCH/echo", "code": "record", "gateway": "national",
                      "approved": True, "timeout_ms": 5000,
                      "endpoints": [{"method": "GET", "path": "/record/{id}", "enabled": True,
                                     "subject_param": "id"}]}],
        "upstreams": {SERVICE: "http://127.0.0.1:3"},
        "clients": [{"subsystem": CONSUMER, "keys": [keys.public_jwk(client_key)]},
                    {"subsystem": "VN/PROV/NGHEAN/civil-status", "keys": [keys.public_jwk(province_key)]}],
        "grants": [{"id": f"g-{i}", "consumer": consumer, "service": SERVICE, "endpoints": "*", "purposes": [PURPOSE],
                    "fields": ["id", "full_name", "birth_date"], "quota": {"per_minute": 10**9, "per_day": 10**10},
                    "revoked": False} for i, consumer in enumerate((CONSUMER, "VN/PROV/NGHEAN/civil-status"))],
    }  # fmt: skip


async def drive(policies: str, calls: int, role: str, profile: bool, workdir: Path) -> float:
    redis = EmbeddedRedis(workdir / "redis", durable=False)
    redis.start()
    try:
        gw_key, other_key, client_key = keys.generate(), keys.generate(), keys.generate()
        kid = keys.public_jwk(gw_key)["kid"]
        settings = GatewaySettings(
            code="national", registry_url="http://127.0.0.1:1", registry_key_file=workdir / "none",
            key_file=workdir / "none", kid=kid, data_dir=workdir / "data", host="127.0.0.1", port=1, workers=1,
            max_snapshot_age=600, body_limit=1 << 20, policies=parse_policies(policies), redis_url=redis.url,
            trace_sample_ratio=0.01, breaker_failures=5, breaker_open_seconds=5, snapshot_wait=30,
        )  # fmt: skip
        settings.data_dir.mkdir(parents=True)
        chain = build_chain(chain_config(settings, gw_key))
        await chain.start()
        snapshot = Snapshot(snapshot_doc(gw_key, other_key, client_key, keys.generate()))
        upstream = StubUpstream()
        handler = CallHandler(
            code="national", snapshots=StubSnapshots(snapshot), chain=chain,  # type: ignore[arg-type]
            signer=AssertionSigner("national", gw_key, kid), upstream=lambda: upstream,  # type: ignore[arg-type,return-value]
            authn_enabled="authn" in settings.policies,
        )  # fmt: skip
        consumer = CONSUMER if role != "provider" else "VN/PROV/NGHEAN/civil-status"
        token = tokens.sign(client_key, keys.public_jwk(client_key)["kid"],
                            {"iss": consumer, "sub": consumer, "aud": "national"}, lifetime=300)  # fmt: skip
        other = AssertionSigner("nghean", other_key, keys.public_jwk(other_key)["kid"])
        base = {"host": "127.0.0.1", "user-agent": "wrk", "authorization": f"Bearer {token}",
                "x-road-client": consumer, "x-purpose": PURPOSE}  # fmt: skip
        path = f"/r1/{SERVICE}/record/001203004567"

        def headers_for(i: int) -> dict[str, str]:
            if role != "provider":
                return dict(base)
            claims = {"iss": "nghean", "aud": "national", "sub": consumer, "svc": SERVICE, "purpose": PURPOSE,
                      "jti": f"bench-{i}", "grant": "g-1"}  # fmt: skip
            return {"host": "127.0.0.1", "x-lienthong-assertion": other.sign(claims), "x-road-id": f"bench-{i}"}

        prepared = [headers_for(i) for i in range(calls)] if role == "provider" else None
        profiler = cProfile.Profile() if profile else None
        total = 0.0
        for i in range(calls):
            headers = prepared[i] if prepared is not None else headers_for(i)
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
            started = time.time()
            reply, ctx = await handler.handle("GET", path, b"", headers, b"", started)
            if ctx is not None:
                ctx.response_out = time.time()
            metrics.count(ctx.role if ctx else "none", reply.status, reply.error, 0.001)
            if ctx is not None and ctx.service is not None:
                chain.log(ctx)
            total += time.perf_counter() - t0
            if profiler is not None:
                profiler.disable()
            if reply.status != 200:
                raise SystemExit(f"call {i} answered {reply.status}: {reply.body[:300]!r}")
        await chain.stop()
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return total / calls * 1e6
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="all")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--role", choices=("local", "provider"), default="local")
    parser.add_argument("--profile", action="store_true", help="cProfile the calls and print the top functions")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lienthong-hotpath-") as tmp:
        per_call = asyncio.run(drive(args.policies, args.calls, args.role, args.profile, Path(tmp)))
    sys.stdout.write(f"--policies {args.policies} --role {args.role}: {per_call:.1f} µs per call (upstream stubbed)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
