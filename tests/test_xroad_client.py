"""Issue 15: the mesh `lienthong up` starts, driven by an X-Road REST client written only from X-Road's documents
(tests/xroad_client.py: PR-REST 1.0.4, PR-MREST, PR-META), with nothing of lienthong's own client code.

One mesh for the module, started as `lienthong up` on free ports in a temporary home. Nghe An's civil status system
runs the seed procedure (birth -> personal ID -> child health insurance card -> completed birth record) with its TLS
client certificate from that home: no Authorization header, no X-Purpose (X-Road has neither; the grants' default
purpose applies). Then the metaservices, X-Road's errors, and a check that the client imports nothing of lienthong.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from lienthong.cli.mesh_layout import BUSINESS, CIVIL_STATUS, INSURANCE, NGHEAN_CIVIL, POPULATION
from lienthong.home import MeshPaths
from lienthong.redis_connection import free_port
from tests.procs import lienthong
from tests.xroad_client import XRoadClient, XRoadError, raise_for_xroad

CLIENT_FILE = Path(__file__).with_name("xroad_client.py")
NGHEAN = "040"
OFFICIAL = "VN040203004567"  # PR-REST §4.3: X-Road-UserId prefixed with the two-letter country code


@dataclass
class UpMesh:
    home: Path
    gateways: dict[str, str]  # code -> https URL, as `up` printed them

    @property
    def paths(self) -> MeshPaths:
        return MeshPaths(self.home)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpMesh]:
    """`lienthong up` as a user runs it (tests/test_up.py), its output in a file so it never blocks on a pipe."""
    base = tmp_path_factory.mktemp("xroad-client")
    home, out = base / "mesh", base / "up.out"
    args = lienthong("up", "--home", str(home), "--people", "1000", "--quiet-logs",
                     "--registry-port", str(free_port()), "--gateway-port", str(free_port()),
                     "--connector-port", str(free_port()))  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8", "COLUMNS": "200"}
    with out.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C" not in out.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
        # `up` prints each URL on the line after its label
        found = re.findall(r"gateway (\w+): operations API.*?(https://127\.0\.0\.1:\d+)/ops/", out.read_text(), re.S)
        yield UpMesh(home, dict(found))
    finally:
        proc.send_signal(signal.SIGINT)  # `up` stops every process it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def xroad(mesh: UpMesh, subsystem: str = NGHEAN_CIVIL, gateway: str = "nghean") -> XRoadClient:
    """The client system at its security server (its home gateway) with the certificate `up` issued it."""
    tls = mesh.paths.client_tls(subsystem)
    context = ssl.create_default_context(cafile=str(mesh.paths.ca_cert))
    context.check_hostname = False  # mesh certificates name identities (URI SANs), not host names; chain verified
    return XRoadClient(mesh.gateways[gateway], subsystem, cert=(tls / "tls.crt", tls / "tls.key"), verify=context)


def family(mesh: UpMesh) -> tuple[str, str, str]:
    """A married couple of one household in Nghe An (father, mother, household), from the data `up` generated."""
    with sqlite3.connect(mesh.paths.data / "population.sqlite") as db:
        row = db.execute(
            "SELECT p.id, p.spouse_id, p.household_id FROM persons p "
            "JOIN persons s ON s.id = p.spouse_id AND s.household_id = p.household_id "
            "JOIN households h ON h.id = p.household_id WHERE h.province_code = ? AND p.death_date IS NULL "
            "AND p.sex = 'M' AND p.birth_date > '1980-01-01' ORDER BY p.id LIMIT 1",
            (NGHEAN,),
        ).fetchone()
    assert row is not None, "no couple in Nghe An in the generated data: raise --people"
    return str(row[0]), str(row[1]), str(row[2])


@dataclass
class Procedure:
    """Each answer of the seed procedure, in order, with the service it called and the X-Road-Id sent (if any)."""

    answers: list[tuple[str, str | None, httpx.Response]] = field(default_factory=list)

    def add(self, service: str, sent_id: str | None, response: httpx.Response) -> httpx.Response:
        self.answers.append((service, sent_id, response))
        return response


@pytest.fixture(scope="module")
def procedure(mesh: UpMesh) -> Procedure:
    """The seed procedure as far as it goes (each test asserts its part); each step's X-Road-Id is a fresh UUID,
    except the read-backs, which send none so the mesh has to make one (PR-REST §4.3)."""
    done = Procedure()
    father, mother, household = family(mesh)
    born = (dt.date.today() - dt.timedelta(days=3)).isoformat()
    case = f"HS-{uuid.uuid4().hex[:8].upper()}"
    with xroad(mesh) as client:

        def step(method: str, service: str, path: str, body: dict[str, str] | None, key: str) -> httpx.Response:
            sent = client.new_id()
            extra = {"Idempotency-Key": f"{key}-{case}"}  # a provider's own header, passed through (§4.3)
            r = client.call(method, service, path, json=body, headers=extra, xroad_id=sent, user_id=OFFICIAL,
                            issue=case)  # fmt: skip
            return done.add(service, sent, r)

        birth = step("POST", CIVIL_STATUS, "/births", {
            "child_name": "Nguyễn Minh An", "sex": "M", "birth_date": born,
            "birth_place": "Bệnh viện Sản Nhi Nghệ An", "father_id": father, "mother_id": mother}, "birth")  # fmt: skip
        if birth.status_code != 201:
            return done
        person = step("POST", POPULATION, "/births", {
            "full_name": "Nguyễn Minh An", "sex": "M", "birth_date": born, "birth_place": "Bệnh viện Sản Nhi",
            "registration_province": NGHEAN, "household_id": household, "relation_to_head": "child",
            "father_id": father, "mother_id": mother}, "pid")  # fmt: skip
        if person.status_code != 201:
            return done
        pid = person.json()["id"]
        card = step("POST", INSURANCE, "/cards", {
            "personal_id": pid, "full_name": "Nguyễn Minh An", "birth_date": born, "sex": "M",
            "primary_care_facility_code": "40001", "primary_care_facility_name": "Trạm y tế phường"},
            "card")  # fmt: skip
        if card.status_code != 201:
            return done
        patch = {"personal_id": pid, "hi_card_code": card.json()["code"]}
        done.add(CIVIL_STATUS, None, client.call("PATCH", CIVIL_STATUS, f"/births/{birth.json()['id']}", json=patch))
        done.add(INSURANCE, None, client.call("GET", INSURANCE, f"/insured/{card.json()['si_number']}"))
        done.add(POPULATION, None, client.call("GET", POPULATION, f"/persons/{pid}"))
    return done


def test_seed_procedure_with_an_xroad_client(procedure: Procedure) -> None:
    """PR-REST §4.1 (`/r1/{serviceId}/{path}`, X-Road-Client), §4.7 (the TLS client certificate alone
    authenticates): birth -> personal ID -> TE card -> completed birth record, each answer feeding the next."""
    statuses = [(service, r.status_code, r.text[:300]) for service, _, r in procedure.answers]
    expected = [(CIVIL_STATUS, 201), (POPULATION, 201), (INSURANCE, 201), (CIVIL_STATUS, 200), (INSURANCE, 200),
                (POPULATION, 200)]  # fmt: skip
    assert [s[:2] for s in statuses] == expected, statuses
    birth, person, card, completed, insured, citizen = (r.json() for _, _, r in procedure.answers)
    assert re.fullmatch(r"KS\d{12}", birth["id"]) and birth["personal_id"] is None
    pid = person["id"]
    assert re.fullmatch(r"\d{12}", pid) and pid[:3] == NGHEAN  # a Nghe An birth gets a Nghe An personal ID
    assert card["code"].startswith("TE") and card["code"].endswith(card["si_number"][-10:])
    assert insured["person_id"] == pid  # the card was issued to the ID population gave
    assert (completed["id"], completed["personal_id"], completed["hi_card_code"]) == (birth["id"], pid, card["code"])
    # population registered the child of the parents civil status recorded
    assert (citizen["id"], citizen["father"]["id"], citizen["mother"]["id"]) == (pid, birth["father_id"],
                                                                                 birth["mother_id"])  # fmt: skip


def test_response_headers_name_client_service_and_ids(procedure: Procedure) -> None:
    """PR-REST §4.3, "X-Road specific headers returned in the response": X-Road-Client and X-Road-Service name the
    caller and the service, X-Road-Id the message (the client's when it sent one, else one the security server
    made), X-Road-Request-Id is unique per request."""
    assert procedure.answers
    request_ids = []
    for service, sent_id, r in procedure.answers:
        assert r.headers.get("x-road-client") == NGHEAN_CIVIL, (service, dict(r.headers))
        assert r.headers.get("x-road-service") == service, (service, dict(r.headers))
        assert (r.headers.get("x-road-id") == sent_id) if sent_id else r.headers.get("x-road-id"), dict(r.headers)
        request_ids.append(r.headers["x-road-request-id"])
    assert all(request_ids) and len(set(request_ids)) == len(request_ids)


def test_response_carries_request_hash(procedure: Procedure) -> None:
    """PR-REST §4.3 "Request hash header": X-Road-Request-Hash is the base-64 of a SHA-512 (64 bytes)."""
    assert procedure.answers
    for service, _, r in procedure.answers:
        value = r.headers.get("x-road-request-hash")
        assert value, (service, dict(r.headers))
        assert len(base64.b64decode(value, validate=True)) == 64


def test_metaservices_through_the_client(mesh: UpMesh) -> None:
    """PR-MREST §4 (listMethods, allowedMethods: `service` list of X-Road ids), §5 (getOpenAPI by serviceCode),
    PR-META §2 (GET {ss}/listClients, JSON on Accept: application/json): one smoke check each."""
    population = POPULATION.rsplit("/", 1)[0]
    with xroad(mesh) as client:
        offered = client.list_methods(population)
        assert [s["service_code"] for s in offered] == ["persons"] and offered[0]["endpoint_list"]
        assert [s["service_code"] for s in client.allowed_methods(population)] == ["persons"]
        assert client.allowed_methods(BUSINESS.rsplit("/", 1)[0]) == []  # no grant for Nghe An there
        description = client.get_openapi(population, "persons")
        assert description["openapi"].startswith("3.") and "/births" in description["paths"]
        ids = [m["id"] for m in client.list_clients()]
    ours = {"xroad_instance": "VN", "member_class": "PROV", "member_code": "NGHEAN", "subsystem_code": "civil-status"}
    assert {**ours, "object_type": "SUBSYSTEM"} in ids


def _refusals(mesh: UpMesh) -> list[httpx.Response]:
    """A service Nghe An has no grant for, and a service that does not exist."""
    with xroad(mesh) as client:
        return [client.call("GET", BUSINESS, "/enterprises/0100109106"),
                client.call("GET", "VN/GOV/BCA/population/no-such-service", "/x")]  # fmt: skip


def test_xroad_errors_are_flagged(mesh: UpMesh) -> None:
    """PR-REST §4.3, §4.6: an error of the security server carries X-Road-Error, which raise_for_xroad turns into
    XRoadError."""
    for r in _refusals(mesh):
        assert r.status_code >= 400 and r.headers.get("x-road-error"), (r.status_code, dict(r.headers))
        with pytest.raises(XRoadError):
            raise_for_xroad(r)


def test_xroad_error_body_shape(mesh: UpMesh) -> None:
    """PR-REST §4.6: the body's `type` names where X-Road failed: "Client..." or "Server.ClientProxy/ServerProxy..."
    (depends on the X-Road error shape work of issue 15)."""
    for r in _refusals(mesh):
        with pytest.raises(XRoadError) as caught:
            raise_for_xroad(r)
        assert caught.value.type.startswith(("Client.", "Server.")), (caught.value.type, r.text[:300])


def test_client_imports_nothing_of_lienthong() -> None:
    """The client is written from X-Road's documents alone: it imports httpx and the standard library, nothing
    else (so nothing of lienthong, gateway, registry, connectors or tests)."""
    tree = ast.parse(CLIENT_FILE.read_text(), str(CLIENT_FILE))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            modules.add(str(node.module).split(".")[0])
    assert modules and modules <= set(sys.stdlib_module_names) | {"httpx"}, modules
