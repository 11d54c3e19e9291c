"""A connector against the real registry, as processes: it registers its service on start (unapproved), loads its
hosting gateway's keys from the registry, refetches them on an unknown kid, and refuses keys of another gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.population import CONNECTOR
from lienthong import keys
from registry import keyfiles
from registry.client import RegistryClient
from tests.connector_support import SigningGateway, assert_problem, free_port
from tests.procs import Proc, lienthong

SERVICE = CONNECTOR.service_id
UNKNOWN = "040199999999"


@pytest.fixture
def registry(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, RegistryClient]]:
    data = tmp_path / "registry"
    init = keyfiles.init(data)
    port = free_port()
    proc = Proc(
        "registry",
        # the connector registers its loopback address, which the registry allows only when told to
        [
            *lienthong("registry", "serve", "--port", str(port), "--data-dir", str(data), "--redis-url", redis_url),
            "--upstream-allow",
            "127.0.0.1",
            "--insecure-http",  # plain HTTP until the TLS sweep
        ],
        tmp_path,
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(url + "/healthz")
        with RegistryClient(url, init.admin_key, init.admin_kid) as admin:
            yield url, admin
    finally:
        proc.stop()


def test_connector_registers_and_trusts_only_its_gateways_keys(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    url, admin = registry
    national, hanoi = SigningGateway.make("national"), SigningGateway.make("hanoi")
    admin.add_gateway("national", "http://127.0.0.1:8700", national.jwks)
    admin.add_gateway("hanoi", "http://127.0.0.1:8701", hanoi.jwks)
    admin.add_member("VN/GOV/BCA", "Bộ Công an", "national")
    admin.add_subsystem("VN/GOV/BCA/population", "Cơ sở dữ liệu quốc gia về dân cư")
    integrator = keys.generate()
    keys.save_private(integrator, tmp_path / "integrator.pem")
    kid = keys.public_jwk(integrator)["kid"]
    admin.add_client_key("VN/GOV/BCA/population", keys.public_jwk(integrator, kid))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = Proc("population", lienthong(
        "connector", "serve", "population", "--port", str(port), "--gateway", "national", "--registry", url,
        "--key", str(tmp_path / "integrator.pem"), "--kid", kid, "--insecure-http",
        "--database-url", f"sqlite:///{tmp_path / 'population.sqlite'}",
    ), tmp_path).start()  # fmt: skip
    try:
        proc.wait_http(base + "/readyz")  # ready means: the gateway keys came from the registry
        service = _wait_for_service(admin)
        assert service["approved"] is False  # approval stays an admin's act
        assert service["gateway"] == "national" and service["version_label"] == "v1"

        ok = httpx.get(f"{base}/persons/{UNKNOWN}", headers={"X-Lienthong-Assertion": national.assertion(SERVICE)})
        assert_problem(ok, 404, "not-found")
        # a key of another gateway, even one the registry knows, is refused
        foreign = httpx.get(f"{base}/persons/{UNKNOWN}", headers={"X-Lienthong-Assertion": hanoi.assertion(SERVICE)})
        assert_problem(foreign, 401, "invalid-assertion")

        rotated = SigningGateway.make("national")
        admin.add_gateway_key("national", rotated.jwks[0])
        time.sleep(5.1)  # the connector refetches keys at most once per 5 s; the refused call above used that turn
        r = httpx.get(f"{base}/persons/{UNKNOWN}", headers={"X-Lienthong-Assertion": rotated.assertion(SERVICE)})
        assert_problem(r, 404, "not-found")  # the new kid was fetched on first sight
    finally:
        proc.stop()


def _wait_for_service(admin: RegistryClient) -> dict[str, object]:
    deadline = time.monotonic() + 15
    while True:
        try:
            return admin.get_service(SERVICE)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
