"""A connector against the real registry, as processes: it registers its service on start (unapproved), loads its
hosting gateway's keys from the registry, refetches them on an unknown kid, and refuses keys of another gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.population import CONNECTOR
from lienthong import keys, pki
from registry.client import RegistryClient
from tests.connector_support import SigningGateway, assert_problem, free_port
from tests.procs import Proc, lienthong
from tests.registry_support import start_registry
from tests.upstream_tls_support import IssuingCA

SERVICE = CONNECTOR.service_id
UNKNOWN = "040199999999"


@pytest.fixture
def registry(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, RegistryClient]]:
    # the connector registers its loopback address, which the registry allows only when told to
    handle = start_registry(tmp_path, redis_url, tmp_path, upstream_allow="127.0.0.1")
    try:
        yield handle.url, handle.admin_client()
    finally:
        handle.stop()


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

    # TLS on every link: the connector verifies the registry with the mesh CA, serves HTTPS with its provider's
    # certificate and answers only national's certificate (issued here from the registry's CA files)
    ca_file = tmp_path / "registry" / "ca.crt"
    ca = IssuingCA(tmp_path / "certs", pki.CertificateAuthority.load(ca_file, ca_file.with_name("ca.key")))
    own = ca.issue("connector", pki.identity("subsystem", SERVICE.rsplit("/", 1)[0]), trust=ca_file)
    as_national = pki.client_context(ca_file, ca.issue("gw", pki.identity("gateway", "national"), trust=ca_file))
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    proc = Proc("population", lienthong(
        "connector", "serve", "population", "--port", str(port), "--gateway", "national", "--registry", url,
        "--registry-ca", str(ca_file), "--key", str(tmp_path / "integrator.pem"), "--kid", kid,
        "--tls-dir", str(own.directory), "--database-url", f"sqlite:///{tmp_path / 'population.sqlite'}",
    ), tmp_path).start()  # fmt: skip

    def call(signer: SigningGateway) -> httpx.Response:
        """GET an unknown person as national calls its connector: its certificate, `signer`'s assertion."""
        headers = {"X-Lienthong-Assertion": signer.assertion(SERVICE)}
        return httpx.get(f"{base}/persons/{UNKNOWN}", verify=as_national, headers=headers, timeout=30)

    try:
        proc.wait_http(base + "/readyz", verify=as_national)  # ready: the gateway keys came from the registry
        service = _wait_for_service(admin)
        assert service["approved"] is False  # approval stays an admin's act
        assert service["gateway"] == "national" and service["version_label"] == "v1"

        ok = call(national)
        assert_problem(ok, 404, "not-found")
        # a key of another gateway, even one the registry knows, is refused
        foreign = call(hanoi)
        assert_problem(foreign, 401, "invalid-assertion")

        rotated = SigningGateway.make("national")
        admin.add_gateway_key("national", rotated.jwks[0])
        time.sleep(5.1)  # the connector refetches keys at most once per 5 s; the refused call above used that turn
        r = call(rotated)
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
