"""The signed snapshot (protocol §7) from a real registry: contents per gateway, signature, ETag/304, long poll,
the build at a test-sized scale, and a restart of the registry and its durable Redis losing nothing."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench import registry_snapshot
from lienthong import keys
from lienthong.redis_connection import EmbeddedRedis
from lienthong.snapshot import Snapshot, SnapshotError, verify_jws
from lienthong.snapshot_wire import read_full
from registry.client import RegistryClient, RegistryError
from tests.registry_support import RegistryHandle, start_registry

DOC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/persons/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True}],
            "get": {"operationId": "getPerson", "summary": "Read a person"},
        }
    },
}


def _seed(admin: RegistryClient) -> dict[str, Any]:
    national, nghean = keys.generate(), keys.generate()
    admin.add_gateway("national", "http://127.0.0.1:8700", [keys.public_jwk(national)])
    admin.add_gateway("nghean", "http://127.0.0.1:8701", [keys.public_jwk(nghean)])
    admin.add_member("VN/GOV/BCA", "Ministry of Public Security", "national")
    admin.add_subsystem("VN/GOV/BCA/population", "Population")
    admin.add_member("VN/PROV/NGHEAN", "Nghe An", "nghean")
    admin.add_subsystem("VN/PROV/NGHEAN/civil-status", "Civil status")
    admin.register_service(
        "VN/GOV/BCA/population/persons", openapi=DOC, gateway="national", upstream_url="http://10.0.0.1:8801", name="P"
    )
    admin.register_service(
        "VN/PROV/NGHEAN/civil-status/births", openapi=DOC, gateway="nghean", upstream_url="http://10.0.0.2:80", name="B"
    )
    admin.approve_service("VN/GOV/BCA/population/persons")
    admin.add_client_key("VN/PROV/NGHEAN/civil-status", keys.public_jwk(keys.generate()))
    grant = admin.add_grant("VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons", ["birth-registration"])
    return {"national": national, "nghean": nghean, "grant": grant}


@pytest.fixture(scope="module")
def seeded(registry: RegistryHandle) -> dict[str, Any]:
    admin = registry.admin_client()
    world = _seed(admin)
    world["admin"] = admin
    world["national_client"] = registry.client_for(
        world["national"], keys.public_jwk(world["national"])["kid"], "gateway:national"
    )
    world["nghean_client"] = registry.client_for(
        world["nghean"], keys.public_jwk(world["nghean"])["kid"], "gateway:nghean"
    )
    return world


def test_snapshot_holds_everything_and_upstreams_only_for_hosted_services(
    registry: RegistryHandle, seeded: dict[str, Any]
) -> None:
    r = seeded["national_client"].snapshot()
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-snapshot-kind"] == "full"
    doc = read_full(r.content, registry.registry_public_key)
    assert r.headers["etag"] == f'"{doc["version"]}"'
    assert doc["instance"] == "VN" and doc["gateway"] == "national"
    assert doc["upstreams"] == {"VN/GOV/BCA/population/persons": "http://10.0.0.1:8801"}
    assert {m["id"] for m in doc["members"]} == {"VN/GOV/BCA", "VN/PROV/NGHEAN"}
    # births was never approved: it reaches no gateway's route table, and nghean gets no upstream for it
    assert {s["id"] for s in doc["services"]} == {"VN/GOV/BCA/population/persons"}
    assert all("upstream_url" not in s for s in doc["services"])
    assert {g["code"] for g in doc["gateways"]} == {"national", "nghean"}
    assert doc["clients"][0]["subsystem"] == "VN/PROV/NGHEAN/civil-status"
    assert doc["grants"][0]["id"] == seeded["grant"]["id"]
    snap = Snapshot(doc)  # the one reader the gateways use accepts it
    assert snap.services["VN/GOV/BCA/population/persons"].approved is True
    assert "VN/PROV/NGHEAN/civil-status/births" not in snap.services
    assert snap.find_grant(
        "VN/PROV/NGHEAN/civil-status", "VN/GOV/BCA/population/persons", "GET", "/persons/{id}", "birth-registration"
    )
    other = read_full(seeded["nghean_client"].snapshot().content, registry.registry_public_key)
    assert other["upstreams"] == {}
    as_admin = read_full(seeded["admin"].snapshot(gateway="nghean").content, registry.registry_public_key)
    assert as_admin["gateway"] == "nghean"
    with pytest.raises(RegistryError) as info:
        seeded["admin"].snapshot()
    assert info.value.status == 400 and info.value.problem["field"] == "gateway"
    with pytest.raises(RegistryError) as info:
        seeded["admin"].snapshot(gateway="nosuch")
    assert info.value.status == 404


def test_one_changed_byte_fails_the_signature(registry: RegistryHandle, seeded: dict[str, Any]) -> None:
    jws = orjson.loads(seeded["national_client"].snapshot().content)["common"].encode()
    verify_jws(jws, registry.registry_public_key)
    header, payload, signature = jws.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    raw[len(raw) // 2] ^= 0x01
    tampered = header + b"." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=") + b"." + signature
    with pytest.raises(SnapshotError):
        verify_jws(tampered, registry.registry_public_key)
    flipped = bytearray(jws)
    flipped[-5] = ord("A") if flipped[-5] != ord("A") else ord("B")
    with pytest.raises(SnapshotError):
        verify_jws(bytes(flipped), registry.registry_public_key)
    with pytest.raises(SnapshotError):
        verify_jws(jws, keys.generate().public_key())


def test_etag_304_and_version_grows_with_every_change(seeded: dict[str, Any]) -> None:
    gw = seeded["national_client"]
    first = gw.snapshot()
    version = int(first.headers["etag"].strip('"'))
    assert gw.snapshot(held=version).status_code == 304
    seeded["admin"].add_member("VN/GOV/BTP", "Ministry of Justice", "national")
    second = gw.snapshot(held=version)
    assert second.status_code == 200 and int(second.headers["etag"].strip('"')) == version + 1


def test_long_poll_wakes_on_a_change_and_times_out_with_304(seeded: dict[str, Any]) -> None:
    gw = seeded["nghean_client"]
    version = int(gw.snapshot().headers["etag"].strip('"'))
    started = time.monotonic()
    assert gw.snapshot(held=version, wait=1).status_code == 304
    assert time.monotonic() - started >= 0.9

    result: dict[str, Any] = {}

    def poll() -> None:
        resp = gw.snapshot(held=version, wait=30)
        result["status"], result["at"] = resp.status_code, time.monotonic()
        result["etag"] = resp.headers["etag"]

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)  # let the request reach the registry and start waiting
    changed_at = time.monotonic()
    seeded["admin"].add_member("VN/PROV/HANOI", "Ha Noi", "nghean")
    waiter.join(10)
    assert result["status"] == 200 and result["etag"] == f'"{version + 1}"'
    assert result["at"] - changed_at < 1.0  # woken by the change, not by the 30 s timeout


def test_snapshot_build_at_a_test_sized_scale(redis_url: str) -> None:
    result = registry_snapshot.run(services=500, grants=5000, redis_url=redis_url)
    assert result["services"] == 500 and result["grants"] == 5000
    assert result["full_mb"] > 0.5 and 0 < result["delta_bytes"] < 2048  # one revocation travels alone
    assert result["full_cpu_s"] > result["delta_cpu_s"] > 0 and result["full_s"] > 0 and result["change_s"] > 0
    assert result["full_other_gateway_s"] < result["full_s"]  # the common part was signed once


def test_restart_of_registry_and_redis_loses_nothing(tmp_path: Path, log_dir: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", durable=True)
    server.start()
    handle = start_registry(tmp_path, server.url, log_dir)
    try:
        admin = handle.admin_client()
        world = _seed(admin)
        admin.revoke_grant(world["grant"]["id"])
        before = read_full(admin.snapshot(gateway="national").content, handle.registry_public_key)
        changes_before = admin.changes(limit=1000)
        handle.proc.stop()
        time.sleep(1.1)  # appendfsync everysec: let the last second reach the disk, then stop as an outage would
        server.kill()
        server.start()
        handle.restart()
        after = read_full(admin.snapshot(gateway="national").content, handle.registry_public_key)
        assert after["version"] == before["version"]
        for kind in ("members", "subsystems", "gateways", "services", "clients", "grants"):
            assert sorted(after[kind], key=repr) == sorted(before[kind], key=repr), kind
        assert after["upstreams"] == before["upstreams"]
        assert admin.changes(limit=1000) == changes_before
        assert admin.get_grant(world["grant"]["id"])["revoked"] is True
        assert admin.add_member("VN/GOV/BYT", "Ministry of Health", "national")["version"] == 1
    finally:
        handle.stop()
        server.stop()


def test_healthz_and_swagger_ui(registry: RegistryHandle) -> None:
    assert httpx.get(registry.url + "/healthz", verify=registry.verify).json() == {"status": "ok", "redis": True}
    assert httpx.get(registry.url + "/v1/ui/", verify=registry.verify).status_code == 200
    spec = httpx.get(registry.url + "/v1/openapi.json", verify=registry.verify).json()
    assert "/snapshot" in spec["paths"]
