"""`x-lienthong-no-data` (issue 18): a connector declares which of its statuses mean "no data". The registry checks
the declaration and writes `no_data` on each endpoint; a gateway reads it, and quarantines a service whose
`no_data` a buggy registry let through malformed."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from lienthong import keys
from lienthong.problem import Problem
from lienthong.snapshot import Snapshot
from lienthong.snapshot_entries import build_endpoint
from registry.openapi_endpoints import derive
from tests.registry_support import RegistryHandle
from tests.test_policy_fixtures import SERVICE, World

OPENAPI = Path(__file__).resolve().parent.parent / "openapi"
OP_FIELD = "openapi.paths./persons/{id}.get.x-lienthong-no-data"


ABSENT = object()


def _doc(root: Any = ABSENT, op: Any = ABSENT) -> dict[str, Any]:
    get: dict[str, Any] = {"operationId": "getPerson", "responses": {"200": {}}, "parameters": [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]}  # fmt: skip
    if op is not ABSENT:
        get["x-lienthong-no-data"] = op
    paths = {"/persons/{id}": {"get": get}, "/persons": {"post": {"responses": {}}}}
    doc: dict[str, Any] = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths}
    if root is not ABSENT:
        doc["x-lienthong-no-data"] = root
    return doc


def _no_data(doc: dict[str, Any]) -> dict[str, list[int]]:
    return {f"{e['method']} {e['path']}": e["no_data"] for e in derive(doc)}


def test_the_operation_declaration_wins_over_the_documents_and_none_is_empty() -> None:
    assert _no_data(_doc()) == {"GET /persons/{id}": [], "POST /persons": []}
    assert _no_data(_doc(root=[404])) == {"GET /persons/{id}": [404], "POST /persons": [404]}
    assert _no_data(_doc(root=[404], op=[410, 404, 410])) == {"GET /persons/{id}": [404, 410], "POST /persons": [404]}
    assert _no_data(_doc(root=[404], op=[])) == {"GET /persons/{id}": [], "POST /persons": [404]}


@pytest.mark.parametrize("bad", [404, "404", [200], [500], [399], [404.0], [True], ["404"], {"404": True}, None])
def test_a_declaration_that_is_not_4xx_statuses_is_400_naming_the_field(bad: Any) -> None:
    with pytest.raises(Problem) as op:
        derive(_doc(op=bad))
    assert (op.value.status, op.value.code, op.value.field) == (400, "invalid-body", OP_FIELD)
    with pytest.raises(Problem) as root:
        derive(_doc(root=bad, op=[404]))  # checked even where every operation declares its own
    assert (root.value.status, root.value.field) == (400, "openapi.x-lienthong-no-data")


def test_the_built_in_connectors_declare_their_404_as_no_data() -> None:
    for name in ("population", "business-registry", "insurance", "civil-status"):
        doc = yaml.safe_load((OPENAPI / f"{name}.yaml").read_text())
        assert {tuple(e["no_data"]) for e in derive(doc)} == {(404,)}, name


def test_a_gateway_reads_no_data_and_quarantines_a_malformed_one() -> None:
    endpoint = {"method": "GET", "path": "/persons/{id}", "enabled": True, "no_data": [404]}
    assert build_endpoint(endpoint).no_data == frozenset({404})
    assert build_endpoint({**endpoint, "no_data": None}).no_data == frozenset()
    doc = World().doc()
    doc["services"][0]["endpoints"][0]["no_data"] = ["404"]
    snapshot = Snapshot(copy.deepcopy(doc))
    assert SERVICE not in snapshot.services and "no_data" in snapshot.quarantined_services[SERVICE]


def test_the_registry_api_refuses_a_bad_declaration_and_keeps_a_good_one(registry: RegistryHandle) -> None:
    admin = registry.admin_client()
    admin.add_gateway("national", "http://127.0.0.1:8700", [keys.public_jwk(keys.generate())])
    admin.add_member("VN/GOV/BCA", "Ministry of Public Security", "national")
    admin.add_subsystem("VN/GOV/BCA/population", "National population database")
    body = {"subsystem": "VN/GOV/BCA/population", "code": f"p{uuid.uuid4().hex[:8]}", "version_label": "v1",
            "name": "P", "gateway": "national", "upstream_url": "http://127.0.0.1:8801"}  # fmt: skip
    headers = {"Authorization": f"Bearer {admin.token()}"}
    with registry.http(timeout=10) as http:
        bad = http.post("/v1/services", headers=headers, json={**body, "openapi": _doc(op=[500])})
        assert bad.status_code == 400 and bad.json()["field"] == OP_FIELD, bad.text
        good = http.post("/v1/services", headers=headers, json={**body, "openapi": _doc(root=[404], op=[404, 410])})
        assert good.status_code == 201, good.text
    assert {e["path"]: e["no_data"] for e in good.json()["endpoints"]} == {"/persons/{id}": [404, 410],
                                                                          "/persons": [404]}  # fmt: skip
