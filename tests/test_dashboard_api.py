"""The dashboard's queries of the operations API, without a browser: a real uvicorn serving the ops app over a real
Redis seeded through the real meter, counts by minute for the last hour and by day for 30 days, top consumers, the
platform/provider error split, latency per service, gateway health from heartbeats, and the page's own files."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.ops_api import SPEC, build_ops_app
from gateway.ops_heartbeat import HEARTBEAT_TTL, KNOWN_KEY, Heartbeat
from lienthong.redis_connection import EmbeddedRedis
from policies.chain import ChainConfig
from policies.meter import Meter
from policies.meter_query import DayCache, timeseries
from policies.meter_store import GATEWAYS_KEY, MINUTE_TTL, counts_key, minute_key
from tests.ops_support import schemathesis_headers, standalone_gate, write_operator_key
from tests.procs import ops_api
from tests.test_policy_fixtures import CONSUMER, OTHER_CONSUMER, SERVICE, World, context

NOW = time.time()
# (consumer, home gateway, role, status, error code, seconds ago, latency ms, calls)
CALLS = [
    (CONSUMER, "nghean", "home", 200, None, 90, 4, 12),
    (CONSUMER, "nghean", "home", 500, None, 90, 4, 2),  # the provider's own 500: a provider failure
    (OTHER_CONSUMER, "hanoi", "home", 502, "upstream-failed", 20 * 60, 40, 3),  # its connector failed: the provider's
    (OTHER_CONSUMER, "hanoi", "home", 403, "access-denied", 20 * 60, 4, 5),  # no grant: not permitted, an answer
    (CONSUMER, "nghean", "provider", 200, None, 90, 4, 10),  # the provider gateway's own count: not a transaction
    (CONSUMER, "nghean", "home", 200, None, 75 * 60, 4, 4),  # older than the last hour
    (CONSUMER, "nghean", "home", 200, None, 3 * 86400, 4, 7),  # three days ago
]


def make_app() -> Any:
    """uvicorn --factory entry: the ops app of gateway `nghean` over the data the test seeded."""
    data_dir = Path(os.environ["OPS_TEST_DIR"])
    cfg = ChainConfig("nghean", data_dir, os.environ["OPS_TEST_REDIS"], frozenset(), b"k")
    snap = World().snapshot()
    return build_ops_app(cfg, lambda: snap, standalone_gate(data_dir, "nghean", lambda: snap))


def seed(data_dir: Path, url: str) -> None:
    snap = World().snapshot()
    meter = Meter("nghean", data_dir, url)
    meter.open()
    for consumer, gw, role, status, code, ago, latency_ms, n in CALLS:
        for _ in range(n):
            ctx = context(snap, role=role, gateway="nghean")  # type: ignore[arg-type]
            ctx.client, ctx.consumer_gateway, ctx.provider_gateway = consumer, gw, "national"
            ctx.status, ctx.error_code = status, code
            ctx.request_in = NOW - ago
            ctx.response_out = ctx.request_in + latency_ms / 1000
            meter.log(ctx)
    meter.flush_once()


@pytest.fixture(scope="module")
def db_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/6"  # a database of its own: other tests flush and fill db 0


@pytest.fixture(scope="module")
def ops(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("gw")
    redis.Redis.from_url(db_url).flushdb()
    seed(data_dir, db_url)
    HTTP.headers.update(write_operator_key(data_dir))
    with ops_api("tests.test_dashboard_api:make_app", data_dir, db_url) as base:
        yield base


HTTP = httpx.Client(timeout=30)  # carries the operator's token once the fixture made it


def get(url: str, **params: str) -> dict[str, Any]:
    r = HTTP.get(url, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def minute_label(ago: float) -> str:
    return datetime.fromtimestamp(NOW - ago, UTC).strftime("%Y-%m-%dT%H:%M:00Z")


def day_label(ago: float) -> str:
    return datetime.fromtimestamp(NOW - ago, UTC).strftime("%Y-%m-%d")


def test_last_hour_by_minute_counts_each_transaction_once(ops: str) -> None:
    body = get(f"{ops}/timeseries", window="hour", group_by="consumer")
    assert body["step"] == "minute" and len(body["buckets"]) == 60
    assert body["total"] == 22  # 14 + 8; the provider's own count and the older calls are not in it
    series = {s["key"]: s for s in body["series"]}
    assert {k: s["total"] for k, s in series.items()} == {CONSUMER: 14, OTHER_CONSUMER: 8}
    assert [s["key"] for s in body["series"]] == [CONSUMER, OTHER_CONSUMER]  # largest first
    at = body["buckets"].index(minute_label(90))
    assert series[CONSUMER]["counts"][at] == 14 and sum(series[CONSUMER]["counts"]) == 14
    assert series[OTHER_CONSUMER]["counts"][body["buckets"].index(minute_label(20 * 60))] == 8
    by_gateway = get(f"{ops}/timeseries", window="hour", group_by="gateway")
    assert {s["key"]: s["total"] for s in by_gateway["series"]} == {"nghean": 14, "hanoi": 8}
    by_service = get(f"{ops}/timeseries", window="hour")  # service is the default
    assert [(s["key"], s["total"]) for s in by_service["series"]] == [(SERVICE, 22)]


def test_last_30_days_by_day(ops: str) -> None:
    body = get(f"{ops}/timeseries", window="month", group_by="consumer")
    assert body["step"] == "day" and len(body["buckets"]) == 30 and body["buckets"][-1] == day_label(0)
    assert body["total"] == 33
    series = {s["key"]: s["counts"] for s in body["series"]}
    assert series[CONSUMER][body["buckets"].index(day_label(3 * 86400))] == 7
    assert sum(series[CONSUMER]) == 25 and sum(series[OTHER_CONSUMER]) == 8


def test_minute_counts_expire_and_hour_counts_stay(ops: str, db_url: str) -> None:
    client = redis.Redis.from_url(db_url)
    minute_ttl = client.ttl(counts_key("m", "nghean", minute_key(NOW - 90)))
    assert 0 < minute_ttl <= MINUTE_TTL
    assert 0 < client.ttl(counts_key("lm", "nghean", minute_key(NOW - 90))) <= MINUTE_TTL
    assert client.ttl(counts_key("h", "nghean", minute_key(NOW - 90)[:10])) == -1


def test_top_consumers_with_their_errors(ops: str) -> None:
    body = get(f"{ops}/top-consumers", window="hour", limit="1")
    assert body["total"] == 22
    (top,) = body["items"]
    assert top["consumer"] == CONSUMER and top["count"] == 14 and top["share"] == round(14 / 22, 4)
    assert (top["platform_failures"], top["provider_failures"], top["client_errors"]) == (0, 2, 0)
    month = get(f"{ops}/top-consumers", window="month")
    assert [(c["consumer"], c["count"]) for c in month["items"]] == [(CONSUMER, 25), (OTHER_CONSUMER, 8)]


def test_errors_split_answers_from_failures(ops: str) -> None:
    body = get(f"{ops}/errors", window="hour")
    assert body["total"] == 22
    assert body["outcomes"] == {"found": 12, "no-data": 0, "not-permitted": 5, "client-error": 0,
                                "provider-failure": 5, "platform-failure": 0}  # fmt: skip
    split = (body["answers"], body["client_errors"], body["provider_failures"], body["platform_failures"])
    assert split == (17, 0, 5, 0)
    assert body["answer_rate"] == round(17 / 22, 4) and body["provider_failure_rate"] == round(5 / 22, 4)
    assert body["client_error_rate"] == body["platform_failure_rate"] == 0.0
    (svc,) = body["services"]
    assert svc["service"] == SERVICE and svc["total"] == 22 and svc["provider_failures"] == 5


def test_latency_percentiles_per_service(ops: str) -> None:
    (item,) = get(f"{ops}/service-latency", window="hour")["items"]
    # 19 calls took 4 ms (bucket (2, 5]), 3 took 40 ms (bucket (20, 50]): each percentile is interpolated inside its
    # bucket, the median at 11 of 19 into the first, p95 at 1.9 of 3 into the second
    p50, p95, p99 = 2 + 3 * 11 / 19, 20 + 30 * (20.9 - 19) / 3, 20 + 30 * (21.78 - 19) / 3
    assert item == {"service": SERVICE, "count": 22, "p50_ms": round(p50, 3), "p95_ms": round(p95, 3),
                    "p99_ms": round(p99, 3)}  # fmt: skip
    (month,) = get(f"{ops}/service-latency", window="month")["items"]
    assert month["count"] == 33


def test_gateways_up_while_their_heartbeat_is_fresh(ops: str, db_url: str) -> None:
    client = redis.Redis.from_url(db_url)
    snap = World().snapshot()
    Heartbeat("hanoi", lambda: client, lambda: snap).beat_once()
    stale = Heartbeat("national", lambda: client, lambda: snap)
    stale.worker = "elsewhere:1"
    stale.beat_once(now=time.time() - HEARTBEAT_TTL - 5)  # its worker stopped beating 15 s ago
    client.hset(KNOWN_KEY, "retired", str(time.time() - 3600))  # heard from once, long gone
    deadline = time.monotonic() + 10
    while True:  # the served app's own heartbeat (nghean) starts with it
        body = get(f"{ops}/gateways")
        gws = {g["gateway"]: g for g in body["gateways"]}
        if gws["nghean"]["status"] == "up" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {k: g["status"] for k, g in gws.items()} == {
        "nghean": "up", "hanoi": "up", "national": "down", "retired": "down"
    }  # fmt: skip
    assert gws["nghean"]["snapshot_version"] == 1 and gws["nghean"]["workers"] == 1
    assert 0 <= gws["nghean"]["snapshot_age_seconds"] < 60 and gws["nghean"]["heartbeat_age_seconds"] < HEARTBEAT_TTL
    assert gws["national"]["snapshot_version"] is None and gws["national"]["heartbeat_age_seconds"] > HEARTBEAT_TTL
    assert gws["retired"]["heartbeat_age_seconds"] >= 3600


def test_dashboard_page_and_its_files_come_from_the_gateway_only(ops: str) -> None:
    page = HTTP.get(f"{ops}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'data-testid="total"' in page.text
    for name, kind in (("dashboard.js", "application/javascript"), ("dashboard.css", "text/css")):
        asset = HTTP.get(f"{ops}/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert f"dashboard/{name}" in page.text
        # the only absolute URL allowed is the SVG namespace, which is a name, not a download
        assert set(re.findall(r"https?://[^\s\"'`)]+", asset.text)) <= {"http://www.w3.org/2000/svg"}
    assert not re.findall(r"https?://", page.text)


@pytest.mark.parametrize("asset", ["nothing.js", ".hidden.css", "index.py", "..%5Cops_api.py"])
def test_unknown_dashboard_file_is_404_naming_the_asset(ops: str, asset: str) -> None:
    r = HTTP.get(f"{ops}/dashboard/{asset}")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "asset"


def test_no_way_out_of_the_dashboard_folder(ops: str) -> None:
    for path in ("/dashboard/..%2Fops_api.py", "/dashboard/../ops_api.py", "/dashboard/%2e%2e%2fops_heartbeat.py"):
        r = HTTP.get(f"{ops}{path}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), path
        assert "import" not in r.text


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/timeseries", {"window": "week"}, "window"),
        ("/timeseries", {"group_by": "outcome"}, "group_by"),
        ("/top-consumers", {"limit": "0"}, "limit"),
        ("/top-consumers", {"limit": "101"}, "limit"),
        ("/top-consumers", {"limit": "lots"}, "limit"),
        ("/errors", {"window": ""}, "window"),
        ("/service-latency", {"window": "year"}, "window"),
    ],
)
def test_bad_input_is_problem_json_naming_the_field(ops: str, path: str, params: dict[str, str], field: str) -> None:
    r = HTTP.get(f"{ops}{path}", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field


DASHBOARD_PATHS = ("/timeseries", "/top-consumers", "/errors", "/service-latency", "/gateways", "/dashboard",
                   "/dashboard/{asset}")  # fmt: skip
OPERATIONS = [r.ok() for r in schemathesis.openapi.from_path(SPEC).get_all_operations()
              if isinstance(r, Ok) and r.ok().path in DASHBOARD_PATHS]  # fmt: skip


# an operation without parameters has no invalid request to generate
CASES = [(op, mode) for op in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or op.path not in ("/gateways", "/dashboard")]  # fmt: skip


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{op.label}-{mode.value}" for op, mode in CASES])
def test_dashboard_operations_conform_to_the_spec(ops: str, operation: Any, mode: GenerationMode) -> None:
    """Generated requests never get a 5xx nor an answer off the spec; invalid ones are refused."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        headers = schemathesis_headers(case, {"Authorization": HTTP.headers["authorization"]})
        case.call_and_validate(base_url=ops, checks=checks, timeout=10, headers=headers)

    run()


def test_month_reads_past_days_once_and_today_every_time(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = datetime.now(UTC)
    field = f"{CONSUMER}|{SERVICE}|GET /persons/{{id}}|nghean|national|home|2xx"
    two_days_ago = datetime.fromtimestamp(now.timestamp() - 2 * 86400, UTC)
    client.sadd(GATEWAYS_KEY, "nghean")
    client.hset(counts_key("h", "nghean", f"{two_days_ago:%Y%m%d%H}"), field, 3)
    client.hset(counts_key("h", "nghean", f"{now:%Y%m%d%H}"), field, 1)
    cache = DayCache(ttl=60)
    assert timeseries(client, "month", "consumer", now, cache)["total"] == 4
    client.hincrby(counts_key("h", "nghean", f"{two_days_ago:%Y%m%d%H}"), field, 10)  # a late replay, a past day
    client.hincrby(counts_key("h", "nghean", f"{now:%Y%m%d%H}"), field, 5)
    assert timeseries(client, "month", "consumer", now, cache)["total"] == 9  # today fresh, the past day from cache
    assert timeseries(client, "month", "consumer", now, DayCache(ttl=0))["total"] == 19  # past the ttl: read again
