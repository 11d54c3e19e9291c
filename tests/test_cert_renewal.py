"""lienthong/cert_renewal.py: a process gets its certificate when the files are missing, for another identity or due,
keeps its TLS key across renewals, refuses an answer that is not for its identity or key, and renews at 2/3 of life
while serving: an open TLS connection survives the renewal, a new one sees the new serial. Real sockets, real TLS;
the CA is the kernel's (lienthong.pki), so these run without a registry; tests/test_registry_pki.py covers the
registry's side."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from lienthong import pki
from lienthong.cert_renewal import CertificateRenewer, RenewalError, ensure_certificate

URI = "urn:lienthong:gateway:hanoi"


class LocalCA:
    """Signs what it is asked, counting requests; `lifetime` as a registry option would set it."""

    def __init__(self, tmp: Path, lifetime: dt.timedelta = pki.DEFAULT_LIFETIME) -> None:
        self.ca = pki.CertificateAuthority.create(tmp / "ca" / "ca.crt", tmp / "ca" / "ca.key")
        self.lifetime = lifetime
        self.calls = 0

    def __call__(self, csr_pem: bytes) -> dict[str, str]:
        self.calls += 1
        csr, uri = pki.check_csr(csr_pem)
        cert = self.ca.issue(csr, uri, self.lifetime)
        return {"certificate": pki.cert_pem(cert).decode(), "ca": pki.cert_pem(self.ca.cert).decode()}


def test_missing_files_are_made_and_a_current_certificate_is_kept(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    files = pki.CertFiles(tmp_path / "tls")
    first = ensure_certificate(files, URI, ca)
    assert ca.calls == 1 and files.exists() and files.key.stat().st_mode & 0o777 == 0o600
    assert pki.cert_identity(first) == URI and files.ca.read_bytes() == pki.cert_pem(ca.ca.cert)
    assert ensure_certificate(files, URI, ca).serial_number == first.serial_number and ca.calls == 1
    # another identity in the same dir is asked for anew, with the same (kept) key
    key_before = files.key.read_bytes()
    other = ensure_certificate(files, "urn:lienthong:gateway:nghean", ca)
    assert ca.calls == 2 and pki.cert_identity(other) == "urn:lienthong:gateway:nghean"
    assert files.key.read_bytes() == key_before


def test_a_certificate_past_two_thirds_of_its_life_or_expired_is_renewed(tmp_path: Path) -> None:
    files = pki.CertFiles(tmp_path / "tls")
    for lifetime in (dt.timedelta(minutes=2), dt.timedelta(seconds=-1)):  # past 2/3 already (5 min backdated); expired
        ca = LocalCA(tmp_path / str(lifetime.total_seconds()), lifetime)
        old = ensure_certificate(files, URI, ca)
        assert ensure_certificate(files, URI, ca).serial_number != old.serial_number and ca.calls == 2


def test_an_answer_for_another_identity_or_key_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    files = pki.CertFiles(tmp_path / "tls")
    stranger = pki.new_tls_key()

    def other_identity(csr_pem: bytes) -> dict[str, str]:
        return ca(pki.make_csr(stranger, "urn:lienthong:gateway:evil"))

    def other_key(csr_pem: bytes) -> dict[str, str]:
        return ca(pki.make_csr(stranger, URI))

    with pytest.raises(RenewalError, match="urn:lienthong:gateway:evil"):
        ensure_certificate(files, URI, other_identity)
    with pytest.raises(RenewalError, match="not for the key"):
        ensure_certificate(files, URI, other_key)
    with pytest.raises(RenewalError, match="not a PEM certificate"):
        ensure_certificate(files, URI, lambda _csr: "garbage")
    assert not files.cert.exists()


async def _serial_of(port: int, ca: Path) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(ca))
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number, reader, writer


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 60)  # only to catch a hang


def test_the_renewer_reloads_live_contexts_without_dropping_connections(tmp_path: Path) -> None:
    # 156 s of life, valid from 5 min before issue: renewal due ~4 s after each issue
    ca = LocalCA(tmp_path, dt.timedelta(seconds=156))
    files = pki.CertFiles(tmp_path / "tls")
    first = ensure_certificate(files, URI, ca)
    context = pki.server_context(files, "optional")

    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        renewed: asyncio.Queue[x509.Certificate] = asyncio.Queue()
        renewer = CertificateRenewer(files, URI, ca, [context], on_renewed=renewed.put_nowait)
        try:
            serial, reader, writer = await _serial_of(port, files.ca)
            assert serial == first.serial_number
            renewer.start()
            new = await asyncio.wait_for(renewed.get(), 60)  # only to catch a hang
            assert new.serial_number != first.serial_number
            assert await _echo(reader, writer, b"still here\n") == b"still here\n"  # the open connection survives
            fresh, _r2, w2 = await _serial_of(port, files.ca)
            assert fresh == new.serial_number  # a new handshake presents the new certificate
            w2.close()
            writer.close()
        finally:
            await renewer.stop()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_failed_renewal_keeps_serving_the_old_certificate(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path, dt.timedelta(minutes=2))  # due at once
    files = pki.CertFiles(tmp_path / "tls")
    first = ensure_certificate(files, URI, ca)
    context = pki.server_context(files, "none")
    failures: list[Any] = []

    def down(_csr: bytes) -> dict[str, str]:
        failures.append(1)
        raise ConnectionError("registry unreachable")

    async def scenario() -> None:
        renewer = CertificateRenewer(files, URI, down, [context])
        renewer.start()
        while not failures:
            await asyncio.sleep(0.05)
        await renewer.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert pki.load_cert(files.cert).serial_number == first.serial_number
    pki.server_context(files, "none")  # key and certificate still load as a pair
