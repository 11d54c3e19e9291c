"""The data tracker on a live mesh (issue 19): `lienthong up`'s three gateways and five connectors, the national
portal asking the tracker through the mesh for two people.

A known sequence of calls about two people crosses all three gateways (a batch call naming both among them); each
person's report lists exactly their accesses, on the provider's side, once each, and never the portal's own calls
to the tracker. A grant with a disclosure delay keeps its accesses out of the report, which says only until when.
No personal ID appears in clear in any store the mesh keeps (transaction log, audit, spools, Redis). Bad input:
an invalid personal ID is 400 naming it, a consumer without a grant 403, a portal asking too often 429.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from lienthong.cli.mesh_layout import (
    BIRTH,
    CONNECTORS,
    DATA_SUBJECT_ACCESS,
    DATA_TRACKER,
    HANOI_PORTAL,
    MOJ,
    NATIONAL_PORTAL,
    NGHEAN_CIVIL,
    POPULATION,
    VERIFY,
)
from lienthong.cli.mesh_up import Mesh, MeshConfig, start
from lienthong.redis_connection import free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("tracker")
    config = MeshConfig(
        root=root, registry_port=free_port(), redis_port=free_port(), redis_url=None, people=200, echo_logs=False,
        gateway_ports={code: free_port() for code in ("national", "hanoi", "nghean")},
        connector_ports={c.name: free_port() for c in CONNECTORS},
    )  # fmt: skip
    mesh = start(config, say=lambda line: None)
    try:
        yield mesh
    finally:
        mesh.stop()


def people(mesh: Mesh, n: int) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{(mesh.config.paths.data / 'population.sqlite').resolve()}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM persons WHERE death_date IS NULL ORDER BY id LIMIT :n"), {"n": n})
        found = [str(r[0]) for r in rows]
    engine.dispose()
    return found


def report(mesh: Mesh, person: str, want: int, timeout: float = 30.0) -> dict[str, Any]:
    """The tracker's answer for `person`, once it lists `want` accesses (the log is fed within seconds)."""
    client = mesh.client(NATIONAL_PORTAL, "national")
    deadline = time.monotonic() + timeout
    while True:
        r = client.call("GET", f"{DATA_TRACKER}/persons/{person}/accesses", DATA_SUBJECT_ACCESS)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if len(body["accesses"]) >= want or time.monotonic() > deadline:
            return body
        time.sleep(1.0)  # each ask counts against the portal's 60 a minute


@pytest.fixture(scope="module")
def calls(mesh: Mesh) -> dict[str, Any]:
    """The known sequence: who read whom, through which gateways."""
    a, b = people(mesh, 2)
    nghean = mesh.client(NGHEAN_CIVIL, "nghean")  # nghean -> national
    hanoi = mesh.client(HANOI_PORTAL, "hanoi")  # hanoi -> national
    moj = mesh.client(MOJ, "national")  # national, local
    sent = [
        (nghean.call("GET", f"{POPULATION}/persons/{a}", BIRTH), NGHEAN_CIVIL, [a]),
        (hanoi.call("GET", f"{POPULATION}/persons/{b}", BIRTH), HANOI_PORTAL, [b]),
        (moj.call("POST", f"{POPULATION}/persons/batch", VERIFY, body={"ids": [a, b]}), MOJ, [a, b]),
    ]
    for response, _, _ in sent:
        assert response.status_code == 200, response.text
    return {"a": a, "b": b, "sent": sent}


def test_each_person_gets_exactly_their_accesses(mesh: Mesh, calls: dict[str, Any]) -> None:
    for person in (calls["a"], calls["b"]):
        expected = sorted(consumer for _, consumer, about in calls["sent"] if person in about)
        body = report(mesh, person, len(expected))
        accesses = body["accesses"]
        assert sorted(a["subsystem"] for a in accesses) == expected, accesses
        assert all(a["service"] == POPULATION and a["outcome"] == "found" for a in accesses)
        assert {a["member"] for a in accesses} == {c.rsplit("/", 1)[0] for c in expected}
        assert all(a["official"] is None for a in accesses)  # no grant here lets the official be named
        assert [a["time"] for a in accesses] == sorted((a["time"] for a in accesses), reverse=True)
        assert body["withheld_until"] is None
    # the portal's own calls to the tracker (several by now) are never in a report
    again = report(mesh, calls["a"], 0)
    assert all(a["service"] != DATA_TRACKER for a in again["accesses"])


def test_an_access_under_a_delayed_grant_is_withheld_until_its_date(mesh: Mesh, calls: dict[str, Any]) -> None:
    admin = mesh.admin()
    old = [g for g in admin.list_grants(consumer=MOJ, service=POPULATION) if not g["revoked"]]
    for g in old:
        admin.revoke_grant(g["id"])
    admin.add_grant(MOJ, POPULATION, [VERIFY], disclosure_delay_days=30)  # a criminal investigation, say
    person = calls["a"]
    before = len(report(mesh, person, 2)["accesses"])
    moj = mesh.client(MOJ, "national")
    deadline = time.monotonic() + 30
    while True:  # the gateways take the new grant within the snapshot's propagation time
        r = moj.call("GET", f"{POPULATION}/persons/{person}", VERIFY)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    asked_at = datetime.now(UTC)
    deadline = time.monotonic() + 30
    while (body := report(mesh, person, 0))["withheld_until"] is None and time.monotonic() < deadline:
        time.sleep(1.0)
    assert len(body["accesses"]) == before  # the access is there, but not shown
    until = datetime.fromisoformat(body["withheld_until"].replace("Z", "+00:00"))
    assert abs(until - (asked_at + timedelta(days=30))) < timedelta(minutes=2)
    assert set(body) == {"accesses", "withheld_until", "next_page_token"}  # nothing else said about it


def test_bad_input_refusals(mesh: Mesh, calls: dict[str, Any]) -> None:
    portal = mesh.client(NATIONAL_PORTAL, "national")
    bad = portal.call("GET", f"{DATA_TRACKER}/persons/040999999999/accesses", DATA_SUBJECT_ACCESS)
    assert bad.status_code == 400 and bad.json().get("field") == "person_id", bad.text
    token = portal.call("GET", f"{DATA_TRACKER}/persons/{calls['a']}/accesses", DATA_SUBJECT_ACCESS,
                        params={"page_token": "not-a-token"})  # fmt: skip
    assert token.status_code == 400 and token.json().get("field") == "page_token", token.text
    stranger = mesh.client(HANOI_PORTAL, "hanoi")  # no grant for the tracker
    refused = stranger.call("GET", f"{DATA_TRACKER}/persons/{calls['a']}/accesses", DATA_SUBJECT_ACCESS)
    assert refused.status_code == 403, refused.text


def test_no_personal_id_in_clear_in_any_store(mesh: Mesh, calls: dict[str, Any]) -> None:
    ids = [calls["a"].encode(), calls["b"].encode()]
    report(mesh, calls["b"], 2)  # the tracker's own call carried the ID too
    home = mesh.config.paths.root
    stores = [p for p in home.rglob("*") if p.is_file() and _mesh_store(p, home)]
    assert any(p.name.startswith("txlog") for p in stores) and any("audit" in p.parts for p in stores)
    leaks = [str(p) for p in stores for i in ids if i in p.read_bytes()]
    assert not leaks, leaks
    r = redis.Redis.from_url(mesh.redis_url)
    try:
        for key in r.scan_iter(count=1000):
            dumped = r.dump(key) or b""
            assert not any(i in key or i in dumped for i in ids), key
    finally:
        r.close()


def _mesh_store(path: Path, home: Path) -> bool:
    """What the mesh itself keeps (not the national databases the connectors serve, nor their generated data)."""
    parts = path.relative_to(home).parts
    return path.name.startswith("txlog") or any(p in ("audit", "meter", "txlog") for p in parts)


def test_a_portal_asking_too_often_is_rate_limited_by_its_grant(mesh: Mesh, calls: dict[str, Any]) -> None:
    portal = mesh.client(NATIONAL_PORTAL, "national")
    statuses = [
        portal.call("GET", f"{DATA_TRACKER}/persons/{calls['b']}/accesses", DATA_SUBJECT_ACCESS).status_code
        for _ in range(70)  # the portal's grant allows 60 a minute
    ]
    assert 429 in statuses and statuses[0] == 200, statuses
