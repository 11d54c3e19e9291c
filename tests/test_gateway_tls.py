"""TLS on the gateway's listening side (issue 14, protocol §9.x), over real sockets with Python's `ssl` and
`openssl s_client`.

Three levels:
- the authn policy alone (hypothesis): authentication by certificate as a class;
- the HTTP server (gateway.http_server with a TLS context) in a background uvloop in front of test_http_server's fake
  app: HTTPS with and without a client certificate, keep-alive, pipelining and large answers through the TLS
  transport, the certificate reaching the app once per connection, plaintext on the TLS port (`tls-required`, in
  X-Road's shape: no head is read, so no Accept),
  and each refused handshake (unknown CA, expired, not yet valid, TLS 1.2) counted by reason and never reaching the
  app;
- live `lienthong gateway serve` processes on a stand-in registry whose snapshot carries a `pki` section: a JWT over
  HTTPS, X-Road's client certificate with no token (and its refusals: another subsystem, another home gateway, a
  revoked serial), the mesh hop (no certificate, another gateway's, a subsystem's, a revoked one, the right one),
  the refusal counter on /metrics, the start-up refusal without TLS files and the --insecure-http warning, a
  revocation reaching connections already open, the hop from another gateway over TLS, renewal at two thirds of the
  certificate's life against the real registry, and sessions resuming across two workers.

Certificates are issued in the tests with pki.CertificateAuthority (`now=` in the past or future for the expired and
not-yet-valid cases).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import metrics
from lienthong import pki, tokens
from lienthong.keys import save_private
from lienthong.problem import Problem
from lienthong.redis_connection import free_port
from tests.mesh_support import LIENTHONG_ACCEPT, Mesh, call_headers
from tests.procs import Proc
from tests.test_http_server import FakeApp, Raw, Running, get, xroad_refusal

OPENSSL = shutil.which("openssl")
DAY = dt.timedelta(days=1)


# -- certificates ------------------------------------------------------------------------------------------------


@dataclass
class MeshPKI:
    """A mesh CA in a directory, and certificates issued by it (or by a foreign CA) into CertFiles directories."""

    root: Path
    ca: pki.CertificateAuthority
    foreign: pki.CertificateAuthority

    @classmethod
    def create(cls, root: Path) -> MeshPKI:
        ca = pki.CertificateAuthority.create(root / "ca.crt", root / "ca.key")
        foreign = pki.CertificateAuthority.create(root / "foreign-ca.crt", root / "foreign-ca.key", "another CA")
        return cls(root, ca, foreign)

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def issue(self, name: str, uri: str, *, now: dt.datetime | None = None, lifetime: dt.timedelta = 30 * DAY,
              foreign: bool = False) -> tuple[pki.CertFiles, x509.Certificate]:  # fmt: skip
        files = pki.CertFiles(self.root / name)
        key = pki.new_tls_key()
        save_private(key, files.key)
        csr = x509.load_pem_x509_csr(pki.make_csr(key, uri))
        cert = (self.foreign if foreign else self.ca).issue(csr, uri, lifetime=lifetime, now=now)
        pki.write_cert(cert, files.cert)
        shutil.copy(self.ca_path, files.ca)  # what the holder trusts: always the mesh CA
        return files, cert

    def client(self, files: pki.CertFiles | None = None) -> ssl.SSLContext:
        return pki.client_context(self.ca_path, files)


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def tls12_client(ca: Path, files: pki.CertFiles | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    if files is not None:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx


def refusals(reason: str) -> float:
    return float(metrics.TLS_REFUSALS.labels(reason)._value.get())


def refused_before_http(sock: ssl.SSLSocket) -> bool:
    """After a request was sent on a handshake the server refuses (TLS 1.3 learns of it on the first read): no
    HTTP answer comes, only an alert, a reset or the close."""
    try:
        data = sock.recv(65536)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return data == b""


class TLSRaw(Raw):
    """test_http_server's raw HTTP client over a TLS socket."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        self.sock: ssl.SSLSocket = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        self.buf = b""

    def at_eof(self, within: float = 3.0) -> bool:
        try:
            return super().at_eof(within)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True


# -- the HTTP server with TLS, in process ------------------------------------------------------------------------


@pytest.fixture
def mesh_pki(tmp_path: Path) -> MeshPKI:
    return MeshPKI.create(tmp_path / "pki")


@pytest.fixture
def tls_server(mesh_pki: MeshPKI) -> Iterator[Running]:
    files, _ = mesh_pki.issue("server", pki.identity("gateway", "national"))
    running = Running(FakeApp(), uvloop.new_event_loop(), tls=pki.server_context(files, "optional"))
    yield running
    running.close()


def test_https_without_client_certificate_keeps_alive_and_pipelines(tls_server: Running, mesh_pki: MeshPKI) -> None:
    conn = TLSRaw(tls_server.port, mesh_pki.client())
    assert conn.sock.version() == "TLSv1.3"
    conn.send(get("/r1/echo?1"))
    assert conn.read_response().json()["query"] == "1"
    conn.send(b"".join(get(f"/r1/lots?{i}") for i in range(20)))  # pipelined, 32 KiB answers
    for i in range(20):
        response = conn.read_response()
        assert response.status == 200 and response.headers["x-query"] == str(i) and len(response.body) == 32768
    body = b"b" * 900
    conn.send(b"POST /r1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 900\r\n\r\n" + body)
    assert conn.read_response().json()["body"] == body.decode()
    conn.send(get("/asgi", "Connection: close"))
    assert conn.read_response().status == 200
    assert conn.at_eof()
    app: FakeApp = tls_server.app
    assert all(call["peer"] is None for call in app.r1_calls)
    assert app.asgi_calls[-1]["scope"]["scheme"] == "https"


def test_client_certificate_reaches_every_request_of_its_connection(tls_server: Running, mesh_pki: MeshPKI) -> None:
    subsystem = "VN/GOV/BTP/civil-registry"
    files, cert = mesh_pki.issue("client", pki.identity("subsystem", subsystem))
    conn = TLSRaw(tls_server.port, mesh_pki.client(files))
    for i in range(3):
        conn.send(get(f"/r1/echo?{i}"))
        assert conn.read_response().status == 200
    peers = [call["peer"] for call in tls_server.app.r1_calls]
    assert len(peers) == 3 and all(p is peers[0] for p in peers)  # read once per connection
    assert peers[0].identity == pki.identity("subsystem", subsystem) and peers[0].serial == cert.serial_number


def test_a_kept_alive_connection_does_not_outlive_its_client_certificate(
    tls_server: Running, mesh_pki: MeshPKI
) -> None:
    files, _ = mesh_pki.issue("short", pki.identity("subsystem", "VN/GOV/BTP/civil-registry"),
                              now=dt.datetime.now(dt.UTC), lifetime=dt.timedelta(seconds=3))  # fmt: skip
    conn = TLSRaw(tls_server.port, mesh_pki.client(files))
    conn.send(get("/r1/echo?valid"))
    assert conn.read_response().status == 200
    time.sleep(3.5)  # the certificate expires; the connection is still open
    conn.send(get("/r1/echo?expired") + get("/r1/echo?behind"))
    response = conn.read_response()
    assert response.status == 401 and response.headers["x-road-error"] == "client-certificate-required"
    assert "expired" in response.json()["detail"]
    assert conn.at_eof(within=10)
    calls = tls_server.app.r1_calls
    assert [c["query"] for c in calls] == ["valid", "expired"] and calls[1]["body_refused"] is not None  # audited


@pytest.mark.parametrize("request_bytes", [get("/r1/echo", f"Accept: {LIENTHONG_ACCEPT}"),
                                           b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00garbage"])  # fmt: skip
def test_plaintext_on_the_tls_port_is_told_to_use_https(tls_server: Running, request_bytes: bytes) -> None:
    """Refused on the first byte, before any head is read (so even an Accept is not): X-Road's shape, PR-REST
    1.0.4 §4.6, Client.BadRequest at 400, lienthong's `tls-required` and the https:// URL in the body."""
    before = refusals("plaintext")
    conn = Raw(tls_server.port)
    conn.send(request_bytes)
    response = conn.read_response()
    problem = xroad_refusal(response, "Client.BadRequest", "tls-required", 400)
    assert problem["field"] == "scheme" and f"https://127.0.0.1:{tls_server.port}/" in problem["message"]
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    assert refusals("plaintext") == before + 1
    assert tls_server.app.r1_calls == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(0, 255).filter(lambda b: b != 0x16), rest=st.binary(max_size=300))
def test_any_first_byte_but_a_handshake_record_is_told_to_use_https(
    tls_server: Running, first: int, rest: bytes
) -> None:
    conn = Raw(tls_server.port)
    try:
        conn.send(bytes([first]) + rest)
        response = conn.read_response()
        xroad_refusal(response, "Client.BadRequest", "tls-required", 400)  # PR-REST 1.0.4 §4.6
        assert conn.at_eof()
    finally:
        conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=600))
def test_a_garbage_handshake_is_refused_counted_and_closed(tls_server: Running, garbage: bytes) -> None:
    """Bytes after a handshake record's first byte that are no ClientHello: refused at TLS, no HTTP, the server
    goes on serving (a real client on the next connection is answered)."""
    conn = Raw(tls_server.port)
    try:
        conn.send(b"\x16" + garbage)
        conn.sock.settimeout(15)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)  # no more is coming: a short record cannot wait for its rest
        data = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := conn.sock.recv(65536):
                data += chunk
        assert b"HTTP/1.1" not in data
    finally:
        conn.close()
    assert tls_server.app.r1_calls == []


def test_the_server_still_answers_after_garbage_handshakes(tls_server: Running, mesh_pki: MeshPKI) -> None:
    for garbage in (b"\x16\x03\x01\x00\x05hello", b"\x16" + b"\xff" * 2000, b"\x16\x03\x03\x40\x00" + b"\x00" * 100):
        conn = Raw(tls_server.port)
        conn.send(garbage)
        conn.close()
    conn = TLSRaw(tls_server.port, mesh_pki.client())
    conn.send(get("/r1/echo?after"))
    assert conn.read_response().json()["query"] == "after"


def _expired(p: MeshPKI) -> pki.CertFiles:
    return p.issue("expired", pki.identity("gateway", "hanoi"), now=dt.datetime.now(dt.UTC) - 60 * DAY)[0]


def _not_yet_valid(p: MeshPKI) -> pki.CertFiles:
    return p.issue("future", pki.identity("gateway", "hanoi"), now=dt.datetime.now(dt.UTC) + DAY)[0]


def _unknown_ca(p: MeshPKI) -> pki.CertFiles:
    return p.issue("foreign", pki.identity("gateway", "hanoi"), foreign=True)[0]


HANDSHAKE_REFUSALS = [("expired", _expired), ("not-yet-valid", _not_yet_valid), ("unknown-ca", _unknown_ca)]


@pytest.mark.parametrize(("reason", "make"), HANDSHAKE_REFUSALS, ids=[r for r, _ in HANDSHAKE_REFUSALS])
def test_a_bad_client_certificate_is_refused_at_the_handshake_and_counted(
    tls_server: Running, mesh_pki: MeshPKI, reason: str, make: Any
) -> None:
    before = refusals(reason)
    files = make(mesh_pki)
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
    with contextlib.closing(mesh_pki.client(files).wrap_socket(raw)) as sock:
        sock.sendall(get("/r1/echo"))
        assert refused_before_http(sock)
    assert refusals(reason) == before + 1
    assert tls_server.app.r1_calls == []


def test_tls_1_2_is_refused_and_counted(tls_server: Running, mesh_pki: MeshPKI) -> None:
    before = refusals("protocol")
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionResetError)), contextlib.closing(raw):
        tls12_client(mesh_pki.ca_path).wrap_socket(raw)
    deadline = time.monotonic() + 60
    while refusals("protocol") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refusals("protocol") == before + 1


def test_an_unfinished_handshake_is_closed_after_the_head_timeout(
    tls_server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import http_server

    monkeypatch.setattr(http_server, "HEADER_TIMEOUT", 0.5)
    conn = Raw(tls_server.port)
    conn.send(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more (a slow-loris on the handshake)
    assert conn.at_eof(within=5.0)


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_s_client_with_and_without_a_certificate(tls_server: Running, mesh_pki: MeshPKI) -> None:
    files, _ = mesh_pki.issue("client", pki.identity("subsystem", "VN/GOV/BTP/civil-registry"))
    base = [str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-tls1_3", "-quiet",
            "-CAfile", str(mesh_pki.ca_path)]  # fmt: skip
    request = get("/r1/echo?ossl", "Connection: close")
    out = subprocess.run([*base, "-cert", str(files.cert), "-key", str(files.key)], input=request,
                         capture_output=True, timeout=60)  # fmt: skip
    assert b"HTTP/1.1 200" in out.stdout, out
    out = subprocess.run(base, input=request, capture_output=True, timeout=60)
    assert b"HTTP/1.1 200" in out.stdout, out
    foreign = _unknown_ca(mesh_pki)
    out = subprocess.run([*base, "-cert", str(foreign.cert), "-key", str(foreign.key)], input=request,
                         capture_output=True, timeout=60)  # fmt: skip
    assert b"HTTP/1.1" not in out.stdout and b"alert" in out.stderr.lower(), out
    out = subprocess.run([str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-tls1_2", "-quiet"],
                         input=request, capture_output=True, timeout=60)  # fmt: skip
    assert b"HTTP/1.1" not in out.stdout and out.returncode != 0, out
    assert [c["query"] for c in tls_server.app.r1_calls] == ["ossl", "ossl"]


# -- live gateways -----------------------------------------------------------------------------------------------

SERVICE = "VN/GOV/BCA/population/persons"
CIVIL = "VN/GOV/BTP/civil-registry"  # a client homed at national
PORTAL = "VN/PROV/HANOI/portal"  # a client homed at hanoi
PURPOSE = "birth-registration"
PATH = f"/r1/{SERVICE}/persons/001203004567"


@dataclass
class Live:
    mesh: Mesh
    ca: MeshPKI
    port: int
    ops_port: int
    certs: dict[str, tuple[pki.CertFiles, x509.Certificate]]
    proc: Proc

    def url(self, path: str = PATH) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def client(self, cert: str | None = None, accept: str | None = LIENTHONG_ACCEPT) -> httpx.Client:
        """By default a lienthong client (refusals as problem+json at the precise status); `accept=None` is an
        X-Road client that names no media type."""
        files = self.certs[cert][0] if cert else None
        headers = {"accept": accept} if accept else {}
        return httpx.Client(verify=self.ca.client(files), timeout=30, headers=headers)

    def get(
        self, cert: str | None, headers: dict[str, str], path: str = PATH, accept: str | None = LIENTHONG_ACCEPT
    ) -> httpx.Response:
        with self.client(cert, accept) as client:
            return client.get(self.url(path), headers=headers)

    def assertion(self, iss: str = "hanoi", sub: str = PORTAL) -> dict[str, str]:
        """What a consumer gateway sends on the mesh hop: its signed assertion (protocol §4.2)."""
        key = self.mesh.gateways[iss].key
        claims = {"iss": iss, "aud": "national", "sub": sub, "svc": SERVICE, "purpose": PURPOSE,
                  "jti": os.urandom(16).hex(), "txn": os.urandom(8).hex()}  # fmt: skip
        return {"X-Lienthong-Assertion": tokens.sign(key.key, key.kid, claims, lifetime=20)}


def _wait_https(proc: Proc, url: str, ctx: ssl.SSLContext, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            if httpx.get(url, verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} ({last}):\n{proc.log_tail()}")


def tls_argv(mesh: Mesh, code: str, tls_dir: Path, **options: str) -> list[str]:
    """The harness's gateway argv, with TLS (its --insecure-http dropped)."""
    argv = mesh.gateway_argv(mesh.gateways[code], {"--tls-dir": str(tls_dir), **options})
    return [a for a in argv if a != "--insecure-http"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("tls-mesh")
    mesh = Mesh(root=root / "mesh", log_dir=root / "logs", registry="standin", policies="authn,authz,audit", tls=False)
    national, _ = mesh.add_gateway("national"), mesh.add_gateway("hanoi")
    for member, home in (("VN/GOV/BTP", "national"), ("VN/GOV/BCA", "national"), ("VN/PROV/HANOI", "hanoi")):
        mesh.add_member(member, home)
    for sub in (CIVIL, "VN/GOV/BCA/population", PORTAL, "VN/GOV/BTP/other"):
        mesh.add_subsystem(sub)
    for sub in (CIVIL, PORTAL, "VN/GOV/BTP/other"):
        mesh.add_client(sub)
    mesh.add_service(SERVICE, "national", mesh.start_upstream("echo"), [("GET", "/persons/{id}")])
    for i, consumer in enumerate((CIVIL, PORTAL, "VN/GOV/BTP/other")):
        mesh.add_grant(f"g{i}", consumer, SERVICE, [PURPOSE])
    p = MeshPKI.create(root / "pki")

    def gateway(code: str) -> str:
        return pki.identity("gateway", code)

    def subsystem(sub: str) -> str:
        return pki.identity("subsystem", sub)

    certs = {name: p.issue(name, uri) for name, uri in (
        ("national", gateway("national")), ("hanoi", gateway("hanoi")), ("hanoi-revoked", gateway("hanoi")),
        ("danang", gateway("danang")), ("civil", subsystem(CIVIL)), ("civil-revoked", subsystem(CIVIL)),
        ("portal", subsystem(PORTAL)), ("civil-later", subsystem(CIVIL)), ("hanoi-later", gateway("hanoi")),
    )}  # fmt: skip
    revoked = [serial_hex(certs[name][1]) for name in ("hanoi-revoked", "civil-revoked")]
    mesh.doc["pki"] = {"ca": [p.ca_pem], "revoked": revoked}
    # the hop from hanoi reaches national over TLS
    mesh.doc["gateways"][0]["base_url"] = f"https://127.0.0.1:{national.port}"
    mesh.publish()
    mesh.start_registry()
    ops_port = free_port()
    argv = tls_argv(mesh, "national", certs["national"][0].directory, **{"--ops-listen": f"127.0.0.1:{ops_port}"})
    proc = Proc("gateway-national-tls", argv, mesh.log_dir).start()
    try:
        _wait_https(proc, f"https://127.0.0.1:{national.port}/readyz", p.client())
        yield Live(mesh, p, national.port, ops_port, certs, proc)
    finally:
        proc.stop()
        mesh.stop()


# The X-Road type each lienthong code is answered with (docs/protocol.md §6; PR-REST 1.0.4 §4.3 X-Road-Error)
XROAD_TYPE = {
    "tls-required": "Client.BadRequest",
    "invalid-token": "Server.ClientProxy.AuthenticationFailed",
    "client-certificate-required": "Server.ClientProxy.SslAuthenticationFailed",
    "certificate-identity-mismatch": "Server.ClientProxy.SslAuthenticationFailed",
    "certificate-revoked": "Server.ClientProxy.SslAuthenticationFailed",
    "access-denied": "Server.ServerProxy.AccessDenied",
}


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A refusal a lienthong client asked problem+json for: the precise status and code, and X-Road-Error."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json;charset=utf-8"
    doc: dict[str, Any] = response.json()
    assert doc["code"] == code and doc["status"] == status
    assert response.headers["x-road-error"] == doc["xroad_type"] == XROAD_TYPE[code]
    return doc


def _xroad_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A refusal of a request that named no media type: X-Road's JSON (PR-REST 1.0.4 §4.6), 400 for Client.* and
    500 for Server.*, lienthong's code and precise status in the body, its detail as `message`."""
    xtype = XROAD_TYPE[code]
    assert response.status_code == (400 if xtype.startswith("Client.") else 500), (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    assert response.headers["x-road-error"] == xtype
    doc: dict[str, Any] = response.json()
    assert doc["type"] == xtype and doc["code"] == code and doc["status"] == status
    assert doc["detail"] == response.headers["x-road-request-id"]
    return doc


def test_live_a_jwt_over_https_works(live: Live) -> None:
    response = live.get(None, call_headers(live.mesh, CIVIL, "national"))
    assert response.status_code == 200, response.text
    assert response.json()["echo"]["path"] == "/persons/001203004567"


def test_live_a_client_certificate_and_no_token_works(live: Live) -> None:
    response = live.get("civil", {"X-Road-Client": CIVIL, "X-Purpose": PURPOSE})
    assert response.status_code == 200, response.text
    # and a token beside the certificate, for the same subsystem
    assert live.get("civil", call_headers(live.mesh, CIVIL, "national")).status_code == 200


def test_live_x_road_client_must_be_the_certificates_subsystem(live: Live) -> None:
    """PR-REST 1.0.4 §4.3: X-Road-Client names the client the certificate authenticates; an X-Road client (no
    Accept) is refused in X-Road's shape (§4.6), a lienthong one with problem+json at 403."""
    other = {"X-Road-Client": "VN/GOV/BTP/other", "X-Purpose": PURPOSE}
    doc = _xroad_error(live.get("civil", other, accept=None), 403, "certificate-identity-mismatch")
    assert doc["field"] == "X-Road-Client"
    doc = _problem(live.get("civil", other), 403, "certificate-identity-mismatch")
    assert doc["field"] == "X-Road-Client"
    # a valid token of another subsystem does not outrank the certificate
    _problem(live.get("civil", call_headers(live.mesh, "VN/GOV/BTP/other", "national")), 403,
             "certificate-identity-mismatch")  # fmt: skip
    _problem(live.get("civil", {"X-Purpose": PURPOSE}), 401, "invalid-token")  # X-Road-Client is still required


def test_live_a_certificate_client_is_held_to_its_home_gateway(live: Live) -> None:
    doc = _problem(live.get("portal", {"X-Road-Client": PORTAL, "X-Purpose": PURPOSE}), 403, "access-denied")
    assert "hanoi" in doc["detail"]


def test_live_a_gateway_certificate_is_no_client_credential(live: Live) -> None:
    _problem(live.get("hanoi", {"X-Road-Client": PORTAL, "X-Purpose": PURPOSE}), 401, "invalid-token")


def test_live_a_revoked_certificate_is_refused(live: Live) -> None:
    _problem(live.get("civil-revoked", {"X-Road-Client": CIVIL, "X-Purpose": PURPOSE}), 403, "certificate-revoked")
    _problem(live.get("civil-revoked", call_headers(live.mesh, CIVIL, "national")), 403, "certificate-revoked")
    _problem(live.get("hanoi-revoked", live.assertion()), 403, "certificate-revoked")


def test_live_a_revocation_stops_connections_already_open(live: Live) -> None:
    """A certificate revoked in a newer snapshot is refused at the next call of a connection opened before."""
    with live.client("civil-later") as client, live.client("hanoi-later") as hop:
        headers = {"X-Road-Client": CIVIL, "X-Purpose": PURPOSE}
        assert client.get(live.url(), headers=headers).status_code == 200
        assert hop.get(live.url(), headers=live.assertion()).status_code == 200
        later = [serial_hex(live.certs[name][1]) for name in ("civil-later", "hanoi-later")]
        live.mesh.doc["pki"]["revoked"] = [*live.mesh.doc["pki"]["revoked"], *later]
        live.mesh.publish()
        deadline = time.monotonic() + 60
        while (response := client.get(live.url(), headers=headers)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation never reached the open connection"
            time.sleep(0.1)
        _problem(response, 403, "certificate-revoked")
        _problem(hop.get(live.url(), headers=live.assertion()), 403, "certificate-revoked")
    assert live.get("civil", {"X-Road-Client": CIVIL, "X-Purpose": PURPOSE}).status_code == 200  # others still pass


def test_live_mesh_hop_needs_the_asserting_gateways_certificate(live: Live) -> None:
    doc = _problem(live.get(None, live.assertion()), 401, "client-certificate-required")
    assert doc["field"] == "certificate"
    for cert in ("danang", "civil", "national"):
        doc = _problem(live.get(cert, live.assertion()), 403, "certificate-identity-mismatch")
        assert "urn:lienthong:gateway:hanoi" in doc["detail"]
    response = live.get("hanoi", live.assertion())
    assert response.status_code == 200, response.text


def test_live_mesh_hop_refusals_are_audited(live: Live) -> None:
    audit_dir = live.mesh.gateways["national"].data_dir
    before = _audit_text(audit_dir)
    _problem(live.get("danang", live.assertion()), 403, "certificate-identity-mismatch")
    _problem(live.get(None, live.assertion()), 401, "client-certificate-required")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        added = _audit_text(audit_dir)[len(before) :]
        if "certificate-identity-mismatch" in added and "client-certificate-required" in added:
            return
        time.sleep(0.2)
    raise AssertionError(f"the refusals are not in the audit log: {_audit_text(audit_dir)[-2000:]}")


def _audit_text(data_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(data_dir.rglob("*")) if p.is_file()
                   and "audit" in str(p.relative_to(data_dir)))  # fmt: skip


def test_live_plaintext_on_the_https_port(live: Live) -> None:
    """Refused on the first byte, before the head (and its Accept) is read: X-Road's shape, PR-REST 1.0.4 §4.6."""
    response = httpx.get(f"http://127.0.0.1:{live.port}{PATH}", headers=call_headers(live.mesh, CIVIL, "national"))
    doc = _xroad_error(response, 400, "tls-required")
    assert f"https://127.0.0.1:{live.port}/" in doc["message"]


def test_live_the_ops_port_speaks_https_too(live: Live) -> None:
    """HTTPS on the ops port as well; its plaintext refusal in X-Road's shape (PR-REST 1.0.4 §4.6)."""
    with live.client() as client:
        response = client.get(f"https://127.0.0.1:{live.ops_port}/metrics")
    assert response.status_code == 200 and "lienthong_gateway_requests" in response.text
    doc = _xroad_error(httpx.get(f"http://127.0.0.1:{live.ops_port}/metrics"), 400, "tls-required")
    assert f"https://127.0.0.1:{live.ops_port}/" in doc["message"]
    with open(live.mesh.gateways["national"].data_dir / "ops-url") as f:
        assert f.read().strip() == f"https://127.0.0.1:{live.ops_port}"


def _metric(live: Live, reason: str) -> float:
    with live.client() as client:
        text = client.get(f"https://127.0.0.1:{live.ops_port}/metrics").text
    line = f'lienthong_gateway_tls_refusals_total{{reason="{reason}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.parametrize(("reason", "make"), HANDSHAKE_REFUSALS, ids=[r for r, _ in HANDSHAKE_REFUSALS])
def test_live_bad_certificates_are_refused_at_the_handshake_and_counted(live: Live, reason: str, make: Any) -> None:
    before = _metric(live, reason)
    files = make(live.ca)
    with pytest.raises((httpx.TransportError, ssl.SSLError)), httpx.Client(verify=live.ca.client(files)) as client:
        client.get(live.url(), headers={"X-Road-Client": CIVIL, "X-Purpose": PURPOSE})
    deadline = time.monotonic() + 60
    while _metric(live, reason) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(live, reason) == before + 1
    assert "TLS refused" in live.proc.log_tail(20000)


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_live_openssl_s_client_with_a_client_certificate(live: Live) -> None:
    files = live.certs["civil"][0]
    request = get(PATH, f"X-Road-Client: {CIVIL}", f"X-Purpose: {PURPOSE}", "Connection: close")
    out = subprocess.run([str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{live.port}", "-quiet", "-CAfile",
                          str(live.ca.ca_path), "-cert", str(files.cert), "-key", str(files.key)], input=request,
                         capture_output=True, timeout=60)  # fmt: skip
    assert b"HTTP/1.1 200" in out.stdout, out


def test_live_the_hop_from_another_gateway_over_tls(live: Live) -> None:
    """hanoi (plain HTTP for its clients here, its certificate for the hop) forwards to national's HTTPS port."""
    hanoi = live.mesh.start_gateway("hanoi", {"--tls-dir": str(live.certs["hanoi"][0].directory)})
    response = httpx.get(f"{hanoi.url}{PATH}", headers=call_headers(live.mesh, PORTAL, "hanoi"), timeout=30)
    assert response.status_code == 200, response.text
    assert "--insecure-http" in (hanoi.proc.log_tail() if hanoi.proc else "")  # the warning at start


def test_gateway_serve_refuses_to_start_without_tls_files(tmp_path: Path) -> None:
    mesh = Mesh(root=tmp_path / "mesh", log_dir=tmp_path / "logs", registry="standin", tls=False)
    mesh.add_gateway("national")
    out = subprocess.run(tls_argv(mesh, "national", tmp_path / "nothing-here"), capture_output=True, timeout=60)
    assert out.returncode == 2, out
    err = out.stderr.decode()
    for name in ("tls.key", "tls.crt", "ca.crt", "lienthong gateway cert --code national", "--insecure-http"):
        assert name in err, err


def _served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_live_gateway_renews_its_certificate_at_two_thirds_of_its_life(
    tmp_path: Path, redis_url: str, log_dir: Path
) -> None:
    """A gateway whose certificate is past two thirds of its life asks the real registry for a new one (POST
    /v1/certificates, signed with its key) and serves it on new handshakes; a connection kept alive carries on."""
    mesh = Mesh(root=tmp_path / "mesh", log_dir=log_dir, redis_url=redis_url, tls=False)
    gw = mesh.add_gateway("national")
    mesh.start_registry()
    try:
        handle = mesh.registry_handle
        ca = pki.CertificateAuthority.load(handle.ca_path, handle.data_dir / "ca.key")
        files = pki.CertFiles(tmp_path / "tls")
        key = pki.new_tls_key()
        save_private(key, files.key)
        uri = pki.identity("gateway", "national")
        csr = x509.load_pem_x509_csr(pki.make_csr(key, uri))
        old = ca.issue(csr, uri, now=dt.datetime.now(dt.UTC) - 21 * DAY)  # 30 days: due after 20
        pki.write_cert(old, files.cert)
        shutil.copy(handle.ca_path, files.ca)
        proc = Proc("gateway-national-renewing", tls_argv(mesh, "national", files.directory), log_dir).start()
        client_ctx = pki.client_context(files.ca)
        try:
            _wait_https(proc, f"https://127.0.0.1:{gw.port}/healthz", client_ctx)
            with httpx.Client(verify=client_ctx, timeout=30) as kept:
                assert kept.get(f"https://127.0.0.1:{gw.port}/healthz").status_code == 200
                deadline = time.monotonic() + 60
                while (serial := _served_serial(gw.port, client_ctx)) == old.serial_number:
                    assert time.monotonic() < deadline, f"no renewal:\n{proc.log_tail()}"
                    time.sleep(0.2)
                new = pki.load_cert(files.cert)
                assert serial == new.serial_number and pki.cert_identity(new) == uri
                assert new.not_valid_after_utc > old.not_valid_after_utc
                assert kept.get(f"https://127.0.0.1:{gw.port}/healthz").status_code == 200
        finally:
            proc.stop()
    finally:
        mesh.stop()


def test_live_sessions_resume_whichever_worker_accepts(tmp_path: Path, log_dir: Path) -> None:
    """The workers share the session ticket keys (the context is made before the fork): a client's session resumes
    on every new connection, whichever of the two workers accepts it."""
    mesh = Mesh(root=tmp_path / "mesh", log_dir=log_dir, registry="standin", workers=2, tls=False)
    gw = mesh.add_gateway("national")
    ca = MeshPKI.create(tmp_path / "pki")
    files, _ = ca.issue("national", pki.identity("gateway", "national"))
    mesh.publish()
    mesh.start_registry()
    proc = Proc("gateway-national-2w", tls_argv(mesh, "national", files.directory), log_dir).start()
    try:
        ctx = ca.client()
        _wait_https(proc, f"https://127.0.0.1:{gw.port}/healthz", ctx)

        def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool, int]:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=10), session=session) as s:
                conn = TLSRaw.__new__(TLSRaw)
                conn.sock, conn.buf = s, b""
                conn.send(get("/healthz"))
                pid = int(conn.read_response().json()["pid"])  # the ticket has arrived by now
                return s.session, bool(s.session_reused), pid

        session, _, _ = connect(None)
        results: list[tuple[ssl.SSLSession | None, bool, int]] = []
        with ThreadPoolExecutor(8) as pool:  # concurrent connections, so that both workers accept some
            while len({pid for _, _, pid in results}) < 2 and len(results) < 800:
                results += pool.map(lambda _: connect(session), range(40))
        assert len({pid for _, _, pid in results}) == 2, "one worker took every connection; nothing was shown"
        assert all(reused for _, reused, _ in results), [(pid, reused) for _, reused, pid in results]
    finally:
        proc.stop()
        mesh.stop()


# -- authn by certificate, as a class (in process, the policy alone) ---------------------------------------------

CONSUMER_NGHEAN = "VN/PROV/NGHEAN/civil-status"  # tests.test_policy_fixtures' client, homed at nghean
SUBSYSTEM_IDS = st.sampled_from([CONSUMER_NGHEAN, "VN/PROV/HANOI/civil-status", "VN/PROV/NGHEAN/other",
                                 "VN/GOV/BCA/population", "VN/PROV/NGHEAN/civil-statu"])  # fmt: skip
NON_CLIENT_IDENTITIES = st.one_of(
    st.builds(lambda c: pki.identity("gateway", c), st.sampled_from(["nghean", "national", "hanoi"])),
    st.just(pki.identity("registry", "VN")),
    st.just(None),  # a certificate with no mesh identity
)


@pytest.fixture(scope="module")
def policy_world() -> Any:
    from tests.test_policy_fixtures import World

    return World()


def _peer(identity: str | None) -> pki.Peer:
    return pki.Peer(identity, x509.random_serial_number(), dt.datetime.now(dt.UTC) + DAY)


def _authn_outcome(world: Any, peer: pki.Peer | None, headers: dict[str, str]) -> tuple[int, str] | str:
    from policies.authn import Authn
    from tests.test_policy_fixtures import context

    ctx = context(world.snapshot(), headers=headers, gateway="nghean")
    ctx.peer = peer
    try:
        Authn("nghean").access(ctx)
    except Problem as problem:
        return problem.status, problem.code
    return str(ctx.client)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(certified=SUBSYSTEM_IDS, claimed=SUBSYSTEM_IDS)
def test_a_subsystem_certificate_authenticates_only_its_own_subsystem(
    policy_world: Any, certified: str, claimed: str
) -> None:
    """No token: the client is the certificate's subsystem, X-Road-Client must name exactly it, and the home-gateway
    rule holds (only VN/PROV/NGHEAN/... is homed at nghean)."""
    outcome = _authn_outcome(policy_world, _peer(pki.identity("subsystem", certified)),
                             {"x-road-client": claimed, "x-purpose": "birth-registration"})  # fmt: skip
    if claimed != certified:
        assert outcome == (403, "certificate-identity-mismatch")
    elif certified.startswith("VN/PROV/NGHEAN/"):
        assert outcome == certified
    else:
        assert outcome == (403, "access-denied")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(identity=NON_CLIENT_IDENTITIES, claimed=SUBSYSTEM_IDS)
def test_no_other_certificate_is_a_client_credential(policy_world: Any, identity: str | None, claimed: str) -> None:
    outcome = _authn_outcome(policy_world, _peer(identity), {"x-road-client": claimed, "x-purpose": "p"})
    assert outcome == (401, "invalid-token")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(certified=SUBSYSTEM_IDS)
def test_a_token_beside_a_subsystem_certificate_must_be_for_that_subsystem(policy_world: Any, certified: str) -> None:
    from tests.test_policy_fixtures import client_headers

    token = policy_world.client_token(aud="nghean")  # CONSUMER_NGHEAN's own, valid token
    outcome = _authn_outcome(policy_world, _peer(pki.identity("subsystem", certified)), client_headers(token))
    assert outcome == (CONSUMER_NGHEAN if certified == CONSUMER_NGHEAN else (403, "certificate-identity-mismatch"))
