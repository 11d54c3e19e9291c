"""Connectors over TLS: `lienthong connector serve NAME --tls-dir DIR` as a real process, called with Python's ssl
(httpx), `openssl s_client` and the gateway's own upstream client, with certificates issued by a test CA.

Covered:
- the hosting gateway's certificate is accepted (probes and calls answer as over plain HTTP);
- no client certificate, a certificate from an unknown CA, an expired or not-yet-valid one: the handshake fails,
  no HTTP answer ever comes; a plaintext request on the TLS port gets no answer either; a certificate that expires
  while its connection is kept alive is refused from then on (401 client-certificate-required);
- a mesh certificate for anyone but the hosting gateway (another gateway, a client system, the registry) is
  refused with 403 certificate-identity-mismatch on every path, the probes included;
- the gateway's upstream client refuses a connector whose certificate is another subsystem's (502
  certificate-identity-mismatch) and talks to the right one over one kept-alive connection;
- with the registry configured, a connector renews its certificate (past two thirds of its life) through the
  registry over HTTPS and serves the new one;
- the CLI refuses to start without the TLS files (naming them and the command that makes them) or with a
  certificate that is not the provider subsystem's, and --insecure-http serves plain HTTP with a warning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from cryptography import x509

from connectors.cli import definition
from gateway.breaker import Breakers
from gateway.upstream import UpstreamClient, client_tls
from lienthong import keys, pki
from lienthong.problem import Problem
from registry import keyfiles
from registry.client import RegistryClient
from tests.connector_support import SigningGateway, assert_problem, free_port
from tests.procs import Proc, lienthong
from tests.upstream_tls_support import IssuingCA, connector

POPULATION = definition("population")
INSURANCE = definition("insurance")
UNKNOWN = "040199999999"  # well-formed, not on file: a valid call answers 404
HOSTING = "national"


@pytest.fixture
def ca(tmp_path: Path) -> IssuingCA:
    return IssuingCA.make(tmp_path / "pki")


@pytest.fixture
def gateway() -> SigningGateway:
    return SigningGateway.make(HOSTING)


@pytest.fixture
def population(ca: IssuingCA, gateway: SigningGateway, tmp_path: Path) -> Iterator[str]:
    files = ca.issue("population", pki.identity("subsystem", POPULATION.subsystem))
    with connector("population", files.directory, gateway, tmp_path, ca) as (base, proc):
        yield base
    assert UNKNOWN not in proc.log_tail(100_000)  # refusals are logged without personal data


def client(ca: IssuingCA, name: str, uri: str, **issue: Any) -> httpx.Client:
    files = ca.issue(name, uri, **issue)
    return httpx.Client(verify=pki.client_context(ca.cert_path, files), timeout=10)


def test_the_hosting_gateway_certificate_is_accepted(
    ca: IssuingCA, gateway: SigningGateway, population: str
) -> None:  # fmt: skip
    with client(ca, "national", pki.identity("gateway", HOSTING)) as http:
        assert http.get(population + "/readyz").status_code == 200
        assert http.get(f"{population}/persons/{UNKNOWN}").status_code == 401  # the assertion is still required
        r = http.get(f"{population}/persons/{UNKNOWN}",
                     headers={"X-Lienthong-Assertion": gateway.assertion(POPULATION.service_id)})  # fmt: skip
        assert_problem(r, 404, "not-found")


@pytest.mark.parametrize(
    "who",
    [pki.identity("gateway", "hanoi"), pki.identity("subsystem", POPULATION.subsystem),
     pki.identity("subsystem", "VN/PROV/NGHEAN/civil-status"), pki.identity("registry", "VN")],
)  # fmt: skip
def test_a_mesh_certificate_of_anyone_else_is_refused(
    who: str, ca: IssuingCA, gateway: SigningGateway, population: str
) -> None:
    assertion = {"X-Lienthong-Assertion": gateway.assertion(POPULATION.service_id)}
    with client(ca, "other", who) as http:
        for path in ("/healthz", "/readyz", "/openapi.json", f"/persons/{UNKNOWN}"):
            body = assert_problem(http.get(population + path, headers=assertion), 403,
                                  "certificate-identity-mismatch", "certificate")  # fmt: skip
            assert who in body["detail"] and pki.identity("gateway", HOSTING) in body["detail"]


def _no_http_answer(call: Any) -> None:
    """The TLS handshake (or the first read after it, in TLS 1.3) fails: no HTTP status ever arrives."""
    with pytest.raises((httpx.TransportError, ssl.SSLError, OSError)):
        call()


@pytest.mark.parametrize("case", ["unknown-ca", "expired", "not-yet-valid"])
def test_a_certificate_the_mesh_ca_does_not_vouch_for_never_reaches_http(
    case: str, ca: IssuingCA, population: str, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    uri = pki.identity("gateway", HOSTING)
    if case == "unknown-ca":
        stranger = IssuingCA.make(tmp_path / "stranger", "another CA")
        files = stranger.issue("national", uri, trust=ca.cert_path)
    elif case == "expired":
        files = ca.issue("national", uri, lifetime=dt.timedelta(days=1), now=now - dt.timedelta(days=2))
    else:
        files = ca.issue("national", uri, now=now + dt.timedelta(days=1))
    with httpx.Client(verify=pki.client_context(ca.cert_path, files), timeout=10) as http:
        _no_http_answer(lambda: http.get(population + "/healthz"))


def test_no_client_certificate_or_plaintext_never_reaches_http(ca: IssuingCA, population: str) -> None:
    with httpx.Client(verify=pki.client_context(ca.cert_path), timeout=10) as http:
        _no_http_answer(lambda: http.get(population + "/healthz"))
    plain = population.replace("https://", "http://")
    _no_http_answer(lambda: httpx.get(plain + "/healthz", timeout=10))
    # openssl s_client, the operator's tool: the server ends the handshake of a client without a certificate
    host = population.removeprefix("https://")
    out = subprocess.run(
        ["openssl", "s_client", "-connect", host, "-tls1_3", "-CAfile", str(ca.cert_path), "-quiet"],
        input=b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", capture_output=True, timeout=60,
    )  # fmt: skip
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert b"HTTP/" not in out.stdout, text
    assert "verify return:1" in text, text  # the server itself was fine: what failed was the missing certificate


def test_a_kept_alive_connection_ends_when_the_gateway_certificate_expires(ca: IssuingCA, population: str) -> None:
    files = ca.issue("national", pki.identity("gateway", HOSTING), lifetime=dt.timedelta(seconds=3))
    expires = pki.load_cert(files.cert).not_valid_after_utc
    with httpx.Client(verify=pki.client_context(ca.cert_path, files), timeout=10) as http:
        while dt.datetime.now(dt.UTC) < expires:
            assert http.get(population + "/healthz").status_code == 200
            time.sleep(0.2)
        assert_problem(http.get(population + "/healthz"), 401, "client-certificate-required", "certificate")


def test_the_gateway_upstream_client_checks_the_connector_identity(
    ca: IssuingCA, gateway: SigningGateway, population: str, tmp_path: Path
) -> None:
    own = ca.issue("national", pki.identity("gateway", HOSTING))
    insurance_files = ca.issue("insurance", pki.identity("subsystem", INSURANCE.subsystem))
    tls = client_tls(own)
    upstream = UpstreamClient(Breakers(1000, 5.0), tls=tls)

    async def get(base: str, provider: str) -> int:
        headers = {"x-lienthong-assertion": gateway.assertion(POPULATION.service_id)}
        peer = pki.identity("subsystem", provider)
        r = await upstream.call(method="GET", base=base, target=f"/persons/{UNKNOWN}", headers=headers, body=b"",
                                timeout_ms=10_000, what="the connector", peer=peer)  # fmt: skip
        return r.status

    async def scenario(insurance: str) -> tuple[list[int], Problem]:
        try:
            statuses = [await get(population, POPULATION.subsystem) for _ in range(20)]
            with pytest.raises(Problem) as caught:  # the snapshot says population, the address is insurance's
                await get(insurance, POPULATION.subsystem)
            return statuses, caught.value
        finally:
            await upstream.close()

    with connector("insurance", insurance_files.directory, gateway, tmp_path, ca) as (insurance, _):
        statuses, problem = uvloop.run(asyncio.wait_for(scenario(insurance), 60))
    assert statuses == [404] * 20  # through the TLS connection, the connector's own answer
    assert upstream.handshakes == 2  # one kept-alive connection to population, one refused to insurance
    assert (problem.status, problem.code) == (502, "certificate-identity-mismatch")
    assert INSURANCE.subsystem in problem.detail


def test_the_cli_refuses_to_start_without_its_certificate(ca: IssuingCA, tmp_path: Path) -> None:
    base = lienthong("connector", "serve", "population", "--port", str(free_port()), "--gateway", HOSTING,
                     "--gateway-keys", str(tmp_path / "k.json"), "--database-url", "sqlite://")  # fmt: skip
    (tmp_path / "k.json").write_text("[]")
    missing = subprocess.run([*base, "--tls-dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert "tls.key" in missing.stderr and "lienthong connector cert population" in missing.stderr, missing.stderr
    assert "--insecure-http" in missing.stderr
    wrong = ca.issue("wrong", pki.identity("subsystem", INSURANCE.subsystem))
    refused = subprocess.run([*base, "--tls-dir", str(wrong.directory)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert INSURANCE.subsystem in refused.stderr and POPULATION.subsystem in refused.stderr, refused.stderr


def test_insecure_http_serves_plain_http_with_a_warning(
    ca: IssuingCA, gateway: SigningGateway, tmp_path: Path
) -> None:  # fmt: skip
    with connector("population", None, gateway, tmp_path, ca) as (base, proc):
        assert httpx.get(base + "/healthz").status_code == 200
    assert "--insecure-http" in proc.log_tail() and "development" in proc.log_tail()


def _served_certificate(base: str, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a new TLS connection to `base` is served."""
    host, port = base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), 10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_connector_renews_its_certificate_through_the_registry(tmp_path: Path, redis_url: str) -> None:
    """A connector whose certificate is past two thirds of its life renews it with the registry (over HTTPS,
    verified with --registry-ca), signing the CSR with its subsystem's client key, and serves the new one."""
    data = tmp_path / "registry"
    init = keyfiles.init(data)
    ca_cert = data / "ca.crt"
    mesh_ca = pki.CertificateAuthority.load(ca_cert, data / "ca.key")
    port = free_port()
    registry = Proc("registry", [*lienthong("registry", "serve", "--port", str(port), "--data-dir", str(data),
                                            "--redis-url", redis_url), "--upstream-allow", "127.0.0.1"],
                    tmp_path).start()  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    connector_port = free_port()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", verify=pki.client_context(ca_cert), timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the registry never answered:\n{registry.log_tail()}") from None
                time.sleep(0.1)
        national = SigningGateway.make(HOSTING)
        with RegistryClient(url, init.admin_key, init.admin_kid, ca=ca_cert) as admin:
            admin.add_gateway(HOSTING, "https://127.0.0.1:8700", national.jwks)
            admin.add_member("VN/GOV/BCA", "Bộ Công an", HOSTING)
            admin.add_subsystem(POPULATION.subsystem, "Cơ sở dữ liệu quốc gia về dân cư")
            integrator = keys.generate()
            keys.save_private(integrator, tmp_path / "integrator.pem")
            kid = keys.public_jwk(integrator)["kid"]
            admin.add_client_key(POPULATION.subsystem, keys.public_jwk(integrator, kid))

        # a certificate from the mesh CA, 9 of its 10 minutes gone: past its renewal time from the start
        issuer = IssuingCA(data, mesh_ca)  # the registry's own CA
        old = issuer.issue(
            "issued-population", pki.identity("subsystem", POPULATION.subsystem), lifetime=dt.timedelta(minutes=5),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4),
        )  # fmt: skip
        old_serial = pki.load_cert(old.cert).serial_number
        gateway_files = issuer.issue("issued-national", pki.identity("gateway", HOSTING))
        as_gateway = pki.client_context(ca_cert, gateway_files)
        connector = Proc("population", lienthong(
            "connector", "serve", "population", "--port", str(connector_port), "--gateway", HOSTING,
            "--registry", url, "--registry-ca", str(ca_cert), "--key", str(tmp_path / "integrator.pem"),
            "--kid", kid, "--tls-dir", str(old.directory), "--public-url", f"https://127.0.0.1:{connector_port}",
            "--database-url", f"sqlite:///{tmp_path / 'population.sqlite'}",
        ), tmp_path).start()  # fmt: skip
        base = f"https://127.0.0.1:{connector_port}"
        try:
            deadline = time.monotonic() + 60
            served = None
            while served is None or served.serial_number == old_serial:
                if connector.process is not None and connector.process.poll() is not None:
                    raise RuntimeError(f"the connector exited:\n{connector.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the connector never renewed its certificate:\n{connector.log_tail()}")
                try:
                    served = _served_certificate(base, as_gateway)
                except OSError:
                    time.sleep(0.1)
                    continue
                time.sleep(0.1)
            assert pki.cert_identity(served) == pki.identity("subsystem", POPULATION.subsystem)
            assert served.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=1)  # the registry's 30 d
            assert pki.load_cert(old.cert).serial_number == served.serial_number  # written where it serves from
            with httpx.Client(verify=as_gateway, timeout=10) as http:
                assert http.get(base + "/readyz").status_code == 200  # the gateway keys came over HTTPS too
        finally:
            connector.stop()
    finally:
        registry.stop()
