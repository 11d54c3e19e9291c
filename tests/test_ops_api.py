"""The operations API over a real uvicorn server: mesh-wide counts from Redis, audit paging by time window,
latency percentiles, health, and problem+json naming the field on bad input."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.ops_api import build_ops_app
from lienthong.redis_connection import EmbeddedRedis
from policies.audit import Audit
from policies.chain import ChainConfig
from policies.meter import Meter
from tests.procs import lienthong, ops_api
from tests.test_policy_fixtures import CONSUMER, OTHER_CONSUMER, World, context

HOUR_AGO = time.time() - 3600


def make_app() -> Any:
    """uvicorn --factory entry: the ops app of gateway `nghean` over the data the test seeded."""
    cfg = ChainConfig("nghean", Path(os.environ["OPS_TEST_DIR"]), os.environ["OPS_TEST_REDIS"], frozenset(), b"k")
    snap = World().snapshot()
    return build_ops_app(cfg, lambda: snap)


def seed(data_dir: Path, url: str) -> None:
    """30 calls seen at the home gateway (20 from CONSUMER, 10 from OTHER_CONSUMER, 3 of them 4xx) and the same 10
    seen again at the provider; 25 audit records one minute apart, the oldest 25 minutes ago."""
    snap = World().snapshot()
    meter = Meter("nghean", data_dir, url)
    meter.open()
    audit = Audit("nghean", data_dir, b"k")
    audit.writer.open()
    for i in range(40):
        role = "home" if i < 30 else "provider"
        ctx = context(snap, role=role, gateway="nghean")  # type: ignore[arg-type]
        ctx.client = CONSUMER if i < 20 or i >= 30 else OTHER_CONSUMER
        ctx.consumer_gateway, ctx.provider_gateway = "nghean", "national"
        ctx.status = 403 if i in (5, 6, 7) else 200
        ctx.request_in = time.time() - 60
        ctx.response_out = ctx.request_in + 0.004
        meter.log(ctx)
    meter.flush_once()
    for i in range(25):
        ctx = context(snap, role="home", gateway="nghean")
        ctx.client, ctx.status = CONSUMER, 200
        ctx.request_in = time.time() - 60 * (25 - i)
        audit.log(ctx)
    audit.writer.close()


@pytest.fixture(scope="module")
def ops(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("gw")
    url = redis_server.url.rsplit("/", 1)[0] + "/5"  # a database of its own: other tests flush and fill db 0
    redis.Redis.from_url(url).flushdb()
    seed(data_dir, url)
    with ops_api("tests.test_ops_api:make_app", data_dir, url) as base:
        yield base


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


WINDOW = {"from": iso(time.time() - 7200), "to": iso(time.time() + 3600)}


def test_health_reports_snapshot_version_and_age(ops: str) -> None:
    body = httpx.get(f"{ops}/health").json()
    assert body["gateway"] == "nghean" and body["status"] == "ok"
    assert body["snapshot"]["version"] == 1 and body["snapshot"]["age_seconds"] >= 0


def test_transactions_count_each_call_once_mesh_wide(ops: str) -> None:
    r = httpx.get(f"{ops}/transactions", params={**WINDOW, "group_by": "consumer"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 30  # the provider's own count of the same calls is not added again
    assert {g["consumer"]: g["count"] for g in body["groups"]} == {CONSUMER: 20, OTHER_CONSUMER: 10}
    every = httpx.get(f"{ops}/transactions", params={**WINDOW, "roles": "all"}).json()
    assert every["total"] == 40


def test_transactions_by_outcome_service_and_day(ops: str) -> None:
    body = httpx.get(f"{ops}/transactions", params={**WINDOW, "group_by": "outcome,service,day"}).json()
    counts = {g["outcome"]: g["count"] for g in body["groups"]}
    assert counts == {"2xx": 27, "4xx": 3}
    assert {g["service"] for g in body["groups"]} == {"VN/GOV/BCA/population/persons"}
    assert all(len(g["day"]) == 10 for g in body["groups"])


def test_a_window_before_the_calls_counts_nothing(ops: str) -> None:
    body = httpx.get(f"{ops}/transactions", params={"from": "2020-01-01", "to": "2020-01-02"}).json()
    assert body == {**body, "total": 0, "groups": []}


def test_latency_percentiles(ops: str) -> None:
    body = httpx.get(f"{ops}/latency", params={**WINDOW, "service": "VN/GOV/BCA/population/persons"}).json()
    (item,) = body["items"]
    assert item["count"] == 30 and item["p50_ms"] == 5.0 and item["p99_ms"] == 5.0


def test_audit_pages_through_a_time_window_without_gaps_or_repeats(ops: str) -> None:
    window = {"from": iso(time.time() - 20.5 * 60), "to": iso(time.time() + 60)}
    seen: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        params = {**window, "limit": "7", **({"page_token": token} if token else {})}
        r = httpx.get(f"{ops}/audit", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += body["records"]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            break
    assert len(seen) == 20 and pages == 3  # the records 1..20 minutes old, 7 + 7 + 6
    times = [r["request_in_ts"] for r in seen]
    assert times == sorted(times)
    assert len({r["transaction_id"] for r in seen}) == 20


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/transactions", {"from": "yesterday", "to": WINDOW["to"]}, "from"),
        ("/transactions", {"to": WINDOW["to"]}, "from"),
        ("/transactions", {**WINDOW, "group_by": "service,colour"}, "group_by"),
        ("/transactions", {"from": WINDOW["to"], "to": WINDOW["from"]}, "to"),
        ("/transactions", {"from": "2026-11-23T07:00:00", "to": WINDOW["to"]}, "from"),  # no zone
        ("/transactions", {"from": "2000-01-01", "to": "2030-01-01"}, "to"),  # too long a window
        ("/audit", {**WINDOW, "limit": "0"}, "limit"),
        ("/audit", {**WINDOW, "limit": "10001"}, "limit"),
        ("/audit", {**WINDOW, "limit": "many"}, "limit"),
        ("/audit", {**WINDOW, "page_token": "not-a-token"}, "page_token"),
        ("/latency", {"from": WINDOW["from"], "to": "soon"}, "to"),
    ],
)
def test_bad_input_is_problem_json_naming_the_field(ops: str, path: str, params: dict[str, str], field: str) -> None:
    r = httpx.get(f"{ops}{path}", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == field and body["status"] == 400 and body["code"]


def test_unknown_path_is_problem_json(ops: str) -> None:
    r = httpx.get(f"{ops}/nothing-here")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


def test_metering_report_command_reads_the_same_counts(ops: str, redis_server: EmbeddedRedis) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    argv = lienthong("metering", "report", "--from", WINDOW["from"], "--to", WINDOW["to"], "--by", "consumer,outcome",
                     "--redis", url)  # fmt: skip
    as_json = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    body = orjson.loads(as_json.stdout)
    assert body["total"] == 30
    assert {(g["consumer"], g["outcome"]): g["count"] for g in body["groups"]} == {
        (CONSUMER, "2xx"): 17, (CONSUMER, "4xx"): 3, (OTHER_CONSUMER, "2xx"): 10
    }  # fmt: skip
    table = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "total" in table.stdout and "30" in table.stdout
    bad = subprocess.run([*argv[:-4], "--by", "colour", "--redis", url], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--by" in bad.stderr
