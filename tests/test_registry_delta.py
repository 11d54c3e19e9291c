"""Deltas from a real registry (protocol §7.2): what a gateway holding version N is sent after a change, that it is
small, signed, holds only the changed entries and only this gateway's upstream URLs, and that applying it gives the
same snapshot as a full one. Also when the registry answers a full snapshot instead (a gap, a bulk load, `full=true`)
and a gateway's cache of one full snapshot and its deltas replayed after a restart.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.snapshot_client import SnapshotClient
from lienthong import keys
from lienthong.redis_connection import async_single_client
from lienthong.snapshot import Snapshot, SnapshotError
from lienthong.snapshot_wire import open_envelope, read_full
from registry.client import RegistryClient
from registry.store import K_SNAPLOG, Store
from tests.registry_support import RegistryHandle
from tests.test_registry_snapshot import DOC
from tests.test_snapshot_apply import view

CONSUMER = "VN/PROV/NGHEAN/civil-status"
PERSONS = "VN/GOV/BCA/population/persons"


@pytest.fixture(scope="module")
def world(registry: RegistryHandle) -> dict[str, Any]:
    admin = registry.admin_client()
    gateway_keys = {code: keys.generate() for code in ("national", "nghean")}
    for port, (code, key) in enumerate(gateway_keys.items(), 8700):
        admin.add_gateway(code, f"http://127.0.0.1:{port}", [keys.public_jwk(key)])
    admin.add_member("VN/GOV/BCA", "BCA", "national")
    admin.add_subsystem("VN/GOV/BCA/population", "Population")
    admin.add_member("VN/PROV/NGHEAN", "Nghe An", "nghean")
    admin.add_subsystem(CONSUMER, "Civil status")
    admin.register_service(PERSONS, openapi=DOC, gateway="national", upstream_url="http://10.0.0.1:8801", name="P")
    admin.approve_service(PERSONS)
    admin.add_client_key(CONSUMER, keys.public_jwk(keys.generate()))
    clients = {
        code: registry.client_for(key, keys.public_jwk(key)["kid"], f"gateway:{code}")
        for code, key in gateway_keys.items()
    }
    return {"admin": admin, "clients": clients, "keys": gateway_keys}


def held(registry: RegistryHandle, client: RegistryClient, code: str) -> Snapshot:
    return Snapshot(read_full(client.snapshot(full=True).content, registry.registry_public_key, code))


def test_a_revocation_is_a_small_signed_delta_that_applies_to_the_full_snapshot(
    registry: RegistryHandle, world: dict[str, Any]
) -> None:
    admin, gw = world["admin"], world["clients"]["nghean"]
    grant = admin.add_grant(CONSUMER, PERSONS, ["birth-registration"])
    snap = held(registry, gw, "nghean")
    assert snap.find_grant(CONSUMER, PERSONS, "GET", "/persons/{id}", "birth-registration") is not None
    admin.revoke_grant(grant["id"])
    r = gw.snapshot(held=snap.version)
    assert r.status_code == 200 and r.headers["x-snapshot-kind"] == "delta"
    assert len(r.content) < 2048  # issue 17: a revocation is a few hundred bytes, not the whole registry
    opened = open_envelope(r.content, registry.registry_public_key, "nghean")
    assert opened.kind == "delta" and opened.doc["from"] == snap.version and opened.version == snap.version + 1
    assert set(opened.doc["changes"]) == {"grants"} and list(opened.doc["changes"]["grants"]) == [grant["id"]]
    after = snap.apply(opened.doc)
    assert after.find_grant(CONSUMER, PERSONS, "GET", "/persons/{id}", "birth-registration") is None
    assert view(after) == view(held(registry, gw, "nghean")) | {"version": after.version}
    assert int(r.headers["etag"].strip('"')) == after.version


def test_a_delta_carries_upstream_urls_only_in_the_part_of_the_gateway_hosting_them(
    registry: RegistryHandle, world: dict[str, Any]
) -> None:
    admin = world["admin"]
    national, nghean = world["clients"]["national"], world["clients"]["nghean"]
    since = held(registry, national, "national").version
    births = "VN/GOV/BCA/population/births"
    admin.register_service(births, openapi=DOC, gateway="national", upstream_url="http://10.9.9.9:81", name="B")
    admin.approve_service(births)
    mine = open_envelope(national.snapshot(held=since).content, registry.registry_public_key, "national")
    theirs_raw = nghean.snapshot(held=since).content
    theirs = open_envelope(theirs_raw, registry.registry_public_key, "nghean")
    assert mine.kind == theirs.kind == "delta"
    assert mine.doc["upstreams"] == {births: "http://10.9.9.9:81"} and theirs.doc["upstreams"] == {}
    assert births in theirs.doc["changes"]["services"]  # the service itself is everyone's
    assert b"10.9.9.9" not in theirs_raw  # nor is the URL anywhere in another gateway's answer, signed or not
    common = orjson.loads(theirs_raw)["common"]
    with pytest.raises(SnapshotError, match=r"different versions|not the gateway part"):
        # the common delta with a gateway part of another version (a replayed older part, say) is refused
        other = orjson.loads(nghean.snapshot(full=True).content)["gateway"]
        open_envelope(orjson.dumps({"kind": "delta", "version": 0, "common": common, "gateway": other}),
                      registry.registry_public_key, "nghean")  # fmt: skip


def test_a_gap_a_bulk_load_or_full_true_answer_a_full_snapshot(registry: RegistryHandle, world: dict[str, Any]) -> None:
    admin, gw = world["admin"], world["clients"]["national"]
    since = held(registry, gw, "national").version
    admin.add_member("VN/GOV/BTP", "Justice", "national")
    with redis.Redis.from_url(registry.redis_url) as raw:
        raw.xtrim(K_SNAPLOG, minid=f"{since + 2}-0")  # the log no longer reaches back to `since`
    r = gw.snapshot(held=since)
    assert r.headers["x-snapshot-kind"] == "full"
    assert read_full(r.content, registry.registry_public_key)["version"] == since + 1
    admin.add_member("VN/GOV/BYT", "Health", "national")
    assert gw.snapshot(held=since + 1).headers["x-snapshot-kind"] == "delta"  # the log goes on from there
    assert gw.snapshot(held=since + 1, full=True).headers["x-snapshot-kind"] == "full"
    assert gw.snapshot(held=0).headers["x-snapshot-kind"] == "full"  # 0: holds nothing

    async def bulk_load() -> None:
        client = async_single_client(registry.redis_url, who="the test")
        member = {"id": "VN/GOV/BULK", "name": "Bulk", "home_gateway": "national", "version": 1}
        await Store(client).bulk_load("members", {"VN/GOV/BULK": member})
        await client.aclose()

    asyncio.run(bulk_load())  # a version no delta can describe
    bulk = gw.snapshot(held=since + 2)
    assert bulk.headers["x-snapshot-kind"] == "full"
    assert "VN/GOV/BULK" in {m["id"] for m in read_full(bulk.content, registry.registry_public_key)["members"]}


def test_a_gateway_replays_its_cached_full_snapshot_and_deltas_after_a_restart(
    registry: RegistryHandle, world: dict[str, Any], tmp_path: Path
) -> None:
    admin, key = world["admin"], world["keys"]["nghean"]

    def client() -> SnapshotClient:
        return SnapshotClient(code="nghean", registry_url=registry.url, registry_key=registry.registry_public_key,
                              key=key, kid=keys.public_jwk(key)["kid"], cache_path=tmp_path / "snapshot.jsonl",
                              max_age=600, ca=registry.verify_ca)  # fmt: skip

    async def follow(steps: int) -> SnapshotClient:
        gateway = client()
        assert await gateway.fetch()  # the full snapshot
        for i in range(steps):
            admin.add_member(f"VN/GOV/T{i}", f"T{i}", "nghean")
            assert await gateway.fetch()
        await gateway.stop()
        return gateway

    live = asyncio.run(follow(3))
    assert live.current is not None
    lines = (tmp_path / "snapshot.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["kind"] for line in lines] == ["full", "delta", "delta", "delta"]
    restarted = client()
    assert restarted.load_cache() and restarted.current is not None
    assert view(restarted.current) | {"version": 0} == view(live.current) | {"version": 0}
    assert restarted.current.version == live.current.version

    (tmp_path / "snapshot.jsonl").write_bytes(b"\n".join([*lines[:-1], lines[-1][:40]]))  # a torn last append
    torn = client()
    assert torn.load_cache() and torn.current is not None and torn.current.version == live.current.version - 1
    assert asyncio.run(torn.fetch()) and torn.current.version == live.current.version  # the poll brings it back
    confirmed = (tmp_path / "snapshot.jsonl").stat().st_mtime
    assert time.time() - confirmed < 60
