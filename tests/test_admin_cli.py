"""The admin command line against a real registry process (issue 16): `subsystems add` before `keygen --register`,
list and show for every kind of object (--json is what the API holds, filters narrow it, tables fit 80 columns),
grants checked against the service's OpenAPI document, and the mesh home (--home, LIENTHONG_HOME) used for the key,
the CA, the registry URL and the Redis port file, with every error naming the key file and the URL.

Commands run in-process (click's runner, the same command the `lienthong` script runs) except where the process'
environment and working directory are the point; the registry and Redis are real processes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lienthong.cli import main
from lienthong.redis_connection import EmbeddedRedis
from tests.procs import lienthong
from tests.registry_support import RegistryHandle

DOC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Land parcels", "version": "v1"},
    "x-lienthong-purposes": [{"code": "land-transfer", "description": "Transfer of land use rights"}, "tax"],
    "paths": {
        "/parcels/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "getParcel", "responses": {
                "200": {"description": "found", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Parcel"}}}},
                "404": {"description": "none", "content": {"application/problem+json": {
                    "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}}}},
        },
        "/parcels": {"get": {"operationId": "findParcels", "responses": {"200": {"description": "found", "content": {
            "application/json": {"schema": {"type": "object", "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Parcel"}},
                "total": {"type": "integer"}}}}}}}}},
    },
    "components": {"schemas": {"Parcel": {"type": "object", "properties": {
        "id": {"type": "string"}, "area_m2": {"type": "number"},
        "holder": {"type": "object", "properties": {"personal_id": {"type": "string"}, "name": {"type": "string"}}},
    }}}},
}  # fmt: skip


def home_of(reg: RegistryHandle) -> Path:
    """The registry fixture keeps its data where a mesh home does: <home>/registry, its Redis in <home>/redis."""
    return reg.data_dir.parent


def cli(reg: RegistryHandle, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--home", str(home_of(reg)), "--registry", reg.url], env=env)


def ok(reg: RegistryHandle, *args: str) -> Any:
    result = cli(reg, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def uid() -> str:
    return secrets.token_hex(3).upper()


@pytest.fixture(scope="module")
def world(registry: RegistryHandle) -> dict[str, str]:
    """A gateway, a province with a provider and a consumer subsystem, a land service and one grant."""
    admin, code = registry.admin_client(), uid()
    gateway = f"gw{code.lower()}"
    admin.add_gateway(gateway, "https://127.0.0.1:8799")
    member = f"VN/PROV/P{code}"
    admin.add_member(member, f"Province {code}", gateway)
    admin.add_subsystem(f"{member}/land", "Land register")
    admin.add_subsystem(f"{member}/portal", "Public services portal")
    service = f"{member}/land/parcels"
    admin.register_service(service, openapi=DOC, gateway=gateway, upstream_url="http://127.0.0.1:9", name="Parcels")
    grant = admin.add_grant(f"{member}/portal", service, ["tax"], fields=["id", "holder.name"])
    return {"gateway": gateway, "member": member, "service": service, "consumer": f"{member}/portal",
            "grant": grant["id"]}  # fmt: skip


def test_subsystems_add_then_keygen_register(registry: RegistryHandle, world: dict[str, str], tmp_path: Path) -> None:
    subsystem = f"{world['member']}/cadastre"
    # the admin key, its kid and the CA come from the mesh home (LIENTHONG_HOME), as for every admin command
    keygen = ["keygen", "--subsystem", subsystem, "--out", str(tmp_path / "c.key"), "--register",
              "--registry", registry.url]  # fmt: skip
    env = {"LIENTHONG_HOME": str(home_of(registry))}
    before = CliRunner().invoke(main, keygen, env=env)
    assert before.exit_code == 1 and "404" in before.output
    assert registry.url in before.output and str(home_of(registry) / "registry" / "admin.key") in before.output
    added = ok(registry, "subsystems", "add", subsystem, "--name", "Cadastre")
    assert added["id"] == subsystem and added["member"] == world["member"]
    after = CliRunner().invoke(main, keygen, env=env)
    assert after.exit_code == 0, after.output
    kid = json.loads(after.stdout)["kid"]
    held = ok(registry, "keys", "list", "--subsystem", subsystem, "--json")
    assert [(k["owner"], k["kid"], k["revoked"]) for k in held] == [(subsystem, kid, False)]
    assert ok(registry, "keys", "show", kid)["owner"] == subsystem
    assert cli(registry, "subsystems", "add", "VN/PROV/NOSUCH/x", "--name", "x").exit_code == 1


def test_every_list_json_is_what_the_api_holds(registry: RegistryHandle, world: dict[str, str]) -> None:
    admin = registry.admin_client()
    assert ok(registry, "members", "list", "--json") == admin.list_members()
    assert ok(registry, "subsystems", "list", "--json") == admin.list_subsystems()
    assert ok(registry, "gateways", "list", "--json") == admin.list_gateways()
    assert ok(registry, "services", "list", "--json") == admin.list_services()
    assert ok(registry, "grants", "list", "--json") == admin.list_grants()
    assert (
        ok(registry, "services", "endpoints", world["service"], "--json")
        == admin.get_service(world["service"])["endpoints"]
    )
    assert ok(registry, "members", "show", world["member"]) == admin.get_member(world["member"])
    assert ok(registry, "subsystems", "show", world["consumer"]) == admin.get_subsystem(world["consumer"])
    assert ok(registry, "gateways", "show", world["gateway"]) == admin.get_gateway(world["gateway"])
    assert ok(registry, "services", "show", world["service"]) == admin.get_service(world["service"])
    assert ok(registry, "grants", "show", world["grant"]) == admin.get_grant(world["grant"])


def test_filters_narrow_each_list(registry: RegistryHandle, world: dict[str, str]) -> None:
    member, service, consumer = world["member"], world["service"], world["consumer"]
    assert [m["id"] for m in ok(registry, "members", "list", "--gateway", world["gateway"], "--json")] == [member]
    assert all(m["id"].startswith("VN/PROV/") for m in ok(registry, "members", "list", "--class", "prov", "--json"))
    subsystems = ok(registry, "subsystems", "list", "--member", member, "--json")
    assert {s["id"] for s in subsystems} >= {f"{member}/land", consumer}
    assert all(s["member"] == member for s in subsystems)
    assert [s["id"] for s in ok(registry, "services", "list", "--gateway", world["gateway"], "--json")] == [service]
    assert [s["id"] for s in ok(registry, "services", "list", "--provider", f"{member}/land", "--pending", "--json")
            ] == [service]  # fmt: skip
    assert ok(registry, "services", "list", "--provider", f"{member}/land", "--approved", "--json") == []
    assert ok(registry, "services", "endpoints", service, "--method", "post", "--json") == []
    grants = ok(registry, "grants", "list", "--consumer", consumer, "--service", service, "--json")
    assert [g["id"] for g in grants] == [world["grant"]]
    assert ok(registry, "grants", "list", "--consumer", consumer, "--purpose", "land-transfer", "--json") == []
    purposes = ok(registry, "purposes", "list", "--service", service, "--json")
    assert [(p["code"], p["services"], p["grants"]) for p in purposes] == [
        ("land-transfer", [service], []), ("tax", [service], [world["grant"]])]  # fmt: skip
    shown = ok(registry, "purposes", "show", "land-transfer")
    assert shown["descriptions"] == {service: "Transfer of land use rights"}
    assert all(k["owner"].startswith("gateway:") for k in ok(registry, "keys", "list", "--kind", "gateway", "--json"))


def test_tables_fit_80_columns(registry: RegistryHandle, world: dict[str, str]) -> None:
    for args in (("members", "list"), ("subsystems", "list"), ("gateways", "list"), ("services", "list"),
                 ("services", "endpoints", world["service"]), ("grants", "list"), ("purposes", "list"),
                 ("keys", "list")):  # fmt: skip
        result = cli(registry, *args)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert len(lines) >= 3 and max(len(line) for line in lines) <= 80, result.stdout
    assert world["grant"] in cli(registry, "grants", "list").stdout  # ids stay whole: the reader copies them


def test_grants_are_checked_against_the_document(registry: RegistryHandle, world: dict[str, str]) -> None:
    add = ["grants", "add", "--consumer", f"{world['member']}/land", "--service", world["service"]]
    bogus = cli(registry, *add, "--purpose", "tax", "--field", "bogus")
    assert bogus.exit_code == 1 and "400" in bogus.output and "field: fields.0" in bogus.output
    # a property of the 404 problem schema is not data; one of another endpoint's answer is not granted
    second = cli(registry, *add, "--purpose", "tax", "--field", "id", "--field", "detail")
    assert second.exit_code == 1 and "field: fields.1" in second.output
    narrow = cli(registry, *add, "--purpose", "tax", "--endpoint", "GET /parcels/{id}", "--field", "total")
    assert narrow.exit_code == 1 and "field: fields.0" in narrow.output
    endpoint = cli(registry, *add, "--purpose", "tax", "--endpoint", "GET /nosuch")
    assert endpoint.exit_code == 1 and "field: endpoints.0" in endpoint.output
    purpose = cli(registry, *add, "--purpose", "tax", "--purpose", "marketing")
    assert purpose.exit_code == 1 and "field: purposes.1" in purpose.output and "marketing" in purpose.output
    granted = ok(registry, *add, "--purpose", "land-transfer", "--field", "items.holder.personal_id",
                 "--field", "total", "--field", "area_m2")  # fmt: skip
    assert granted["fields"] == ["items.holder.personal_id", "total", "area_m2"]


def test_lienthong_home_is_honoured_from_another_cwd(registry: RegistryHandle, tmp_path: Path) -> None:
    home = home_of(registry)
    (home / "registry" / "url").write_text(registry.url + "\n")  # what a mesh home records of its registry
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")} | {"LIENTHONG_HOME": str(home)}
    listed = subprocess.run(lienthong("members", "list", "--json"), capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == registry.admin_client().list_members()
    refused = subprocess.run(lienthong("grants", "show", "g-0000000000000000"), capture_output=True, text=True,
                             timeout=60, cwd=tmp_path, env=env)  # fmt: skip
    assert refused.returncode == 1 and "404" in refused.stderr
    assert str(home / "registry" / "admin.key") in refused.stderr and registry.url in refused.stderr
    empty = tmp_path / "other-home"
    (empty / "registry").mkdir(parents=True)
    (empty / "registry" / "url").write_text(registry.url)
    no_key = CliRunner().invoke(main, ["snapshot", "show"], env={"LIENTHONG_HOME": str(empty)})
    assert no_key.exit_code == 1
    assert str(empty / "registry" / "admin.key") in no_key.output and registry.url in no_key.output


def test_metering_report_reads_only_its_homes_redis(registry: RegistryHandle, tmp_path: Path) -> None:
    home = home_of(registry)
    report = ["metering", "report", "--from", "2026-01-01", "--to", "2026-01-02", "--json"]
    env: dict[str, str | None] = {"REDIS_URL": None}
    mine = CliRunner().invoke(main, [*report, "--home", str(home)], env=env)
    assert mine.exit_code == 0, mine.output
    assert json.loads(mine.stdout)["total"] == 0
    stale = tmp_path / "stale-home"
    (stale / "redis").mkdir(parents=True)  # another mesh's port file copied over, its own Redis stopped
    (stale / "redis" / "redis.port").write_text((home / "redis" / "redis.port").read_text())
    refused = CliRunner().invoke(main, [*report, "--home", str(stale)], env=env)
    port_file = stale / "redis" / "redis.port"
    assert refused.exit_code == 2 and "not running" in refused.output and "stale" in refused.output
    assert str(port_file) in refused.output and f"redis://127.0.0.1:{port_file.read_text()}/0" in refused.output
    with EmbeddedRedis(tmp_path / "gone" / "redis", durable=False) as gone:
        url = gone.url
    (stale / "redis" / "redis.port").write_text(url.split(":")[2].split("/")[0])
    down = CliRunner().invoke(main, [*report, "--home", str(stale)], env=env)
    assert down.exit_code == 2 and "not running" in down.output and url in down.output and str(port_file) in down.output
    none = CliRunner().invoke(main, [*report, "--home", str(tmp_path / "nothing")], env=env)
    assert none.exit_code == 2 and str(tmp_path / "nothing" / "redis" / "redis.port") in none.output


def test_registering_a_registered_service_explains_the_connector_flow(
    registry: RegistryHandle, world: dict[str, str], tmp_path: Path
) -> None:
    """Issue 16: one registration flow (a connector registers its own service); `services register` of a service
    that exists says so instead of a bare 409."""
    doc = tmp_path / "parcels.json"
    doc.write_text(json.dumps(DOC))
    again = cli(registry, "services", "register", world["service"], "--openapi", str(doc), "--gateway",
                world["gateway"], "--upstream", "http://127.0.0.1:9")  # fmt: skip
    assert again.exit_code == 1 and "409" in again.output
    assert "hint:" in again.output and "lienthong connector serve --registry" in again.output
