"""Issue 13, findings 7 and 8 on a live mesh: the real population connector over generated data behind its hosting
gateway (national), called from a province (nghean) through both gateways with the full policy chain, both gateways
holding the one mesh-wide subject key (LIENTHONG_SUBJECT_KEY).

- Every call that reads a person records every subject it touched, on both gateways, as the same
  HMAC(subject key, id): GET /persons/{id} and /persons/{id}/residence (a `$ref` parameter), POST /persons/verify
  (an ID in the body), POST /persons/batch (every ID of the array) and GET /households/{id}/members (every member
  the answer discloses).
- A batch counts its items: under a grant of 1 call a minute it is 429 (refused whole, returning nobody, charging
  nothing), and its meter count is its item count.
- A body whose declared subject location the gateway cannot read is its own 400 naming the field.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from lienthong.redis_connection import EmbeddedRedis, free_port
from tests.mesh_support import MESH_TLS, Mesh, call_headers
from tests.procs import Proc, lienthong

REPO = Path(__file__).resolve().parent.parent
SERVICE = "VN/GOV/BCA/population/persons"
NA = "VN/PROV/NGHEAN/civil-status"  # no quota to speak of
LIMITED = "VN/PROV/NGHEAN/statistics"  # 1 call a minute
METERED = "VN/PROV/NGHEAN/planning"  # only the meter test calls with it, so its counts start at zero
PURPOSE = "birth-registration"
SUBJECT_KEY = bytes(range(32))
HANG = 60.0  # seconds: a bound that only catches a hang


@dataclass
class Person:
    id: str
    full_name: str
    birth_date: str


@dataclass
class World:
    mesh: Mesh
    people: list[Person]
    redis: redis.Redis
    household: str  # one with several members


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[World]:
    root = tmp_path_factory.mktemp("subjects")
    m = Mesh(root, root / "logs", policies="all", registry="standin",
             redis_url=redis_server.url.rsplit("/", 1)[0] + "/11")  # fmt: skip
    client = redis.Redis.from_url(m.redis_url)
    client.flushdb()
    connector: Proc | None = None
    saved = os.environ.get("LIENTHONG_SUBJECT_KEY")
    os.environ["LIENTHONG_SUBJECT_KEY"] = SUBJECT_KEY.hex()  # the operator gives every gateway the same key
    try:
        data = root / "data"
        subprocess.run(lienthong("data", "generate", "--people", "200", "--seed", "7", "--out", str(data)),
                       check=True, capture_output=True, timeout=HANG)  # fmt: skip
        with sqlite3.connect(data / "population.sqlite") as conn:
            rows = conn.execute("SELECT id, full_name, birth_date FROM persons WHERE restricted = 0 "
                                "AND death_date IS NULL ORDER BY id LIMIT 12").fetchall()  # fmt: skip
        people = [Person(str(i), str(n), str(b)) for i, n, b in rows]
        with sqlite3.connect(data / "population.sqlite") as conn:
            (household,) = conn.execute("SELECT household_id FROM persons GROUP BY household_id "
                                        "HAVING count(*) >= 3 ORDER BY household_id LIMIT 1").fetchone()  # fmt: skip
        for code in ("national", "nghean"):
            m.add_gateway(code)
        m.start_registry()
        port = free_port()
        keys_file = root / "national-keys.json"
        keys_file.write_bytes(orjson.dumps([m.gateways["national"].key.jwk]))
        connector = Proc("connector-population", lienthong(
            "connector", "serve", "population", "--port", str(port), "--gateway", "national", "--database-url",
            f"sqlite:///{data / 'population.sqlite'}", "--gateway-keys", str(keys_file), "--log-level", "warning",
            *m.connector_tls("population", SERVICE),
        ), m.log_dir).start()  # fmt: skip
        for member, home in (("VN/GOV/BCA", "national"), ("VN/PROV/NGHEAN", "nghean")):
            m.add_member(member, home)
        for sub in ("VN/GOV/BCA/population", NA, LIMITED, METERED):
            m.add_subsystem(sub)
        for sub in (NA, LIMITED, METERED):
            m.add_client(sub)
        doc = yaml.safe_load((REPO / "openapi" / "population.yaml").read_text())
        scheme = "https" if m.tls else "http"
        m.add_service(SERVICE, "national", f"{scheme}://127.0.0.1:{port}", openapi=doc)
        m.add_grant("g-na", NA, SERVICE, [PURPOSE])
        m.add_grant("g-limited", LIMITED, SERVICE, [PURPOSE], quota={"per_minute": 1, "per_day": 1000})
        m.add_grant("g-metered", METERED, SERVICE, [PURPOSE])
        m.publish()
        m.gateway_cert("national")  # the connector answers its hosting gateway's certificate only
        national = m.gateways["national"]
        connector.wait_http(f"{scheme}://127.0.0.1:{port}/healthz", timeout=HANG, verify=national.hop_verify)
        m.start_gateways({"national": {}, "nghean": {}})
        yield World(m, people, client, str(household))
    finally:
        if saved is None:
            os.environ.pop("LIENTHONG_SUBJECT_KEY", None)
        else:
            os.environ["LIENTHONG_SUBJECT_KEY"] = saved
        m.stop()
        if connector is not None:
            connector.stop()


def send(w: World, client: str, method: str, path: str, body: Any = None) -> httpx.Response:
    url = f"{w.mesh.gateways['nghean'].url}/r1/{SERVICE}{path}"
    headers = call_headers(w.mesh, client, "nghean")
    content = None
    if body is not None:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    return httpx.request(method, url, headers=headers, content=content, timeout=HANG, verify=MESH_TLS)


def audit_records(w: World, code: str, txid: str) -> list[dict[str, Any]]:
    directory = w.mesh.gateways[code].data_dir / "audit"
    found = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if txid.encode() in line:
                found.append(orjson.loads(line))
    return [r for r in found if r.get("transaction_id") == txid]


def subject_hmac(value: str) -> str:
    return hmac.new(SUBJECT_KEY, value.encode(), hashlib.sha256).hexdigest()


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG
    while not check():
        assert time.monotonic() < deadline, "condition not reached (a hang?)"
        time.sleep(0.1)


CALLS: dict[str, Callable[[list[Person]], tuple[str, str, Any, list[str]]]] = {
    "person": lambda p: ("GET", f"/persons/{p[0].id}", None, [p[0].id]),
    "residence": lambda p: ("GET", f"/persons/{p[1].id}/residence", None, [p[1].id]),
    "verify": lambda p: ("POST", "/persons/verify",
                         {"id": p[2].id, "full_name": p[2].full_name, "birth_date": p[2].birth_date}, [p[2].id]),
    "batch": lambda p: ("POST", "/persons/batch", {"ids": [p[3].id, p[4].id, p[5].id, p[3].id]},
                        [p[3].id, p[4].id, p[5].id]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_subject_a_call_touches_is_audited_alike_on_both_gateways(world: World, name: str) -> None:
    method, path, body, ids = CALLS[name](world.people)
    r = send(world, NA, method, path, body)
    assert r.status_code == 200, r.text
    txid = r.headers["x-road-id"]
    expected = [subject_hmac(i) for i in ids]
    for code, role in (("nghean", "home"), ("national", "provider")):
        (record,) = audit_records(world, code, txid)
        assert record["role"] == role
        assert record["subject_hmacs"] == expected, f"{code}: {name} lost subjects"
        assert record["subject_hmac"] == expected[0]
    audit_bytes = b"".join(p.read_bytes() for code in ("nghean", "national")
                           for p in (world.mesh.gateways[code].data_dir / "audit").glob("*.jsonl"))  # fmt: skip
    assert not any(i.encode() in audit_bytes for i in ids)


def test_the_people_an_answer_discloses_are_audited_on_both_gateways(world: World) -> None:
    r = send(world, NA, "GET", f"/households/{world.household}/members")
    assert r.status_code == 200, r.text
    answer = r.json()
    members = [m["id"] for m in answer["members"]]
    assert len(members) >= 3
    expected = [subject_hmac(i) for i in dict.fromkeys([world.household, answer["head_id"], *members])]
    for code in ("nghean", "national"):
        (record,) = audit_records(world, code, r.headers["x-road-id"])
        assert record["subject_hmacs"] == expected, code


def test_a_batch_larger_than_the_quota_is_refused_whole_and_returns_nobody(world: World) -> None:
    ids = [p.id for p in world.people[:5]]
    r = send(world, LIMITED, "POST", "/persons/batch", {"ids": ids})
    assert r.status_code == 429, r.text  # call_headers asks for problem+json: lienthong's precise status
    # X-Road-Error is the X-Road type (PR-REST 1.0.4 §4.3), the body keeps lienthong's code
    assert r.json()["code"] == "quota-exceeded" and int(r.headers["retry-after"]) >= 1
    assert r.headers["x-road-error"] == "Server.ServerProxy.QuotaExceeded" == r.json()["xroad_type"]
    assert r.json()["quota"] == "per_minute"
    assert not any(i in r.text for i in ids)
    # refused whole: it took nothing, so the one call the grant allows this minute still passes (unless the minute
    # turned in between, when it passes all the more)
    single = send(world, LIMITED, "GET", f"/persons/{ids[0]}")
    assert single.status_code == 200, single.text
    # a 1,000-ID batch under the same grant is refused too
    big = send(world, LIMITED, "POST", "/persons/batch", {"ids": [p.id for p in world.people] * 83 + ids[:4]})
    assert big.status_code == 429 and big.json()["code"] == "quota-exceeded" and "results" not in big.text


def test_the_meter_counts_a_batch_by_its_items(world: World) -> None:
    ids = [p.id for p in world.people[:7]]
    r = send(world, METERED, "POST", "/persons/batch", {"ids": ids})
    assert r.status_code == 200 and len(r.json()["results"]) == 7

    def counted(role: str) -> int:
        total = 0
        for key in world.redis.scan_iter("meter:h:*"):
            for field, n in world.redis.hgetall(key).items():
                parts = (field.decode() if isinstance(field, bytes) else field).split("|")
                if parts[0] == METERED and parts[2] == "POST /persons/batch" and parts[5] == role:
                    total += int(n)
        return total

    wait_for(lambda: counted("home") >= 7 and counted("provider") >= 7)
    assert counted("home") == 7 and counted("provider") == 7


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/persons/batch", {"ids": "001067811828"}, "ids"),
        ("/persons/batch", {"ids": ["001067811828", {"id": 1}]}, "ids.1"),
        ("/persons/verify", b"{not json", "body"),
    ],
)
def test_a_body_the_gateway_cannot_read_for_its_subjects_is_a_400_naming_the_field(
    world: World, path: str, body: Any, field: str
) -> None:
    r = send(world, NA, "POST", path, body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid-body" and r.json()["field"] == field
    assert r.headers["x-road-error"] == "Client.InvalidBody" == r.json()["xroad_type"]  # PR-REST 1.0.4 §4.3


def test_the_connectors_batch_limit_still_holds_behind_the_gateway(world: World) -> None:
    ids = [world.people[0].id] * 1001
    r = send(world, NA, "POST", "/persons/batch", {"ids": ids})
    assert r.status_code == 400, r.text[:300]
