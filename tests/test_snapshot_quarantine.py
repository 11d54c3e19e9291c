"""A poisoned snapshot on a live mesh (issue 13, critical 2): nothing inside a snapshot stops a gateway from taking
the next one.

The registry is the stand-in of tests/mesh_support.py, which signs whatever the test puts in the catalogue: it plays
a registry that let bad input through. One service is poisoned (a path template that does not compile, a path or
method of the wrong type, an endpoint list that is not a list, a regex metacharacter, 14,000 endpoints); the next
version revokes grants, and every gateway must take it: the revoked calls get 403, the poisoned service 503
`service-quarantined`, everything else 200. A new gateway starts on the poisoned snapshot, and an error the poll
loop did not expect (its cache cannot be written) does not stop it either.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, call_headers

HANG = 60.0  # seconds: only a hang fails on time
HTTP = httpx.Client(timeout=10, verify=MESH_TLS)
GOV_CLIENT = "VN/GOV/BHXH/insurance"
HN_CLIENT = "VN/PROV/HANOI/justice"
NA_CLIENT = "VN/PROV/NGHEAN/civil-status"
PERSONS = "VN/GOV/BCA/population/persons"
HOUSEHOLDS = "VN/PROV/HANOI/residence/households"
POISON = "VN/GOV/BCA/population/poison"
REVOCABLE = ("g-gov-households", "g-hn-persons")

# the poisoned service's endpoints, and a word the quarantine reason must contain
POISONS: dict[str, tuple[Any, str]] = {
    "duplicate-parameter": ([{"method": "GET", "path": "/x/{id}/{id}"}], "'id' twice"),
    "path-not-a-string": ([{"method": "GET", "path": 42}], "not a string"),
    "endpoints-not-a-list": ({"GET": "/x/{id}"}, "not a list"),
    "method-not-a-string": ([{"method": ["GET"], "path": "/x/{id}"}], "not an HTTP method"),
    "regex-metachar": ([{"method": "GET", "path": "/x/{id}(?P<rest>.*)"}], "invalid segment"),
    "14000-endpoints": ([{"method": "GET", "path": f"/p{i}/{{id}}/x"} for i in range(14000)], "14000 endpoints"),
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("snapshot-poison")
    m = Mesh(root, root / "logs", registry="standin", redis_url=redis_server.url.rsplit("/", 1)[0] + "/12")
    redis.Redis.from_url(m.redis_url).flushdb()
    for code in ("national", "hanoi", "nghean"):  # nghean starts later, on a poisoned snapshot
        m.add_gateway(code)
    try:
        m.start_registry()
        upstream = m.start_upstream("echo")
        for member, home in (("VN/GOV/BCA", "national"), ("VN/GOV/BHXH", "national"),
                             ("VN/PROV/HANOI", "hanoi"), ("VN/PROV/NGHEAN", "nghean")):  # fmt: skip
            m.add_member(member, home)
        for sub in ("VN/GOV/BCA/population", "VN/PROV/HANOI/residence", GOV_CLIENT, HN_CLIENT, NA_CLIENT):
            m.add_subsystem(sub)
        for client in (GOV_CLIENT, HN_CLIENT, NA_CLIENT):
            m.add_client(client)
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}")])
        m.add_service(HOUSEHOLDS, "hanoi", upstream, [("GET", "/households/{id}")])
        m.add_grant("g-gov-persons", GOV_CLIENT, PERSONS, ["birth-registration"])
        m.add_grant("g-hn-households", HN_CLIENT, HOUSEHOLDS, ["birth-registration"])
        m.add_grant("g-na-persons", NA_CLIENT, PERSONS, ["birth-registration"])
        m.add_grant("g-gov-households", GOV_CLIENT, HOUSEHOLDS, ["birth-registration"])
        m.add_grant("g-hn-persons", HN_CLIENT, PERSONS, ["birth-registration"])
        for poisoned in ("national", "hanoi"):
            m.hosted[poisoned][POISON] = upstream
        m.publish()
        m.start_gateways({"national": {}, "hanoi": {}})
        yield m
    finally:
        m.stop()


def poisoned_service(service_id: str, endpoints: Any) -> dict[str, Any]:
    provider, code = service_id.rsplit("/", 1)
    return {"id": service_id, "provider": provider, "code": code, "version_label": "v1", "gateway": "national",
            "approved": True, "timeout_ms": 5000, "name": code, "description": "", "endpoints": endpoints,
            "version": 1}  # fmt: skip


def call(mesh: Mesh, home: str, client: str, service: str, path: str) -> httpx.Response:
    return HTTP.get(f"{mesh.gateways[home].url}/r1/{service}{path}", headers=call_headers(mesh, client, home))


def publish(mesh: Mesh, codes: tuple[str, ...] = ("national", "hanoi")) -> int:
    version = mesh.publish()
    mesh.wait_version(version, timeout=HANG, codes=codes)
    return version


def assert_quarantined(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "service-quarantined" and reason in body["detail"], body
    # the home gateway refuses: X-Road's type for a snapshot it could not take whole (docs/protocol.md §6)
    assert response.headers["x-road-error"] == body["xroad_type"] == "Server.ClientProxy.MalformedGlobalConf"


def assert_serving(mesh: Mesh) -> None:
    """The healthy services answer through every gateway, locally and over one hop."""
    for home, client, service, path in (("national", GOV_CLIENT, PERSONS, "/persons/1"),
                                        ("hanoi", HN_CLIENT, HOUSEHOLDS, "/households/1")):  # fmt: skip
        r = call(mesh, home, client, service, path)
        assert r.status_code == 200, r.text


def set_revoked(mesh: Mesh, revoked: bool) -> None:
    for grant in mesh.doc["grants"]:
        if grant["id"] in REVOCABLE:
            grant["revoked"] = revoked


def revocable_calls(mesh: Mesh) -> list[httpx.Response]:
    return [call(mesh, "national", GOV_CLIENT, HOUSEHOLDS, "/households/1"),  # national decides as home
            call(mesh, "hanoi", HN_CLIENT, PERSONS, "/persons/1")]  # fmt: skip  # hanoi decides as home


@pytest.mark.parametrize("case", list(POISONS))
def test_a_poisoned_service_is_quarantined_and_a_revocation_still_reaches_every_gateway(mesh: Mesh, case: str) -> None:
    endpoints, reason = POISONS[case]
    saved = copy.deepcopy(mesh.doc)
    try:
        mesh.doc["services"].append(poisoned_service(POISON, endpoints))
        version = publish(mesh)  # a version the old gateways could not take at all
        for code in ("national", "hanoi"):
            health = HTTP.get(f"{mesh.gateways[code].url}/healthz").json()
            assert health["snapshot_version"] == version and health["quarantined"] == [POISON]
        assert [r.status_code for r in revocable_calls(mesh)] == [200, 200]

        set_revoked(mesh, True)
        publish(mesh)
        for r in revocable_calls(mesh):
            assert r.status_code == 403 and r.json()["code"] == "access-denied", r.text
            assert r.headers["x-road-error"] == r.json()["xroad_type"] == "Server.ServerProxy.AccessDenied"
        assert_quarantined(call(mesh, "national", GOV_CLIENT, POISON, "/x/1/2"), reason)
        assert_quarantined(call(mesh, "hanoi", HN_CLIENT, POISON, "/x/1/2"), reason)  # refused at home already
        assert_serving(mesh)
    finally:
        mesh.doc = saved


def test_the_quarantine_shows_in_the_metrics_and_the_heartbeat(mesh: Mesh) -> None:
    saved = copy.deepcopy(mesh.doc)
    try:
        mesh.doc["services"].append(poisoned_service(POISON, POISONS["duplicate-parameter"][0]))
        publish(mesh)
        metrics = HTTP.get(f"{mesh.gateways['national'].url}/metrics").text
        assert 'lienthong_gateway_quarantined{kind="service"} 1.0' in metrics
        store = redis.Redis.from_url(mesh.redis_url)
        deadline = time.monotonic() + HANG
        while True:
            beats = [orjson.loads(raw) for raw in store.hgetall("ops:hb:national").values()]
            listed = [q for b in beats for q in b.get("quarantined", [])]
            if any(q["kind"] == "service" and q["id"] == POISON and "'id' twice" in q["reason"] for q in listed):
                break
            assert time.monotonic() < deadline, f"no heartbeat lists {POISON}: {beats}"
            time.sleep(0.2)
        proc = mesh.gateways["national"].proc
        assert proc is not None and f"service {POISON} quarantined" in proc.log_tail(20000)
    finally:
        mesh.doc = saved
        publish(mesh)
    metrics = HTTP.get(f"{mesh.gateways['national'].url}/metrics").text
    assert 'lienthong_gateway_quarantined{kind="service"} 0.0' in metrics


def test_a_new_gateway_starts_on_a_poisoned_snapshot(mesh: Mesh) -> None:
    saved = copy.deepcopy(mesh.doc)
    try:
        poisons = [f"{POISON}{i}" for i in range(len(POISONS))]
        for sid, (endpoints, _) in zip(poisons, POISONS.values(), strict=True):
            mesh.doc["services"].append(poisoned_service(sid, endpoints))
            mesh.hosted["national"][sid] = "http://127.0.0.1:9"
        # and garbage where a grant, a client key, a member and a section belong
        mesh.doc["grants"].append({"id": "g-garbage", "consumer": 7, "service": PERSONS, "purposes": "all"})
        mesh.doc["clients"].append({"subsystem": "VN/GOV/X/y", "keys": [{"kty": "RSA", "kid": "k"}]})
        mesh.doc["members"].append(["not", "an", "object"])
        mesh.doc["subsystems"].append(None)
        version = publish(mesh)
        mesh.start_gateway("nghean")  # waits for /readyz
        health = HTTP.get(f"{mesh.gateways['nghean'].url}/healthz").json()
        assert health["snapshot_version"] == version and health["quarantined"] == sorted(poisons)
        r = call(mesh, "nghean", NA_CLIENT, PERSONS, "/persons/1")  # one hop to national, which holds it too
        assert r.status_code == 200, r.text
        assert_serving(mesh)
    finally:
        mesh.doc = saved
        for sid in poisons:
            mesh.hosted["national"].pop(sid, None)
        mesh.stop_gateway("nghean")
        publish(mesh)


def test_an_error_the_poll_did_not_expect_does_not_stop_it(mesh: Mesh) -> None:
    gw = mesh.gateways["hanoi"]
    cache = gw.data_dir / "snapshot.jsonl"
    cache.unlink()
    cache.mkdir()  # the cache can no longer be written: an OSError the poll loop never planned for
    try:
        publish(mesh, codes=("hanoi",))
        set_revoked(mesh, True)
        publish(mesh, codes=("hanoi",))  # the next version still arrives
        assert call(mesh, "hanoi", HN_CLIENT, PERSONS, "/persons/1").status_code == 403
        assert gw.proc is not None and "Traceback" in gw.proc.log_tail(20000)
    finally:
        shutil.rmtree(cache)
        set_revoked(mesh, False)
        publish(mesh)
    assert_serving(mesh)
