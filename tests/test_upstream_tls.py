"""The gateway's outgoing TLS (gateway.upstream): the mesh hop and the connector call as the gateway makes them.

The UpstreamClient runs here in a uvloop, as in a gateway worker; the server at the other end is a real process
(tests.upstream_tls_support, a TLS 1.3 server requiring a client certificate and counting its connections), with
certificates issued by a test CA. Covered:
- the gateway presents its own certificate (the server reads urn:lienthong:gateway:<code>);
- many calls travel over one kept-alive connection: one handshake, whatever the number of calls;
- a new connection to the same peer resumes the last TLS session (server and client both see it resumed);
- a server certificate for another identity, or a revoked one, is refused with 502 certificate-identity-mismatch /
  certificate-revoked, on a new connection, on a resumed session and on a pooled connection alike (the pool is keyed
  by the identity expected, and a revocation closes the pooled connections to that certificate);
- a server certificate from an unknown CA, or expired, fails the handshake: 502 upstream-failed naming TLS (every
  refusal counted by its reason in lienthong_gateway_upstream_tls_refusals_total); a
  kept-alive connection (and its session) ends when the server's certificate expires, and connections and
  sessions give way to a full handshake after MAX_TLS_CONNECTION_AGE (renewed certificates come into use);
- live processes: a call from hanoi crosses the mutual-TLS hop to national and reaches a real connector over TLS;
  a connector answering with another subsystem's certificate is refused (502 certificate-identity-mismatch, in the
  audit log), and a connector certificate revoked by a new snapshot is refused at the next call although a
  kept-alive connection to it was open; the hop keeps one connection for many calls and a new connection resumes
  the TLS session (the gateway's lienthong_gateway_upstream_tls_handshakes_total{resumed}).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvloop

from gateway import metrics, upstream
from gateway.breaker import Breakers
from gateway.upstream import UpstreamClient, client_tls
from lienthong import pki
from lienthong.problem import Problem
from lienthong.redis_connection import free_port
from tests.connector_support import SigningGateway
from tests.mesh_support import Mesh, call_headers
from tests.procs import Proc
from tests.upstream_tls_support import IssuingCA, connector

HOSTING = pki.identity("gateway", "hanoi")
HOME = pki.identity("gateway", "national")


def refusals(reason: str) -> float:
    """lienthong_gateway_upstream_tls_refusals_total{reason} in this process (the client runs here)."""
    value: float = metrics.UPSTREAM_TLS_REFUSALS.labels(reason)._value.get()
    return value


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 60)  # only a hang guard

    return uvloop.run(bounded())


def wait_port(port: int, proc: Proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} never listened on {port}:\n{proc.log_tail()}")


@contextmanager
def counting_server(files: pki.CertFiles, log_dir: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.upstream_tls_support", "count", "--tls-dir", str(files.directory),
            "--port", str(port)]  # fmt: skip
    proc = Proc(f"count-{port}", argv, log_dir).start()
    try:
        wait_port(port, proc)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def ca(tmp_path: Path) -> IssuingCA:
    return IssuingCA.make(tmp_path / "pki")


@pytest.fixture
def client(ca: IssuingCA) -> UpstreamClient:
    """The home gateway's upstream client, with its certificate as gateway.app builds it."""
    tls = client_tls(ca.issue("national", HOME))
    assert tls is not None
    return UpstreamClient(Breakers(1000, 5.0), tls=tls)


@pytest.fixture
def hosting(ca: IssuingCA, tmp_path: Path) -> Iterator[tuple[str, pki.CertFiles]]:
    """The hosting gateway hanoi (its certificate directory), as a TLS server process."""
    files = ca.issue("hanoi", HOSTING)
    with counting_server(files, tmp_path) as base:
        yield base, files


async def call(client: UpstreamClient, base: str, peer: str, revoked: frozenset[int] = frozenset()) -> dict[str, Any]:
    response = await client.call(
        method="GET", base=base, target="/r1/x", headers={}, body=b"", timeout_ms=10_000, what="hosting gateway hanoi",
        peer=peer, revoked=revoked,
    )  # fmt: skip
    assert response.status == 200, response
    doc: dict[str, Any] = orjson.loads(response.body)
    return doc


async def refused(client: UpstreamClient, base: str, peer: str, revoked: frozenset[int] = frozenset()) -> Problem:
    with pytest.raises(Problem) as caught:
        await call(client, base, peer, revoked)
    return caught.value


def test_the_gateway_presents_its_certificate_and_keeps_one_connection(
    client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, _ = hosting

    async def scenario() -> list[dict[str, Any]]:
        try:
            return [await call(client, base, HOSTING) for _ in range(200)]
        finally:
            await client.close()

    seen = run(scenario())
    assert {d["client"] for d in seen} == {HOME}
    assert {d["connection"] for d in seen} == {1}, "every call after the first reuses the kept-alive connection"
    assert seen[-1]["requests"] == 200
    assert client.handshakes == 1


def test_a_new_connection_resumes_the_tls_session(client: UpstreamClient, hosting: tuple[str, pki.CertFiles]) -> None:
    base, _ = hosting

    async def scenario() -> list[dict[str, Any]]:
        seen = []
        for _ in range(3):
            seen.append(await call(client, base, HOSTING))
            await client.close()  # drops the idle connections; the next call needs a new one
        return seen

    first, second, third = run(scenario())
    assert [first["connection"], second["connection"], third["connection"]] == [1, 2, 3]
    assert not first["resumed"] and second["resumed"] and third["resumed"]
    assert (client.handshakes, client.resumed) == (3, 2)
    assert second["client"] == HOME  # a resumed session still carries the gateway's certificate


def test_a_server_certificate_for_another_identity_is_refused(
    client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, _ = hosting
    others = [pki.identity("gateway", "haiphong"), pki.identity("subsystem", "VN/GOV/BCA/population"),
              pki.identity("registry", "VN")]  # fmt: skip

    async def scenario() -> list[Problem]:
        try:
            await call(client, base, HOSTING)  # a checked connection (and a session) for hanoi now exists
            return [await refused(client, base, other) for other in others]
        finally:
            await client.close()

    counted = refusals("identity-mismatch")
    for problem, other in zip(run(scenario()), others, strict=True):
        assert (problem.status, problem.code) == (502, "certificate-identity-mismatch")
        assert HOSTING in problem.detail and other in problem.detail
    assert refusals("identity-mismatch") == counted + len(others)


def test_a_revoked_server_certificate_is_refused_on_new_resumed_and_pooled_connections(
    ca: IssuingCA, client: UpstreamClient, hosting: tuple[str, pki.CertFiles]
) -> None:
    base, files = hosting
    revoked = frozenset({ca.serial(files), 12345})

    async def scenario() -> tuple[Problem, Problem, Problem]:
        try:
            fresh = await refused(client, base, HOSTING, revoked)  # a new connection, full handshake
            await call(client, base, HOSTING)  # pooled now, and its session kept
            pooled = await refused(client, base, HOSTING, revoked)  # the pooled connection is not used
            await call(client, base, HOSTING)
            await client.close()
            resumed = await refused(client, base, HOSTING, revoked)  # a resumed session carries the same cert
            return fresh, pooled, resumed
        finally:
            await client.close()

    counted = refusals("revoked")
    for problem in run(scenario()):
        assert (problem.status, problem.code) == (502, "certificate-revoked")
    assert refusals("revoked") == counted + 3
    assert client.resumed >= 1


def test_connections_and_sessions_give_way_to_a_full_handshake_after_the_maximum_age(
    client: UpstreamClient, hosting: tuple[str, pki.CertFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumption carries the first handshake's certificates on: after MAX_TLS_CONNECTION_AGE a connection is retired
    and the next one is a full handshake, so certificates renewed on either side come into use."""
    base, _ = hosting
    monkeypatch.setattr(upstream, "MAX_TLS_CONNECTION_AGE", 1.0)

    async def scenario() -> list[dict[str, Any]]:
        try:
            seen = [await call(client, base, HOSTING), await call(client, base, HOSTING)]
            await asyncio.sleep(1.2)
            seen.append(await call(client, base, HOSTING))  # retired: a new connection, not resuming the old session
            await client.close()
            seen.append(await call(client, base, HOSTING))  # resumes the session of the new full handshake
            return seen
        finally:
            await client.close()

    seen = run(scenario())
    assert [d["connection"] for d in seen] == [1, 1, 2, 3]
    assert [d["resumed"] for d in seen] == [False, False, False, True]


@pytest.mark.parametrize("case", ["unknown-ca", "expired", "not-yet-valid"])
def test_a_server_certificate_the_mesh_ca_does_not_vouch_for_fails_the_handshake(
    case: str, ca: IssuingCA, client: UpstreamClient, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    if case == "unknown-ca":
        stranger = IssuingCA.make(tmp_path / "stranger", "another CA")
        files = stranger.issue("hanoi", HOSTING, trust=ca.cert_path)  # it trusts our CA, we do not trust it
    elif case == "expired":
        files = ca.issue("hanoi", HOSTING, lifetime=dt.timedelta(days=1), now=now - dt.timedelta(days=2))
    else:
        files = ca.issue("hanoi", HOSTING, now=now + dt.timedelta(days=1))

    async def scenario(base: str) -> Problem:
        try:
            return await refused(client, base, HOSTING)
        finally:
            await client.close()

    counted = refusals(case)
    with counting_server(files, tmp_path) as base:
        problem = run(scenario(base))
        assert refusals(case) == counted + 1, "counted by its reason"
        assert (problem.status, problem.code) == (502, "upstream-failed")
        assert "TLS handshake" in problem.detail and "certificate" in problem.detail, problem.detail
        assert client.handshakes == 0


def test_a_kept_alive_connection_ends_when_the_server_certificate_expires(
    ca: IssuingCA, client: UpstreamClient, tmp_path: Path
) -> None:
    """Checked at the handshake, an expiry must not be outlived by a connection kept busy (nor by its session)."""
    # long enough that a loaded machine still starts the server and makes its calls before the certificate expires
    files = ca.issue("hanoi", HOSTING, lifetime=dt.timedelta(seconds=8))
    expires = pki.load_cert(files.cert).not_valid_after_utc

    async def scenario(base: str) -> tuple[list[int], Problem]:
        try:
            seen = []
            while dt.datetime.now(dt.UTC) < expires:
                seen.append((await call(client, base, HOSTING))["connection"])
                await asyncio.sleep(0.2)  # never idle long enough for the idle timeout
            return seen, await refused(client, base, HOSTING)
        finally:
            await client.close()

    with counting_server(files, tmp_path) as base:
        seen, problem = run(scenario(base))
    assert set(seen) == {1}  # one kept-alive connection while the certificate was valid
    assert (problem.status, problem.code) == (502, "upstream-failed") and "expired" in problem.detail, problem.detail


# -- live: gateways and connectors as processes ----------------------------------------------------------------------

SERVICE = "VN/GOV/BCA/population/persons"
RELAYED_TLS_REFUSAL = "Server.ServerProxy.SslAuthenticationFailed"
MIRROR = "VN/GOV/BCA/population/mirror"  # registered at an address where another subsystem's connector answers
PORTAL = "VN/PROV/HANOI/portal"  # a client homed at hanoi
UNKNOWN = "040199999999"  # well-formed, not on file: the connector answers 404


@dataclass
class LiveMesh:
    mesh: Mesh
    ca: IssuingCA
    population: pki.CertFiles

    def call(self, service: str) -> httpx.Response:
        hanoi = self.mesh.gateways["hanoi"]
        headers = call_headers(self.mesh, PORTAL, "hanoi")
        return httpx.get(f"{hanoi.url}/r1/{service}/persons/{UNKNOWN}", headers=headers, timeout=60)

    def publish(self) -> None:
        """Publish the catalogue and wait until national (served over HTTPS) holds it."""
        version = self.mesh.publish()
        url = f"https://127.0.0.1:{self.mesh.gateways['national'].port}/healthz"
        deadline = time.monotonic() + 60
        with httpx.Client(verify=pki.client_context(self.ca.cert_path), timeout=2) as http:
            while http.get(url).json()["snapshot_version"] < version:
                assert time.monotonic() < deadline, "national never took the new snapshot"
                time.sleep(0.1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    """hanoi (its clients on plain HTTP) forwards over mutual TLS to national, which calls real connectors over
    TLS: population (its own certificate) and, for MIRROR, insurance (another subsystem's certificate)."""
    root = tmp_path_factory.mktemp("upstream-tls")
    mesh = Mesh(root=root / "mesh", log_dir=root / "logs", registry="standin", policies="authn,authz,audit", tls=False)
    national, hanoi = mesh.add_gateway("national"), mesh.add_gateway("hanoi")
    for member, home in (("VN/GOV/BCA", "national"), ("VN/PROV/HANOI", "hanoi")):
        mesh.add_member(member, home)
    for subsystem in ("VN/GOV/BCA/population", PORTAL):
        mesh.add_subsystem(subsystem)
    mesh.add_client(PORTAL)
    ca = IssuingCA.make(root / "pki")
    certs = {code: ca.issue(code, pki.identity("gateway", code)) for code in ("national", "hanoi")}
    population_files = ca.issue("population", pki.identity("subsystem", "VN/GOV/BCA/population"))
    insurance_files = ca.issue("insurance", pki.identity("subsystem", "VN/GOV/BHXH/insurance"))
    signer = SigningGateway("national", national.key.key, national.key.kid)
    with ExitStack() as stack:
        population, _ = stack.enter_context(connector("population", population_files.directory, signer, root, ca))
        insurance, _ = stack.enter_context(connector("insurance", insurance_files.directory, signer, root, ca))
        for service, upstream in ((SERVICE, population), (MIRROR, insurance)):
            mesh.add_service(service, "national", upstream, [("GET", "/persons/{id}")])
            mesh.add_grant(f"g-{service.rsplit('/', 1)[1]}", PORTAL, service, ["birth-registration"])
        mesh.doc["pki"] = {"ca": [ca.cert_path.read_text()], "revoked": []}
        mesh.doc["gateways"][0]["base_url"] = f"https://127.0.0.1:{national.port}"  # the mesh hop is TLS
        mesh.publish()
        mesh.start_registry()
        argv = [a for a in mesh.gateway_argv(national, {"--tls-dir": str(certs["national"].directory)})
                if a != "--insecure-http"]  # fmt: skip
        national.proc = Proc("gateway-national-tls", argv, mesh.log_dir).start()
        stack.callback(mesh.stop)
        readyz = f"https://127.0.0.1:{national.port}/readyz"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(readyz, verify=pki.client_context(ca.cert_path), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or national.proc.process.poll() is not None:  # type: ignore[union-attr]
                raise RuntimeError(f"national never got ready:\n{national.proc.log_tail()}")
            time.sleep(0.1)
        mesh.start_gateway("hanoi", {"--tls-dir": str(certs["hanoi"].directory)})
        assert hanoi.proc is not None
        yield LiveMesh(mesh, ca, population_files)


def test_live_a_call_crosses_the_mesh_hop_and_reaches_the_connector_over_tls(live: LiveMesh) -> None:
    for _ in range(5):
        response = live.call(SERVICE)
        assert response.status_code == 404, response.text  # the connector's own answer: not on file
        assert response.json()["code"] == "not-found"


def test_live_a_connector_with_another_subsystems_certificate_is_refused_and_audited(live: LiveMesh) -> None:
    response = live.call(MIRROR)
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "certificate-identity-mismatch", response.text
    # national (the hosting gateway) refused; hanoi relays it as the provider side's (docs/protocol.md §6)
    assert response.headers["x-road-error"] == response.json()["xroad_type"] == RELAYED_TLS_REFUSAL
    assert "urn:lienthong:subsystem:VN/GOV/BHXH/insurance" in response.text
    national = live.mesh.gateways["national"].data_dir
    deadline = time.monotonic() + 60
    while "certificate-identity-mismatch" not in _audit_text(national):
        assert time.monotonic() < deadline, "the refusal is not in national's audit log"
        time.sleep(0.2)


def test_live_a_revoked_connector_certificate_is_refused_at_the_next_call(live: LiveMesh) -> None:
    assert live.call(SERVICE).status_code == 404  # a kept-alive connection to the connector exists now
    live.mesh.doc["pki"]["revoked"] = [f"{live.ca.serial(live.population):x}"]
    try:
        live.publish()
        response = live.call(SERVICE)
        assert response.status_code == 502, response.text
        assert response.json()["code"] == "certificate-revoked", response.text
        assert response.headers["x-road-error"] == response.json()["xroad_type"] == RELAYED_TLS_REFUSAL
    finally:
        live.mesh.doc["pki"]["revoked"] = []
        live.publish()


def _audit_text(data_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(data_dir.rglob("*"))
                   if p.is_file() and "audit" in str(p.relative_to(data_dir)))  # fmt: skip


def _upstream_handshakes(live: LiveMesh, code: str) -> dict[str, float]:
    """lienthong_gateway_upstream_tls_handshakes_total of a gateway (plain HTTP here), by `resumed`."""
    text = httpx.get(f"{live.mesh.gateways[code].url}/metrics", timeout=60).text
    found = {"true": 0.0, "false": 0.0}
    for line in text.splitlines():
        if line.startswith("lienthong_gateway_upstream_tls_handshakes_total{"):
            found[line.split('resumed="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_live_the_mesh_hop_keeps_its_connection_and_resumes_its_session(live: LiveMesh) -> None:
    assert live.call(SERVICE).status_code == 404  # a connection (and its session) to national now exists
    before = _upstream_handshakes(live, "hanoi")
    for _ in range(30):
        assert live.call(SERVICE).status_code == 404
    assert _upstream_handshakes(live, "hanoi") == before, "30 calls on the kept-alive connection: no handshake"
    time.sleep(upstream.IDLE_TIMEOUT + 0.5)  # the pooled connection is now too old to be reused
    assert live.call(SERVICE).status_code == 404
    after = _upstream_handshakes(live, "hanoi")
    assert (after["true"], after["false"]) == (before["true"] + 1, before["false"]), (before, after)


def test_a_server_refusing_the_gateways_certificate_is_a_clean_502(
    ca: IssuingCA, hosting: tuple[str, pki.CertFiles]
) -> None:
    """A gateway without its certificate (or with one the peer refuses): in TLS 1.3 the peer's verdict comes after
    the client's handshake is done, and ends the session; the call is a 502, never a hang. (uvloop reports that end
    as a plain close, so it is not told apart from other closes in the refusal counter.)"""
    base, _ = hosting
    bare = UpstreamClient(Breakers(1000, 5.0), tls=pki.client_context(ca.cert_path))

    async def scenario() -> Problem:
        try:
            return await refused(bare, base, HOSTING)
        finally:
            await bare.close()

    problem = run(scenario())
    assert (problem.status, problem.code) == (502, "upstream-failed"), problem
