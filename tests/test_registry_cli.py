"""The registry's command line as a user runs it: real `lienthong` processes against a live registry, going through
its API; bad input prints the problem's detail and exits non-zero."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from lienthong import keys
from lienthong.cli import main
from tests.procs import lienthong
from tests.registry_support import RegistryHandle


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong(*args), capture_output=True, text=True, timeout=60, cwd=cwd)


def inproc(*args: str) -> tuple[int, str]:
    """Usage errors are found before any network call; check those without a process start each."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def admin_args(reg: RegistryHandle) -> list[str]:
    return ["--registry", reg.url, "--registry-ca", str(reg.ca_path), "--key", str(reg.admin_key_path), "--kid",
            reg.admin_kid]


def ok(reg: RegistryHandle, *args: str) -> Any:
    result = run(*args, *admin_args(reg))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_init_creates_keys_once(tmp_path: Path) -> None:
    first = run("registry", "init", "--data-dir", str(tmp_path / "reg"))
    assert first.returncode == 0, first.stderr
    for name in ("registry.key", "registry.pub.jwk", "admin.key", "admin.pub.jwk"):
        assert str(tmp_path / "reg" / name) in first.stdout
    assert (tmp_path / "reg" / "admin.key").stat().st_mode & 0o077 == 0
    before = (tmp_path / "reg" / "registry.key").read_bytes()
    second = run("registry", "init", "--data-dir", str(tmp_path / "reg"))
    assert second.returncode == 1 and "refusing to overwrite" in second.stderr
    assert (tmp_path / "reg" / "registry.key").read_bytes() == before


def test_serve_refuses_without_init(tmp_path: Path) -> None:
    result = run("registry", "serve", "--data-dir", str(tmp_path / "none"), "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "registry init" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["registry", "init"], ["registry", "serve"], ["members", "add"], ["gateways", "add"],
        ["services", "register"], ["services", "approve"], ["clients", "add-key"], ["clients", "revoke-key"],
        ["grants", "add"], ["grants", "revoke"], ["snapshot", "show"], ["catalog", "search"],
    ],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    # in-process: the same click command the `lienthong` script runs, without a process start per help page
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_admin_commands_over_the_api(registry: RegistryHandle, tmp_path: Path) -> None:
    gw_key = tmp_path / "national.key"
    keys.save_private(keys.generate(), gw_key)
    jwk_file = tmp_path / "national.jwk"
    jwk_file.write_text(json.dumps(keys.public_jwk(keys.load_private(gw_key))))
    gw = ok(registry, "gateways", "add", "national", "--base-url", "http://127.0.0.1:8700", "--key-file", str(jwk_file))
    assert gw["keys"][0]["kid"] == keys.public_jwk(keys.load_private(gw_key))["kid"]
    assert ok(registry, "members", "add", "VN/GOV/BCA", "--name", "Bo Cong an", "--home-gateway", "national")
    registry.admin_client().add_subsystem("VN/GOV/BCA/population", "Population")
    registry.admin_client().add_member("VN/PROV/NGHEAN", "Nghe An", "national")
    registry.admin_client().add_subsystem("VN/PROV/NGHEAN/civil-status", "Civil status")
    spec = tmp_path / "persons.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "openapi": "3.0.3",
                "info": {"title": "Persons", "version": "1", "description": "Residents"},
                "paths": {
                    "/persons/{id}": {
                        "parameters": [{"name": "id", "in": "path", "required": True}],
                        "get": {"operationId": "getPerson", "summary": "Read a person"},
                    }
                },
            }
        )
    )
    service = "VN/GOV/BCA/population/persons"
    svc = ok(registry, "services", "register", service, "--openapi", str(spec), "--gateway", "national",
             "--upstream", "http://127.0.0.1:8801")  # fmt: skip
    assert svc["approved"] is False and svc["name"] == "Persons" and svc["description"] == "Residents"
    assert ok(registry, "services", "approve", service)["approved"] is True
    client_key = tmp_path / "client.key"
    keys.save_private(keys.generate(), client_key)
    client = ok(registry, "clients", "add-key", "VN/PROV/NGHEAN/civil-status", "--key-file", str(client_key),
                "--key-id", "nghean-2026")  # fmt: skip
    assert client["keys"][0]["kid"] == "nghean-2026" and "d" not in client["keys"][0]
    grant = ok(registry, "grants", "add", "--consumer", "VN/PROV/NGHEAN/civil-status", "--service", service,
               "--purpose", "birth-registration", "--endpoint", "GET /persons/{id}", "--field", "id",
               "--field", "full_name", "--per-minute", "60")  # fmt: skip
    assert grant["endpoints"] == [{"method": "GET", "path": "/persons/{id}"}]
    assert grant["fields"] == ["id", "full_name"] and grant["quota"] == {"per_minute": 60}
    shown = ok(registry, "snapshot", "show", "--gateway", "national",
               "--registry-key", str(registry.data_dir / "registry.pub.jwk"))  # fmt: skip
    assert shown["upstreams"] == {service: "http://127.0.0.1:8801"}
    assert [g["id"] for g in shown["grants"]] == [grant["id"]]
    assert ok(registry, "grants", "revoke", grant["id"])["revoked"] is True
    # an integrator signs with its own key and --as its subsystem
    integrator = run("members", "add", "VN/GOV/BTP", "--name", "x", "--home-gateway", "national",
                     "--registry", registry.url, "--registry-ca", str(registry.ca_path), "--key", str(client_key),
                     "--kid", "nghean-2026", "--as", "VN/PROV/NGHEAN/civil-status")  # fmt: skip
    assert integrator.returncode == 1 and "403" in integrator.stderr and "admin" in integrator.stderr
    revoked_key = run("clients", "revoke-key", "VN/PROV/NGHEAN/civil-status", "nghean-2026", *admin_args(registry))
    assert revoked_key.returncode == 0 and json.loads(revoked_key.stdout)["keys"][0]["revoked"] is True


def test_refusals_print_the_problem_and_exit_non_zero(registry: RegistryHandle, tmp_path: Path) -> None:
    bad_id = run("members", "add", "VN/CITY/X", "--name", "x", "--home-gateway", "national", *admin_args(registry))
    assert bad_id.returncode == 1
    assert "invalid-identifier" in bad_id.stderr and "field: id" in bad_id.stderr
    code, out = inproc("members", "add", "VN/GOV/X", *admin_args(registry))
    assert code == 2 and "--name" in out
    code, out = inproc("services", "register", "VN/GOV/X", "--openapi", __file__, "--gateway", "national",
                       "--upstream", "http://x", *admin_args(registry))  # fmt: skip
    assert code == 2 and "SERVICE_ID" in out
    not_json = tmp_path / "doc.yaml"
    not_json.write_text("- just\n- a list\n")
    code, out = inproc("services", "register", "VN/GOV/X/y/z", "--openapi", str(not_json), "--gateway", "national",
                       "--upstream", "http://x", *admin_args(registry))  # fmt: skip
    assert code == 2 and "OpenAPI object" in out
    unknown = run("grants", "revoke", "g-0000000000000000", *admin_args(registry))
    assert unknown.returncode == 1 and "404" in unknown.stderr
    code, out = inproc("grants", "add", "--consumer", "VN/GOV/X/y", "--service", "VN/GOV/X/y/z", "--purpose", "p",
                       "--endpoint", "persons", *admin_args(registry))  # fmt: skip
    assert code == 2 and "METHOD /path" in out
    down = run("members", "add", "VN/GOV/X", "--name", "x", "--home-gateway", "national",
               "--registry", "http://127.0.0.1:9", "--key", str(registry.admin_key_path))  # fmt: skip
    assert down.returncode == 1 and "cannot reach" in down.stderr
    no_key = run("members", "add", "VN/GOV/X", "--name", "x", "--home-gateway", "national", cwd=tmp_path)
    assert no_key.returncode == 1 and "registry init" in no_key.stderr


def test_catalog_search_finds_by_summary_and_prints_json(registry: RegistryHandle) -> None:
    admin = registry.admin_client()
    admin.add_gateway("catgw", "http://127.0.0.1:8799")
    admin.add_member("VN/GOV/CATALOG", "Catalog test ministry", "catgw")
    admin.add_subsystem("VN/GOV/CATALOG/land", "Land register")
    doc = {"openapi": "3.0.3", "info": {"title": "Land parcels", "version": "v1"},
           "paths": {"/parcels/{id}": {"parameters": [{"name": "id", "in": "path", "required": True}],
                                       "get": {"summary": "A land parcel by its cadastral number",
                                               "responses": {"200": {"description": "ok"}}}}}}  # fmt: skip
    admin.register_service("VN/GOV/CATALOG/land/parcels", openapi=doc, gateway="catgw",
                           upstream_url="http://127.0.0.1:9", name="Land parcels")  # fmt: skip
    found = ok(registry, "catalog", "search", "cadastral", "--json")
    assert [s["id"] for s in found] == ["VN/GOV/CATALOG/land/parcels"]
    assert ok(registry, "catalog", "search", "no-such-words-anywhere", "--json") == []
