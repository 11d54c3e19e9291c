"""The PKI kernel (lienthong/pki.py) over real TLS sockets: an operator's intermediate CA can be the mesh CA."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from lienthong import pki
from lienthong.keys import save_private


def _intermediate(tmp: Path) -> pki.CertificateAuthority:
    """A root the mesh never sees, and a sub-CA of it written where the mesh CA lives."""
    root = pki.CertificateAuthority.create(tmp / "root.crt", tmp / "root.key", name="operator root")
    key = pki.new_tls_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator sub-CA for the mesh")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    save_private(key, tmp / "ca.key")
    pki.write_cert(cert, tmp / "ca.crt")
    return pki.CertificateAuthority.load(tmp / "ca.crt", tmp / "ca.key")


def _files(ca: pki.CertificateAuthority, directory: Path, uri: str) -> pki.CertFiles:
    files = pki.CertFiles(directory)
    key = pki.new_tls_key()
    save_private(key, files.key)
    csr, checked = pki.check_csr(pki.make_csr(key, uri))
    pki.write_cert(ca.issue(csr, checked), files.cert)
    files.ca.write_bytes(pki.cert_pem(ca.cert))
    return files


async def _handshake(server: pki.CertFiles, client: pki.CertFiles) -> tuple[str | None, str | None, bytes]:
    """(the identity the client saw, the identity the server saw or None when it refused, what the client read)"""
    seen: list[str | None] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = pki.Peer.of(writer.get_extra_info("ssl_object"))
        seen.append(peer.identity if peer else None)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=pki.server_context(server, "required"))
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(client.ca, client))
        peer = pki.Peer.of(writer.get_extra_info("ssl_object"))
        try:
            got = await reader.read()
        except (ConnectionError, OSError):  # TLS 1.3: the server's refusal of our certificate arrives after ours
            got = b""
        writer.close()
        await asyncio.sleep(0.05)
    finally:
        srv.close()
    return (peer.identity if peer else None), (seen[0] if seen else None), got


def test_an_operators_intermediate_ca_can_be_the_mesh_ca(tmp_path: Path) -> None:
    """Without partial-chain verification this handshake fails with 'unable to get issuer certificate': every
    process trusts ca.crt alone, and the operator's root is not (and should not be) in it."""
    ca = _intermediate(tmp_path)
    server = _files(ca, tmp_path / "national", pki.identity("gateway", "national"))
    client = _files(ca, tmp_path / "hanoi", pki.identity("gateway", "hanoi"))
    assert asyncio.run(_handshake(server, client)) == (
        "urn:lienthong:gateway:national", "urn:lienthong:gateway:hanoi", b"ok"
    )


def test_a_leaf_of_the_operators_root_is_not_a_mesh_certificate(tmp_path: Path) -> None:
    """Trusting the sub-CA as the anchor does not trust its root: the root's other leaves stay outsiders."""
    ca = _intermediate(tmp_path)
    root = pki.CertificateAuthority.load(tmp_path / "root.crt", tmp_path / "root.key")
    server = _files(ca, tmp_path / "national", pki.identity("gateway", "national"))
    outsider = _files(root, tmp_path / "outsider", pki.identity("gateway", "hanoi"))
    outsider.ca.write_bytes(pki.cert_pem(ca.cert))  # it trusts the mesh, but the mesh does not trust it
    _, server_saw, got = asyncio.run(_handshake(server, outsider))
    assert (server_saw, got) == (None, b"")
