"""trace: two real processes (a home and a hosting gateway's trace policy) write spans to one JSON-lines file; the
spans form one trace: home server -> home client -> provider server -> provider client (to the connector)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from policies.trace import Trace
from tests.test_policy_fixtures import World, context


async def _hop(gateway: str, role: str, inbound: str | None, status: int) -> str:
    policy = Trace(gateway, 1.0)
    headers = {"traceparent": inbound} if inbound else {}
    ctx = context(World().snapshot(), role=role, headers=headers, gateway=gateway)  # type: ignore[arg-type]
    ctx.provider_gateway = "national"
    policy.access(ctx)
    policy.upstream_start(ctx)
    outbound = ctx.traceparent
    ctx.request_out = time.time()
    time.sleep(0.01)
    ctx.status = status
    ctx.response_in = time.time()
    policy.response(ctx)
    ctx.response_out = time.time()
    policy.log(ctx)
    await policy.stop()
    assert outbound is not None
    return outbound


def run_hop(trace_file: Path, gateway: str, role: str, inbound: str, status: int) -> str:
    env = {**os.environ, "LIENTHONG_TRACE_FILE": str(trace_file)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    out = subprocess.run(
        [sys.executable, "-m", "tests.test_policy_trace", gateway, role, inbound, str(status)],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_one_call_across_two_gateways_is_one_trace(tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    to_provider = run_hop(trace_file, "nghean", "home", "-", 200)
    to_connector = run_hop(trace_file, "national", "provider", to_provider, 502)
    spans = [orjson.loads(line) for line in trace_file.read_bytes().splitlines()]
    assert len(spans) == 4
    assert len({s["trace_id"] for s in spans}) == 1
    by_id = {s["span_id"]: s for s in spans}
    home_server = next(s for s in spans if s["kind"] == "SERVER" and s["service"] == "lienthong-gateway-nghean")
    home_client = next(s for s in spans if s["kind"] == "CLIENT" and s["service"] == "lienthong-gateway-nghean")
    prov_server = next(s for s in spans if s["kind"] == "SERVER" and s["service"] == "lienthong-gateway-national")
    prov_client = next(s for s in spans if s["kind"] == "CLIENT" and s["service"] == "lienthong-gateway-national")
    assert home_server["parent_span_id"] is None
    assert by_id[home_client["parent_span_id"]] is home_server
    assert by_id[prov_server["parent_span_id"]] is home_client  # joined through the traceparent header
    assert by_id[prov_client["parent_span_id"]] is prov_server
    assert to_provider.split("-")[2] == home_client["span_id"]
    assert to_connector.split("-")[2] == prov_client["span_id"]
    assert prov_server["status"] == "ERROR" and home_server["status"] != "ERROR"
    assert home_server["start"] <= home_client["start"] <= home_client["end"] <= home_server["end"]
    assert "040203004567" not in trace_file.read_text()  # the personal ID in the path never reaches a span


def test_unsampled_trace_still_propagates_but_records_nothing(tmp_path: Path) -> None:
    os.environ["LIENTHONG_TRACE_FILE"] = str(tmp_path / "none.jsonl")
    try:
        policy = Trace("nghean", 0.0)
        ctx = context(World().snapshot(), role="home")
        policy.access(ctx)
        policy.upstream_start(ctx)
        assert ctx.traceparent is not None and int(ctx.traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # not sampled
        policy.log(ctx)
        asyncio.run(policy.stop())
    finally:
        del os.environ["LIENTHONG_TRACE_FILE"]
    assert (tmp_path / "none.jsonl").read_bytes() == b""


if __name__ == "__main__":
    gw, role_arg, inbound_arg, status_arg = sys.argv[1:5]
    print(asyncio.run(_hop(gw, role_arg, None if inbound_arg == "-" else inbound_arg, int(status_arg))))
