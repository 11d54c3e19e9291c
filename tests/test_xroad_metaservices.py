"""Conformance of the metaservices with X-Road's documents, one test per rule, each citing its section.

Documents (in nordic-institute/X-Road, doc/Protocols/): PR-MREST 0.8 (Service Metadata Protocol for REST) for
listMethods, allowedMethods and getOpenAPI; PR-META 2.16 (Service Metadata Protocol) for listClients. Run against a
live mesh (registry + gateway + echo upstream, TLS by default) from tests/mesh_support.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import pytest
import redis
import yaml

from lienthong.redis_connection import EmbeddedRedis
from tests.mesh_support import MESH_TLS, Mesh, call_headers

HTTP = httpx.Client(timeout=30, verify=MESH_TLS)
PROVIDER = "VN/GOV/BCA/population"
CLIENT = "VN/PROV/NGHEAN/civil-status"
OTHER = "VN/PROV/HANOI/justice"
PERSONS = f"{PROVIDER}/persons"
SLOW = f"{PROVIDER}/slow"
ID_NS = "{http://x-road.eu/xsd/identifiers}"
XROAD_NS = "{http://x-road.eu/xsd/xroad.xsd}"
SERVICE_KEYS = {"xroad_instance", "member_class", "member_code", "subsystem_code", "service_code", "object_type",
                "service_type", "endpoint_list"}  # fmt: skip
# PR-REST §4.3 Content-Type: "The REST messages originating from the Security Server ... MUST include the header and
# indicate the content's type and character encoding with it"
JSON_UTF8 = "application/json;charset=utf-8"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("xroad-meta")
    m = Mesh(root, root / "logs", redis_url=redis_server.url.rsplit("/", 1)[0] + "/9")
    redis.Redis.from_url(m.redis_url).flushdb()
    for code in ("national", "nghean"):
        m.add_gateway(code)
    try:
        m.start_registry()
        upstream = m.start_upstream("echo")
        m.add_parties({"VN/GOV/BCA": "national", "VN/PROV/NGHEAN": "nghean", "VN/PROV/HANOI": "nghean"},
                      (PROVIDER, CLIENT, OTHER), (CLIENT, OTHER))  # fmt: skip
        m.add_service(PERSONS, "national", upstream, [("GET", "/persons/{id}"), ("POST", "/persons/search")])
        m.add_service(SLOW, "national", upstream, [("GET", "/slow/{ms}/{id}")])
        m.add_grant("g-persons", CLIENT, PERSONS, ["birth-registration"],
                    endpoints=[{"method": "GET", "path": "/persons/{id}"}])  # fmt: skip
        m.publish()
        m.start_gateways({"national": {}, "nghean": {}})
        yield m
    finally:
        m.stop()


def get(mesh: Mesh, path: str, client: str = CLIENT, **extra: str) -> httpx.Response:
    return HTTP.get(f"{mesh.gateways['nghean'].url}{path}", headers=call_headers(mesh, client, "nghean", **extra))


def test_list_methods_shape(mesh: Mesh) -> None:
    """PR-MREST §4, Annex A `restServiceDetailsListType`, B.1: `{"service": [...]}` with X-Road's identifier members."""
    response = get(mesh, f"/r1/{PROVIDER}/listMethods", Accept="application/json")
    assert response.status_code == 200 and response.headers["content-type"] == JSON_UTF8
    services = {s["service_code"]: s for s in response.json()["service"]}
    assert set(services) == {"persons", "slow"}
    persons = services["persons"]
    assert SERVICE_KEYS <= set(persons)
    assert (persons["xroad_instance"], persons["member_class"], persons["member_code"], persons["subsystem_code"]) == (
        "VN", "GOV", "BCA", "population")  # fmt: skip
    assert persons["object_type"] == "SERVICE" and persons["service_type"] in {"REST", "OPENAPI"}


def test_list_methods_endpoints_use_wildcards(mesh: Mesh) -> None:
    """PR-MREST §4 ("endpoints may contain wildcards") and B.1: `endpoint_list` of {method, path}, `*` for a
    path parameter."""
    services = {s["service_code"]: s for s in get(mesh, f"/r1/{PROVIDER}/listMethods").json()["service"]}
    pairs = {(e["method"], e["path"]) for e in services["persons"]["endpoint_list"]}
    assert pairs == {("GET", "/persons/*"), ("POST", "/persons/search")}
    assert {(e["method"], e["path"]) for e in services["slow"]["endpoint_list"]} == {("GET", "/slow/*/*")}


def test_list_methods_omits_metaservices(mesh: Mesh) -> None:
    """PR-MREST §4: "The response SHALL NOT contain names of the metainfo services"."""
    codes = {s["service_code"] for s in get(mesh, f"/r1/{PROVIDER}/listMethods").json()["service"]}
    assert not codes & {"listMethods", "allowedMethods", "getOpenAPI", "listClients"}


def test_allowed_methods_lists_only_what_the_caller_may_call(mesh: Mesh) -> None:
    """PR-MREST §4 and B.2: allowedMethods has listMethods' shape, cut to the services and endpoints open to the
    client."""
    response = get(mesh, f"/r1/{PROVIDER}/allowedMethods")
    assert response.status_code == 200 and response.headers["content-type"] == JSON_UTF8
    services = response.json()["service"]
    assert [s["service_code"] for s in services] == ["persons"]
    assert SERVICE_KEYS <= set(services[0])
    assert [(e["method"], e["path"]) for e in services[0]["endpoint_list"]] == [("GET", "/persons/*")]
    assert get(mesh, f"/r1/{PROVIDER}/allowedMethods", client=OTHER).json() == {"service": []}


def test_get_openapi_returns_the_description(mesh: Mesh) -> None:
    """PR-MREST §5 and Annex A: `getOpenAPI?serviceCode=X` answers the service's OpenAPI description, as JSON."""
    response = get(mesh, f"/r1/{PROVIDER}/getOpenAPI?serviceCode=persons")
    assert response.status_code == 200 and response.headers["content-type"] == JSON_UTF8
    document = response.json()
    assert document["openapi"].startswith("3.") and "/persons/{id}" in document["paths"]


def test_get_openapi_as_yaml(mesh: Mesh) -> None:
    """PR-MREST Annex A: getOpenAPI's 200 is `application/json` or `text/yaml`; asked for YAML, it answers YAML."""
    response = get(mesh, f"/r1/{PROVIDER}/getOpenAPI?serviceCode=persons", Accept="text/yaml")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/yaml")
    assert "/persons/{id}" in yaml.safe_load(response.text)["paths"]


def test_get_openapi_without_service_code_is_400(mesh: Mesh) -> None:
    """PR-MREST §5 ("The query parameters must contain serviceCode=xxx") and Annex A ('400': Error in request)."""
    assert get(mesh, f"/r1/{PROVIDER}/getOpenAPI").status_code == 400


def _xml_clients(response: httpx.Response) -> list[tuple[str, tuple[str, ...], str | None, str | None]]:
    root = ET.fromstring(response.content)  # noqa: S314 - our own gateway's answer, in a test
    assert root.tag == f"{XROAD_NS}clientList"
    out = []
    for member in root.findall(f"{XROAD_NS}member"):
        ident = member.find(f"{XROAD_NS}id")
        assert ident is not None
        parts = tuple(str(child.text) for child in ident)
        tags = [child.tag.removeprefix(ID_NS) for child in ident]
        assert tags == ["xRoadInstance", "memberClass", "memberCode", "subsystemCode"][: len(tags)]
        out.append((str(ident.get(f"{ID_NS}objectType")), parts, member.findtext(f"{XROAD_NS}name"),
                    member.findtext(f"{XROAD_NS}subsystemName")))  # fmt: skip
    return out


def test_list_clients_xml_by_default(mesh: Mesh) -> None:
    """PR-META §2, Annex A, C.1: without `Accept: application/json`, listClients answers text/xml, a `clientList`
    of members and subsystems."""
    response = get(mesh, "/r1/listClients")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    clients = _xml_clients(response)
    assert ("MEMBER", ("VN", "GOV", "BCA"), "VN/GOV/BCA", None) in clients
    assert ("SUBSYSTEM", ("VN", "GOV", "BCA", "population"), "VN/GOV/BCA", PROVIDER) in clients


def test_list_clients_json_on_request(mesh: Mesh) -> None:
    """PR-META §2 and Annex B `clientList`/`xroadIdentifier`, C.1 JSON: `Accept: application/json` gives
    `{"member": [{"id": {...}, "name", "subsystem_name"}]}`."""
    response = get(mesh, "/r1/listClients", Accept="application/json")
    assert response.status_code == 200 and response.headers["content-type"] == JSON_UTF8
    members = response.json()["member"]
    assert {"id": {"xroad_instance": "VN", "member_class": "PROV", "member_code": "NGHEAN", "object_type": "MEMBER"},
            "name": "VN/PROV/NGHEAN"} in members  # fmt: skip
    assert {"id": {"xroad_instance": "VN", "member_class": "PROV", "member_code": "NGHEAN",
                   "subsystem_code": "civil-status", "object_type": "SUBSYSTEM"},
            "name": "VN/PROV/NGHEAN", "subsystem_name": CLIENT} in members  # fmt: skip
    assert len(members) == 6  # 3 members + 3 subsystems


def test_list_clients_by_instance(mesh: Mesh) -> None:
    """PR-META §2: `xRoadInstance=CODE` lists the clients of that instance only (none for an instance not here)."""
    ours = get(mesh, "/r1/listClients?xRoadInstance=VN", Accept="application/json").json()["member"]
    assert len(ours) == 6
    assert get(mesh, "/r1/listClients?xRoadInstance=EE", Accept="application/json").json() == {"member": []}


def test_list_clients_at_xroad_path(mesh: Mesh) -> None:
    """PR-META §2: the request URL is `https://SECURITYSERVER:8443/listClients`, at the server's root (no /r1)."""
    response = get(mesh, "/listClients")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    assert response.content == get(mesh, "/r1/listClients").content
    as_json = get(mesh, "/listClients?xRoadInstance=VN", Accept="application/json")
    assert len(as_json.json()["member"]) == 6
