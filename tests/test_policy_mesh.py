"""The full policy chain inside real gateway worker processes: one call from a province to the national
database crosses two gateways and is one trace, minimized at the hosting gateway, metered once as a mesh transaction,
audited at both gateways with verifiable chains, and limited by quota with 429 + Retry-After."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, call_headers
from tests.ops_support import gateway_operator_headers
from tests.procs import lienthong

NA_CLIENT = "VN/PROV/NGHEAN/civil-status"
GOV_CLIENT = "VN/GOV/BHXH/insurance"
PERSONS = "VN/GOV/BCA/population/persons"
PERSON_ID = "040203004567"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("policy-mesh")
    m = Mesh(root, root / "logs", policies="all", registry="standin",
             redis_url=redis_server.url.rsplit("/", 1)[0] + "/8")  # fmt: skip
    redis.Redis.from_url(m.redis_url).flushdb()
    m.trace_file = root / "spans.jsonl"  # type: ignore[attr-defined]
    for code in ("national", "nghean"):
        m.add_gateway(code)
    saved = os.environ.get("LIENTHONG_TRACE_FILE")
    os.environ["LIENTHONG_TRACE_FILE"] = str(m.trace_file)  # type: ignore[attr-defined]
    try:
        m.start_registry()
        upstream = m.start_upstream("echo")
        for member, home in (("VN/GOV/BCA", "national"), ("VN/GOV/BHXH", "national"), ("VN/PROV/NGHEAN", "nghean")):
            m.add_member(member, home)
        for sub in ("VN/GOV/BCA/population", NA_CLIENT, GOV_CLIENT):
            m.add_subsystem(sub)
        m.add_client(NA_CLIENT)
        m.add_client(GOV_CLIENT)
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}")], subject_param="id")
        m.add_grant("g-na", NA_CLIENT, PERSONS, ["birth-registration"], fields=["id", "full_name", "household.id"])
        m.add_grant("g-gov", GOV_CLIENT, PERSONS, ["birth-registration"], quota={"per_minute": 3, "per_day": 1000})
        m.publish()
        # national samples nothing itself: it follows the sampled parent the province sends (parent-based)
        m.start_gateway("national", {"--workers": "2"})
        m.start_gateway("nghean", {"--trace-sample-ratio": "1.0"})
        yield m
    finally:
        if saved is None:
            os.environ.pop("LIENTHONG_TRACE_FILE", None)
        else:
            os.environ["LIENTHONG_TRACE_FILE"] = saved
        m.stop()


@pytest.fixture(scope="module")
def province_call(mesh: Mesh) -> httpx.Response:
    """One call from Nghe An's civil-status system to the national population database."""
    r = httpx.get(f"{mesh.gateways['nghean'].url}/r1/VN/GOV/BCA/population/persons/persons/{PERSON_ID}",
                  headers=call_headers(mesh, NA_CLIENT, "nghean"), timeout=10, verify=MESH_TLS)  # fmt: skip
    assert r.status_code == 200, r.text
    return r


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_the_response_is_cut_to_the_granted_fields(province_call: httpx.Response) -> None:
    assert province_call.json() == {"id": PERSON_ID, "full_name": "Nguyen Van A", "household": {"id": "H1"}}


def test_one_call_is_one_trace_across_the_two_gateways(mesh: Mesh, province_call: httpx.Response) -> None:
    txid = province_call.headers["x-road-id"]
    trace_file: Path = mesh.trace_file  # type: ignore[attr-defined]

    def spans() -> list[dict[str, object]]:
        lines = trace_file.read_bytes().splitlines() if trace_file.exists() else []
        found = [orjson.loads(line) for line in lines]
        servers = [s for s in found if s["attributes"].get("lienthong.transaction_id") == txid]
        trace_ids = {s["trace_id"] for s in servers}
        return [s for s in found if s["trace_id"] in trace_ids]

    wait_for(lambda: len(spans()) >= 4)
    tree = spans()
    assert len({s["trace_id"] for s in tree}) == 1 and len(tree) == 4
    by_id = {s["span_id"]: s for s in tree}
    kinds = {(s["service"], s["kind"]): s for s in tree}
    home_server = kinds[("lienthong-gateway-nghean", "SERVER")]
    home_client = kinds[("lienthong-gateway-nghean", "CLIENT")]
    prov_server = kinds[("lienthong-gateway-national", "SERVER")]
    prov_client = kinds[("lienthong-gateway-national", "CLIENT")]
    assert home_server["parent_span_id"] is None
    assert by_id[str(home_client["parent_span_id"])] is home_server
    assert by_id[str(prov_server["parent_span_id"])] is home_client
    assert by_id[str(prov_client["parent_span_id"])] is prov_server
    assert PERSON_ID not in trace_file.read_text()


def test_the_call_is_metered_once_as_a_mesh_transaction(mesh: Mesh, province_call: httpx.Response) -> None:
    ops = f"{mesh.gateways['national'].url}/ops/v1/transactions"
    window = {"from": time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400)),
              "to": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))}  # fmt: skip

    def mesh_count(roles: str) -> int:
        body = httpx.get(ops, params={**window, "group_by": "consumer", "roles": roles}, timeout=10, verify=MESH_TLS,
                         headers=gateway_operator_headers(mesh.gateways["national"])).json()  # fmt: skip
        return sum(g["count"] for g in body["groups"] if g["consumer"] == NA_CLIENT)

    wait_for(lambda: mesh_count("all") == 2)  # one count at each gateway
    assert mesh_count("mesh") == 1  # but one mesh transaction


def test_each_gateway_audits_the_call_and_its_chain_verifies(mesh: Mesh, province_call: httpx.Response) -> None:
    txid = province_call.headers["x-road-id"]
    window = {"from": time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400)),
              "to": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))}  # fmt: skip
    for code, role in (("nghean", "home"), ("national", "provider")):
        page = httpx.get(f"{mesh.gateways[code].url}/ops/v1/audit", params=window, timeout=10,
                         headers=gateway_operator_headers(mesh.gateways[code]), verify=MESH_TLS).json()  # fmt: skip
        mine = [r for r in page["records"] if r["transaction_id"] == txid]
        assert len(mine) == 1 and mine[0]["role"] == role and mine[0]["path_template"] == "/persons/{id}"
        assert mine[0]["client"] == NA_CLIENT and mine[0]["subject_hmac"] and mine[0]["status"] == 200
        audit_dir = mesh.gateways[code].data_dir / "audit"
        assert PERSON_ID.encode() not in b"".join(p.read_bytes() for p in audit_dir.glob("*.jsonl"))
        result = subprocess.run(lienthong("audit", "verify", "--dir", str(audit_dir)), capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


def test_quota_answers_429_with_retry_after_at_the_consumers_gateway(mesh: Mesh) -> None:
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.1)
    url = f"{mesh.gateways['national'].url}/r1/VN/GOV/BCA/population/persons/persons/{PERSON_ID}"
    statuses = []
    for _ in range(6):
        r = httpx.get(url, headers=call_headers(mesh, GOV_CLIENT, "national"), timeout=10, verify=MESH_TLS)
        statuses.append(r.status_code)
        if r.status_code == 429:  # call_headers asks for problem+json: lienthong's precise status and code
            assert r.headers["content-type"].split(";")[0] == "application/problem+json"
            assert r.json()["code"] == "quota-exceeded"
            assert r.headers["x-road-error"] == "Server.ServerProxy.QuotaExceeded" == r.json()["xroad_type"]
            assert 1 <= int(r.headers["retry-after"]) <= 60
    assert statuses.count(200) == 3 and statuses.count(429) == 3  # two workers share the one limit through Redis
