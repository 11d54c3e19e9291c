"""Connectors are plugins (issue 16): found through the `lienthong.connectors` entry point group or by module path,
never by editing lienthong; a connector that cannot serve stops at start naming every missing piece; a connector
keeps its own registration and says so when it finds another one. Served connectors are real processes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from connectors.cli import connector
from connectors.sdk import ConnectorConfig, ConnectorDefinition, build_app, discovery
from connectors.sdk.registration import sync_registration
from connectors.sdk.validation import ConnectorUnusable, check_connector
from lienthong import keys
from tests.connector_support import SigningGateway, assert_problem, free_port
from tests.procs import Proc, lienthong
from tests.registry_support import start_registry

SERVICE = "VN/GOV/HANOI/land/parcels"
BUILT_IN = {
    "population": "connectors.population:CONNECTOR",
    "business-registry": "connectors.business_registry:CONNECTOR",
    "insurance": "connectors.insurance:CONNECTOR",
    "civil-status": "connectors.civil_status:CONNECTOR",
    "data-tracker": "connectors.data_tracker:CONNECTOR",
}

SPEC = """\
openapi: 3.0.3
info: {title: Ha Noi land parcels, version: "1"}
paths:
  /parcels/{id}:
    get:
      operationId: getParcel
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses:
        "200": {description: the parcel, content: {application/json: {schema: {type: object}}}}
        "404": {description: no such parcel}
"""

MODULE = f"""\
from pathlib import Path
from typing import Any

from connectors.sdk import ConnectorDefinition, not_found

CONNECTOR = ConnectorDefinition(
    name="land-parcels",
    service_id="{SERVICE}",
    spec_path=Path(__file__).with_name("land.yaml"),
    handlers=__name__,
    title="Ha Noi land parcels",
)
PARCELS = {{"HN-0001": {{"id": "HN-0001", "area_m2": 120, "ward": "Phuc Xa"}}}}


def getParcel(id: str) -> dict[str, Any]:
    if id not in PARCELS:
        raise not_found()
    return PARCELS[id]


def _helper() -> None:  # private: not a handler, so no operationId is asked of it
    pass
"""


def _package(root: Path, spec: str = SPEC, module: str = MODULE) -> Path:
    """A province's connector package `my_province` in folder `root`."""
    pkg = root / "my_province"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "land.yaml").write_text(spec)
    (pkg / "land.py").write_text(module)
    return root


def _wheel(root: Path, out: Path) -> Path:
    """The package in `root` as a wheel declaring its connector entry point, written as any build backend would
    (zip, METADATA, WHEEL, entry_points.txt, RECORD): no build step, so no setuptools download in the test."""
    info = "my_province_land-0.3.0.dist-info"
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "my_province").iterdir())}
    files[f"{info}/METADATA"] = b"Metadata-Version: 2.1\nName: my-province-land\nVersion: 0.3.0\n"
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = b"[lienthong.connectors]\nland-parcels = my_province.land:CONNECTOR\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = out / "my_province_land-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def province(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], ConnectorDefinition]]:
    """Load my_province.land:CONNECTOR in this process from a folder, forgetting any earlier test's copy."""

    def forget() -> None:
        for name in [m for m in sys.modules if m == "my_province" or m.startswith("my_province.")]:
            del sys.modules[name]

    def load(root: Path) -> ConnectorDefinition:
        forget()
        monkeypatch.syspath_prepend(str(root))
        return discovery.load_target("my_province.land:CONNECTOR")

    yield load
    forget()


def _env(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong(*args), capture_output=True, text=True, env=env, timeout=60)


def _serve_and_call(tmp_path: Path, env: dict[str, str], *selector: str) -> None:
    """Serve the land connector picked by `selector` as a process and call it as its hosting gateway would."""
    gateway = SigningGateway.make("national")
    (tmp_path / "gateway-keys.json").write_text(json.dumps(gateway.jwks))
    port = free_port()
    proc = Proc("land", lienthong(
        "connector", "serve", *selector, "--insecure-http", "--port", str(port), "--gateway", "national",
        "--gateway-keys", str(tmp_path / "gateway-keys.json"), "--database-url", f"sqlite:///{tmp_path / 'land.db'}",
    ), tmp_path, env=env).start()  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(base + "/readyz")
        headers = {"X-Lienthong-Assertion": gateway.assertion(SERVICE)}
        r = httpx.get(f"{base}/parcels/HN-0001", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"id": "HN-0001", "area_m2": 120, "ward": "Phuc Xa"}
        headers = {"X-Lienthong-Assertion": gateway.assertion(SERVICE)}
        assert_problem(httpx.get(f"{base}/parcels/HN-9999", headers=headers, timeout=10), 404, "not-found")
        assert_problem(httpx.get(f"{base}/parcels/HN-0001", timeout=10), 401, "invalid-assertion")
    finally:
        proc.stop()


def test_the_four_built_in_connectors_are_entry_points() -> None:
    listed = _run(["connector", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    found = {c["name"]: c for c in json.loads(listed.stdout)}
    assert {name: found[name]["target"] for name in BUILT_IN} == BUILT_IN
    assert all(found[name]["distribution"].startswith("lienthong ") for name in BUILT_IN)
    for name in BUILT_IN:  # each loads, and its definition carries the name it is served by
        assert discovery.load(name).name == name
    table = CliRunner().invoke(connector, ["list"]).output
    assert "population" in table and "connectors.population:CONNECTOR" in table and "lienthong 0.1.0" in table


def test_a_connector_is_served_by_module_path(tmp_path: Path) -> None:
    root = _package(tmp_path / "src")
    _serve_and_call(tmp_path, _env(root), "--module", "my_province.land:CONNECTOR")


def test_an_installed_package_is_discovered_through_its_entry_point(tmp_path: Path) -> None:
    """The package is installed into a folder of its own, not the shared venv, and found on PYTHONPATH."""
    wheel, target = _wheel(_package(tmp_path / "src"), tmp_path), tmp_path / "site"
    pip = [str(Path(lienthong()[0]).with_name("pip")), "install", "-q", "--no-deps", "--target", str(target)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=120)
    assert (target / "my_province" / "land.py").is_file()
    env = _env(target)
    listed = _run(["connector", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    land = [c for c in json.loads(listed.stdout) if c["name"] == "land-parcels"]
    assert land == [{"name": "land-parcels", "target": "my_province.land:CONNECTOR",
                     "distribution": "my-province-land 0.3.0", "location": str(target)}]  # fmt: skip
    assert len(json.loads(listed.stdout)) == len(BUILT_IN) + 1
    _serve_and_call(tmp_path, env, "land-parcels")


BROKEN = MODULE.replace("def _helper", "def exportParcels") + textwrap.dedent("""

    async def getOwner(id: str) -> dict[str, Any]:
        return {}
""")
BROKEN_SPEC = (
    SPEC.replace("info: {title: Ha Noi land parcels, ", "info: {")
    + """\
  /parcels:
    get:
      operationId: listParcels
      responses: {"200": {description: all parcels}}
    post:
      responses: {"201": {description: added}}
  /parcels/{id}/owner:
    get:
      operationId: getOwner
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses: {"200": {description: the owner}}
"""
)


def test_a_connector_without_handlers_or_operation_ids_stops_at_start_naming_each(tmp_path: Path) -> None:
    root = _package(tmp_path / "src", BROKEN_SPEC, BROKEN)
    done = _run(["connector", "serve", "--module", "my_province.land:CONNECTOR", "--insecure-http",
                 "--gateway", "national", "--gateway-keys", os.devnull], _env(root))  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "connector land-parcels cannot start" in done.stderr
    for piece in (
        "operationId listParcels (GET /parcels) has no handler: define listParcels() in my_province.land",
        "POST /parcels in land.yaml has no operationId",
        "handler my_province.land.exportParcels has no operationId in land.yaml",
        "my_province.land.getOwner is async",
        "invalid OpenAPI document land.yaml: at info: 'title' is a required property",
    ):
        assert piece in done.stderr, done.stderr
    assert "_helper" not in done.stderr and "getParcel" not in done.stderr


def test_an_invalid_openapi_document_is_refused_naming_each_error(
    tmp_path: Path, province: Callable[[Path], ConnectorDefinition]
) -> None:
    spec = SPEC.replace("info: {title: Ha Noi land parcels, ", "info: {").replace(
        '"404": {description: no such parcel}', '"404": no such parcel'
    )
    root = _package(tmp_path / "src", spec)
    definition = province(root)
    with pytest.raises(ConnectorUnusable) as refused:
        check_connector(definition)
    assert refused.value.problems == [
        "invalid OpenAPI document land.yaml: at info: 'title' is a required property",
        "invalid OpenAPI document land.yaml: at paths//parcels/{id}/get/responses/404: 'no such parcel' is not "
        "valid under any of the given schemas",
    ]
    (root / "my_province" / "land.yaml").write_text("openapi: [3\n")
    with pytest.raises(ConnectorUnusable, match=r"land\.yaml is not valid YAML or JSON"):
        check_connector(definition)
    (root / "my_province" / "land.yaml").write_text("swagger: '2.0'\n")
    with pytest.raises(ConnectorUnusable, match=r"not an OpenAPI 3 document"):
        check_connector(definition)


def test_build_app_refuses_a_connector_that_cannot_serve(
    tmp_path: Path, province: Callable[[Path], ConnectorDefinition]
) -> None:
    """Not only the CLI: an app built in-process (tests, another ASGI server) is refused the same way."""
    definition = province(_package(tmp_path / "src", BROKEN_SPEC, BROKEN))
    config = ConnectorConfig(gateway="national", database_url=f"sqlite:///{tmp_path / 'x.db'}", gateway_keys=[])
    with pytest.raises(ConnectorUnusable) as refused:
        build_app(definition, config)
    assert len(refused.value.problems) == 5
    assert not (tmp_path / "x.db").exists()  # refused before the database was opened


def test_wrong_module_paths_and_names_are_named(
    tmp_path: Path, province: Callable[[Path], ConnectorDefinition]
) -> None:
    root = _package(tmp_path / "src")
    assert province(root).name == "land-parcels"
    for target, said in (
        ("my_province.land", "is not MODULE:ATTR"),
        ("my_province.nothing:CONNECTOR", "no module 'my_province.nothing' (is its package installed"),
        ("my_province.land:MISSING", "my_province.land has no MISSING"),
        ("my_province.land:PARCELS", "is a dict, not a connectors.sdk.ConnectorDefinition"),
    ):
        with pytest.raises(discovery.DiscoveryError, match=re.escape(said)):
            discovery.load_target(target)
    done = _run(["connector", "serve", "--module", "my_province.land:PARCELS", "--gateway", "national"], _env(root))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Error: my_province.land:PARCELS is a dict, not a connectors.sdk.ConnectorDefinition" in done.stderr
    runner = CliRunner()
    both = runner.invoke(connector, ["serve", "population", "--module", "my_province.land:CONNECTOR", "--gateway", "x"])
    assert both.exit_code == 2 and "not both" in both.output
    neither = runner.invoke(connector, ["serve", "--gateway", "x"])
    assert neither.exit_code == 2
    assert "installed: business-registry, civil-status, data-tracker, insurance, population" in neither.output
    unknown = runner.invoke(connector, ["serve", "land-parcels", "--gateway", "national"])
    assert unknown.exit_code == 2 and "no connector 'land-parcels' is installed" in unknown.output


def test_the_connector_replaces_a_hand_made_registration_and_says_so(tmp_path: Path, redis_url: str) -> None:
    """One registration flow: the connector's. A service registered by hand first (as `lienthong services register`
    does) is taken over with a message naming what differed; a restart with nothing new writes nothing."""
    registry = start_registry(tmp_path, redis_url, tmp_path)
    try:
        admin = registry.admin_client()
        admin.add_gateway("national", "https://127.0.0.1:8700", SigningGateway.make("national").jwks)
        admin.add_member("VN/GOV/HANOI", "UBND Ha Noi", "national")
        admin.add_subsystem("VN/GOV/HANOI/land", "Land parcels")
        integrator = keys.generate()
        kid = keys.public_jwk(integrator)["kid"]
        admin.add_client_key("VN/GOV/HANOI/land", keys.public_jwk(integrator, kid))
        client = registry.client_for(integrator, kid, "VN/GOV/HANOI/land")
        doc = {"id": SERVICE, "version_label": "v1", "name": "Ha Noi land parcels", "description": "",
               "gateway": "national", "upstream_url": "https://127.0.0.1:9443", "timeout_ms": 5000,
               "openapi": yaml.safe_load(SPEC)}  # fmt: skip
        fields = {k: v for k, v in doc.items() if k != "id"}
        client.register_service(SERVICE, **{**fields, "upstream_url": "https://127.0.0.1:9000"})  # by hand

        said = sync_registration(client, doc)
        assert "registered with another upstream_url" in said and "services register" in said, said
        assert "pending approval" in said and f"lienthong services approve {SERVICE}" in said
        after = admin.get_service(SERVICE)
        assert after["upstream_url"] == "https://127.0.0.1:9443"

        again = sync_registration(client, doc)
        assert "already registered as this connector serves it" in again and "nothing changed" in again, again
        assert admin.get_service(SERVICE)["version"] == after["version"]  # no write on an unchanged restart

        admin.approve_service(SERVICE)
        assert "(approved)" in sync_registration(client, doc)
    finally:
        registry.stop()
