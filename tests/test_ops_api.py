"""The operations API over a real uvicorn server: mesh-wide counts from Redis, audit paging by time window,
latency percentiles, health, and problem+json naming the field on bad input."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jwt
import orjson
import pytest
import redis
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from gateway.ops_api import BASE, PUBLIC_PATHS, SPEC, build_ops_app
from gateway.ops_auth import HostNames, mint_member_token, mint_operator_token, ops_audience
from lienthong import keys, tokens
from lienthong.redis_connection import EmbeddedRedis, free_port
from policies.audit import Audit
from policies.chain import ChainConfig
from policies.meter import Meter
from tests.mesh_support import MESH_TLS, KeyPair, Mesh, call_headers, client_token, make_key
from tests.ops_support import (
    gateway_operator_headers,
    member_headers,
    operator_headers,
    schemathesis_headers,
    standalone_gate,
    write_operator_key,
)
from tests.procs import lienthong, ops_api, requests_session
from tests.test_policy_fixtures import CONSUMER, OTHER_CONSUMER, World, context

HOUR_AGO = time.time() - 3600


def make_app() -> Any:
    """uvicorn --factory entry: the ops app of gateway `nghean` over the data the test seeded."""
    data_dir = Path(os.environ["OPS_TEST_DIR"])
    cfg = ChainConfig("nghean", data_dir, os.environ["OPS_TEST_REDIS"], frozenset(), b"k")
    snap = World().snapshot()
    return build_ops_app(cfg, lambda: snap, standalone_gate(data_dir, "nghean", lambda: snap))


def seed(data_dir: Path, url: str) -> None:
    """30 calls seen at the home gateway (20 from CONSUMER, 10 from OTHER_CONSUMER; 3 of CONSUMER's the provider's
    own 403, not permitted) and the same 10 seen again at the provider; 25 audit records one minute apart, the oldest
    25 minutes ago."""
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
    HTTP.headers.update(write_operator_key(data_dir))
    with ops_api("tests.test_ops_api:make_app", data_dir, url) as base:
        yield base


HTTP = httpx.Client(timeout=30, verify=MESH_TLS)  # carries the operator's token once the fixture made it


def get(url: str, **options: Any) -> httpx.Response:
    """httpx.get over the mesh's TLS (the gateways' certificates verified with the mesh CA)."""
    return httpx.get(url, verify=MESH_TLS, **options)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


WINDOW = {"from": iso(time.time() - 7200), "to": iso(time.time() + 3600)}


def test_health_reports_snapshot_version_and_age(ops: str) -> None:
    body = HTTP.get(f"{ops}/health").json()
    assert body["gateway"] == "nghean" and body["status"] == "ok"
    assert body["snapshot"]["version"] == 1 and body["snapshot"]["age_seconds"] >= 0


def test_transactions_count_each_call_once_mesh_wide(ops: str) -> None:
    r = HTTP.get(f"{ops}/transactions", params={**WINDOW, "group_by": "consumer"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 30  # the provider's own count of the same calls is not added again
    assert {g["consumer"]: g["count"] for g in body["groups"]} == {CONSUMER: 20, OTHER_CONSUMER: 10}
    every = HTTP.get(f"{ops}/transactions", params={**WINDOW, "roles": "all"}).json()
    assert every["total"] == 40


def test_transactions_by_outcome_service_and_day(ops: str) -> None:
    body = HTTP.get(f"{ops}/transactions", params={**WINDOW, "group_by": "outcome,service,day"}).json()
    counts = {g["outcome"]: g["count"] for g in body["groups"]}
    assert counts == {"found": 27, "not-permitted": 3}
    # a 403 is one of the three answers, not an error
    assert (body["answers"], body["answer_rate"], body["client_errors"], body["provider_failures"]) == (30, 1.0, 0, 0)
    assert {g["service"] for g in body["groups"]} == {"VN/GOV/BCA/population/persons"}
    assert all(len(g["day"]) == 10 for g in body["groups"])


def test_a_window_before_the_calls_counts_nothing(ops: str) -> None:
    body = HTTP.get(f"{ops}/transactions", params={"from": "2020-01-01", "to": "2020-01-02"}).json()
    assert body == {**body, "total": 0, "groups": []}


def test_latency_percentiles(ops: str) -> None:
    body = HTTP.get(f"{ops}/latency", params={**WINDOW, "service": "VN/GOV/BCA/population/persons"}).json()
    (item,) = body["items"]
    # every call took 4 ms, in the bucket (2, 5]: interpolated, p50 is its middle and p99 near its top
    assert item["count"] == 30 and item["p50_ms"] == 3.5 and item["p99_ms"] == 4.97
    assert item["buckets"] == {"5": 30}


def test_audit_pages_through_a_time_window_without_gaps_or_repeats(ops: str) -> None:
    window = {"from": iso(time.time() - 20.5 * 60), "to": iso(time.time() + 60)}
    seen: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        params = {**window, "limit": "7", **({"page_token": token} if token else {})}
        r = HTTP.get(f"{ops}/audit", params=params)
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
    r = HTTP.get(f"{ops}{path}", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == field and body["status"] == 400 and body["code"]


def test_unknown_path_is_problem_json(ops: str) -> None:
    r = HTTP.get(f"{ops}/nothing-here")
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
        (CONSUMER, "found"): 17, (CONSUMER, "not-permitted"): 3, (OTHER_CONSUMER, "found"): 10
    }  # fmt: skip
    table = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "total" in table.stdout and "30" in table.stdout
    assert "answers 30 (100.00%)" in table.stdout and "client errors 0 (0.00%)" in table.stdout
    bad = subprocess.run([*argv[:-4], "--by", "colour", "--redis", url], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--by" in bad.stderr


# -- a live mesh: who may read what (issue 13, finding 3) ------------------------------------------------------------

NA = "VN/PROV/NGHEAN/civil-status"
HN = "VN/PROV/HANOI/civil-status"
BCA = "VN/GOV/BCA/population"
PERSONS = f"{BCA}/persons"
POISONED = f"{HN}/poisoned"
SPEC_DOC = yaml.safe_load(SPEC.read_text())
# every operation the spec lists, path parameters filled; a new endpoint is covered without editing this test
SPEC_PATHS = [(path, path.replace("{asset}", "dashboard.js"), item["get"].get("security", SPEC_DOC["security"]))
              for path, item in SPEC_DOC["paths"].items()]  # fmt: skip
LIVE_WINDOW = {"from": iso(time.time() - 86400), "to": iso(time.time() + 86400)}
PARAMS = {"/transactions": LIVE_WINDOW, "/latency": LIVE_WINDOW, "/audit": LIVE_WINDOW}


@dataclass
class Live:
    mesh: Mesh
    ops_port: int  # nghean's --ops-listen port
    calls: dict[str, int]  # consumer -> calls made through nghean
    operator_key: KeyPair  # trusted by national (--ops-operator-key), not by nghean

    def ops(self, code: str) -> str:
        gw = self.mesh.gateways[code]
        return f"{self.scheme}://127.0.0.1:{self.ops_port}/ops/v1" if code == "nghean" else f"{gw.url}/ops/v1"

    @property
    def scheme(self) -> str:
        """The ops port's, like every port of a gateway: https unless the mesh runs plain HTTP."""
        return "https" if self.mesh.tls else "http"

    def member(self, subsystem: str, gateway: str, **kw: Any) -> dict[str, str]:
        pair = self.mesh.clients[subsystem]
        return member_headers(pair.key, pair.kid, subsystem, gateway, **kw)

    def operator(self, gateway: str) -> dict[str, str]:
        return gateway_operator_headers(self.mesh.gateways[gateway])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("ops-mesh")
    m = Mesh(root, root / "logs", policies="all", registry="standin",
             redis_url=redis_server.url.rsplit("/", 1)[0] + "/13")  # fmt: skip
    redis.Redis.from_url(m.redis_url).flushdb()
    for code in ("national", "nghean"):
        m.add_gateway(code)
    try:
        m.start_registry()
        upstream = m.start_upstream("echo")
        for member, home in (("VN/GOV/BCA", "national"), ("VN/PROV/NGHEAN", "nghean"), ("VN/PROV/HANOI", "nghean")):
            m.add_member(member, home)
        for sub in (BCA, NA, HN):
            m.add_subsystem(sub)
            m.add_client(sub)
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}")], subject_param="id")
        m.add_service(POISONED, "nghean", upstream, [("GET", "/x/{id}/{id}")])  # no gateway can compile it
        m.add_grant("g-na", NA, PERSONS, ["birth-registration"])
        m.add_grant("g-hn", HN, PERSONS, ["birth-registration"])
        m.publish()
        ops_port = free_port()
        operator = make_key(root / "operator.key")  # the operators' own key, given to national only
        (root / "operator.jwk").write_bytes(orjson.dumps(operator.jwk))
        m.start_gateway("national", {"--ops-operator-key": str(root / "operator.jwk")})
        m.start_gateway("nghean", {"--ops-listen": f"127.0.0.1:{ops_port}", "--ops-host": "ops.nghean.test"})
        calls = {NA: 3, HN: 2}
        for consumer, n in calls.items():
            for i in range(n):
                r = get(f"{m.gateways['nghean'].url}/r1/{PERSONS}/persons/04020300456{i}",
                              headers=call_headers(m, consumer, "nghean"), timeout=10)  # fmt: skip
                assert r.status_code == 200, r.text
        live = Live(m, ops_port, calls, operator)
        wait_until(lambda: _total(live, "nghean", live.operator("nghean")) == 5, "the meter's counts reaching Redis")
        yield live
    finally:
        m.stop()


def _total(live: Live, code: str, headers: dict[str, str]) -> int:
    r = get(f"{live.ops(code)}/transactions", params=LIVE_WINDOW, headers=headers, timeout=10)
    return int(r.json()["total"]) if r.status_code == 200 else -1


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Only a bound that catches a hang: what is awaited here takes about a second on any machine."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)


def _audit(live: Live, code: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = get(f"{live.ops(code)}/audit", params=LIVE_WINDOW, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["records"]
    return records


@pytest.mark.parametrize("code", ["national", "nghean"])
def test_every_ops_path_needs_a_token(live: Live, code: str) -> None:
    public = {path for path, _, security in SPEC_PATHS if security == []}
    assert public == {"/dashboard", "/dashboard/{asset}"}  # the page and its files only: they hold no data
    for path, url_path, security in SPEC_PATHS:
        r = get(f"{live.ops(code)}{url_path}", params=PARAMS.get(path, {}), timeout=10)
        if security == []:
            assert r.status_code == 200, (path, r.text)
            continue
        assert r.status_code == 401, (path, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "Authorization" and "bearer" in r.headers["www-authenticate"].lower()
        with_token = get(f"{live.ops(code)}{url_path}", params=PARAMS.get(path, {}), timeout=10,
                               headers=live.operator(code))  # fmt: skip
        assert with_token.status_code == 200, (path, with_token.text[:300])
    # an unknown path is not mapped for a caller without a token either, nor a way up from a public one
    assert get(f"{live.ops(code)}/no-such-thing", timeout=10).status_code == 401
    for sneaky in ("/ui/%2e%2e/audit", "/dashboard/%2e%2e/audit", "/ui/./../gateways", "/dashboard/..%2Faudit"):
        r = get(f"{live.ops(code)}{sneaky}", params=LIVE_WINDOW, timeout=10)
        assert r.status_code == 401 and "records" not in r.text, (sneaky, r.status_code)
        assert PUBLIC_PATHS.fullmatch(BASE + unquote(sneaky)) is None


def test_a_member_sees_only_its_own_records(live: Live) -> None:
    for me, other in ((NA, HN), (HN, NA)):
        headers = live.member(me, "nghean")
        records = _audit(live, "nghean", headers)
        assert len(records) == live.calls[me] and {r["client"] for r in records} == {me}
        for path, params in (("/transactions", {**LIVE_WINDOW, "group_by": "consumer,service"}),
                             ("/audit", LIVE_WINDOW), ("/errors", {}), ("/timeseries", {"group_by": "consumer"}),
                             ("/top-consumers", {}), ("/latency", LIVE_WINDOW), ("/service-latency", {})):  # fmt: skip
            r = get(f"{live.ops('nghean')}{path}", params=params, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            assert other not in r.text and other.rsplit("/", 1)[0] not in r.text, path
        body = get(f"{live.ops('nghean')}/transactions", params={**LIVE_WINDOW, "group_by": "consumer"},
                         headers=headers, timeout=10).json()  # fmt: skip
        assert body["total"] == live.calls[me] and [g["consumer"] for g in body["groups"]] == [me]
        errors = get(f"{live.ops('nghean')}/errors", headers=headers, timeout=10).json()
        assert errors["total"] == live.calls[me]


def test_the_provider_member_sees_every_call_to_its_service_and_the_operator_everything(live: Live) -> None:
    provider = _audit(live, "national", live.member(BCA, "national"))
    assert sorted(r["client"] for r in provider) == sorted([NA] * 3 + [HN] * 2)
    assert {r["service"] for r in provider} == {PERSONS}
    assert len(_audit(live, "nghean", live.operator("nghean"))) == 5
    assert len(_audit(live, "national", live.operator("national"))) == 5
    assert _audit(live, "nghean", live.member(BCA, "nghean")) != []  # the provider's view at the consumer's gateway
    latency = get(f"{live.ops('nghean')}/service-latency", headers=live.member(NA, "nghean"), timeout=10)
    assert latency.json()["items"] == []  # latency is per service: the provider's, not a consumer's


@pytest.mark.parametrize(
    "token",
    ["expired", "other-gateway", "unknown-key", "r1-client-token", "other-gateways-key", "garbage", "two-audiences",
     "basic"],
)  # fmt: skip
def test_a_token_that_is_not_for_this_gateway_now_is_refused(live: Live, token: str) -> None:
    pair = live.mesh.clients[NA]
    national = live.mesh.gateways["national"].key
    stranger = keys.generate()
    past = time.time() - 3600
    made = {
        "expired": tokens.sign(pair.key, pair.kid, {"iss": NA, "sub": NA, "aud": ops_audience("nghean")},
                               lifetime=60, now=past),
        "other-gateway": mint_member_token(pair.key, pair.kid, NA, "national"),
        "unknown-key": mint_member_token(stranger, keys.public_jwk(stranger)["kid"], NA, "nghean"),
        "r1-client-token": client_token(pair, NA, "nghean"),
        "other-gateways-key": mint_operator_token(national.key, national.kid, "nghean"),
        "garbage": "not.a.token",
        "two-audiences": tokens.sign(pair.key, pair.kid, {"iss": NA, "sub": NA,
                                                          "aud": [ops_audience("nghean"), ops_audience("national")]}),
    }  # fmt: skip
    header = "Basic bmE6bmE=" if token == "basic" else f"Bearer {made[token]}"
    r = get(f"{live.ops('nghean')}/audit", params=LIVE_WINDOW, headers={"Authorization": header}, timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["field"] == "Authorization"
    assert "records" not in r.text


@pytest.mark.parametrize("code", ["national", "nghean"])
def test_a_host_that_is_not_the_gateways_name_is_refused(live: Live, code: str) -> None:
    headers = live.operator(code)
    port = live.ops_port if code == "nghean" else live.mesh.gateways[code].port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "[::2]", "a b"):
        r = get(f"{live.ops(code)}/health", headers={**headers, "Host": host}, timeout=10)
        assert r.status_code in (400, 421), (host, r.text)
        assert r.json()["field"] == "Host", host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        r = get(f"{live.ops(code)}/health", headers={**headers, "Host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)
    if code == "nghean":  # an --ops-host name, with any port (a proxy in front)
        r = get(f"{live.ops(code)}/health", headers={**headers, "Host": "ops.nghean.test"}, timeout=10)
        assert r.status_code == 200, r.text
    # the DNS-rebinding page cannot even load the dashboard under its own name
    assert get(f"{live.ops(code)}/dashboard", headers={"Host": "evil.example"}, timeout=10).status_code == 421


def test_ops_listen_splits_the_ports(live: Live) -> None:
    main = live.mesh.gateways["nghean"].url
    ops = f"{live.scheme}://127.0.0.1:{live.ops_port}"
    assert get(f"{main}/ops/v1/health", headers=live.operator("nghean"), timeout=10).status_code == 404
    assert get(f"{main}/ops/v1/dashboard", timeout=10).status_code == 404
    assert get(f"{main}/metrics", timeout=10).status_code == 404
    scraped = get(f"{ops}/metrics", headers={"Host": "10.1.2.3:9100"}, timeout=10)  # Prometheus by pod IP
    assert scraped.status_code == 200 and "lienthong_gateway_requests_total" in scraped.text
    r1 = get(f"{ops}/r1/{PERSONS}/persons/040203004560", headers=call_headers(live.mesh, NA, "nghean"),
                   timeout=10)  # fmt: skip
    assert r1.status_code == 404 and r1.headers["content-type"].startswith("application/problem+json")
    assert get(f"{ops}/healthz", timeout=10).status_code == 200  # probes may use either port


def test_metrics_on_the_main_port_answer_loopback_under_the_gateways_name(live: Live) -> None:
    url = f"{live.mesh.gateways['national'].url}/metrics"
    assert get(url, timeout=10).status_code == 200
    r = get(url, headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 421 and r.json()["field"] == "Host"


def test_ops_login_prints_a_token_and_a_dashboard_link(live: Live) -> None:
    gw = live.mesh.gateways["nghean"]
    done = subprocess.run(lienthong("ops", "login", "--gateway", "nghean", "--data-dir", str(gw.data_dir), "--json"),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = orjson.loads(done.stdout)
    assert out["dashboard"] == f"{live.scheme}://127.0.0.1:{live.ops_port}/ops/v1/dashboard#token={out['token']}"
    r = get(f"{live.ops('nghean')}/audit", params=LIVE_WINDOW, timeout=10,
                  headers={"Authorization": f"Bearer {out['token']}"})  # fmt: skip
    assert r.status_code == 200 and len(r.json()["records"]) == 5
    claims = jwt.decode(out["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900 and claims["aud"] == "ops:nghean"
    long = subprocess.run(lienthong("ops", "login", "--gateway", "nghean", "--data-dir", str(gw.data_dir),
                                    "--minutes", "600"), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert long.returncode == 2 and "--minutes" in long.stderr
    missing = subprocess.run(lienthong("ops", "login", "--gateway", "nghean", "--home", str(gw.data_dir)),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "signing key" in missing.stderr


OPERATIONS = [r.ok() for r in schemathesis.openapi.from_path(SPEC).get_all_operations() if isinstance(r, Ok)]


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.definition.raw.get("security") != []],
                         ids=lambda op: op.label)  # fmt: skip
def test_no_request_a_member_can_make_shows_another_members_calls(live: Live, operation: Any) -> None:
    """The class, not the examples: any operation of the spec (a new one included), any parameters schemathesis
    generates, a member's token: the answer never names another member."""
    headers = live.member(NA, "nghean", lifetime=300)

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(max_examples=12, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        response = case.call(base_url=live.ops("nghean"), session=session, headers=schemathesis_headers(case, headers),
                             timeout=15)  # fmt: skip
        assert response.status_code < 500, response.text
        assert "VN/PROV/HANOI" not in response.text  # the other consumer's member, its subsystem or its calls
        if response.status_code == 200 and operation.path == "/audit":
            assert {r["client"] for r in response.json()["records"]} <= {NA}

    with requests_session(MESH_TLS) as session:
        run()


@given(host=st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,40}(:[0-9]{1,5})?\Z"))
def test_a_host_name_is_accepted_only_when_it_is_one_of_the_gateways(host: str) -> None:
    names = HostNames.build([("0.0.0.0", 8700), ("10.0.0.5", 8701)], ["ops.example.gov.vn", "proxy.test:443"])
    name, _, port = host.partition(":")
    known = {"localhost": {"8700", "8701", ""}, "127.0.0.1": {"8700", "8701", ""}, "10.0.0.5": {"8701", ""},
             "ops.example.gov.vn": None, "proxy.test": {"443", ""}}  # fmt: skip
    ports = known.get(name.rstrip("."), set())
    expected = ports is None or port in ports
    if port and not 0 < int(port) < 65536:
        expected = False
    assert names.allows(host) == expected, host


def test_quarantined_services_show_to_the_operator_and_to_their_own_member_only(live: Live) -> None:
    def quarantined(headers: dict[str, str]) -> list[str]:
        r = get(f"{live.ops('nghean')}/gateways", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        (nghean,) = [g for g in r.json()["gateways"] if g["gateway"] == "nghean"]
        return [q["id"] for q in nghean["quarantined"]]

    wait_until(lambda: POISONED in quarantined(live.operator("nghean")), "a heartbeat naming the quarantine")
    assert quarantined(live.member(HN, "nghean")) == [POISONED]
    assert quarantined(live.member(NA, "nghean")) == []


def test_an_operator_key_given_to_a_gateway_signs_operator_tokens_there_only(live: Live) -> None:
    key = live.operator_key
    for code, status in (("national", 200), ("nghean", 401)):
        r = get(f"{live.ops(code)}/audit", params=LIVE_WINDOW, headers=operator_headers(key.key, key.kid, code),
                      timeout=10)  # fmt: skip
        assert r.status_code == status, (code, r.text)
    too_long = operator_headers(key.key, key.kid, "national", lifetime=2 * 3600)
    assert get(f"{live.ops('national')}/health", headers=too_long, timeout=10).status_code == 401
