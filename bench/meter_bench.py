"""What the policy chain costs per call, phase by phase, and how fast the meter drains its spool into Redis.

    python -m bench.meter_bench [--calls N] [--redis URL] [--json]

Measures in one process, single-threaded (no load generator): µs per call for authn (cached token), authz, quota
(leased), minimize, meter.log, audit.log, trace (ratio 1.0 and 0.0), the full chain; then records/s for the meter's
spool -> Redis flush. Starts an embedded Redis in a temporary folder unless --redis is given.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from lienthong.redis_connection import EmbeddedRedis
from policies.audit import Audit
from policies.authn import Authn
from policies.authz import Authz
from policies.base import CallContext
from policies.chain import ALL_POLICIES, ChainConfig, build_chain
from policies.meter import Meter
from policies.minimize import Minimize
from policies.quota import Quota
from policies.trace import Trace
from tests.test_policy_fixtures import World, client_headers, context

BODY = orjson.dumps({"id": "040203004567", "full_name": "Nguyen Van A", "religion": "none", "phone": "0912345678",
                     "household": {"id": "HH1", "head": "Nguyen Van B", "members": [{"id": "x"}] * 3}})  # fmt: skip


def per_call(fn: Callable[[], object], calls: int) -> float:
    for _ in range(min(200, calls)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


async def measure(calls: int, redis_url: str, work: Path) -> dict[str, Any]:
    world = World(quota={"per_minute": 10**9, "per_day": 10**12})
    snap = world.snapshot()
    token = world.client_token(aud="nghean", lifetime=300)  # the consumer's home gateway: authn accepts it there only
    headers = client_headers(token)

    def fresh() -> CallContext:
        ctx = context(snap, headers=headers)
        ctx.status, ctx.response_body = 200, BODY
        ctx.response_headers = [("content-type", "application/json")]
        return ctx

    authn, authz, quota, minimize = Authn("nghean"), Authz(), Quota(redis_url), Minimize()
    granted = fresh()
    authn.access(granted)
    authz.access(granted)
    meter = Meter("national", work / "m", redis_url)
    meter.open()
    audit = Audit("national", work / "a", b"k")
    audit.writer.open()
    traced, untraced = Trace("national", 1.0), Trace("national", 0.0)

    def with_grant() -> CallContext:
        ctx = fresh()
        ctx.client, ctx.purpose, ctx.grant = granted.client, granted.purpose, granted.grant
        return ctx

    def trace_call(policy: Trace) -> Callable[[], None]:
        def run() -> None:
            ctx = fresh()
            policy.access(ctx)
            policy.upstream_start(ctx)
            policy.response(ctx)
            policy.log(ctx)

        return run

    chain = build_chain(ChainConfig("nghean", work / "c", redis_url, ALL_POLICIES - {"trace"}, b"k"))
    await chain.start()

    def full() -> None:
        ctx = fresh()
        chain.access(ctx)
        chain.response(ctx)
        chain.log(ctx)

    results = {
        "context (baseline)": per_call(fresh, calls),
        "authn (cached token)": per_call(lambda: authn.access(fresh()), calls),
        "authz": per_call(lambda: authz.access(with_grant()), calls),
        "quota (leased)": per_call(lambda: quota.access(with_grant()), calls),
        "minimize": per_call(lambda: minimize.response(with_grant()), calls),
        "meter.log": per_call(lambda: meter.log(granted), calls),
        "audit.log": per_call(lambda: audit.log(granted), calls),
        "trace ratio 1.0": per_call(trace_call(traced), calls),
        "trace ratio 0.0": per_call(trace_call(untraced), calls),
        "chain without trace": per_call(full, calls),
    }
    await chain.stop()
    start = time.perf_counter()
    meter.flush_once()
    drained = calls + min(200, calls)
    flush_rate = drained / (time.perf_counter() - start)
    audit.writer.close()
    await traced.stop()
    await untraced.stop()
    return {"us_per_call": {k: round(v, 2) for k, v in results.items()}, "meter_flush_records_per_s": round(flush_rate)}


def run(redis_url: str, calls: int = 20000) -> dict[str, float]:
    """make bench's metering case: the meter's spool -> Redis flush rate and each phase's cost, flat figures."""
    with tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp:
        out = asyncio.run(measure(calls, redis_url, Path(tmp)))
    flat: dict[str, float] = {"flush_records_per_s": float(out["meter_flush_records_per_s"])}
    for name, value in out["us_per_call"].items():
        flat["us_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")] = value
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp:
        server = None
        url = args.redis
        if url is None:
            server = EmbeddedRedis(Path(tmp) / "redis", durable=False)
            url = server.start()
        try:
            out = asyncio.run(measure(args.calls, url, Path(tmp)))
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"policy cost per call ({args.calls} calls, one thread)")
    table.add_column("phase")
    table.add_column("µs/call", justify="right")
    for name, value in out["us_per_call"].items():
        table.add_row(name, f"{value:.2f}")
    Console().print(table)
    Console().print(f"meter spool -> Redis: {out['meter_flush_records_per_s']:,} records/s")


if __name__ == "__main__":
    main()
