"""The mesh PKI on the registry side (protocol §9), on real registry processes and a real Redis: the CA made at init
(key 0600) or taken from an operator, HTTPS with the registry's own certificate, POST /v1/certificates for each kind
of identity, every refusal with its own error naming `csr`, revocation with the key into the snapshot's pki.revoked,
the cert commands, and the snapshot's pki section parsed without ever raising."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong import keys, pki
from lienthong.redis_connection import EmbeddedRedis, free_port
from lienthong.snapshot import Snapshot
from lienthong.snapshot_wire import read_full
from registry.client import RegistryClient, RegistryError
from tests.procs import Proc, lienthong
from tests.registry_support import RegistryHandle, start_registry


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _csr(key: Any, *uris: str, algorithm: hashes.HashAlgorithm | None = hashes.SHA256()) -> bytes:
    """A CSR naming `uris` as URI SANs, signed by any key cryptography can make (weak ones too)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    )
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _refused(call: Any, status: int, code: str, detail_part: str = "") -> dict[str, Any]:
    with pytest.raises(RegistryError) as info:
        call()
    problem = info.value.problem
    assert info.value.status == status, problem
    assert problem.get("code") == code and problem.get("field") == "csr", problem
    assert detail_part in problem.get("detail", ""), problem
    return problem


class Mesh:
    """Two gateways and two subsystems, each with a key the registry holds."""

    def __init__(self, reg: RegistryHandle) -> None:
        self.reg = reg
        admin = reg.admin_client()
        self.admin = admin
        tag = _uid()
        self.gw_a, self.gw_b = f"a{tag}", f"b{tag}"
        self.gw_a_key, self.gw_b_key = keys.generate(), keys.generate()
        admin.add_gateway(self.gw_a, "http://127.0.0.1:1", [keys.public_jwk(self.gw_a_key)])
        admin.add_gateway(self.gw_b, "http://127.0.0.1:2", [keys.public_jwk(self.gw_b_key)])
        member = f"VN/GOV/M{tag.upper()}"
        admin.add_member(member, "Member", self.gw_a)
        self.sub_a, self.sub_b = f"{member}/alpha", f"{member}/beta"
        admin.add_subsystem(self.sub_a, "A")
        admin.add_subsystem(self.sub_b, "B")
        self.sub_a_key, self.sub_b_key = keys.generate("ES256"), keys.generate()
        self.sub_a_kid = admin.add_client_key(self.sub_a, keys.public_jwk(self.sub_a_key))["keys"][0]["kid"]
        admin.add_client_key(self.sub_b, keys.public_jwk(self.sub_b_key))

    def gateway(self, which: str = "a") -> RegistryClient:
        code, key = (self.gw_a, self.gw_a_key) if which == "a" else (self.gw_b, self.gw_b_key)
        return self.reg.client_for(key, keys.public_jwk(key)["kid"], f"gateway:{code}")

    def subsystem(self, which: str = "a") -> RegistryClient:
        sub, key = (self.sub_a, self.sub_a_key) if which == "a" else (self.sub_b, self.sub_b_key)
        return self.reg.client_for(key, keys.public_jwk(key)["kid"], sub)


@pytest.fixture(scope="module")
def mesh(registry: RegistryHandle) -> Mesh:
    return Mesh(registry)


def _issued(answer: dict[str, Any], ca_path: Path, uri: str) -> x509.Certificate:
    """The answer's certificate, checked: it names `uri` alone, chains to the mesh CA, lives 30 days."""
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = pki.load_cert(ca_path)
    assert answer["ca"] == pki.cert_pem(ca).decode()
    cert.verify_directly_issued_by(ca)
    assert pki.cert_identity(cert) == uri
    assert answer["serial"] == format(cert.serial_number, "x")
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=29) < life <= dt.timedelta(days=30, minutes=5)
    return cert


# -- issuance ----------------------------------------------------------------------------------------------------


def test_a_gateway_gets_a_certificate_for_itself(mesh: Mesh) -> None:
    uri = pki.identity("gateway", mesh.gw_a)
    answer = mesh.gateway().request_certificate(pki.make_csr(pki.new_tls_key(), uri))
    _issued(answer, mesh.reg.ca_path, uri)


def test_a_subsystem_client_key_gets_a_certificate_for_its_subsystem(mesh: Mesh) -> None:
    uri = pki.identity("subsystem", mesh.sub_a)
    answer = mesh.subsystem().request_certificate(pki.make_csr(pki.new_tls_key(), uri))
    cert = _issued(answer, mesh.reg.ca_path, uri)
    record = mesh.admin.changes(0, 1000)[-1]  # stored with the kid it was issued under
    assert record["action"] == "certificates.issue" and record["after"]["kid"] == mesh.sub_a_kid
    assert record["after"]["serial"] == format(cert.serial_number, "x")


def test_an_ed25519_or_rsa_2048_request_is_signed_too(mesh: Mesh) -> None:
    uri = pki.identity("gateway", mesh.gw_b)
    for key, algorithm in ((keys.generate(), None), (rsa.generate_private_key(65537, 2048), hashes.SHA256())):
        answer = mesh.gateway("b").request_certificate(_csr(key, uri, algorithm=algorithm))
        _issued(answer, mesh.reg.ca_path, uri)


# -- refusals: identity ------------------------------------------------------------------------------------------


def test_a_csr_for_an_identity_the_key_does_not_own_is_403_naming_csr(mesh: Mesh) -> None:
    key = pki.new_tls_key()
    other_gateway = pki.make_csr(key, pki.identity("gateway", mesh.gw_b))
    _refused(lambda: mesh.gateway("a").request_certificate(other_gateway), 403, "access-denied", mesh.gw_b)
    other_subsystem = pki.make_csr(key, pki.identity("subsystem", mesh.sub_b))
    _refused(lambda: mesh.subsystem("a").request_certificate(other_subsystem), 403, "access-denied", mesh.sub_b)
    # across kinds: a gateway key is no subsystem's, a client key no gateway's, nobody's the registry's
    own_sub = pki.make_csr(key, pki.identity("subsystem", mesh.sub_a))
    _refused(lambda: mesh.gateway("a").request_certificate(own_sub), 403, "access-denied")
    _refused(lambda: mesh.subsystem("a").request_certificate(other_gateway), 403, "access-denied")
    registry_csr = pki.make_csr(key, pki.identity("registry", "VN"))
    _refused(lambda: mesh.gateway("a").request_certificate(registry_csr), 403, "access-denied")
    # an admin key stands for no mesh identity
    _refused(lambda: mesh.admin.request_certificate(other_gateway), 403, "access-denied", "admin")


def test_a_revoked_key_gets_no_certificate(mesh: Mesh, registry: RegistryHandle) -> None:
    code, key = f"r{_uid()}", keys.generate()
    kid = keys.public_jwk(key)["kid"]
    mesh.admin.add_gateway(code, "http://127.0.0.1:3", [keys.public_jwk(key)])
    mesh.admin.revoke_gateway_key(code, kid)
    client = registry.client_for(key, kid, f"gateway:{code}")
    with pytest.raises(RegistryError) as info:
        client.request_certificate(pki.make_csr(pki.new_tls_key(), pki.identity("gateway", code)))
    assert info.value.status == 401


# -- refusals: the request itself --------------------------------------------------------------------------------


def test_weak_keys_are_400_naming_csr(mesh: Mesh) -> None:
    uri = pki.identity("gateway", mesh.gw_a)
    rsa_1024 = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weak key under test
    _refused(lambda: mesh.gateway().request_certificate(_csr(rsa_1024, uri)), 400, "invalid-body", "1024 bits")
    for curve in (ec.SECP192R1(), ec.SECP224R1(), ec.SECP256K1()):
        try:
            weak = ec.generate_private_key(curve)
        except Exception:  # noqa: S112 - this OpenSSL cannot make the curve: nothing to send
            continue
        _refused(lambda weak=weak: mesh.gateway().request_certificate(_csr(weak, uri)), 400, "invalid-body", "curve")


def test_malformed_requests_are_400_naming_csr(mesh: Mesh) -> None:
    uri = pki.identity("gateway", mesh.gw_a)
    key = pki.new_tls_key()
    gw = mesh.gateway()
    _refused(lambda: gw.request_certificate(_csr(key, uri, uri + "x")), 400, "invalid-body", "exactly one")
    _refused(lambda: gw.request_certificate(_csr(key)), 400, "invalid-body", "no identity")
    _refused(lambda: gw.request_certificate(_csr(key, "https://example.org/")), 400, "invalid-body", "exactly one")
    _refused(lambda: gw.request_certificate(_csr(key, "urn:lienthong:martian:x")), 400, "invalid-body")
    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    _refused(lambda: gw.request_certificate(garbage), 400, "invalid-body")
    # a valid CSR whose signature was tampered with
    good = pki.make_csr(key, uri)
    der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    bad = der[:-3] + bytes([der[-3] ^ 1]) + der[-2:]
    tampered = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bad) + b"-----END CERTIFICATE REQUEST-----\n"
    )
    _refused(lambda: gw.request_certificate(tampered), 400, "invalid-body")
    # not a string, missing, an extra member: the schema's 400 names the member
    for body in ({"csr": 5}, {}, {"csr": good.decode(), "lifetime": "999d"}):
        response = gw.http.post("/v1/certificates", json=body, headers={"Authorization": f"Bearer {gw.token()}"})
        assert response.status_code == 400, response.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(
        st.text(min_size=1, max_size=300),
        st.binary(min_size=1, max_size=200).map(
            lambda b: "-----BEGIN CERTIFICATE REQUEST-----\n" + b.hex() + "\n-----END CERTIFICATE REQUEST-----\n"
        ),
    )
)
def test_any_garbage_csr_is_a_400_naming_csr_never_a_500(mesh: Mesh, garbage: str) -> None:
    gw = mesh.gateway()
    try:
        gw.request_certificate(garbage)
    except RegistryError as exc:
        assert exc.status == 400 and exc.problem.get("field") == "csr", exc.problem
    else:
        pytest.fail(f"{garbage!r} was signed")


# -- revocation --------------------------------------------------------------------------------------------------


def _snapshot(mesh: Mesh, gateway: str) -> dict[str, Any]:
    doc: dict[str, Any] = read_full(mesh.admin.snapshot(gateway=gateway).content, mesh.reg.registry_public_key)
    return doc


def test_revoking_a_gateway_key_revokes_its_certificates_in_the_next_snapshot(mesh: Mesh) -> None:
    code, key = f"v{_uid()}", keys.generate()
    kid = keys.public_jwk(key)["kid"]
    mesh.admin.add_gateway(code, "http://127.0.0.1:4", [keys.public_jwk(key)])
    client = mesh.reg.client_for(key, kid, f"gateway:{code}")
    serials = [client.request_certificate(pki.make_csr(pki.new_tls_key(), pki.identity("gateway", code)))["serial"]
               for _ in range(2)]  # fmt: skip
    bystander = mesh.gateway("b").request_certificate(
        pki.make_csr(pki.new_tls_key(), pki.identity("gateway", mesh.gw_b))
    )["serial"]
    before = _snapshot(mesh, mesh.gw_a)
    assert before["pki"]["ca"] == [mesh.reg.ca_path.read_text()]
    assert not set(serials) & set(before["pki"]["revoked"])
    mesh.admin.revoke_gateway_key(code, kid)
    after = _snapshot(mesh, mesh.gw_a)
    assert set(serials) <= set(after["pki"]["revoked"])
    assert bystander not in after["pki"]["revoked"]
    parsed = Snapshot(after)
    assert {int(s, 16) for s in serials} <= parsed.revoked_serials
    assert parsed.ca_pems == (mesh.reg.ca_path.read_text(),) and not parsed.quarantined


def test_revoking_a_client_key_revokes_the_subsystems_certificates(mesh: Mesh) -> None:
    sub = f"{mesh.sub_a.rsplit('/', 1)[0]}/c{_uid()}"
    mesh.admin.add_subsystem(sub, "C")
    key = keys.generate()
    kid = mesh.admin.add_client_key(sub, keys.public_jwk(key))["keys"][0]["kid"]
    client = mesh.reg.client_for(key, kid, sub)
    serial = client.request_certificate(pki.make_csr(pki.new_tls_key(), pki.identity("subsystem", sub)))["serial"]
    mesh.admin.revoke_client_key(sub, kid)
    assert serial in _snapshot(mesh, mesh.gw_b)["pki"]["revoked"]


# -- the snapshot's pki section on the gateway side --------------------------------------------------------------


def test_a_malformed_pki_section_is_quarantined_never_raised() -> None:
    base = {"version": 1, "gateway": "x"}
    for pki_value in ("x", [], {"ca": "pem"}, {"ca": ["not a pem"]}, {"revoked": ["XYZ"]}, {"revoked": [17]},
                      {"revoked": ["a" * 41]}, {"ca": [None]}):  # fmt: skip
        snap = Snapshot({**base, "pki": pki_value})
        assert snap.ca_pems == () and snap.revoked_serials == frozenset()
        assert [(q.kind, q.id) for q in snap.quarantined] == [("section", "pki")], pki_value
    assert Snapshot(base).ca_pems == () and not Snapshot(base).quarantined


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["ca", "revoked", "x"]), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_any_pki_section_builds_a_snapshot(value: Any) -> None:
    snap = Snapshot({"version": 1, "gateway": "x", "pki": value})
    assert isinstance(snap.ca_pems, tuple) and isinstance(snap.revoked_serials, frozenset)


# -- init, the CA files, HTTPS -----------------------------------------------------------------------------------


def _init(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong("registry", "init", "--data-dir", str(data_dir), *extra),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_init_makes_the_ca_with_its_key_0600_and_the_registrys_own_certificate(tmp_path: Path) -> None:
    data = tmp_path / "registry"
    done = _init(data)
    assert done.returncode == 0, done.stderr
    assert (data / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (data / "tls" / "tls.key").stat().st_mode & 0o777 == 0o600
    ca = pki.CertificateAuthority.load(data / "ca.crt", data / "ca.key")
    own = pki.load_cert(data / "tls" / "tls.crt")
    own.verify_directly_issued_by(ca.cert)
    assert pki.cert_identity(own) == "urn:lienthong:registry:VN"
    again = _init(data)
    assert again.returncode != 0 and "already initialised" in again.stderr


def test_init_takes_an_existing_ca(tmp_path: Path) -> None:
    theirs = pki.CertificateAuthority.create(tmp_path / "op" / "ca.pem", tmp_path / "op" / "ca-key.pem", "Ops CA")
    data = tmp_path / "registry"
    done = _init(data, "--ca-cert", str(tmp_path / "op" / "ca.pem"), "--ca-key", str(tmp_path / "op" / "ca-key.pem"))
    assert done.returncode == 0, done.stderr
    assert (data / "ca.crt").read_bytes() == pki.cert_pem(theirs.cert)
    assert (data / "ca.key").stat().st_mode & 0o777 == 0o600
    pki.load_cert(data / "tls" / "tls.crt").verify_directly_issued_by(theirs.cert)
    # half a CA, a key of another CA, a leaf posing as a CA: refused, naming the files
    other = pki.CertificateAuthority.create(tmp_path / "x" / "ca.pem", tmp_path / "x" / "ca-key.pem")
    half = _init(tmp_path / "r2", "--ca-cert", str(tmp_path / "op" / "ca.pem"))
    assert half.returncode != 0 and "--ca-key" in half.stderr
    mixed = _init(tmp_path / "r3", "--ca-cert", str(tmp_path / "op" / "ca.pem"),
                  "--ca-key", str(tmp_path / "x" / "ca-key.pem"))  # fmt: skip
    assert mixed.returncode != 0 and "ca-key.pem" in mixed.stderr
    leaf_key = pki.new_tls_key()
    leaf = other.issue(
        x509.load_pem_x509_csr(pki.make_csr(leaf_key, "urn:lienthong:gateway:x")), "urn:lienthong:gateway:x"
    )
    pki.write_cert(leaf, tmp_path / "leaf.pem")
    keys.save_private(leaf_key, tmp_path / "leaf.key")
    posing = _init(tmp_path / "r4", "--ca-cert", str(tmp_path / "leaf.pem"), "--ca-key", str(tmp_path / "leaf.key"))
    assert posing.returncode != 0 and "not a CA" in posing.stderr


class TlsRegistry:
    def __init__(self, proc: Proc, url: str, data: Path) -> None:
        self.proc, self.url, self.data = proc, url, data


def _wait_https(proc: Proc, url: str, ca: Path) -> None:
    ctx = pki.client_context(ca)
    deadline = time.monotonic() + 60  # only to catch a hang
    while time.monotonic() < deadline:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(proc.log_tail())
        try:
            if httpx.get(url, verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url}:\n{proc.log_tail()}")


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    """A registry served over HTTPS (the default: no --insecure-http) with its own Redis."""

    base = tmp_path_factory.mktemp("tlsreg")
    server = EmbeddedRedis(base / "redis", durable=False)
    server.start()
    data = base / "registry"
    assert _init(data).returncode == 0
    port = free_port()
    args = lienthong("registry", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
                     "--redis-url", server.url, "--upstream-allow", "127.0.0.1")  # fmt: skip
    (base / "logs").mkdir()
    proc = Proc("registry-tls", args, base / "logs").start()
    url = f"https://127.0.0.1:{port}"
    _wait_https(proc, url + "/healthz", data / "ca.crt")
    yield TlsRegistry(proc, url, data)
    proc.stop()
    server.stop()


def test_the_registry_serves_tls_13_only_with_its_own_identity(tls_registry: TlsRegistry) -> None:
    host, port = "127.0.0.1", int(tls_registry.url.rsplit(":", 1)[1])
    ctx = pki.client_context(tls_registry.data / "ca.crt")
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.3"
        peer = pki.Peer.of(tls)
        assert peer is not None and peer.identity == "urn:lienthong:registry:VN"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw).do_handshake()
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        httpx.get(tls_registry.url.replace("https:", "http:") + "/healthz", timeout=10)
    with pytest.raises(httpx.HTTPError):  # nor does a client that does not trust the mesh CA
        httpx.get(tls_registry.url + "/healthz", timeout=10)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lienthong(*args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_cert_commands_over_https(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    """gateway cert, connector cert and client cert: key + CSR + the registry over HTTPS, files in their places."""
    data, url, ca = tls_registry.data, tls_registry.url, str(tls_registry.data / "ca.crt")
    api = ("--registry", url, "--registry-ca", ca, "--key", str(data / "admin.key"))
    home = tmp_path / "home"
    gw_key = home / "gateways" / "hanoi" / "gateway.key"
    keys.save_private(keys.generate(), gw_key)
    sub_key = tmp_path / "sub.key"
    keys.save_private(keys.generate(), sub_key)
    for step in (("gateways", "add", "hanoi", "--base-url", "https://127.0.0.1:9", "--key-file", str(gw_key)),
                 ("members", "add", "VN/GOV/BTP", "--name", "Justice", "--home-gateway", "hanoi"),
                 ("clients", "add-key", "VN/GOV/BTP/civil-registry", "--key-file", str(sub_key))):  # fmt: skip
        if step[0] == "clients":  # the subsystem first, through the API (no CLI command makes one)
            with RegistryClient(url, data / "admin.key", iss="admin", ca=ca) as client:
                client.add_subsystem("VN/GOV/BTP/civil-registry", "Civil registry")
        done = _cli(*step, *api, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    env_home = ("--home", str(home), "--registry", url, "--registry-ca", ca)
    gateway = _cli("gateway", "cert", "--code", "hanoi", *env_home, cwd=tmp_path)
    assert gateway.returncode == 0, gateway.stderr
    tls = pki.CertFiles(home / "gateways" / "hanoi" / "tls")
    assert tls.exists() and tls.key.stat().st_mode & 0o777 == 0o600
    assert pki.cert_identity(pki.load_cert(tls.cert)) == "urn:lienthong:gateway:hanoi"
    again = _cli("gateway", "cert", "--code", "hanoi", *env_home, cwd=tmp_path)
    assert again.returncode == 0 and "not yet due" in again.stdout
    connector = _cli("connector", "cert", "civil", "--subsystem", "VN/GOV/BTP/civil-registry", "--key", str(sub_key),
                     *env_home, cwd=tmp_path)  # fmt: skip
    assert connector.returncode == 0, connector.stderr
    conn_cert = pki.load_cert(home / "connectors" / "civil" / "tls" / "tls.crt")
    assert pki.cert_identity(conn_cert) == "urn:lienthong:subsystem:VN/GOV/BTP/civil-registry"
    out = tmp_path / "client-tls"
    client_cmd = _cli("client", "cert", "--subsystem", "VN/GOV/BTP/civil-registry", "--key", str(sub_key),
                      "--out", str(out), *env_home, cwd=tmp_path)  # fmt: skip
    assert client_cmd.returncode == 0, client_cmd.stderr
    assert pki.CertFiles(out).exists()
    # errors name the key file, the CA file and the URL
    missing_key = _cli("gateway", "cert", "--code", "nghean", *env_home, cwd=tmp_path)
    assert missing_key.returncode != 0 and str(home / "gateways" / "nghean" / "gateway.key") in missing_key.stderr
    no_ca = _cli("client", "cert", "--subsystem", "VN/GOV/BTP/civil-registry", "--key", str(sub_key), "--out",
                 str(out), "--force", "--home", str(tmp_path / "empty"), "--registry", url, cwd=tmp_path)  # fmt: skip
    assert no_ca.returncode != 0 and str(tmp_path / "empty" / "registry" / "ca.crt") in no_ca.stderr
    stranger = tmp_path / "stranger.key"
    keys.save_private(keys.generate(), stranger)
    refused = _cli("client", "cert", "--subsystem", "VN/GOV/BTP/civil-registry", "--key", str(stranger), "--out",
                   str(tmp_path / "s"), *env_home, cwd=tmp_path)  # fmt: skip
    assert refused.returncode != 0 and str(stranger) in refused.stderr and url in refused.stderr
    for command in (("gateway", "cert"), ("connector", "cert"), ("client", "cert")):
        shown = _cli(*command, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "--registry-ca" in shown.stdout and "--home" in shown.stdout


def _serial_at(port: int, ca: Path) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pki.client_context(ca).wrap_socket(raw) as tls:
            peer = pki.Peer.of(tls)
            assert peer is not None and peer.identity == "urn:lienthong:registry:VN"
            return peer.serial


def test_the_registry_renews_its_own_certificate_while_serving(tmp_path: Path, redis_url: str) -> None:
    """3 minutes of life, backdated 5: due 20 s after issue. A kept-alive client goes on, a new handshake sees the
    new serial."""
    data = tmp_path / "registry"
    assert _init(data).returncode == 0
    port = free_port()
    args = lienthong("registry", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
                     "--redis-url", redis_url, "--cert-lifetime", "3m", "--tls-dir", str(tmp_path / "tls"))  # fmt: skip
    (tmp_path / "logs").mkdir()
    proc = Proc("registry-renew", args, tmp_path / "logs").start()
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        _wait_https(proc, url, data / "ca.crt")
        first = _serial_at(port, data / "ca.crt")
        assert first == pki.load_cert(tmp_path / "tls" / "tls.crt").serial_number
        with httpx.Client(verify=pki.client_context(data / "ca.crt")) as kept:
            assert kept.get(url).status_code == 200
            deadline = time.monotonic() + 120  # only to catch a hang (renewal is due after ~20 s)
            while _serial_at(port, data / "ca.crt") == first:
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.5)
            assert kept.get(url).status_code == 200  # the connection opened before the renewal still serves
    finally:
        proc.stop()


def test_insecure_http_logs_a_warning_at_start(tmp_path: Path, redis_url: str) -> None:
    registry = start_registry(tmp_path, redis_url, tmp_path, options=("--insecure-http",))
    try:
        assert registry.url.startswith("http://")
        log = registry.proc.log_path.read_text(errors="replace")
        assert "--insecure-http" in log and "development only" in log
    finally:
        registry.stop()
