"""Outcome classes (issue 18): every class produced by a real call through a live two-gateway mesh and counted apart,
with the split the operations API serves (policies.meter_query, the functions behind /errors and /transactions);
properties of classify() and of the latency estimates.

The mesh: national hosts a service over the echo upstream whose OpenAPI document declares 404 as no data at its
root, except on /strict/..., which declares none. A client of Nghe An calls it through its home gateway nghean.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from lienthong.redis_connection import EmbeddedRedis
from policies.meter import UNIDENTIFIED
from policies.meter_query import error_rates, latency, top_consumers, transactions
from policies.meter_stats import outcome_split, percentile
from policies.meter_store import LATENCY_BUCKETS_MS, bucket
from policies.outcome import ANSWERS, FAILURES, NOT_PERMITTED_CODES, OUTCOMES, PROVIDER_CODES, classify
from tests.mesh_support import LIENTHONG_ACCEPT as ACCEPT
from tests.mesh_support import MESH_TLS, Mesh, call_headers

NA = "VN/PROV/NGHEAN/civil-status"
BCA = "VN/GOV/BCA/population"
REGISTER = f"{BCA}/register"  # the service every class is produced on
FRESH = f"{BCA}/fresh"  # a new service that has only answered "no data"
POISONED = "VN/PROV/NGHEAN/civil-status/poisoned"  # no gateway can compile it: the platform's failure
HANG = 60.0  # seconds: only a hang fails on time


def _op(path: str, **extra: Any) -> dict[str, Any]:
    names = [p[1:-1] for p in path.split("/") if p.startswith("{")]
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    return {"get": {"operationId": path.replace("/", "_").replace("{", "").replace("}", ""), "parameters": params,
                    "responses": {"200": {"description": "found"}}, **extra}}  # fmt: skip


def _doc() -> dict[str, Any]:
    paths = {p: _op(p) for p in ("/persons/{id}", "/status/{code}/{id}", "/slow/{ms}/{id}")}
    paths["/strict/status/{code}/{id}"] = _op("/strict/status/{code}/{id}", **{"x-lienthong-no-data": []})
    return {"openapi": "3.0.3", "info": {"title": "register", "version": "v1"}, "x-lienthong-no-data": [404],
            "paths": paths}  # fmt: skip


# (path under the service, purpose or None for no token, expected status, expected class); the failures that
# count against the connector's circuit breaker come last, so that it cannot open before they are all made
CALLS: list[tuple[str, str, str | None, int, str]] = [
    (REGISTER, "/persons/040203004567", "birth-registration", 200, "found"),
    (REGISTER, "/persons/040203004568", "birth-registration", 200, "found"),
    (REGISTER, "/status/404/1", "birth-registration", 404, "no-data"),  # the connector's declared no data
    (REGISTER, "/status/404/2", "birth-registration", 404, "no-data"),
    (REGISTER, "/persons/040203004567", "tax-audit", 403, "not-permitted"),  # the mesh's authz: no such purpose
    (REGISTER, "/status/403/1", "birth-registration", 403, "not-permitted"),  # the connector's own 403
    (REGISTER, "/status/400/1", "birth-registration", 400, "client-error"),  # the connector says: bad input
    (REGISTER, "/strict/status/404/1", "birth-registration", 404, "client-error"),  # 404 not declared here
    (REGISTER, "/persons/040203004567", None, 401, "client-error"),  # no token: the mesh refused, client unknown
    (POISONED, "/x/1/1", "birth-registration", 503, "platform-failure"),  # the mesh cannot serve it
    (FRESH, "/status/404/1", "birth-registration", 404, "no-data"),
    (FRESH, "/status/404/2", "birth-registration", 404, "no-data"),
    (REGISTER, "/status/500/1", "birth-registration", 500, "provider-failure"),  # the connector failed
    (REGISTER, "/slow/3000/1", "birth-registration", 504, "provider-failure"),  # the connector timed out
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("outcomes")
    m = Mesh(root, root / "logs", policies="all", registry="standin",
             redis_url=redis_server.url.rsplit("/", 1)[0] + "/11")  # fmt: skip
    redis.Redis.from_url(m.redis_url).flushdb()
    for code in ("national", "nghean"):
        m.add_gateway(code)
    try:
        m.start_registry()
        upstream = m.start_upstream("echo")
        m.add_member("VN/GOV/BCA", "national")
        m.add_member("VN/PROV/NGHEAN", "nghean")
        for sub in (BCA, NA):
            m.add_subsystem(sub)
        m.add_client(NA)
        m.add_service(REGISTER, "national", upstream, openapi=_doc(), timeout_ms=1000)
        m.add_service(FRESH, "national", upstream, openapi=_doc())
        m.add_service(POISONED, "nghean", upstream, [("GET", "/x/{id}/{id}")])
        for service in (REGISTER, FRESH, POISONED):
            m.add_grant(f"g-{service.rsplit('/', 1)[1]}", NA, service, ["birth-registration"])
        m.publish()
        m.start_gateways({"national": {}, "nghean": {}})
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def counted(mesh: Mesh) -> redis.Redis:
    """Every call of CALLS made once through nghean, answered as expected, and counted in Redis."""
    base = mesh.gateways["nghean"].url
    with httpx.Client(verify=MESH_TLS, timeout=HANG) as http:
        for service, path, purpose, status, _ in CALLS:
            headers = call_headers(mesh, NA, "nghean", purpose) if purpose else {"X-Road-Client": NA, "Accept": ACCEPT}
            r = http.get(f"{base}/r1/{service}{path}", headers=headers)
            assert r.status_code == status, (service, path, r.text)
    client = redis.Redis.from_url(mesh.redis_url)
    deadline = time.monotonic() + HANG
    while (seen := _now_rates(client))["total"] < len(CALLS):
        assert time.monotonic() < deadline, f"the meter's counts never reached Redis: {seen}"
        time.sleep(0.1)
    return client


def _now_rates(client: redis.Redis) -> dict[str, Any]:
    return error_rates(client, "hour", datetime.now(UTC))


def test_each_class_is_counted_apart_mesh_wide(counted: redis.Redis) -> None:
    body = _now_rates(counted)
    expected = Counter(cls for *_, cls in CALLS)
    assert body["total"] == len(CALLS) and body["outcomes"] == {o: expected[o] for o in OUTCOMES}
    n = len(CALLS)
    answers = sum(expected[o] for o in ANSWERS)
    assert (body["answers"], body["answer_rate"]) == (answers, round(answers / n, 4))
    assert (body["client_errors"], body["client_error_rate"]) == (3, round(3 / n, 4))
    assert (body["provider_failures"], body["provider_failure_rate"]) == (2, round(2 / n, 4))
    assert (body["platform_failures"], body["platform_failure_rate"]) == (1, round(1 / n, 4))


def test_a_new_service_with_two_no_data_answers_shows_no_error(counted: redis.Redis) -> None:
    (fresh,) = [s for s in _now_rates(counted)["services"] if s["service"] == FRESH]
    assert fresh["total"] == 2 and fresh["outcomes"]["no-data"] == 2 and fresh["answer_rate"] == 1.0
    assert fresh["client_error_rate"] == fresh["provider_failure_rate"] == fresh["platform_failure_rate"] == 0.0


def test_the_hosting_gateway_classes_the_timeout_as_the_providers_too(counted: redis.Redis) -> None:
    """national counted the calls that reached it (role provider) by the same classes: the connector's timeout
    and its 500 are the provider's failures there as well, never the platform's."""
    window = (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
    deadline = time.monotonic() + HANG
    while (at_provider := transactions(counted, *window, ["outcome"], frozenset({"provider"})))["total"] < 11:
        assert time.monotonic() < deadline, "national's counts never reached Redis"
        time.sleep(0.1)
    by_class = {g["outcome"]: g["count"] for g in at_provider["groups"]}
    # all but the mesh's own refusals at nghean (the purpose, the token, the quarantined service)
    assert by_class == {"found": 2, "no-data": 4, "not-permitted": 1, "client-error": 2, "provider-failure": 2}
    assert at_provider["platform_failures"] == 0


def test_transactions_by_outcome_and_the_unidentified_consumer(counted: redis.Redis) -> None:
    window = (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
    body = transactions(counted, *window, ["consumer", "outcome"])
    groups = {(g["consumer"], g["outcome"]): g["count"] for g in body["groups"]}
    assert groups[(UNIDENTIFIED, "client-error")] == 1 and groups[(NA, "client-error")] == 2
    assert body["client_errors"] == 3 and body["total"] == len(CALLS)
    top = {c["consumer"]: c for c in top_consumers(counted, "hour", 10, datetime.now(UTC))["items"]}
    assert set(top) == {NA, UNIDENTIFIED} and top[UNIDENTIFIED]["client_errors"] == 1


def test_latency_is_estimated_inside_the_bucket_not_its_bound(counted: redis.Redis) -> None:
    window = (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
    items = {i["endpoint"]: i for i in latency(counted, *window, REGISTER)["items"]}
    slow = items["GET /slow/{ms}/{id}"]  # answered after the 1 s timeout, within the bucket (1000, 2000]
    assert slow["buckets"] == {"2000": 1} and 1000 < slow["p50_ms"] < 2000 and slow["p50_ms"] != 2000.0


# -- properties --------------------------------------------------------------------------------------------------

MESH_CODES = sorted(PROVIDER_CODES | NOT_PERMITTED_CODES | {"invalid-token", "quota-exceeded", "invalid-body",
                    "snapshot-expired", "service-quarantined", "unknown-service", "inconsistent-response"})  # fmt: skip
codes = st.one_of(st.none(), st.sampled_from(MESH_CODES), st.text(min_size=1, max_size=20))
no_data = st.frozensets(st.integers(400, 499), max_size=5)


@given(st.integers(0, 599), codes, no_data)
def test_every_call_lands_in_exactly_one_class(status: int, code: str | None, declared: frozenset[int]) -> None:
    outcome = classify(status, code, declared)
    assert outcome in OUTCOMES and (outcome in ANSWERS) != (outcome in FAILURES)
    if code is None:  # the provider's own answer: never the platform's fault
        assert outcome != "platform-failure"
        assert (outcome == "no-data") == (status in declared)
    if code in PROVIDER_CODES:  # the mesh says the provider failed: never the platform's fault
        assert outcome == "provider-failure"


@given(st.integers(200, 299), no_data)
def test_a_2xx_is_always_found(status: int, declared: frozenset[int]) -> None:
    # a 2xx is always the provider's own answer: the mesh's refusals and failures are 4xx and 5xx (lienthong.problem)
    assert classify(status, None, declared) == "found"


@given(st.dictionaries(st.sampled_from(OUTCOMES), st.integers(0, 10_000)))
def test_the_split_adds_up_and_its_rates_are_over_the_total(outcomes: dict[str, int]) -> None:
    split = outcome_split(outcomes)
    n = sum(outcomes.values())
    parts = (split["answers"], split["client_errors"], split["provider_failures"], split["platform_failures"])
    assert sum(parts) == n == sum(split["outcomes"].values())
    rates = (split["answer_rate"], split["client_error_rate"], split["provider_failure_rate"],
             split["platform_failure_rate"])  # fmt: skip
    assert all(r == (round(p / n, 4) if n else 0.0) for p, r in zip(parts, rates, strict=True))


@given(st.lists(st.floats(0.001, 9_999.0), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_a_percentile_estimate_stays_inside_the_bucket_of_the_true_one(latencies: list[float], q: float) -> None:
    counts = Counter(bucket(ms) for ms in latencies)
    estimate = percentile(counts, LATENCY_BUCKETS_MS, q)
    true = sorted(latencies)[max(1, math.ceil(q * len(latencies))) - 1]  # the call at rank ceil(q * n)
    upper = next(b for b in LATENCY_BUCKETS_MS if true <= b)
    lower = max([0.0, *(b for b in LATENCY_BUCKETS_MS if b < upper)])
    assert estimate is not None and lower <= estimate <= upper


def test_sub_millisecond_calls_no_longer_read_as_a_bucket_bound() -> None:
    counts = Counter({"0.5": 90, "1": 10})  # 90 calls in (0.25, 0.5] ms, 10 in (0.5, 1]
    assert percentile(counts, LATENCY_BUCKETS_MS, 0.5) == round(0.25 + 0.25 * 50 / 90, 3)
    assert percentile(counts, LATENCY_BUCKETS_MS, 0.99) == round(0.5 + 0.5 * 9 / 10, 3)
    assert percentile(Counter({"inf": 3}), LATENCY_BUCKETS_MS, 0.5) is None  # above 10 s: not guessed
