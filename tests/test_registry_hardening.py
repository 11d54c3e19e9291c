"""Issue 13 on a real registry process: path templates a gateway could not compile or would match ambiguously are
refused naming the path (Critical 2); limits per service and per member (High 5); the upstream policy at
registration and re-approval of moved or reshaped services (High 4); and what one member may see of another's
grants and unapproved services (Low)."""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lienthong import keys
from lienthong.redis_connection import EmbeddedRedis
from lienthong.snapshot import Snapshot, template_pattern
from lienthong.snapshot_wire import read_full
from registry.client import RegistryClient, RegistryError
from tests.registry_support import RegistryHandle, start_registry

ALLOWED_PORT = 8801  # the strict registry allowlists 127.0.0.1:8801 and nothing else
FAR = "http://10.20.30.40:8801"  # a private address: no refusal applies
GATEWAY_URL = "http://10.20.30.40:8700"
LIMITS = ("--max-endpoints", "6", "--max-document-bytes", "3000", "--max-services-per-member", "3")


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def doc(paths: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def op(*params: str) -> dict[str, Any]:
    return {"get": {"parameters": [path_param(p) for p in params], "responses": {"200": {"description": "ok"}}}}


def problem(info: pytest.ExceptionInfo[RegistryError], status: int, field: str, code: str | None = None) -> None:
    assert info.value.status == status, info.value.problem
    assert info.value.problem.get("field") == field, info.value.problem
    if code is not None:
        assert info.value.problem.get("code") == code, info.value.problem


class World:
    """Three members, each with an integrator key: BCA provides, NGHEAN and HANOI consume."""

    def __init__(self, reg: RegistryHandle) -> None:
        self.reg = reg
        self.admin = reg.admin_client()
        self.admin.add_gateway("national", GATEWAY_URL, [keys.public_jwk(keys.generate())])
        self.integrators: dict[str, RegistryClient] = {}
        for member, sub in (("VN/GOV/BCA", "population"), ("VN/PROV/NGHEAN", "civil"), ("VN/PROV/HANOI", "portal")):
            self.admin.add_member(member, member, "national")
            self.admin.add_subsystem(f"{member}/{sub}", sub)
            key = keys.generate()
            self.admin.add_client_key(f"{member}/{sub}", keys.public_jwk(key))
            self.integrators[member] = reg.client_for(key, keys.public_jwk(key)["kid"], f"{member}/{sub}")
        self.bca, self.nghean, self.hanoi = (
            self.integrators[m] for m in ("VN/GOV/BCA", "VN/PROV/NGHEAN", "VN/PROV/HANOI")
        )

    def member(self) -> str:
        """A fresh member with one subsystem (the per-member limit is small here)."""
        member = f"VN/GOV/T{_uid().upper()}"
        self.admin.add_member(member, member, "national")
        self.admin.add_subsystem(f"{member}/sub", "sub")
        return f"{member}/sub"

    def register(self, openapi: dict[str, Any], url: str = FAR, subsystem: str | None = None, **kw: Any) -> str:
        sid = f"{subsystem or self.member()}/s{_uid()}"
        self.admin.register_service(sid, openapi=openapi, gateway="national", upstream_url=url, name="S", **kw)
        return sid

    def body(self, sid: str, **change: Any) -> dict[str, Any]:
        current = self.admin.get_service(sid)
        keep = ("version_label", "name", "description", "gateway", "upstream_url", "timeout_ms", "openapi")
        return {**{k: current[k] for k in keep}, **change}

    def snapshot(self) -> dict[str, Any]:
        return read_full(self.admin.snapshot(gateway="national").content, self.reg.registry_public_key)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A registry with the production default (no allowlist but 127.0.0.1:8801) and small limits."""
    base = tmp_path_factory.mktemp("strict-registry")
    server = EmbeddedRedis(base / "redis", durable=False)
    server.start()
    (base / "logs").mkdir()
    handle = start_registry(base, server.url, base / "logs", upstream_allow=f"127.0.0.1:{ALLOWED_PORT}", options=LIMITS)
    try:
        yield World(handle)
    finally:
        handle.stop()
        server.stop()


# ---- path templates (Critical 2) ----------------------------------------------------------------------------------

BAD_TEMPLATES: list[tuple[dict[str, Any], str]] = [
    (doc({"/x/{id}/{id}": op("id")}), "/x/{id}/{id}"),  # the review's case: re.error on every gateway
    (doc({"/x/{id}": {"get": {"responses": {}}}}), "/x/{id}"),  # a parameter nobody declared
    (doc({"/x/{id}": op("id", "other")}), "/x/{id}"),  # a declared path parameter the template lacks
    (doc({"/x/{a-b}": op("a-b")}), "/x/{a-b}"),
    (doc({"/x/{1a}": op("1a")}), "/x/{1a}"),
    (doc({"/x/{}": op()}), "/x/{}"),
    (doc({"/x/{id}.json": op("id")}), "/x/{id}.json"),
    (doc({"/x/{{id}}": op("id")}), "/x/{{id}}"),
    (doc({"/x/%2e%2e/y": op()}), "/x/%2e%2e/y"),
    (doc({"/x/a b": op()}), "/x/a b"),
    (doc({"/x/ä": op()}), "/x/ä"),
    (doc({"/x//y": op()}), "/x//y"),
    (doc({"/x/": op()}), "/x/"),
    (doc({"/x/./y": op()}), "/x/./y"),
    (doc({"/x?a=1": op()}), "/x?a=1"),
    (doc({"/x#frag": op()}), "/x#frag"),
    (doc({"x": op()}), "x"),
    # '$' matched before a final newline: the registry took these, and every gateway quarantined them
    (doc({"/x\n": op()}), "/x\n"),
    (doc({"/x/{id}\n": op("id")}), "/x/{id}\n"),
    (doc({"/x/{id}": {"get": {"parameters": [{"$ref": "#/components/parameters/Nope"}]}}}), "/x/{id}"),
    (doc({"/x/{id}": {"get": {"parameters": [{"$ref": "other.yaml#/Id"}]}}}), "/x/{id}"),
    (
        doc(
            {"/x/{id}": {"get": {"parameters": [{"$ref": "#/components/parameters/A"}]}}},
            components={
                "parameters": {"A": {"$ref": "#/components/parameters/B"}, "B": {"$ref": "#/components/parameters/A"}}
            },
        ),
        "/x/{id}",
    ),
    # two templates one request path could match (/x/z/y): the gateway and the connector might pick differently
    (doc({"/x/{a}/y": op("a"), "/x/z/{b}": op("b")}), "/x/z/{b}"),
    (doc({"/x/{a}": op("a"), "/x/{b}": op("b")}), "/x/{b}"),
]


@pytest.mark.parametrize(("openapi", "path"), BAD_TEMPLATES, ids=[p for _, p in BAD_TEMPLATES])
def test_bad_templates_are_400_naming_the_path(strict: World, openapi: dict[str, Any], path: str) -> None:
    with pytest.raises(RegistryError) as info:
        strict.register(openapi)
    problem(info, 400, f"openapi.paths.{path}", "invalid-path-template")


def test_bad_template_in_an_update_is_400_and_changes_nothing(strict: World) -> None:
    sid = strict.register(doc({"/x/{id}": op("id")}))
    before = strict.admin.get_service(sid)
    with pytest.raises(RegistryError) as info:
        strict.admin.update_service(sid, strict.body(sid, openapi=doc({"/x/{id}/{id}": op("id")})))
    problem(info, 400, "openapi.paths./x/{id}/{id}")
    assert strict.admin.get_service(sid)["version"] == before["version"]


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30], ids=str)
def test_an_integer_beyond_64_bits_in_a_document_is_400_not_500(strict: World, big: int) -> None:
    """The request parser takes any integer; orjson, which measures and stores documents, writes 64 bits at most."""
    deep = {"/x": {"get": {"responses": {"200": {"description": "ok", "x-n": [{"n": big}]}}}}}
    for openapi in (doc({"/x": op()}, **{"x-n": big}), doc(deep)):
        with pytest.raises(RegistryError) as info:
            strict.register(openapi)
        problem(info, 400, "openapi", "invalid-body")
    sid = strict.register(doc({"/x": op()}))
    with pytest.raises(RegistryError) as info:
        strict.admin.update_service(sid, strict.body(sid, openapi=doc(deep)))
    problem(info, 400, "openapi", "invalid-body")


def test_ref_parameters_static_beside_template_and_other_methods_are_accepted(strict: World) -> None:
    openapi = doc(
        {
            "/persons/{id}": {"parameters": [{"$ref": "#/components/parameters/Id"}], "get": {"responses": {}}},
            "/persons/{id}/residence": {"get": {"parameters": [{"$ref": "#/components/parameters/Id"}]}},
            "/persons/verify": {
                "post": {"responses": {}},
                "get": {"responses": {}},
            },  # static beats {id}, as in OpenAPI
            "/persons/{id}/~a!$&'()*+,;=:@-._": {"put": {"parameters": [{"$ref": "#/components/parameters/Id"}]}},
            "/": {"get": {"responses": {}}},
        },
        components={"parameters": {"Id": {"$ref": "#/components/parameters/RealId"}, "RealId": path_param("id")}},
    )
    sid = strict.register(openapi)
    paths = {e["path"] for e in strict.admin.get_service(sid)["endpoints"]}
    assert "/persons/{id}/residence" in paths and "/persons/verify" in paths


# mostly well-formed pieces (so that duplicates and near-misses are frequent), with odd ones mixed in
COMMON_NAMES = st.sampled_from(["id", "a", "b"]).map(lambda n: "{" + n + "}")
ODD_NAMES = st.sampled_from(["Id", "_x", "a-b", "1a", "", "{id}", "ä", "id}", "a b"]).map(lambda n: "{" + n + "}")
VALID_LITERALS = st.sampled_from(["persons", "v1", "a.b", "~x", "x-y", "a;b", "me"])
ODD_LITERALS = st.one_of(
    st.sampled_from([".", "..", "", "%2e", "%2F", "a b", "x#y", "x?y", "é", "{", "}", "{id"]),
    st.text(alphabet=string.printable + "éÅ\u0000\u200b", min_size=0, max_size=6),
)
WELL_FORMED = st.lists(st.one_of(VALID_LITERALS, COMMON_NAMES), min_size=1, max_size=5)  # names repeat often
ANY = st.lists(st.one_of(VALID_LITERALS, COMMON_NAMES, ODD_NAMES, ODD_LITERALS), min_size=0, max_size=5)
TEMPLATES = st.one_of(WELL_FORMED, ANY).map(lambda parts: "/" + "/".join(parts))


@example(templates=["/x/{id}/{id}"], declare=True)  # the review's case
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(templates=st.lists(TEMPLATES, min_size=1, max_size=2, unique=True), declare=st.sampled_from([True, True, False]))
def test_the_registry_never_accepts_what_a_gateway_cannot_compile(
    strict: World, templates: list[str], declare: bool
) -> None:
    """Random templates: the registry refuses them (400 naming a path) or every gateway compiles them."""
    import re

    paths = {}
    for template in templates:
        names = re.findall(r"\{([^{}/]*)\}", template) if declare else []
        paths[template] = {"get": {"parameters": [path_param(n) for n in names], "responses": {}}}
    try:
        sid = strict.register(doc(paths), subsystem=_hypothesis_subsystem(strict))
    except RegistryError as exc:
        assert exc.status == 400, exc.problem  # never a 500, never a limit for these small documents
        assert str(exc.problem.get("field", "")).startswith("openapi"), exc.problem
        return
    service = strict.admin.get_service(sid)
    for endpoint in service["endpoints"]:
        template_pattern(endpoint["path"])  # the gateway's compiler
    snapshot = Snapshot({"version": 1, "services": [{**service, "approved": True}]})
    assert sid in snapshot.services and not getattr(snapshot, "quarantined_services", {})


_HYPOTHESIS_SUBSYSTEMS: list[str] = []


def _hypothesis_subsystem(world: World) -> str:
    """Fresh members as the per-member limit (3) fills up."""
    if not _HYPOTHESIS_SUBSYSTEMS or len(world.admin.list_services(provider=_HYPOTHESIS_SUBSYSTEMS[-1])) >= 3:
        _HYPOTHESIS_SUBSYSTEMS.append(world.member())
    return _HYPOTHESIS_SUBSYSTEMS[-1]


# ---- limits (High 5) ----------------------------------------------------------------------------------------------


def test_limits_per_service_and_per_member_name_the_limit(strict: World) -> None:
    seven = doc({f"/p{i}": op() for i in range(7)})  # 7 operations > --max-endpoints 6
    with pytest.raises(RegistryError) as info:
        strict.register(seven)
    problem(info, 422, "openapi.paths", "too-many-endpoints")
    assert info.value.problem["limit"] == "max_endpoints" and info.value.problem["max"] == 6
    big = doc({"/x": {"get": {"description": "x" * 3000, "responses": {}}}})  # > --max-document-bytes 3000
    with pytest.raises(RegistryError) as info:
        strict.register(big)
    problem(info, 413, "openapi", "document-too-large")
    assert info.value.problem["limit"] == "max_document_bytes"
    sid = strict.register(doc({"/x": op()}))
    with pytest.raises(RegistryError) as info:
        strict.admin.update_service(sid, strict.body(sid, openapi=seven))
    problem(info, 422, "openapi.paths", "too-many-endpoints")
    subsystem = strict.member()
    for _ in range(3):
        strict.register(doc({"/x": op()}), subsystem=subsystem)
    with pytest.raises(RegistryError) as info:
        strict.register(doc({"/x": op()}), subsystem=subsystem)
    problem(info, 422, "code", "too-many-services")
    assert info.value.problem["limit"] == "max_services_per_member" and info.value.problem["max"] == 3


def test_unapproved_services_never_reach_a_snapshot(strict: World) -> None:
    sid = strict.register(doc({f"/p{i}/{{id}}": op("id") for i in range(6)}))
    snap = strict.snapshot()
    assert sid not in {s["id"] for s in snap["services"]} and sid not in snap["upstreams"]
    strict.admin.approve_service(sid)
    snap = strict.snapshot()
    assert sid in {s["id"] for s in snap["services"]} and snap["upstreams"][sid] == FAR


# ---- the upstream policy at registration (High 4) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8802",  # loopback; only port 8801 is allowlisted
        "http://127.9.9.9:8801",
        "http://[::1]:8801",
        "http://[::ffff:127.0.0.1]:8802",  # mapped: the same as 127.0.0.1
        "http://localhost:8801",
        "http://LOCALHOST.:8801",
        "http://0.0.0.0:8801",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.10.1:80",
        "http://[fe80::1]:80",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/",
        GATEWAY_URL,  # a gateway of the mesh
    ],
)
def test_refused_upstreams_are_422_naming_upstream_url(strict: World, url: str) -> None:
    with pytest.raises(RegistryError) as info:
        strict.register(doc({"/x": op()}), url=url)
    problem(info, 422, "upstream_url", "upstream-refused")


def test_the_registry_itself_and_its_redis_are_refused_and_the_allowlist_is_exact(strict: World) -> None:
    with pytest.raises(RegistryError) as info:
        strict.register(doc({"/x": op()}), url=strict.reg.url + "/v1")
    problem(info, 422, "upstream_url", "upstream-refused")
    with pytest.raises(RegistryError) as info:
        strict.register(doc({"/x": op()}), url="http://" + strict.reg.redis_url.split("//", 1)[1].split("/")[0])
    problem(info, 422, "upstream_url", "upstream-refused")
    assert strict.register(doc({"/x": op()}), url=f"http://127.0.0.1:{ALLOWED_PORT}")  # allowlisted exactly


def test_an_integrator_cannot_point_a_service_at_the_registry_even_with_loopback_allowed(
    registry: RegistryHandle,
) -> None:
    """The review's case, on a registry that allowlists loopback for any port (as the test meshes do)."""
    admin = registry.admin_client()
    gateway = f"g{_uid()}"
    admin.add_gateway(gateway, "http://127.0.0.1:1", [keys.public_jwk(keys.generate())])
    member = f"VN/GOV/R{_uid().upper()}"
    admin.add_member(member, member, gateway)
    admin.add_subsystem(f"{member}/sub", "sub")
    key = keys.generate()
    admin.add_client_key(f"{member}/sub", keys.public_jwk(key))
    integrator = registry.client_for(key, keys.public_jwk(key)["kid"], f"{member}/sub")
    ok = integrator.register_service(f"{member}/sub/ok", openapi=doc({"/x": op()}), gateway=gateway,
                                     upstream_url="http://127.0.0.1:8801", name="ok")  # fmt: skip
    for url in (registry.url + "/v1/snapshot", f"http://localhost:{registry.port}/", "http://127.0.0.1:1"):
        with pytest.raises(RegistryError) as info:
            integrator.register_service(f"{member}/sub/s{_uid()}", openapi=doc({"/x": op()}), gateway=gateway,
                                        upstream_url=url, name="s")  # fmt: skip
        problem(info, 422, "upstream_url", "upstream-refused")
        body = {k: ok[k] for k in ("version_label", "name", "gateway", "openapi")}
        with pytest.raises(RegistryError) as info:
            integrator.update_service(ok["id"], {**body, "upstream_url": url})
        problem(info, 422, "upstream_url", "upstream-refused")


# ---- re-approval (High 4) -----------------------------------------------------------------------------------------


def _live(world: World, sid: str) -> tuple[str | None, set[str]]:
    snap = world.snapshot()
    entry = next((s for s in snap["services"] if s["id"] == sid), None)
    return snap["upstreams"].get(sid), {e["path"] for e in entry["endpoints"]} if entry else set()


@pytest.mark.parametrize(
    "change",
    [
        {"upstream_url": "http://10.20.30.41:8801"},
        {"gateway": "other"},
        {"openapi": doc({"/x": op(), "/secret": op()})},
        {"openapi": doc({"/y": op()})},
        {"version_label": "v2"},
        # what the audit records of a call is part of the endpoint: declaring it differently needs a look too
        {"openapi": doc({"/x": {"get": {"parameters": [{"name": "q", "in": "query", "x-lienthong-subject": True}]}}})},
    ],
    ids=["upstream", "gateway", "endpoint-added", "endpoint-replaced", "version", "subject-declaration"],
)
def test_moving_or_reshaping_an_approved_service_needs_approval_and_the_old_one_keeps_serving(
    strict: World, change: dict[str, Any]
) -> None:
    if "gateway" in change and "other" not in {g["code"] for g in strict.admin.list_gateways()}:
        strict.admin.add_gateway("other", "http://10.20.30.50:8700", [keys.public_jwk(keys.generate())])
    sid = strict.register(doc({"/x": op()}))
    strict.admin.approve_service(sid)
    assert _live(strict, sid) == (FAR, {"/x"})
    pending = strict.admin.update_service(sid, strict.body(sid, **change))
    assert pending["approved"] is False and pending["live"]["upstream_url"] == FAR
    assert _live(strict, sid) == (FAR, {"/x"})  # the approved revision keeps serving
    approved = strict.admin.approve_service(sid)
    assert approved["approved"] is True and "live" not in approved
    url, paths = _live(strict, sid)
    if "gateway" in change:
        other = read_full(strict.admin.snapshot(gateway="other").content, strict.reg.registry_public_key)
        assert url is None and other["upstreams"][sid] == FAR
    else:
        assert url == change.get("upstream_url", FAR)
        assert paths == {p for p in change.get("openapi", {"paths": {"/x": 0}})["paths"]}


def test_renaming_or_describing_keeps_approval_and_disabling_reaches_the_live_revision(strict: World) -> None:
    sid = strict.register(doc({"/x": op(), "/y": op()}))
    strict.admin.approve_service(sid)
    renamed = strict.admin.update_service(sid, strict.body(sid, name="New name", description="Better words"))
    assert renamed["approved"] is True
    pending = strict.admin.update_service(sid, strict.body(sid, upstream_url="http://10.20.30.42:80"))
    assert pending["approved"] is False
    strict.admin.set_endpoint(sid, "GET", "/y", False)
    snap = strict.snapshot()
    entry = next(s for s in snap["services"] if s["id"] == sid)
    assert {e["path"]: e["enabled"] for e in entry["endpoints"]} == {"/x": True, "/y": False}
    assert snap["upstreams"][sid] == FAR


# ---- visibility (Low) ---------------------------------------------------------------------------------------------


def test_members_see_their_own_grants_and_only_approved_services_of_others(strict: World) -> None:
    provider = "VN/GOV/BCA/population"
    approved = f"{provider}/open{_uid()}"
    hidden = f"{provider}/hidden{_uid()}"
    strict.bca.register_service(approved, openapi=doc({"/x": op()}), gateway="national", upstream_url=FAR, name="A")
    strict.admin.approve_service(approved)
    strict.bca.register_service(hidden, openapi=doc({"/secret/{id}": op("id")}), gateway="national",
                                upstream_url=FAR, name="Hidden", description="unapproved words")  # fmt: skip
    to_nghean = strict.admin.add_grant("VN/PROV/NGHEAN/civil", approved, ["birth-registration"])
    to_hanoi = strict.admin.add_grant("VN/PROV/HANOI/portal", approved, ["statistics"])

    # grants: each consumer its own, the provider both, the admin all
    assert {g["id"] for g in strict.nghean.list_grants()} == {to_nghean["id"]}
    assert {g["id"] for g in strict.hanoi.list_grants(service=approved)} == {to_hanoi["id"]}
    assert {to_nghean["id"], to_hanoi["id"]} <= {g["id"] for g in strict.bca.list_grants()}
    assert {to_nghean["id"], to_hanoi["id"]} <= {g["id"] for g in strict.admin.list_grants()}
    assert strict.nghean.list_grants(consumer="VN/PROV/HANOI/portal") == []
    with pytest.raises(RegistryError) as info:
        strict.nghean.get_grant(to_hanoi["id"])
    assert info.value.status == 404
    assert strict.hanoi.get_grant(to_hanoi["id"])["id"] == to_hanoi["id"]

    # another member's unapproved service does not exist for it, anywhere in the catalogue
    for read in (strict.nghean.get_service, strict.nghean.get_openapi, strict.nghean.list_methods):
        with pytest.raises(RegistryError) as info:
            read(hidden)
        assert info.value.status == 404
    assert hidden not in {s["id"] for s in strict.nghean.list_services(provider=provider)}
    assert hidden not in {s["id"] for s in strict.nghean.search("unapproved words")}
    assert approved in {s["id"] for s in strict.nghean.list_services(provider=provider)}
    assert strict.nghean.get_openapi(approved)["paths"] == {"/x": op()}
    # its owner and the admin see it
    assert strict.bca.get_openapi(hidden)["paths"] == {"/secret/{id}": op("id")}
    assert hidden in {s["id"] for s in strict.admin.search("unapproved words")}

    # a pending change is the owner's; others keep seeing the approved revision
    strict.bca.update_service(approved, strict.body(approved, openapi=doc({"/x": op(), "/new": op()})))
    assert strict.nghean.get_openapi(approved)["paths"] == {"/x": op()}
    assert {e["path"] for e in strict.nghean.list_methods(approved)["endpoints"]} == {"/x"}
    assert "upstream_url" not in strict.nghean.get_service(approved)
    assert {e["path"] for e in strict.bca.list_methods(approved)["endpoints"]} == {"/x", "/new"}


def test_settings_refuse_bad_values(tmp_path: Path) -> None:
    from registry.settings import RegistrySettings

    with pytest.raises(ValueError, match="allowlist"):
        RegistrySettings.from_options("127.0.0.1:99999", None, None, None, env={})
    with pytest.raises(ValueError, match="LIENTHONG_MAX_ENDPOINTS"):
        RegistrySettings.from_options(None, None, None, None, env={"LIENTHONG_MAX_ENDPOINTS": "many"})
    s = RegistrySettings.from_options(None, None, None, None, env={"LIENTHONG_UPSTREAM_ALLOW": "10.0.0.0/8,[::1]:1"})
    assert [str(e) for e in s.upstream_allow] == ["10.0.0.0/8", "[::1]:1"]
    assert (s.max_endpoints, s.max_document_bytes, s.max_services_per_member) == (500, 262144, 200)


def test_max_endpoints_above_what_a_gateway_compiles_is_refused_at_start(tmp_path: Path) -> None:
    """A registry limit above lienthong.snapshot.MAX_ENDPOINTS would accept services every gateway quarantines."""
    import subprocess

    from lienthong.snapshot import MAX_ENDPOINTS
    from registry.settings import RegistrySettings
    from tests.procs import lienthong

    assert RegistrySettings.from_options(None, MAX_ENDPOINTS, None, None, env={}).max_endpoints == MAX_ENDPOINTS
    for option, env in ((MAX_ENDPOINTS + 1, {}), (None, {"LIENTHONG_MAX_ENDPOINTS": str(10 * MAX_ENDPOINTS)})):
        with pytest.raises(ValueError, match=f"at most {MAX_ENDPOINTS} endpoints"):
            RegistrySettings.from_options(None, option, None, None, env=env)
    # the real command refuses before it starts anything, and says why
    data_dir = str(tmp_path / "registry")
    subprocess.run(lienthong("registry", "init", "--data-dir", data_dir), check=True, capture_output=True)
    too_many = str(MAX_ENDPOINTS + 1)
    serve = lienthong("registry", "serve", "--data-dir", data_dir, "--port", "1", "--max-endpoints", too_many)
    done = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"at most {MAX_ENDPOINTS} endpoints" in done.stderr, done.stderr


# ---- every stored URL is read by one parser ---------------------------------------------------------------------

BAD_URLS = ["http://[::1", "http://[::1]:99999/", "http://a:port/", "http://ÿ.example/", "https://[x/"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_gateway_url_no_parser_can_read_is_400_naming_base_url(strict: World, url: str) -> None:
    """Schemathesis registered a gateway at `http://[...`: every later service registration read the mesh's own
    endpoints from it, urlsplit raised, and the registry answered 500. Both URL fields now share one parser."""
    code = f"g{_uid()[:8]}"
    with pytest.raises(RegistryError) as info:
        strict.admin.add_gateway(code, url, [keys.public_jwk(keys.generate())])
    problem(info, 400, "base_url")
    with pytest.raises(RegistryError) as info:
        strict.admin.register_service(f"{strict.member()}/s{_uid()}", openapi=doc({"/a": op()}), gateway="national",
                                      upstream_url=url, name="S")  # fmt: skip
    problem(info, 400, "upstream_url")
