"""The registry API (protocol §5) on a real registry process and a real Redis: every resource's success and failure,
identifier checks, roles (§4.3), 409/412, approval, revocation and the change log."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from lienthong import keys, tokens
from registry.client import RegistryClient, RegistryError
from tests.registry_support import RegistryHandle

PERSONS_DOC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Population register", "version": "1", "description": "Citizens of Vietnam"},
    "paths": {
        "/persons/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "x-lienthong-subject": True}],
            "get": {"operationId": "getPerson", "summary": "Read one resident record", "responses": {"200": {}}},
        },
        "/households": {"post": {"operationId": "addHousehold", "summary": "Create a household", "responses": {}}},
    },
}


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def expect(status: int, field: str | None = None, code: str | None = None):  # type: ignore[no-untyped-def]
    """Context manager asserting a RegistryError with this status (and field/code when given)."""

    class _Expect:
        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
            assert exc_type is RegistryError, f"expected {status}, got no error"
            assert exc.status == status, exc.problem
            if field is not None:
                assert exc.problem.get("field") == field, exc.problem
            if code is not None:
                assert exc.problem.get("code") == code, exc.problem
            assert exc.problem.get("type", "").startswith("https://"), exc.problem
            return True

    return _Expect()


class World:
    """Two gateways, a provider (BCA, population) and a consumer province (NGHEAN) with an integrator key."""

    def __init__(self, reg: RegistryHandle) -> None:
        self.reg = reg
        self.admin = reg.admin_client()
        self.gw_key = keys.generate()
        self.gw_jwk = keys.public_jwk(self.gw_key)
        self.nghean_gw_key = keys.generate()
        self.admin.add_gateway("national", "http://127.0.0.1:8700", [self.gw_jwk])
        self.admin.add_gateway("nghean", "http://127.0.0.1:8701", [keys.public_jwk(self.nghean_gw_key)])
        self.admin.add_member("VN/GOV/BCA", "Ministry of Public Security", "national")
        self.admin.add_subsystem("VN/GOV/BCA/population", "National population database")
        self.admin.add_member("VN/PROV/NGHEAN", "Nghe An province", "nghean")
        self.admin.add_subsystem("VN/PROV/NGHEAN/civil-status", "Civil status")
        self.service = "VN/GOV/BCA/population/persons"
        self.admin.register_service(
            self.service,
            openapi=PERSONS_DOC,
            gateway="national",
            upstream_url="http://127.0.0.1:8801",
            name="Persons",
            description="Resident records",
        )
        self.admin.approve_service(self.service)
        self.nghean_key = keys.generate()
        self.nghean_kid = keys.public_jwk(self.nghean_key)["kid"]
        self.admin.add_client_key("VN/PROV/NGHEAN/civil-status", keys.public_jwk(self.nghean_key))
        self.nghean = reg.client_for(self.nghean_key, self.nghean_kid, "VN/PROV/NGHEAN/civil-status")
        self.bca_key = keys.generate()
        self.admin.add_client_key("VN/GOV/BCA/population", keys.public_jwk(self.bca_key))
        self.bca = reg.client_for(self.bca_key, keys.public_jwk(self.bca_key)["kid"], "VN/GOV/BCA/population")
        self.gateway = reg.client_for(self.gw_key, self.gw_jwk["kid"], "gateway:national")


@pytest.fixture(scope="module")
def world(registry: RegistryHandle) -> World:
    return World(registry)


def _raw(world: World, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, world.reg.url + path, headers=headers, timeout=10, verify=world.reg.verify, **kw)


# ---- identifiers and errors (protocol §1, §6) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "VN/GOV", "name": "x", "home_gateway": "national"}, "id"),
        ({"id": "XX/GOV/ABC", "name": "x", "home_gateway": "national"}, "id"),
        ({"id": "VN/CITY/ABC", "name": "x", "home_gateway": "national"}, "id"),
        ({"id": "VN/GOV/A:B", "name": "x", "home_gateway": "national"}, "id"),
        ({"id": "VN/GOV/ABC", "name": "x", "home_gateway": "Not-A-Code"}, "home_gateway"),
        ({"id": "VN/GOV/ABC", "home_gateway": "national"}, "name"),
        ({"id": "VN/GOV/ABC", "name": "x", "home_gateway": "national", "extra": 1}, "extra"),
    ],
)
def test_invalid_member_input_is_400_naming_the_field(world: World, body: dict[str, Any], field: str) -> None:
    r = _raw(world, "POST", "/v1/members", world.admin.token(), json=body)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["field"] == field
    assert problem["code"] in ("invalid-identifier", "invalid-body", "invalid-parameter")


def test_bad_path_parameter_and_body_shapes_are_problems(world: World) -> None:
    token = world.admin.token()
    r = _raw(world, "GET", "/v1/members/VN/CITY/BCA", token)
    assert r.status_code == 400 and r.json()["field"] == "member_class"
    r = _raw(world, "GET", "/v1/snapshot?gateway=national&wait=99", token)
    assert r.status_code == 400 and r.json()["field"] == "wait"
    r = _raw(world, "POST", "/v1/members", token, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = _raw(world, "GET", "/v1/no-such-thing", token)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = _raw(world, "DELETE", "/v1/members", token)
    assert r.status_code == 405 and r.json()["status"] == 405


# ---- auth (protocol §4.3) -----------------------------------------------------------------------------------------


def test_tokens_are_checked(world: World) -> None:
    assert _raw(world, "GET", "/v1/members", None).status_code == 401
    stranger = keys.generate()
    bad = tokens.sign(stranger, "nobody", {"iss": "admin", "aud": "registry"})
    r = _raw(world, "GET", "/v1/members", bad)
    assert r.status_code == 401 and r.json()["code"] == "invalid-token"
    admin_key = keys.load_private(world.reg.admin_key_path)
    kid = world.reg.admin_kid
    wrong_aud = tokens.sign(admin_key, kid, {"iss": "admin", "aud": "national"})
    assert _raw(world, "GET", "/v1/members", wrong_aud).status_code == 401
    expired = tokens.sign(admin_key, kid, {"iss": "admin", "aud": "registry"}, now=time.time() - 3600)
    assert _raw(world, "GET", "/v1/members", expired).status_code == 401
    too_long = tokens.sign(admin_key, kid, {"iss": "admin", "aud": "registry"}, lifetime=3600)
    assert _raw(world, "GET", "/v1/members", too_long).status_code == 401
    wrong_iss = tokens.sign(admin_key, kid, {"iss": "VN/GOV/BCA/population", "aud": "registry"})
    assert _raw(world, "GET", "/v1/members", wrong_iss).status_code == 401
    hs = jwt.encode({"iss": "admin", "aud": "registry", "exp": int(time.time()) + 60}, "s" * 40, headers={"kid": kid})
    assert _raw(world, "GET", "/v1/members", hs).status_code == 401
    assert _raw(world, "GET", "/v1/members", world.admin.token()).status_code == 200


def test_integrator_acts_for_its_own_member_only(world: World) -> None:
    sub = f"VN/PROV/NGHEAN/s{_uid()}"
    assert world.nghean.add_subsystem(sub, "Province subsystem")["member"] == "VN/PROV/NGHEAN"
    with expect(403, code="access-denied"):
        world.nghean.add_subsystem(f"VN/GOV/BCA/s{_uid()}", "not mine")
    with expect(403):
        world.nghean.add_member(f"VN/PROV/X{_uid()}", "x", "nghean")
    with expect(403):
        world.nghean.add_gateway(f"g{_uid()}", "http://127.0.0.1:1")
    with expect(403):
        world.nghean.add_grant("VN/PROV/NGHEAN/civil-status", world.service, ["birth-registration"])
    with expect(403):
        world.nghean.approve_service(world.service)
    with expect(403):
        world.nghean.changes()
    with expect(403):
        world.nghean.snapshot(gateway="nghean")
    with expect(403):
        world.nghean.add_client_key("VN/GOV/BCA/population", keys.public_jwk(keys.generate()))
    # its own member: services and keys are allowed
    svc = f"{sub}/records"
    created = world.nghean.register_service(
        svc, openapi=PERSONS_DOC, gateway="nghean", upstream_url="http://127.0.0.1:9000", name="Records"
    )
    assert created["approved"] is False and created["upstream_url"] == "http://127.0.0.1:9000"
    assert world.nghean.add_client_key(sub, keys.public_jwk(keys.generate()))["keys"]
    # another member's integrator cannot see it before approval, then reads it without its upstream URL
    with expect(404):
        world.bca.get_service(svc)
    world.admin.approve_service(svc)
    assert "upstream_url" not in world.bca.get_service(svc)
    assert world.admin.get_service(svc)["upstream_url"] == "http://127.0.0.1:9000"


def test_gateway_token_reads_but_never_writes(world: World) -> None:
    assert any(m["id"] == "VN/GOV/BCA" for m in world.gateway.list_members())
    with expect(403):
        world.gateway.add_member(f"VN/GOV/G{_uid()}", "x", "national")
    with expect(403):
        world.gateway.add_subsystem(f"VN/GOV/BCA/g{_uid()}", "x")
    with expect(403):
        world.gateway.snapshot(gateway="nghean")
    assert world.gateway.snapshot().status_code == 200


# ---- members, subsystems, gateways --------------------------------------------------------------------------------


def test_members_crud_conflict_and_preconditions(world: World) -> None:
    member = f"VN/GOV/M{_uid()}"
    created = world.admin.add_member(member, "Ministry of Justice", "national")
    assert created["version"] == 1 and created["home_gateway"] == "national"
    with expect(409, code="conflict"):
        world.admin.add_member(member, "again", "national")
    with expect(400, field="home_gateway"):
        world.admin.add_member(f"VN/GOV/M{_uid()}", "x", "nowhere")
    r = _raw(world, "GET", "/v1/members/" + member, world.admin.token())
    assert r.status_code == 200 and r.headers["etag"] == '"1"'
    updated = world.admin.update_member(member, if_match=1, name="Bo Tu phap")
    assert updated["version"] == 2 and updated["name"] == "Bo Tu phap"
    with expect(412, field="If-Match", code="precondition-failed"):
        world.admin.update_member(member, if_match=1, name="stale")
    assert world.admin.get_member(member)["name"] == "Bo Tu phap"
    with expect(404, code="not-found"):
        world.admin.get_member("VN/GOV/NOSUCH")
    with expect(404):
        world.admin.update_member("VN/GOV/NOSUCH", name="x")
    assert member in {m["id"] for m in world.admin.list_members()}


def test_subsystems(world: World) -> None:
    sub = f"VN/GOV/BCA/s{_uid()}"
    assert world.admin.add_subsystem(sub, "Sub")["member"] == "VN/GOV/BCA"
    with expect(409):
        world.admin.add_subsystem(sub, "Sub")
    with expect(400, field="id"):
        world.admin.add_subsystem("VN/GOV/NOSUCH/x", "no member")
    with expect(400, field="id", code="invalid-identifier"):
        world.admin.add_subsystem("VN/GOV/BCA", "not a subsystem")
    assert world.admin.get_subsystem(sub)["name"] == "Sub"
    assert sub in {s["id"] for s in world.admin.list_subsystems(member="VN/GOV/BCA")}
    assert all(s["member"] == "VN/PROV/NGHEAN" for s in world.admin.list_subsystems(member="VN/PROV/NGHEAN"))
    with expect(404):
        world.admin.get_subsystem("VN/GOV/BCA/nosuch")


def test_gateways_keys_and_revocation(world: World) -> None:
    code = f"g{_uid()}"
    key1, key2 = keys.generate(), keys.generate()
    gw = world.admin.add_gateway(code, "http://127.0.0.1:8799", [keys.public_jwk(key1)])
    assert gw["keys"][0]["revoked"] is False and "d" not in gw["keys"][0]
    with expect(409):
        world.admin.add_gateway(code, "http://127.0.0.1:8799")
    with expect(409, field="kid"):
        world.admin.add_gateway_key(code, keys.public_jwk(key1))
    world.admin.add_gateway_key(code, keys.public_jwk(key2))
    client1 = world.reg.client_for(key1, keys.public_jwk(key1)["kid"], f"gateway:{code}")
    assert client1.snapshot().status_code == 200
    revoked = world.admin.revoke_gateway_key(code, keys.public_jwk(key1)["kid"])
    assert [k["revoked"] for k in revoked["keys"]] == [True, False]
    with expect(401):
        client1.snapshot()
    client2 = world.reg.client_for(key2, keys.public_jwk(key2)["kid"], f"gateway:{code}")
    assert client2.snapshot().status_code == 200
    with expect(404):
        world.admin.revoke_gateway_key(code, "nosuchkid")
    # a private JWK is never accepted
    private = {**keys.public_jwk(keys.generate()), "d": "AAAA"}
    r = _raw(world, "POST", f"/v1/gateways/{code}/keys", world.admin.token(), json=private)
    assert r.status_code == 400 and r.json()["field"] == "d"
    bad = {"kty": "OKP", "crv": "Ed25519", "x": "not-a-key"}
    with expect(400, field="body"):
        world.admin.add_gateway_key(code, bad)
    updated = world.admin.update_gateway(code, "http://127.0.0.1:8800", if_match=revoked["version"])
    assert updated["base_url"] == "http://127.0.0.1:8800"
    with expect(412):
        world.admin.update_gateway(code, "http://127.0.0.1:8801", if_match=1)
    with expect(404):
        world.admin.get_gateway("nosuchgw")
    assert code in {g["code"] for g in world.admin.list_gateways()}


# ---- services -----------------------------------------------------------------------------------------------------


def test_service_registration_derives_endpoints_and_needs_approval(world: World) -> None:
    svc = f"VN/GOV/BCA/population/p{_uid()}"
    created = world.admin.register_service(
        svc, openapi=PERSONS_DOC, gateway="national", upstream_url="http://127.0.0.1:8801", name="P"
    )
    assert created["approved"] is False
    eps = {(e["method"], e["path"]): e for e in created["endpoints"]}
    assert set(eps) == {("GET", "/persons/{id}"), ("POST", "/households")}
    assert eps[("GET", "/persons/{id}")]["subject_param"] == "id"
    assert eps[("GET", "/persons/{id}")]["operation_id"] == "getPerson"
    assert eps[("POST", "/households")]["subject_param"] is None
    assert created["openapi"] == PERSONS_DOC
    with expect(409):
        world.admin.register_service(svc, openapi=PERSONS_DOC, gateway="national", upstream_url="http://x", name="P")
    approved = world.admin.approve_service(svc, if_match=created["version"])
    assert approved["approved"] is True and approved["version"] == created["version"] + 1
    with expect(412):
        world.admin.approve_service(svc, if_match=created["version"])
    with expect(404):
        world.admin.approve_service("VN/GOV/BCA/population/nosuch")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"openapi": {"swagger": "2.0", "paths": {"/a": {}}}}, "openapi.openapi"),
        ({"openapi": {"openapi": "2.0", "paths": {"/a": {"get": {}}}}}, "openapi.openapi"),
        ({"openapi": {"openapi": "3.0.0", "paths": {"/a/../b": {"get": {}}}}}, "openapi.paths./a/../b"),
        ({"openapi": {"openapi": "3.0.0", "paths": {"/a": {"description": "no operation"}}}}, "openapi.paths"),
        ({"gateway": "nosuchgw"}, "gateway"),
        ({"code": "listMethods"}, "code"),
        ({"code": "bad/code"}, "code"),
        ({"subsystem": "VN/GOV/BCA/nosuch"}, "subsystem"),
        ({"version_label": "1.0"}, "version_label"),
        ({"upstream_url": "ftp://x"}, "upstream_url"),
    ],
)
def test_bad_service_registrations(world: World, change: dict[str, Any], field: str) -> None:
    body = {
        "subsystem": "VN/GOV/BCA/population",
        "code": f"bad{_uid()}",
        "version_label": "v1",
        "name": "Bad",
        "gateway": "national",
        "upstream_url": "http://127.0.0.1:1",
        "openapi": PERSONS_DOC,
        **change,
    }
    r = _raw(world, "POST", "/v1/services", world.admin.token(), json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_service_update_keeps_enabled_flags_and_new_version_needs_approval(world: World) -> None:
    svc = f"VN/GOV/BCA/population/u{_uid()}"
    world.admin.register_service(svc, openapi=PERSONS_DOC, gateway="national", upstream_url="http://a:1", name="U")
    world.admin.approve_service(svc)
    disabled = world.admin.set_endpoint(svc, "POST", "/households", False)
    assert {(e["path"], e["enabled"]) for e in disabled["endpoints"]} == {
        ("/persons/{id}", True),
        ("/households", False),
    }
    with expect(404, code="unknown-endpoint"):
        world.admin.set_endpoint(svc, "GET", "/nosuch", False)
    doc = {"openapi": "3.0.3", "paths": {**PERSONS_DOC["paths"], "/persons": {"get": {"summary": "List"}}}}
    body = {"version_label": "v1", "name": "U", "gateway": "national", "upstream_url": "http://b:2", "openapi": doc}
    same_version = world.admin.update_service(svc, body, if_match=disabled["version"])
    flags = {e["path"]: e["enabled"] for e in same_version["endpoints"]}
    assert flags == {"/persons/{id}": True, "/households": False, "/persons": True}
    # a new upstream and a new endpoint send it back to approval; the approved revision stays live meanwhile
    assert same_version["approved"] is False and same_version["upstream_url"] == "http://b:2"
    assert same_version["live"]["upstream_url"] == "http://a:1" and same_version["live"]["approved"] is True
    with expect(412):
        world.admin.update_service(svc, body, if_match=disabled["version"])
    new_version = world.admin.update_service(svc, {**body, "version_label": "v2"})
    assert new_version["approved"] is False and new_version["version_label"] == "v2"
    with expect(403):
        world.nghean.update_service(svc, body)
    with expect(403):
        world.nghean.set_endpoint(svc, "GET", "/persons", False)
    # the provider's own integrator may toggle its endpoints
    assert world.bca.set_endpoint(svc, "GET", "/persons", False)["version"] == new_version["version"] + 1
    listed = world.admin.list_services(provider="VN/GOV/BCA/population", gateway="national")
    assert svc in {s["id"] for s in listed}


# ---- client keys --------------------------------------------------------------------------------------------------


def test_client_key_rotation_and_revocation(world: World) -> None:
    sub = f"VN/PROV/NGHEAN/k{_uid()}"
    world.admin.add_subsystem(sub, "Keys")
    assert world.admin.list_client_keys(sub) == {"subsystem": sub, "keys": [], "version": 0}
    old = keys.generate()
    jwk = keys.public_jwk(old)
    del jwk["kid"]
    added = world.admin.add_client_key(sub, jwk)
    assert added["keys"][0]["kid"] == keys.thumbprint(jwk)  # kid defaults to the RFC 7638 thumbprint
    old_client = world.reg.client_for(old, keys.thumbprint(jwk), sub)
    assert old_client.list_members()
    with expect(409):
        world.admin.add_client_key(sub, keys.public_jwk(old))
    new = keys.generate()
    world.nghean.add_client_key(sub, {**keys.public_jwk(new), "kid": "rotated-2026"})
    revoked = old_client.revoke_client_key(sub, keys.thumbprint(jwk))
    assert {k["kid"]: k["revoked"] for k in revoked["keys"]} == {keys.thumbprint(jwk): True, "rotated-2026": False}
    with expect(401, code="invalid-token"):
        old_client.list_members()
    assert world.reg.client_for(new, "rotated-2026", sub).list_members()
    r = _raw(world, "DELETE", f"/v1/clients/{sub}/keys/rotated-2026", world.admin.token())
    assert r.status_code == 200 and all(k["revoked"] for k in r.json()["keys"])
    with expect(404):
        world.admin.revoke_client_key(sub, "nosuch")
    with expect(404):
        world.admin.list_client_keys("VN/GOV/BCA/nosuch")


# ---- grants -------------------------------------------------------------------------------------------------------


def test_grants_deny_by_default_and_revoke(world: World) -> None:
    consumer = f"VN/PROV/NGHEAN/c{_uid()}"
    world.admin.add_subsystem(consumer, "Consumer")
    assert world.admin.list_grants(consumer=consumer) == []
    grant = world.admin.add_grant(
        consumer,
        world.service,
        ["birth-registration", "household-check"],
        endpoints=[{"method": "GET", "path": "/persons/{id}"}],
        fields=["id", "full_name", "household.id"],
        quota={"per_minute": 600, "per_day": 100000},
    )
    assert grant["id"].startswith("g-") and grant["revoked"] is False
    assert grant["purposes"] == ["birth-registration", "household-check"]
    with expect(409):
        world.admin.add_grant(
            consumer,
            world.service,
            ["household-check", "birth-registration"],
            endpoints=[{"method": "GET", "path": "/persons/{id}"}],
        )
    with expect(400, field="endpoints.0"):
        world.admin.add_grant(consumer, world.service, ["x"], endpoints=[{"method": "GET", "path": "/nosuch"}])
    with expect(400, field="purposes"):
        world.admin.add_grant(consumer, world.service, [])
    with expect(400, field="service"):
        world.admin.add_grant(consumer, "VN/GOV/BCA/population/nosuch", ["x"])
    with expect(400, field="consumer"):
        world.admin.add_grant("VN/GOV/BCA/nosuch", world.service, ["x"])
    with expect(400, field="fields.0"):
        world.admin.add_grant(consumer, world.service, ["x"], fields=["bad field"])
    everything = world.admin.add_grant(consumer, world.service, ["statistics"])
    assert everything["endpoints"] == "*" and everything["fields"] is None
    revoked = world.admin.revoke_grant(grant["id"])
    assert revoked["revoked"] is True and revoked["version"] == 2
    assert world.admin.get_grant(grant["id"])["revoked"] is True
    r = _raw(world, "DELETE", f"/v1/grants/{everything['id']}", world.admin.token())
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert {g["id"] for g in world.admin.list_grants(consumer=consumer)} == {grant["id"], everything["id"]}
    with expect(404):
        world.admin.get_grant("g-0000000000000000")
    # the same access may be granted again once the old grant is revoked
    assert world.admin.add_grant(consumer, world.service, ["statistics"])["revoked"] is False


# ---- catalog ------------------------------------------------------------------------------------------------------


def test_catalog_search_getopenapi_listmethods(world: World) -> None:
    hits = world.nghean.search("resident record")  # matches an OpenAPI summary
    assert world.service in {h["id"] for h in hits}
    assert world.service in {h["id"] for h in world.nghean.search("citizens")}  # the document's description
    assert world.nghean.search("no such words anywhere") == []
    assert world.nghean.get_openapi(world.service) == PERSONS_DOC
    methods = world.nghean.list_methods(world.service)
    assert {(e["method"], e["path"]) for e in methods["endpoints"]} == {
        ("GET", "/persons/{id}"),
        ("POST", "/households"),
    }
    with expect(404, code="unknown-service"):
        world.nghean.get_openapi("VN/GOV/BCA/population/nosuch")
    pending = f"VN/GOV/BCA/population/pending{_uid()}"
    world.admin.register_service(pending, openapi=PERSONS_DOC, gateway="national", upstream_url="http://a:1", name="Q")
    assert pending not in {h["id"] for h in world.nghean.search("")}  # unapproved: not in others' catalogue
    assert pending in {h["id"] for h in world.admin.search("")}


# ---- change log ---------------------------------------------------------------------------------------------------


def test_change_log_records_who_what_when_before_after(world: World) -> None:
    since = world.admin.changes(limit=1000)[-1]["version"]
    member = f"VN/GOV/L{_uid()}"
    world.admin.add_member(member, "Before", "national")
    world.admin.update_member(member, name="After")
    entries = [e for e in world.admin.changes(since=since) if e["id"] == member]
    assert [e["action"] for e in entries] == ["members.create", "members.update"]
    assert entries[0]["before"] is None and entries[0]["after"]["name"] == "Before"
    assert entries[1]["before"]["name"] == "Before" and entries[1]["after"]["name"] == "After"
    assert entries[1]["who"].startswith("admin:admin#") and entries[1]["at"].endswith("Z")
    assert entries[1]["version"] > entries[0]["version"] > since
    assert world.admin.changes(since=entries[1]["version"]) == []


def test_client_helpers_refuse_bad_ids_locally() -> None:
    client = RegistryClient("http://127.0.0.1:9", key=keys.generate(), kid="k")
    with pytest.raises(ValueError, match="service"):
        client.get_service("VN/GOV/BCA")
    with pytest.raises(RegistryError) as info:
        client.list_members()
    assert info.value.problem["code"] == "unreachable"
